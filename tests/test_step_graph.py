"""StepGraph (soap.step_graph) off CUDA: it reruns the step on the tensors it was given and keeps a
CUDA graph's contract, fixed output buffers overwritten by each call."""

import torch

from soap.step_graph import StepGraph


def counting_step():
    calls = []

    def step(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.clone())
        return x * scale, x.sum().reshape(1)

    return step, calls


def test_a_captured_step_reruns_on_the_updated_inputs_into_fixed_buffers():
    step, calls = counting_step()
    x, scale = torch.tensor([1.0, 2.0]), torch.tensor(3.0)
    graph = StepGraph(step, x, scale)
    first = graph()
    x.add_(1.0)  # inputs are updated in place between steps, as a graph requires
    second = graph()
    x.mul_(2.0)
    scale.fill_(0.5)
    third = graph()
    assert len(calls) == 3 and torch.equal(calls[2], torch.tensor([4.0, 6.0]))
    # the same memory every call, holding the latest step's outputs
    assert all(a is b for a, b in zip(second, third)) and all(a is b for a, b in zip(first, second))
    torch.testing.assert_close(third[0], torch.tensor([2.0, 3.0]), rtol=0, atol=0)
    torch.testing.assert_close(third[1], torch.tensor([10.0]), rtol=0, atol=0)


def test_a_disabled_graph_is_the_step_itself():
    step, calls = counting_step()
    x, scale = torch.tensor([1.0, 2.0]), torch.tensor(2.0)
    graph = StepGraph(step, x, scale, enabled=False)
    first, second = graph(), graph()
    assert len(calls) == 2
    assert first[0] is not second[0]  # fresh outputs, no buffers
    torch.testing.assert_close(second[0], torch.tensor([2.0, 4.0]), rtol=0, atol=0)
