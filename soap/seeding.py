"""Seed streams: one integer seed per run, split into independent streams for each source of randomness.

Paired seeds (STUDY.md): seed s gives every method the same initial weights, the same FA matrix and
the same data order. Separate streams keep those three independent of each other and of the method, so
changing e.g. the feedback rule never shifts the data order.
"""

from __future__ import annotations

import numpy as np
import torch

# feedback_redraw: the matrices that a rule redraws every step (brsf), apart from the fixed ones in
# "feedback" so that they never shift the FA matrix
STREAMS = {"init": 0, "feedback": 1, "data": 2, "feedback_redraw": 3}


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one stream of one run, via NumPy's SeedSequence (well mixed, collision-safe)."""
    state = np.random.SeedSequence([int(seed), STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one stream: draws on CPU make runs identical on every device."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))
