"""Seed streams (soap.seeding): deterministic, distinct per stream and per seed, independent of each other."""

import numpy as np
import torch

from soap.seeding import STREAMS, generator, stream_seed


def test_a_stream_seed_is_numpys_seed_sequence_of_the_seed_and_stream():
    state = np.random.SeedSequence([12, STREAMS["data"]]).generate_state(2, dtype=np.uint32)
    assert stream_seed(12, "data") == (int(state[0]) << 31) ^ int(state[1])
    assert 0 <= stream_seed(12, "data") < 2**63


def test_streams_differ_across_streams_and_seeds_and_repeat_exactly():
    seeds = {(s, name): stream_seed(s, name) for s in range(20) for name in STREAMS}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, stream) pairs share a generator seed
    a, b = generator(3, "init"), generator(3, "init")
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


def test_drawing_from_one_stream_leaves_the_others_unchanged():
    # why the streams exist: a rule that draws more feedback matrices shifts no data order
    data_alone = torch.randperm(50, generator=generator(1, "data"))
    feedback = generator(1, "feedback")
    torch.rand(1000, generator=feedback)
    assert torch.equal(torch.randperm(50, generator=generator(1, "data")), data_alone)
