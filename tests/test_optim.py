"""StackedOptimizer (soap.optim) against torch.optim, member by member, on a stacked parameter."""

import copy

import pytest
import torch

from soap.optim import StackedOptimizer

from helpers import SignSGD

POP, SHAPE, STEPS = 3, (4, 5), 6
LRS = torch.tensor([0.1, 0.03, 0.2], dtype=torch.float64)


def gradients(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(POP, *SHAPE, generator=gen, dtype=torch.float64) for _ in range(STEPS)]


def start() -> torch.Tensor:
    return torch.randn(POP, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("kind, reference", [
    ("momentum", lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)),
    ("adam", lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)),
    ("signsgd", lambda params, lr: SignSGD(params, lr=lr)),
])
def test_each_member_steps_as_torch_optim_steps_it_alone(kind, reference):
    stacked = start()
    optimizer = StackedOptimizer(kind, momentum=0.9, betas=(0.9, 0.999), eps=1e-8)
    alone = [torch.nn.Parameter(stacked[p].clone()) for p in range(POP)]
    references = [reference([param], float(lr)) for param, lr in zip(alone, LRS)]
    for grad in gradients():
        optimizer.step_(0, stacked, grad, LRS)
        for p, (param, ref) in enumerate(zip(alone, references)):
            param.grad = grad[p].clone()
            ref.step()
    # float64, a few elementwise ops a step on O(1) values: the two orders of the same arithmetic
    # differ by a few ulps (~1e-16 relative) per op, so 1e-12 over six steps holds on any x86 BLAS-free path
    for p, param in enumerate(alone):
        torch.testing.assert_close(stacked[p], param.detach(), rtol=0, atol=1e-12)


def test_slots_keep_separate_state():
    optimizer = StackedOptimizer("momentum", momentum=0.5)
    a, b = torch.zeros(1, 2), torch.zeros(1, 2)
    lr = torch.ones(1)
    optimizer.step_(0, a, torch.ones(1, 2), lr)
    optimizer.step_(1, b, -torch.ones(1, 2), lr)
    optimizer.step_(0, a, torch.ones(1, 2), lr)
    # slot 0: buf = 1, then 0.5 * 1 + 1 = 1.5 -> a = -2.5; slot 1 only stepped once -> b = 1
    torch.testing.assert_close(a, torch.full((1, 2), -2.5))
    torch.testing.assert_close(b, torch.ones(1, 2))


def test_freeze_zeroes_only_the_chosen_members_state():
    optimizer = StackedOptimizer("adam")
    param = torch.zeros(3, 2)
    optimizer.step_(0, param, torch.ones(3, 2), torch.ones(3))
    optimizer.freeze(torch.tensor([1]))
    state = optimizer.state[0]
    assert torch.equal(state["m"][1], torch.zeros(2)) and torch.equal(state["v"][1], torch.zeros(2))
    assert (state["m"][[0, 2]] > 0).all() and (state["v"][[0, 2]] > 0).all()


def test_unknown_optimizer_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        StackedOptimizer("rmsprop")


def replayed_as_a_graph(optimizer: StackedOptimizer, param: torch.Tensor, grads: list[torch.Tensor]) -> None:
    """Step through `grads` as a CUDA graph would: the first step is recorded, the others are its
    replays, which rerun the tensor program on the same memory with every Python value it read fixed
    at its recorded value. So before each replay the optimizer's non-tensor state is put back as it
    was at the recording, and its tensors must stay the same memory."""
    optimizer.step_(0, param, grads[0], LRS)
    recorded = {slot: {k: copy.copy(v) for k, v in state.items() if not isinstance(v, torch.Tensor)}
                for slot, state in optimizer.state.items()}
    memory = {slot: {k: v.data_ptr() for k, v in state.items() if isinstance(v, torch.Tensor)}
              for slot, state in optimizer.state.items()}
    for grad in grads[1:]:
        for slot, values in recorded.items():
            optimizer.state[slot].update(copy.copy(values))
        optimizer.step_(0, param, grad, LRS)
        assert {slot: {k: v.data_ptr() for k, v in state.items() if isinstance(v, torch.Tensor)}
                for slot, state in optimizer.state.items()} == memory


@pytest.mark.parametrize("kind", ["momentum", "adam", "signsgd"])
def test_replaying_a_recorded_step_trains_as_stepping_each_time(kind):
    # Adam's bias corrections depend on the step count: kept as a Python number it would freeze at the
    # recording (about 0.24 of the steady-state step); kept in a tensor advanced in place, replays count.
    grads = [g for seed in range(4) for g in gradients(seed)]
    stepped, replayed = start(), start()
    optimizer = StackedOptimizer(kind)
    for grad in grads:
        optimizer.step_(0, stepped, grad, LRS)
    replayed_as_a_graph(StackedOptimizer(kind), replayed, grads)
    assert torch.equal(replayed, stepped)
