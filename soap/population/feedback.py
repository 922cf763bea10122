"""The population's feedback: every member's B and the state of its rule's hooks (soap.rules), as one
object that the trainer calls without knowing which rules are present.

A rule's kind is a hook here, each applied to the members of the rules that have it:
- B = W (`uses_weight`): copied from W after every update (`sync_tracking`);
- B formed every step (`when="step"`) from its R (the FA matrix, or a draw per seed per step):
  `form_step`; B refreshed every period (`when="period"`): `refresh`;
- B trained alongside W (`coupled`, Kolen-Pollack): `coupled_signals`, applied by the update;
- direct feedback (`direct`, DFA): the hidden layers' signal from the output error, inside the
  `SignalPath` that sends errors down.

Members of one rule are addressed by a slice where they are consecutive (the usual case: views, no
gather or scatter), else by an index tensor.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from soap.config import Member
from soap.metrics import angle_degrees
from soap.nn import LayerInit, feedback_grad_input, weight_grad
from soap.rules import FeedbackRule, draw_like_weight, get_rule
from soap.seeding import generator

# (to_layer, from_layer) -> the factor that takes a delta carrying from_layer's lr to to_layer's lr
# (sgd carries each member's lr in its delta), or 1.0 when nothing needs rescaling
LrRatio = Callable[[int, int], "float | Tensor"]


# brsf's draws made at once: one host-to-device copy per this many steps
REDRAW_BLOCK_STEPS = 64


def unit_ratio(to_layer: int, from_layer: int) -> float:
    return 1.0


@dataclass(frozen=True)
class DirectFeedback:
    """DFA members (index (k,)) and their D_l (k, classes, units_l) for the inputs of layers 1 .. L-2;
    the output layer's D is its FA matrix, so the top hidden layer gets fa's signal through B."""

    members: Tensor
    matrices: dict[int, Tensor]

    def upstream(self, output_error: Tensor, layer: int, scale: float | Tensor) -> Tensor:
        """alpha e D_l for layer `layer`'s input, straight from the output error e (pop, batch, classes)."""
        rows = scale if isinstance(scale, float) else scale[self.members]
        return feedback_grad_input(output_error[self.members], self.matrices[layer], rows)


@dataclass(frozen=True)
class SignalPath:
    """How error signals go down a layer: scale * delta B through `matrices` (one (pop, out, in) per
    layer), and for the `direct` members' hidden layers from the output error instead."""

    matrices: list[Tensor]
    scale: float | Tensor = 1.0  # alpha, a number or (pop, 1, 1)
    direct: DirectFeedback | None = None

    def upstream(self, delta: Tensor, output_error: Tensor, layer: int, lr_ratio: LrRatio = unit_ratio) -> Tensor:
        """dL/dh of layer `layer`'s input (pop, batch, in) from its delta (pop, batch, out)."""
        upstream = feedback_grad_input(delta, self.matrices[layer], self.scale * lr_ratio(layer - 1, layer))
        if self.direct is not None and layer < len(self.matrices) - 1:
            # the output error carries the output layer's lr
            direct_scale = self.scale * lr_ratio(layer - 1, len(self.matrices) - 1)
            upstream[self.direct.members] = self.direct.upstream(output_error, layer, direct_scale)
        return upstream


@dataclass
class CoupledSignals:
    """The learning signals of W and B on one layer for the rules whose B is trained alongside W, from
    the pre-step weights: (members, grad_W, signal for W, signal for B) per rule."""

    signals: list[tuple[slice | Tensor, Tensor, Tensor, Tensor]]

    def after_sgd_(self, weight: Tensor, feedback: Tensor) -> None:
        """Complete a fused sgd step (which subtracted lr grad_W from every member): W and B take the
        signals, which carry each member's lr."""
        for index, grad, signal_w, signal_fb in self.signals:
            weight[index] -= signal_w - grad
            feedback[index] -= signal_fb

    def gradients(self, grad_w: Tensor, feedback: Tensor) -> Tensor | None:
        """Put W's signals into grad_W (in place); B's gradient, zero for every other member (a zero
        gradient moves no B in any optimizer), or None when no rule is coupled."""
        if not self.signals:
            return None
        grad_fb = torch.zeros_like(feedback)
        for index, _, signal_w, signal_fb in self.signals:
            grad_w[index], grad_fb[index] = signal_w, signal_fb
        return grad_fb


class PopulationFeedback:
    """B of every member, `matrices[l]` (pop, out, in), kept by the members' rules.

    weights: the population's W stacks (read, never written here); inits: each seed's LayerInit
    (for DFA's D_l); member_group: each member's data-order group (pop,), for the first layer's input.
    """

    def __init__(self, members: list[Member], weights: list[Tensor], matrices: list[Tensor],
                 inits: dict[int, list[LayerInit]], member_group: Tensor, decay: float):
        self.members, self.weights, self.matrices, self.decay = members, weights, matrices, decay
        self.rules: list[FeedbackRule] = [get_rule(m.method) for m in members]
        self.member_group = member_group
        self.device = weights[0].device
        layers = range(len(weights))
        # Members whose backward uses W itself keep B = W by a copy after every update
        self.tracking = _contiguous_runs(self._members_where(lambda r: r.uses_weight))
        self.sync_tracking(layers)
        self.refresh_groups = {name: np.array(index) for name, index in self._by_name(lambda r: r.refresh is not None)}
        self._refresh_index: dict[tuple[str, bytes], Tensor] = {}  # refresh(): the due sets' device indices
        self.step_groups = dict(self._addressed(self._by_name(lambda r: r.when == "step")))
        self.step_seeds = {name: [m.seed for m in np.array(members, dtype=object)[_host(index)]]
                           for name, index in self.step_groups.items()}
        # frsf's R: the members' own FA matrices, kept apart from B
        self.fa_matrices = {name: [fb[index].clone() for fb in matrices]
                            for name, index in self.step_groups.items() if get_rule(name).random == "fa"}
        redrawing = {members[i].seed for i in self._members_where(lambda r: r.random == "redraw")}
        self.redraw_generators = {seed: generator(seed, "feedback_redraw") for seed in sorted(redrawing)}
        self._redraw_blocks: dict[int, list[Tensor]] = {}
        self._redraw_step = REDRAW_BLOCK_STEPS  # the first draw makes the first block
        self.coupled_groups = dict(self._addressed(self._by_name(lambda r: r.coupled is not None)))
        direct = self._members_where(lambda r: r.direct)
        self.direct = DirectFeedback(
            torch.as_tensor(direct, device=self.device),
            {l: torch.stack([inits[members[i].seed][l].direct for i in direct]).to(weights[l])
             for l in range(1, len(weights) - 1)}) if direct else None
        self.draw_step_randoms()
        self.form_step(layers)

    def path(self, matrices: list[Tensor] | None = None, scale: float | Tensor = 1.0) -> SignalPath:
        """The members' rules' path for errors: through `matrices` (default: their B) times `scale`,
        with DFA's direct signals."""
        return SignalPath(self.matrices if matrices is None else matrices, scale, self.direct)

    def coupled_signals(self, layer: int, delta: Tensor | None, x: Tensor | None, lr: Tensor | None = None,
                        grad: Tensor | None = None) -> CoupledSignals:
        """The coupled rules' signals on `layer` from deltas (pop, batch, out), its input x and the rules'
        decay, times each member's lr (pop,) where deltas carry it (the hook is linear). A caller that has
        every member's grad_W (pop, out, in) passes it as `grad` instead of delta and x (a conv layer's).
        With no coupled rule nothing is computed (the common case: no per-step work)."""
        signals = []
        for name, index in self.coupled_groups.items():
            if grad is None:
                inputs = x.index_select(0, self.member_group[index]) if layer == 0 else x[index]
                rule_grad = weight_grad(delta[index], inputs)
            else:
                rule_grad = grad[index]
            w, fb = self.weights[layer][index], self.matrices[layer][index]
            decay = self.decay if lr is None else self.decay * lr[index].view(-1, 1, 1)
            signals.append((index, rule_grad, *get_rule(name).coupled(rule_grad, w, fb, decay)))
        return CoupledSignals(signals)

    @torch.no_grad()
    def sync_tracking(self, layers) -> None:
        for layer in layers:
            for members in self.tracking:
                self.matrices[layer][members] = self.weights[layer][members]

    @torch.no_grad()
    def draw_step_randoms(self) -> None:
        """R_t of the redrawing rules (brsf): one draw per seed, layer after layer, shared by that seed's
        members (as each alone draws them). Every layer is drawn every step, so the seed stream, and
        with it each run, stays the single layer's.

        The draws stay on each seed's CPU generator, the project's definition on every device, but are
        made REDRAW_BLOCK_STEPS steps at a time (the same stream in the same order) and sent to the
        device in one copy from pinned memory that does not wait for it: no host-device sync a step."""
        if not self.redraw_generators:
            self.redraws = {}
            return
        if self._redraw_step == REDRAW_BLOCK_STEPS:
            self._redraw_blocks, self._redraw_step = self._draw_redraw_blocks(), 0
        step, self._redraw_step = self._redraw_step, self._redraw_step + 1
        self.redraws = {seed: [block[step] for block in blocks] for seed, blocks in self._redraw_blocks.items()}

    def _draw_redraw_blocks(self) -> dict[int, list[Tensor]]:
        """Per seed, per layer: (REDRAW_BLOCK_STEPS, out, in) on the device, step after step and in each
        step layer after layer on the seed's generator, as one draw per step makes them."""
        shapes = [tuple(w.shape[1:]) for w in self.weights]
        sizes = [math.prod(shape) for shape in shapes]
        pinned = self.device.type == "cuda"
        blocks = {}
        for seed, gen in self.redraw_generators.items():
            host = torch.empty(REDRAW_BLOCK_STEPS, sum(sizes), pin_memory=pinned)
            for step in range(REDRAW_BLOCK_STEPS):
                for part, shape in zip(host[step].split(sizes), shapes):
                    part.copy_(draw_like_weight(shape, gen).flatten())
            device = host.to(self.weights[0], non_blocking=True)
            blocks[seed] = [part.view(REDRAW_BLOCK_STEPS, *shape)
                            for part, shape in zip(device.split(sizes, dim=1), shapes)]
        return blocks

    @torch.no_grad()
    def form_step(self, layers) -> None:
        """B = form(W, R) on `layers` for the rules formed every step, from the W that the next step uses."""
        for name, members in self.step_groups.items():
            for layer in layers:
                fa_matrix = self.fa_matrices[name][layer] if name in self.fa_matrices else None
                self.matrices[layer][members] = get_rule(name).formed(
                    self.weights[layer][members], fa_matrix,
                    lambda: torch.stack([self.redraws[seed][layer] for seed in self.step_seeds[name]]))

    @torch.no_grad()
    def complete(self) -> None:
        """Bring the first layer's B up to date. A training step never reads it (no error goes down to
        the data), so steps leave it stale: B = W is not copied for the rules that track W, and the
        every-step rules do not form it (for usf and frsf that is three quarters of their forming
        work). Anything that reads B calls this first."""
        self.sync_tracking([0])
        self.form_step([0])

    @torch.no_grad()
    def refresh(self, due: np.ndarray) -> None:
        """After each step: apply each periodic member's rule where `due` (bool per member) says its
        period elapsed, and form the B of every rule formed every step. Outside the step, so a
        captured step (soap.step_graph) never replays brsf's draws."""
        for name, members in self.refresh_groups.items():
            chosen = members[due[members]]
            if chosen.size:
                # members due together recur (one set per period), so each set is copied to the device
                # once: a copy of a host index every refresh would be a host-device sync
                key = (name, chosen.tobytes())
                if key not in self._refresh_index:
                    self._refresh_index[key] = torch.as_tensor(chosen, device=self.device)
                index = self._refresh_index[key]
                for w, fb in zip(self.weights, self.matrices):
                    fb[index] = get_rule(name).refresh(w[index])
        if self.step_groups:
            self.draw_step_randoms()
            self.form_step(range(1, len(self.weights)))  # the first layer's: complete()

    def angles(self) -> list[Tensor]:
        """angle(B, W) per layer (pop,); NaN for DFA's hidden D_l, which has no W of its shape."""
        angles = [angle_degrees(fb, w) for w, fb in zip(self.weights, self.matrices)]
        if self.direct is not None:
            for layer in range(len(self.weights) - 1):
                angles[layer][self.direct.members] = math.nan
        return angles

    def _members_where(self, test: Callable[[FeedbackRule], bool]) -> list[int]:
        return [i for i, r in enumerate(self.rules) if test(r)]

    def _by_name(self, test: Callable[[FeedbackRule], bool]) -> list[tuple[str, list[int]]]:
        names = sorted({r.name for r in self.rules if test(r)})
        return [(name, self._members_where(lambda r, n=name: r.name == n)) for name in names]

    def _addressed(self, groups: list[tuple[str, list[int]]]) -> list[tuple[str, slice | Tensor]]:
        return [(name, slice(index[0], index[-1] + 1) if index[-1] - index[0] == len(index) - 1
                 else torch.as_tensor(index, device=self.device)) for name, index in groups]


def _host(index: slice | Tensor) -> slice | np.ndarray:
    return index if isinstance(index, slice) else index.cpu().numpy()


def _contiguous_runs(indices: list[int]) -> list[slice]:
    """[0, 1, 2, 5, 6] -> [slice(0, 3), slice(5, 7)]: a copy through a slice is one pass, through an
    index tensor a gather and a scatter."""
    runs = []
    for _, group in itertools.groupby(enumerate(indices), key=lambda pair: pair[1] - pair[0]):
        members = [index for _, index in group]
        runs.append(slice(members[0], members[-1] + 1))
    return runs
