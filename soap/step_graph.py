"""One training step replayed from a CUDA graph, so a large population is not bound by kernel launches.

A step of the population trainer is some fifty small kernels; on a GPU their launches, not their
arithmetic, bound a population of hundreds. A CUDA graph records the step once and replays it as one
launch. The price is a graph's contract: it reads and writes the same memory on every replay, so
whatever the step reads must be updated in place (never rebound to a new tensor), and its outputs are
overwritten by the next replay. A replay runs no Python, so any number the step keeps in Python (a step
counter, a branch on one) stays at its value when the graph was recorded: state that changes from step
to step lives in tensors (soap.optim's step count), and a step whose computation changes (so_'s
warm-up) is not captured.

Off CUDA there is no graph to record. `StepGraph` then keeps the contract anyway: the step is called on
the tensors given at construction and its outputs are copied into buffers fixed at the first call, the
memory a graph would return. So the CPU tests of a captured run check what capture can break (a step
input rebound instead of updated, an output kept past the next step); only the replay's speed needs a GPU.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class StepGraph:
    """Calls step(*args) each time; with `enabled`, as a CUDA graph's replay (on CUDA) or with its contract."""

    def __init__(self, step: Callable[..., tuple[Tensor, ...]], *args: Tensor, enabled: bool = True):
        self.step, self.args, self.enabled = step, args, enabled
        self.outputs: tuple[Tensor, ...] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> tuple[Tensor, ...]:
        if not self.enabled:
            return self.step(*self.args)
        device = self.args[0].device
        if self.outputs is None:
            return self._first_call(device)
        if self.graph is not None:
            self.graph.replay()
        else:
            for buffer, fresh in zip(self.outputs, self.step(*self.args)):
                buffer.copy_(fresh)
        return self.outputs

    def _first_call(self, device: torch.device) -> tuple[Tensor, ...]:
        if device.type != "cuda":
            self.outputs = tuple(out.clone() for out in self.step(*self.args))
            return self.outputs
        # The first call is a real step, run on a side stream as capture requires (it initialises
        # cuBLAS workspaces and the allocator); then the step is recorded, not run, for later replays.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            first = self.step(*self.args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.step(*self.args)
        return first
