"""The population trainer: P independent runs (any mix of method, seed and learning rate) trained as
one batched computation.

Every member is an MLP whose parameters are stacked along a leading population dimension:
weights[l] (pop, out, in), biases[l] (pop, out), feedback[l] (pop, out, in). Each SGD step gathers one
batch per data order (members with one seed share an order, hence every batch), runs the layer maths
of `FeedbackLinearFunction` (soap.nn) on the stacks and updates every member with its own learning
rate. Members that share a data order share their first layer's GEMMs: its forward is one wide
product per order, its weight update one tall one. Members never mix: the loss is a sum of per-member
means, so a member's gradients are exactly those it would get trained alone.
"""

from __future__ import annotations

import itertools
import logging
import math
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

import soap
from soap.activity_propagation import (ActivityPropagation, forward_backward_passes, newton_step,
                                       perturbation_scale, soap_gain)
from soap.config import ConfigError, Member, TrainConfig
from soap.data import Splits, load_dataset, load_prepared
from soap.devices import describe, resolve_device
from soap.metrics import angle_degrees, examples_to_target, feedback_gain, signal_agreement
from soap.nn import ACTIVATIONS, feedback_grad_input, initial_parameters, linear_forward, sgd_update_, weight_grad
from soap.optim import StackedOptimizer
from soap.rules import KOLEN_POLLACK_DECAY, draw_like_weight, get_rule, refresh_due
from soap.seeding import generator
from soap.step_graph import StepGraph
from soap.tables import effective_lr

log = logging.getLogger(__name__)


class PopulationMLP:
    """Stacked MLPs, one per member, with the members' feedback rules.

    The backward pass is written out by hand: it needs the error signal of every layer anyway (for
    the alignment metrics), and it lets the SGD step fuse into the weight-gradient GEMM. It calls the
    same layer maths as FeedbackLinear (soap.nn), and tests hold it equal to autograd through that layer.

    Consecutive members with one seed form a data-order group: the training input is one batch per
    group, x (groups, batch, in). Consecutive groups of one size form a block, whose first layer is
    one batched GEMM. Any order of members is correct; `by_data_order` gives the fastest.

    optimizer: "sgd" (fused into the weight-gradient GEMM) or one of soap.optim's, with its
    hyperparameters as keywords (momentum, betas, eps).
    """

    def __init__(self, sizes: list[int], members: list[Member], activation: str, device: torch.device,
                 optimizer: str = "sgd", decay: float = KOLEN_POLLACK_DECAY,
                 second_order: ActivityPropagation | None = None, dtype: torch.dtype = torch.float32,
                 **hyperparameters):
        self.sizes, self.members, self.device = sizes, members, device
        self.optimizer = None if optimizer == "sgd" else StackedOptimizer(optimizer, **hyperparameters)
        scales = [m.feedback_scale for m in members]
        # alpha per member, (pop, 1, 1); a plain 1.0 when no member scales, which skips the product
        self.feedback_scale = 1.0 if set(scales) == {1.0} else torch.tensor(scales, device=device).view(-1, 1, 1)
        # per-layer lr multipliers, [(pop,)] input to output; None when every member has one lr
        self.lr_scale = None
        if any(m.lr_scale is not None for m in members):
            layers = len(sizes) - 1
            table = torch.tensor([m.layer_lrs(layers) for m in members], device=device)
            self.lr_scale = list((table / torch.tensor([m.lr for m in members], device=device)[:, None]).T)
        self.activation = ACTIVATIONS[activation]
        self.group_seeds = [seed for seed, _ in itertools.groupby(m.seed for m in members)]
        group_sizes = [len(list(run)) for _, run in itertools.groupby(m.seed for m in members)]
        self.blocks = _blocks(group_sizes)
        # member -> its group, to give each member its group's labels
        self.member_group = torch.arange(len(group_sizes)).repeat_interleave(torch.tensor(group_sizes)).to(device)
        inits = {seed: initial_parameters(sizes, seed) for seed in self.group_seeds}
        self.rules = [get_rule(m.method) for m in members]

        def stack(part: str, layer: int) -> Tensor:
            return torch.stack([getattr(inits[m.seed][layer], part) for m in members]).to(device, dtype)

        layers = range(len(sizes) - 1)
        self.weights = [stack("weight", l) for l in layers]  # (pop, out, in)
        self.biases = [stack("bias", l) for l in layers]  # (pop, out)
        self.feedback = [stack("feedback", l) for l in layers]  # (pop, out, in)
        # Members whose backward uses W itself keep B = W by a copy after every update (_sync_tracking).
        self.tracking = _contiguous_runs([i for i, r in enumerate(self.rules) if r.uses_weight])
        self._sync_tracking(layers)
        refreshing = sorted({r.name for r in self.rules if r.refresh is not None})
        self.refresh_groups = {
            name: np.array([i for i, r in enumerate(self.rules) if r.name == name]) for name in refreshing
        }
        self._init_rule_hooks(inits, decay, second_order)
        if self.lr_scale is not None and self.second_order is not None:
            # the two-pass step sends an unscaled signal down and scales each layer at its update; per-layer
            # lrs would need their own path through it, and no arm of the study asks for both
            raise ValueError("per-layer learning rates are not supported for so_ members")

    def forward(self, x: Tensor, shifts: dict[int, Tensor] | None = None) -> list[Tensor]:
        """Inputs of every layer, then the logits: [x, h_1, ..., h_{L-1}, logits].

        x: (groups, batch, in), one batch per data-order group, or (batch, in) shared by every member;
        logits (pop, batch, classes).
        """
        acts = [x]
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            if layer == 0 and x.dim() == 3:
                parts = [linear_forward(x[groups], w[members], b[members]) for members, groups in self.blocks]
                a = parts[0] if len(parts) == 1 else torch.cat(parts)
            else:
                a = linear_forward(acts[-1], w, b)  # (pop, batch, out)
            if shifts is not None and layer in shifts:
                a.sub_(shifts[layer])  # pass 2 of activity propagation: a - eps g1
            acts.append(self.activation.forward_(a) if layer < len(self.weights) - 1 else a)
        return acts

    def error_signals(self, acts: list[Tensor], output_error: Tensor, feedback: list[Tensor],
                      scale: float | Tensor = 1.0, lr: Tensor | None = None, scaled: bool = True,
                      direct: bool = True, replace: dict[int, Callable[[Tensor], Tensor]] | None = None) -> list[Tensor]:
        """delta_l = dL/da_l at every layer's pre-activation, sent down from the logits as
        scale * delta B through `feedback`.

        With lr (pop,), every member takes its optimizer step in place on the way down (W_l is updated
        only after its own feedback product is taken, so every gradient sees the pre-step weights).
        Under sgd, `output_error` must already be scaled by lr (the step fuses into the gradient GEMM),
        unless `scaled` is False. `direct`: DFA members' hidden layers get the output error through
        their D_l. `replace` (hidden layer -> function): the delta sent below that layer is the
        function of the plain delta there (activity propagation); the plain signal also continues
        down to the replaced layers below.
        """
        delta, plain = output_error, None  # plain: the unreplaced signal, where it differs from delta
        deltas = [delta]
        # sgd carries each layer's lr in its delta: going down a layer rescales it to the next layer's lr
        fused_lrs = lr is not None and self.optimizer is None and self.lr_scale is not None and scaled
        for layer in reversed(range(len(self.weights))):
            if layer:
                step = (self.lr_scale[layer - 1] / self.lr_scale[layer]).view(-1, 1, 1) if fused_lrs else 1.0
                # DFA's hidden delta comes from the output error, which carries the output layer's lr
                direct_step = (self.lr_scale[layer - 1] / self.lr_scale[-1]).view(-1, 1, 1) if fused_lrs else 1.0
                upstream = self._upstream(delta, feedback, layer, output_error, scale * step, direct,
                                          scale * direct_step)  # (pop, batch, in)
                plain_upstream = (None if plain is None else self._upstream(
                    plain, feedback, layer, output_error, scale * step, direct, scale * direct_step))
            if lr is not None:
                self._update(layer, delta, acts[layer], lr, scaled)
            if layer:
                delta = self.activation.backward(upstream, acts[layer])
                if plain is not None:
                    plain = self.activation.backward(plain_upstream, acts[layer])
                if replace and layer - 1 in replace:
                    signal = delta if plain is None else plain
                    delta = replace[layer - 1](signal)
                    plain = signal if any(h < layer - 1 for h in replace) else None
                deltas.insert(0, delta)
        return deltas

    def _upstream(self, delta: Tensor, feedback: list[Tensor], layer: int, output_error: Tensor,
                  scale: float | Tensor, direct: bool, direct_scale: float | Tensor) -> Tensor:
        upstream = feedback_grad_input(delta, feedback[layer], scale)
        if direct and self.direct is not None and layer < len(self.weights) - 1:
            # DFA: alpha e D_l, straight from the output error (the output layer's D is its FA matrix)
            rows = direct_scale if isinstance(direct_scale, float) else direct_scale[self.direct]
            upstream[self.direct] = feedback_grad_input(output_error[self.direct], self.direct_matrices[layer], rows)
        return upstream

    def _update(self, layer: int, delta: Tensor, x: Tensor, lr: Tensor, scaled: bool = True) -> None:
        """Every member's optimizer step on layer `layer` from its deltas (pop, batch, out) and input x
        (pop, batch, in), for the first layer one batch per data-order group (groups, batch, in)."""
        w, b, fb = self.weights[layer], self.biases[layer], self.feedback[layer]
        blocks = self.blocks if layer == 0 else [(slice(None), slice(None))]
        layer_lr = lr if self.lr_scale is None else lr * self.lr_scale[layer]
        if self.optimizer is None:  # sgd: the step lr * dL/da rides in the gradient GEMMs
            step = delta if scaled else delta * layer_lr.view(-1, 1, 1)
            coupled = self._coupled_signals(layer, step, x, self.decay * layer_lr)  # lr times each signal
            for members, groups in blocks:
                sgd_update_(w[members], b[members], step[members], x[groups])
            for index, grad, signal_w, signal_fb in coupled:
                w[index] -= signal_w - grad  # the fused update above has subtracted grad already
                fb[index] -= signal_fb
            return
        grads = [weight_grad(delta[members], x[groups]) for members, groups in blocks]
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        coupled = self._coupled_signals(layer, delta, x, self.decay * torch.ones_like(lr))
        if coupled:  # B takes its own optimizer step, as torch.optim does for a parameter
            grad_fb = torch.zeros_like(fb)  # a zero gradient moves no other member's B, in any optimizer
            for index, _, signal_w, signal_fb in coupled:
                grad[index], grad_fb[index] = signal_w, signal_fb
            self.optimizer.step_(2 * len(self.weights) + layer, fb, grad_fb, layer_lr)
        self.optimizer.step_(2 * layer, w, grad, layer_lr)
        self.optimizer.step_(2 * layer + 1, b, delta.sum(-2), layer_lr)

    def _coupled_signals(self, layer: int, delta: Tensor, x: Tensor, decay: Tensor) -> list[tuple]:
        """(members, grad_W, signal for W, signal for B) of each rule whose B is trained alongside W
        (Kolen-Pollack), from deltas and decay (pop,) that may carry each member's lr (the hook is linear)."""
        signals = []
        for name, index in self.coupled_groups.items():
            inputs = x.index_select(0, self.member_group[index]) if layer == 0 else x[index]
            grad = weight_grad(delta[index], inputs)
            w, fb = self.weights[layer][index], self.feedback[layer][index]
            signals.append((index, grad, *get_rule(name).coupled(grad, w, fb, decay[index].view(-1, 1, 1))))
        return signals

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        """One optimizer step of every member on its group's batch: x (groups, batch, in), y (groups, batch),
        lr (pop,). Returns the per-member loss before the step."""
        y = y.index_select(0, self.member_group)  # (pop, batch)
        self.steps += 1
        if self.second_order is not None and self.steps > self.second_order.warmup:
            loss = self._two_pass_step(x, y, lr)
        else:
            acts = self.forward(x)
            loss, log_probs = _cross_entropy(acts[-1], y)
            output_error = _output_error_(log_probs, y)
            if self.optimizer is None:  # sgd's step rides in the gradient GEMMs
                output_error.mul_((lr if self.lr_scale is None else lr * self.lr_scale[-1]).view(-1, 1, 1))
            self.error_signals(acts, output_error, self.feedback, self.feedback_scale, lr)
        # The first layer's B sends nothing down (no gradient goes to the data): complete_feedback()
        # brings it up to date for whatever reads it, which spares copying the largest weight every step.
        self._sync_tracking(range(1, len(self.weights)))
        return loss

    def _two_pass_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        """Activity propagation (soap.activity_propagation): g1, then the step from the perturbed pass."""
        settings = self.second_order
        acts = self.forward(x)
        loss, log_probs = _cross_entropy(acts[-1], y)
        g1 = self.error_signals(acts, _output_error_(log_probs, y), self.feedback, self.feedback_scale)
        scales = {h: perturbation_scale(settings.eta, g1[h]) for h in self.second_order_layers}
        acts = self.forward(x, shifts={h: g1[h] * scales[h] for h in self.second_order_layers})
        error = _output_error_(_cross_entropy(acts[-1], y)[1], y)

        def newton(h: int) -> Callable[[Tensor], Tensor]:
            def step(g2: Tensor) -> Tensor:
                n = newton_step(g1[h], g2, scales[h], settings.curvature_bias)
                self.soap_gains[h] = soap_gain(n, g2)
                return n
            return step

        replace = {h: newton(h) for h in self.second_order_layers}
        self.error_signals(acts, error, self.feedback, self.feedback_scale, lr, scaled=False, replace=replace)
        return loss

    def _init_rule_hooks(self, inits: dict, decay: float, second_order: ActivityPropagation | None) -> None:
        """State of the rules' generic hooks (soap.rules): B formed every step and its random matrices,
        B trained alongside W, direct feedback, activity propagation."""
        n_layers = len(self.sizes) - 1

        def members_where(test) -> list[int]:
            return [i for i, r in enumerate(self.rules) if test(r)]

        def by_name(test) -> dict[str, slice | Tensor]:
            # a slice where a rule's members are consecutive (the usual case): views, no gather/scatter
            names = sorted({r.name for r in self.rules if test(r)})
            chosen = {name: members_where(lambda r, n=name: r.name == n) for name in names}
            return {name: slice(index[0], index[-1] + 1) if index[-1] - index[0] == len(index) - 1
                    else torch.as_tensor(index, device=self.device) for name, index in chosen.items()}

        self.steps = 0
        self.decay = decay
        self.step_groups = by_name(lambda r: r.when == "step")
        self.step_seeds = {name: [m.seed for m in np.array(self.members, dtype=object)[_host(index)]]
                           for name, index in self.step_groups.items()}
        # frsf's R: the members' own FA matrices, kept apart from B
        self.fa_matrices = {name: [fb[index].clone() for fb in self.feedback]
                            for name, index in self.step_groups.items() if get_rule(name).random == "fa"}
        redrawing = {self.members[i].seed for i in members_where(lambda r: r.random == "redraw")}
        self.redraw_generators = {seed: generator(seed, "feedback_redraw") for seed in sorted(redrawing)}
        self.coupled_groups = by_name(lambda r: r.coupled is not None)
        direct = members_where(lambda r: r.direct)
        self.direct = torch.as_tensor(direct, device=self.device) if direct else None
        # D_l (classes, units_l) of the DFA members, for the inputs of layers 1 .. L-2
        self.direct_matrices = {
            l: torch.stack([inits[self.members[i].seed][l].direct for i in direct]).to(self.weights[l])
            for l in range(1, n_layers - 1)} if direct else {}
        second = {r.second_order for r in self.rules}
        if len(second) > 1:
            raise ValueError("so_ members and other members train in separate groups (see population_model)")
        self.second_order = (second_order or ActivityPropagation()) if second == {True} else None
        self.second_order_layers = self.second_order.hidden_layers(n_layers - 1) if self.second_order else ()
        # a captured step replays one fixed computation: the so_ warm-up switches from one to two passes
        self.capturable = self.second_order is None
        self.soap_gains = {h: torch.full((len(self.members),), math.nan, device=self.device, dtype=self.weights[0].dtype)
                           for h in self.second_order_layers}
        self._draw_step_randoms()
        self._form_step_feedback(range(n_layers))

    @torch.no_grad()
    def _draw_step_randoms(self) -> None:
        """R_t of the redrawing rules (brsf): one draw per seed, layer after layer, shared by that seed's
        members (as each alone draws them). Every layer is drawn every step, so the seed stream, and
        with it each run, stays the single layer's."""
        self.redraws = {seed: [draw_like_weight(tuple(w.shape[1:]), gen).to(w) for w in self.weights]
                        for seed, gen in self.redraw_generators.items()}

    @torch.no_grad()
    def _form_step_feedback(self, layers) -> None:
        """B = form(W, R) on `layers` for the rules formed every step, from the W that the next step uses."""
        for name, members in self.step_groups.items():
            rule = get_rule(name)
            for layer in layers:
                random = None
                if rule.random == "fa":
                    random = self.fa_matrices[name][layer]
                elif rule.random == "redraw":
                    random = torch.stack([self.redraws[seed][layer] for seed in self.step_seeds[name]])
                self.feedback[layer][members] = rule.form(self.weights[layer][members], random)

    @torch.no_grad()
    def complete_feedback(self) -> None:
        """Bring the first layer's B up to date. A training step never reads it (no error goes down to
        the data), so steps leave it stale: B = W is not copied for the rules that track W, and the
        every-step rules do not form it (for usf and frsf that is three quarters of their forming
        work). Anything that reads B calls this first."""
        self._sync_tracking([0])
        self._form_step_feedback([0])

    @torch.no_grad()
    def refresh(self, due: np.ndarray) -> None:
        """After each step: apply each periodic member's rule where `due` (bool per member) says its
        period elapsed, and form the B of every rule formed every step. Outside train_step, so a
        captured step (soap.step_graph) never replays brsf's draws."""
        for name, members in self.refresh_groups.items():
            chosen = members[due[members]]
            if chosen.size:
                index = torch.as_tensor(chosen, device=self.device)
                for w, fb in zip(self.weights, self.feedback):
                    fb[index] = get_rule(name).refresh(w[index])
        if self.step_groups:
            self._draw_step_randoms()
            self._form_step_feedback(range(1, len(self.weights)))  # the first layer's: complete_feedback()

    @torch.no_grad()
    def _sync_tracking(self, layers) -> None:
        for layer in layers:
            for members in self.tracking:
                self.feedback[layer][members] = self.weights[layer][members]

    @torch.no_grad()
    def freeze(self, members: Tensor) -> None:
        """Zero the parameters of diverged members so non-finite values never reach later arithmetic."""
        for tensor in [*self.weights, *self.biases, *self.feedback]:
            tensor[members] = 0.0
        if self.optimizer is not None:
            self.optimizer.freeze(members)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of every member on a shared set: (n, in), (n,) -> (pop,), (pop,)."""
        # chunks of at most ~64M activations, so large populations fit in device memory
        chunk = max(64, 2**26 // (len(self.members) * max(self.sizes[1:])))
        total_loss = torch.zeros(len(self.members), device=self.device)
        correct = torch.zeros(len(self.members), device=self.device)
        for start in range(0, len(y), chunk):
            xs, ys = x[start:start + chunk], y[start:start + chunk]
            logits = self.forward(xs)[-1]
            total_loss += _cross_entropy(logits, ys)[0] * len(ys)
            correct += (logits.argmax(-1) == ys).sum(1)
        return total_loss / len(y), correct / len(y)

    @torch.no_grad()
    def alignment(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per layer: angle(B, W); per hidden layer: cosine and norm ratio of the rule's error signal
        against BP's on the same batch and weights. x (groups, batch, in), y (groups, batch)."""
        self.complete_feedback()  # the only layer train_step leaves stale
        y = y.index_select(0, self.member_group)
        acts = self.forward(x)
        output_error = _output_error_(_cross_entropy(acts[-1], y)[1], y)
        rule = self.error_signals(acts, output_error, self.feedback, self.feedback_scale)
        bp = self.error_signals(acts, output_error, self.weights, direct=False)
        out = {}
        for layer, (w, fb) in enumerate(zip(self.weights, self.feedback)):
            out[f"angle_l{layer}"] = angle_degrees(fb, w)
            if self.direct is not None and layer < len(self.weights) - 1:
                out[f"angle_l{layer}"][self.direct] = math.nan  # DFA's D_l has no W of its shape here
        for layer in range(len(self.weights) - 1):  # hidden layers: the output layer's signal is exact
            out[f"cos_l{layer}"], out[f"norm_ratio_l{layer}"] = signal_agreement(rule[layer], bp[layer])
        for layer, gain in self.soap_gains.items():  # |n| / |g2| of the last two-pass step
            out[f"soap_gain_l{layer}"] = gain.clone()
        return out


def by_data_order(members: list[Member]) -> list[int]:
    """An order of the members (indices) that puts members sharing a seed side by side, and groups of
    equal size side by side, so the first layer runs as few batched GEMMs as possible."""
    counts = Counter(m.seed for m in members)
    return sorted(range(len(members)), key=lambda i: (counts[members[i].seed], members[i].seed, i))


def _blocks(group_sizes: list[int]) -> list[tuple[slice, slice]]:
    """Runs of consecutive groups of equal size, as (members, groups) slices: [2, 2, 1] ->
    [(members 0:4, groups 0:2), (members 4:5, groups 2:3)]."""
    blocks, member, group = [], 0, 0
    for size, run in itertools.groupby(group_sizes):
        count = len(list(run))
        blocks.append((slice(member, member + size * count), slice(group, group + count)))
        member, group = member + size * count, group + count
    return blocks


class PopulationGroups:
    """Members whose steps have different shapes (plain, so_'s two passes) as one PopulationMLP per
    shape, each batched, behind PopulationMLP's interface: per-member tensors in and out in the
    members' order; the training input holds each group's data-order batches one after the other."""

    def __init__(self, sizes: list[int], members: list[Member], activation: str, device: torch.device,
                 **hooks):
        self.members, self.device = members, device
        second = np.array([get_rule(m.method).second_order for m in members])
        self.indices = [np.flatnonzero(second == kind) for kind in (False, True)]
        self.groups = [PopulationMLP(sizes, [members[i] for i in index], activation, device, **hooks)
                       for index in self.indices]
        self._index = [torch.as_tensor(index, device=device) for index in self.indices]
        self.group_seeds = [seed for group in self.groups for seed in group.group_seeds]
        ends = np.cumsum([len(group.group_seeds) for group in self.groups])
        self._rows = [slice(end - len(group.group_seeds), end) for group, end in zip(self.groups, ends)]
        self.capturable = all(group.capturable for group in self.groups)

    def _join(self, parts: list[Tensor]) -> Tensor:
        out = torch.empty((len(self.members), *parts[0].shape[1:]), dtype=parts[0].dtype, device=self.device)
        for index, part in zip(self._index, parts):
            out[index] = part
        return out

    def train_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        return self._join([g.train_step(x[rows], y[rows], lr[index])
                           for g, rows, index in zip(self.groups, self._rows, self._index)])

    def refresh(self, due: np.ndarray) -> None:
        for group, index in zip(self.groups, self.indices):
            group.refresh(due[index])

    def freeze(self, members: Tensor) -> None:
        chosen = set(members.tolist())
        for group, index in zip(self.groups, self.indices):
            local = [i for i, member in enumerate(index) if member in chosen]
            if local:
                group.freeze(torch.as_tensor(local, device=self.device))

    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        losses, accuracies = zip(*(g.evaluate(x, y) for g in self.groups))
        return self._join(list(losses)), self._join(list(accuracies))

    def alignment(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        rows = [g.alignment(x[r], y[r]) for g, r in zip(self.groups, self._rows)]
        keys = list(dict.fromkeys(k for row in rows for k in row))  # so_ groups add soap_gain_l*
        return {k: self._join([row.get(k, torch.full((len(g.members),), math.nan, device=self.device))
                               for g, row in zip(self.groups, rows)]) for k in keys}


def population_model(sizes: list[int], members: list[Member], activation: str, device: torch.device,
                     **hooks) -> PopulationMLP | PopulationGroups:
    """One PopulationMLP, or one per step shape when plain and so_ members are mixed. `hooks`:
    PopulationMLP's keyword arguments (optimizer and its hyperparameters, decay, second_order)."""
    if len({get_rule(m.method).second_order for m in members}) > 1:
        return PopulationGroups(sizes, members, activation, device, **hooks)
    return PopulationMLP(sizes, members, activation, device, **hooks)


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


def _cross_entropy(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy per member (pop,) and the log-probabilities it came from.

    logits (pop, batch, classes); y (pop, batch), or (batch,) shared by every member.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, _targets(y, logits)).mean((-2, -1)), log_probs


def _output_error_(log_probs: Tensor, y: Tensor) -> Tensor:
    """dL/dlogits of each member's mean cross-entropy, (softmax - onehot) / batch, overwriting log_probs."""
    targets = _targets(y, log_probs)
    delta = log_probs.exp_()
    delta.scatter_add_(-1, targets, torch.full(targets.shape, -1.0, dtype=delta.dtype, device=delta.device))
    return delta.div_(log_probs.shape[-2])


def _targets(y: Tensor, logits: Tensor) -> Tensor:
    return y.expand(logits.shape[:-1]).unsqueeze(-1)  # (pop, batch, 1), for gather and scatter


@dataclass
class TrainResult:
    runs: pd.DataFrame  # one row per member (STUDY.md runs-table contract)
    curves: pd.DataFrame  # long table: run_id, examples, logged quantities
    meta: dict  # config, versions, device, wall time


def run_id(config: TrainConfig, member: Member) -> str:
    period = "" if member.refresh_period == config.refresh_period else f"-T{member.refresh_period}"
    scale = "" if member.feedback_scale == 1.0 else f"-a{member.feedback_scale:.6g}"
    optimizer = "" if config.optimizer == "sgd" else f"-{config.optimizer}"
    layers = "" if member.lr_scale is None else "-m" + "_".join(f"{m:.4g}" for m in member.lr_scale)
    return (f"{config.dataset}-{config.phase}-{member.method}-lr{member.lr:.6g}-s{member.seed}"
            f"{period}{scale}{layers}{optimizer}")


def _hyperparameters(config: TrainConfig) -> dict:
    return {"momentum": {"momentum": config.momentum},
            "adam": {"betas": tuple(config.adam_betas), "eps": config.adam_eps}}.get(config.optimizer, {})


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {"soap": soap.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__, "pandas": pd.__version__,
            "platform": platform.platform()}


def load_splits(config: TrainConfig) -> Splits:
    if config.prepared:
        return load_prepared(config.prepared)
    return load_dataset(config.dataset, config.data_root, download=config.download,
                        val_size=config.val_size, split_seed=config.split_seed)


def _epoch_orders(seeds: list[int], n: int, device: torch.device):
    """Yield, per epoch, each seed's permutation of the training set: (len(seeds), n)."""
    generators = [generator(seed, "data") for seed in seeds]
    while True:
        yield torch.stack([torch.randperm(n, generator=gen) for gen in generators]).to(device)


def train_population(config: TrainConfig, data: Splits | None = None, progress: bool = True,
                     capture: bool = False) -> TrainResult:
    """Train every member of `config.population()` together; return the runs and curves tables (runs
    in the config's order).

    capture: replay each SGD step from a CUDA graph on CUDA, so a large population is not bound by
    kernel launches (soap.step_graph; elsewhere the step runs with a graph's constraints, no faster).
    """
    started, wall_start = datetime.now(timezone.utc), time.perf_counter()
    device = resolve_device(config.device)
    data = (data or load_splits(config)).to(device)
    configured = config.population()
    placement = by_data_order(configured)  # the model's member i is configured[placement[i]]
    members = [configured[i] for i in placement]
    pop, batch = len(members), config.batch_size
    sizes = [data.input_dim, *config.hidden, data.num_classes]
    model = population_model(sizes, members, config.activation, device, optimizer=config.optimizer,
                             decay=config.kp_decay, second_order=config.second_order(), **_hyperparameters(config))
    lr = torch.tensor([m.lr for m in members], device=device, dtype=torch.float32)
    periods = np.array([m.refresh_period for m in members])
    divergence_loss = config.divergence_factor * math.log(data.num_classes)

    n_train = len(data.train_y)
    steps_per_epoch = n_train // batch  # the last partial batch is dropped: every step has `batch` examples
    total_steps = int(config.epochs * n_train) // batch
    if total_steps < 1:
        raise ConfigError(f"epochs={config.epochs} gives no full batch of {batch} from {n_train} examples")
    groups = len(model.group_seeds)
    orders = _epoch_orders(model.group_seeds, n_train, device)
    index = torch.empty(groups, batch, dtype=torch.long, device=device)  # the step's examples, per data order
    eval_x, eval_y = data.val_x[:config.eval_subset], data.val_y[:config.eval_subset]

    alive = torch.ones(pop, dtype=torch.bool, device=device)
    diverged_at = np.full(pop, np.nan)
    ema: Tensor | None = None  # smoothed training loss, from the first step's loss on
    train_log: list[tuple[int, Tensor, Tensor]] = []  # (examples, loss, ema) on device
    eval_log: list[tuple[int, dict[str, Tensor]]] = []

    def log_eval(examples: int, x: Tensor, y: Tensor, full: bool = False) -> None:
        val_loss, val_acc = model.evaluate(data.val_x, data.val_y) if full else model.evaluate(eval_x, eval_y)
        row = {"val_loss": val_loss, "val_acc": val_acc, **model.alignment(x, y)}
        eval_log.append((examples, {k: torch.where(alive, v, math.nan).cpu() for k, v in row.items()}))

    def gather(index: Tensor) -> tuple[Tensor, Tensor]:
        """One batch per data order: x (groups, batch, in), y (groups, batch)."""
        flat = index.flatten()  # index_select: ~3x faster than advanced indexing on CPU
        return (data.train_x.index_select(0, flat).view(groups, batch, -1),
                data.train_y.index_select(0, flat).view(groups, batch))

    def sgd_step(index: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, y = gather(index)
        return x, y, model.train_step(x, y, lr)  # the loss (pop,) is from before the step

    # Everything the step reads is updated in place (index, lr, parameters), as a CUDA graph requires.
    if capture and not model.capturable:
        log.warning("step capture is off: so_ members change their step's computation after the warm-up")
    run_step = StepGraph(sgd_step, index, lr, enabled=capture and model.capturable)

    bar = tqdm(total=total_steps * batch * pop, unit="ex", unit_scale=True, disable=not progress,
               desc=f"{config.dataset} {config.phase} x{pop}", mininterval=1.0 if sys.stderr.isatty() else 30.0,
               file=sys.stderr, dynamic_ncols=True)
    seen, loop_start, loop_cpu_start = 0, time.perf_counter(), time.process_time()
    for step in range(total_steps):
        offset = step % steps_per_epoch
        if offset == 0:
            order = next(orders)  # (groups, n_train)
        index.copy_(order[:, offset * batch:(offset + 1) * batch])
        if step == 0:
            log_eval(0, *gather(index))
        x, y, loss = run_step()  # outputs are overwritten by the next step (a graph's fixed buffers)

        before, seen = seen, seen + batch
        model.refresh(refresh_due(before, seen, periods))
        # NaN stays NaN: a member whose loss was ever non-finite is caught at the next log point
        ema = loss.clone() if ema is None else ema.mul_(config.ema_beta).add_(loss, alpha=1 - config.ema_beta)

        if refresh_due(before, seen, config.log_every) or step == total_steps - 1:
            bad = alive & ~(torch.isfinite(ema) & (ema < divergence_loss))
            if bad.any():  # one host sync per log point, not per step
                newly = bad.nonzero().flatten()
                diverged_at[newly.cpu().numpy()] = seen
                alive &= ~bad
                lr.masked_fill_(~alive, 0.0)
                model.freeze(newly)
                log.warning("diverged at %d examples: %s", seen, [run_id(config, members[i]) for i in newly.tolist()])
            train_log.append((seen, torch.where(alive, loss, math.nan), torch.where(alive, ema, math.nan)))
        if refresh_due(before, seen, config.eval_every) and step < total_steps - 1:
            log_eval(seen, x, y)
        bar.update(batch * pop)
    bar.close()
    loop_time, loop_cpu = time.perf_counter() - loop_start, time.process_time() - loop_cpu_start

    log_eval(seen, x, y, full=True)  # the curves' last point is the whole validation set
    val_loss, val_acc = eval_log[-1][1]["val_loss"], eval_log[-1][1]["val_acc"]
    test_loss, test_acc = model.evaluate(data.test_x, data.test_y)
    curves = _curves_table(config, members, train_log, eval_log)
    finals = {"final_train_loss": ema, "val_loss": val_loss, "val_acc": val_acc,
              "test_loss": test_loss, "test_acc": test_acc}
    finals = {k: torch.where(alive.cpu(), v.cpu(), math.nan).numpy() for k, v in finals.items()}
    runs = _runs_table(config, members, sizes, finals, diverged_at, seen, eval_log, curves)
    runs = runs.iloc[np.argsort(placement)].reset_index(drop=True)  # back to the config's order
    wall = time.perf_counter() - wall_start
    meta = {"config": config.to_dict(), "versions": versions(), "device": describe(device),
            "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
            "wall_time_s": wall, "train_loop_s": loop_time, "members": pop,
            # CPU seconds of the loop, all threads: on a machine shared with other work, a steadier
            # measure of the loop's cost than wall time (with one thread, where no thread waits spinning)
            "train_loop_cpu_s": loop_cpu,
            # throughput of the training loop itself (logging included; data loading and final tests not)
            "run_examples_per_s": seen * pop / loop_time}
    return TrainResult(runs, curves, meta)


def _curves_table(config, members, train_log, eval_log) -> pd.DataFrame:
    ids = [run_id(config, m) for m in members]
    pop = len(members)
    train = pd.DataFrame({
        "run_id": np.tile(ids, len(train_log)),
        "examples": np.repeat([e for e, _, _ in train_log], pop),
        "train_loss": torch.stack([l for _, l, _ in train_log]).cpu().numpy().ravel(),
        "train_loss_ema": torch.stack([m for _, _, m in train_log]).cpu().numpy().ravel(),
    })
    columns = list(eval_log[0][1])
    evals = pd.DataFrame({"run_id": np.tile(ids, len(eval_log)),
                          "examples": np.repeat([e for e, _ in eval_log], pop)})
    for column in columns:
        evals[column] = torch.stack([row[column] for _, row in eval_log]).numpy().ravel()
    curves = train.merge(evals, on=["run_id", "examples"], how="outer")
    return curves.sort_values(["run_id", "examples"], kind="stable").reset_index(drop=True)


def _runs_table(config, members, sizes, finals, diverged_at, seen, eval_log, curves) -> pd.DataFrame:
    hidden = len(sizes) - 2
    # (points, hidden layers, pop) -> a gain per member and hidden layer, and their geometric mean
    ratios = np.stack([[row[f"norm_ratio_l{l}"].numpy() for l in range(hidden)] for _, row in eval_log])
    layer_gains = np.array([[feedback_gain(ratios[:, l, p]) for l in range(hidden)] for p in range(len(members))])
    gains = np.array([feedback_gain(g) for g in layer_gains])
    layer_lrs = np.array([m.layer_lrs(len(sizes) - 1) for m in members]) / np.array([[m.lr] for m in members])
    runs = pd.DataFrame({
        "run_id": [run_id(config, m) for m in members],
        "phase": config.phase,
        "dataset": config.dataset,
        "method": [m.method for m in members],
        "seed": [m.seed for m in members],
        "lr": [m.lr for m in members],
        "feedback_gain": gains,
        "diverged": ~np.isnan(diverged_at),
        **finals,
    })
    # so_ runs: |n| / |g2| at the SOAP points, combined over points and log points like the feedback gain
    soap_keys = [key for key in eval_log[-1][1] if key.startswith("soap_gain_l")]
    soap = np.stack([[row[key].numpy() for key in soap_keys] for _, row in eval_log]) if soap_keys else None
    runs["soap_gain"] = [feedback_gain(soap[:, :, p]) if soap is not None else math.nan for p in range(len(members))]
    runs["effective_lr"] = effective_lr(runs)
    if config.target_loss is not None:
        hits = examples_to_target(curves, config.target_loss).set_index("run_id")
        runs["examples_to_target"] = hits.loc[runs["run_id"], "examples_to_target"].to_numpy()
        runs["reached_target"] = hits.loc[runs["run_id"], "reached_target"].to_numpy()
    else:
        runs["examples_to_target"], runs["reached_target"] = np.nan, False
    # forward-backward passes (over one batch) to the target: an so_ step after the warm-up costs two
    runs["two_pass_from"] = [config.soap_warmup * config.batch_size if get_rule(m.method).second_order else np.nan
                             for m in members]
    runs["passes_to_target"] = forward_backward_passes(runs["examples_to_target"], config.batch_size,
                                                       runs["two_pass_from"])
    runs["target_loss"] = np.nan if config.target_loss is None else config.target_loss
    runs["refresh_period"] = [m.refresh_period for m in members]
    runs["feedback_scale"] = [m.feedback_scale for m in members]
    runs["optimizer"] = config.optimizer
    # 1-based, input to output: hidden layer l's error drives weight layer l's step
    for l in range(hidden):
        runs[f"feedback_gain_l{l + 1}"] = layer_gains[:, l]
    for l in range(len(sizes) - 1):
        runs[f"lr_scale_l{l + 1}"] = layer_lrs[:, l]
    runs["diverged_at"] = diverged_at
    runs["examples_seen"] = seen
    runs["epochs"] = config.epochs
    runs["batch_size"] = config.batch_size
    runs["architecture"] = f"{'-'.join(map(str, sizes))} {config.activation}"
    return runs
