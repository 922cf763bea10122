"""The stacked model: P MLPs, one per member, as one batched computation with a hand-written backward.

Every member's parameters are stacked along a leading population dimension: weights[l] (pop, out, in),
biases[l] (pop, out), feedback[l] (pop, out, in). A step runs the layer maths of
`FeedbackLinearFunction` (soap.nn) on the stacks and updates every member with its own learning rate.
Members never mix: the loss is a sum of per-member means, so a member's gradients are exactly those it
would get trained alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from soap.activity_propagation import ActivityPropagation, newton_step, perturbation_scale, soap_gain
from soap.config import Member, check_step_rule
from soap.metrics import signal_agreement
from soap.nn import ACTIVATIONS, initial_parameters, linear_forward, sgd_update_, weight_grad
from soap.optim import StackedOptimizer
from soap.population.feedback import PopulationFeedback, SignalPath, unit_ratio
from soap.population.orders import DataOrders
from soap.population.step_rules import LayerSizes, step_rules
from soap.rules import KOLEN_POLLACK_DECAY


@dataclass(frozen=True)
class Step:
    """An optimizer step taken on the way down: lr (pop,); `fused`: under sgd the deltas already
    carry each member's lr (the step rides in the gradient GEMMs)."""

    lr: Tensor
    fused: bool


class PopulationMLP:
    """Stacked MLPs, one per member, with the members' feedback rules (`hooks`, soap.population.feedback).

    The backward pass is written out by hand: it needs the error signal of every layer anyway (for
    the alignment metrics), and it lets the SGD step fuse into the weight-gradient GEMM. It calls the
    same layer maths as FeedbackLinear (soap.nn), and tests hold it equal to autograd through that layer.

    The training input is one batch per data-order group (soap.population.orders), x (groups, batch, in);
    members sharing an order share their first layer's input: its forward and weight update read the
    order's batch in place, one batched product per order (soap.nn.member_inputs).

    optimizer: "sgd" (fused into the weight-gradient GEMM) or one of soap.optim's, with its
    hyperparameters as keywords (momentum, betas, eps).

    Members whose step rule is not their method (soap.population.step_rules, sgd only) send their
    method's direction at the step rule's per-layer sizes; the others pay nothing for it.
    """

    def __init__(self, sizes: list[int], members: list[Member], activation: str, device: torch.device,
                 optimizer: str = "sgd", decay: float = KOLEN_POLLACK_DECAY,
                 second_order: ActivityPropagation | None = None, dtype: torch.dtype = torch.float32,
                 weight_decay: float = 0.0, **hyperparameters):
        self.sizes, self.members, self.device = sizes, members, device
        for member in members:
            check_step_rule(member, optimizer)
        self.weight_decay = weight_decay
        self.optimizer = None if optimizer == "sgd" else StackedOptimizer(optimizer, weight_decay=weight_decay,
                                                                          **hyperparameters)
        scales = [m.feedback_scale for m in members]
        # alpha per member, (pop, 1, 1); a plain 1.0 when no member scales, which skips the product
        # (in the model's dtype: a float64 model's multipliers are not rounded to float32)
        self.feedback_scale = 1.0 if set(scales) == {1.0} else torch.tensor(scales, device=device,
                                                                             dtype=dtype).view(-1, 1, 1)
        # per-layer lr multipliers, [(pop,)] input to output; None when every member has one lr
        self.lr_scale = None
        if any(m.lr_scale is not None for m in members):
            layers = len(sizes) - 1
            table = torch.tensor([m.layer_lrs(layers) for m in members], device=device, dtype=dtype)
            nominal = torch.tensor([m.lr for m in members], device=device, dtype=dtype)
            self.lr_scale = list((table / nominal[:, None]).T)
        self.activation = ACTIVATIONS[activation]
        orders = DataOrders(members, device)
        self.group_seeds, self.blocks, self.member_group = orders.group_seeds, orders.blocks, orders.member_group
        inits = {seed: initial_parameters(sizes, seed) for seed in self.group_seeds}

        def stack(part: str, layer: int) -> Tensor:
            return torch.stack([getattr(inits[m.seed][layer], part) for m in members]).to(device, dtype)

        layers = range(len(sizes) - 1)
        self.weights = [stack("weight", l) for l in layers]  # (pop, out, in)
        self.biases = [stack("bias", l) for l in layers]  # (pop, out)
        self.feedback = [stack("feedback", l) for l in layers]  # (pop, out, in), kept by `hooks`
        self.hooks = PopulationFeedback(members, self.weights, self.feedback, inits, self.member_group, decay)
        self.step_rules = step_rules(members, self.weights, inits, self.member_group, decay)
        self.steps = 0
        second = {r.second_order for r in self.hooks.rules}
        if len(second) > 1:
            raise ValueError("so_ members and other members train in separate groups (see population_model)")
        self.second_order = (second_order or ActivityPropagation()) if second == {True} else None
        self.second_order_layers = self.second_order.hidden_layers(len(sizes) - 2) if self.second_order else ()
        # a captured step replays one fixed computation: the so_ warm-up switches from one to two passes
        self.capturable = self.second_order is None
        self.soap_gains = {h: torch.full((len(members),), math.nan, device=device, dtype=self.weights[0].dtype)
                           for h in self.second_order_layers}
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
            hidden = layer < len(self.weights) - 1
            # the GEMM writes the activation's scaled input (CPU tanh's 2a), sparing a pass over it
            scale = self.activation.input_scale(x.device) if hidden else 1.0
            if layer == 0 and x.dim() == 3:
                parts = [linear_forward(x[groups], w[members], b[members], scale) for members, groups in self.blocks]
                a = parts[0] if len(parts) == 1 else torch.cat(parts)
            else:
                a = linear_forward(acts[-1], w, b, scale)  # (pop, batch, out)
            if shifts is not None and layer in shifts:
                a.sub_(shifts[layer], alpha=scale)  # pass 2 of activity propagation: a - eps g1, scaled
            acts.append(self.activation.from_scaled_(a) if hidden else a)
        return acts

    def error_signals(self, acts: list[Tensor], output_error: Tensor, path: SignalPath, step: Step | None = None,
                      replace: dict[int, Callable[[Tensor], Tensor]] | None = None,
                      sizes: LayerSizes | None = None) -> list[Tensor]:
        """delta_l = dL/da_l (pop, batch, out_l) at every layer's pre-activation, sent down from the
        logits' `output_error` along `path` (the rules' B, or W for backprop's reference).

        With `step`, every member takes its optimizer step in place on the way down (W_l is updated
        only after its own feedback product is taken, so every gradient sees the pre-step weights).
        `replace` (hidden layer -> function): the delta sent below that layer is the function of the
        plain delta there (activity propagation); the plain signal also continues down to the replaced
        layers below. `sizes`: the step rules' members' hidden deltas are brought to their step rule's
        norms (soap.population.step_rules) before they update or go further down.
        """
        delta, plain = output_error, None  # plain: the unreplaced signal, where it differs from delta
        deltas = [delta]
        # sgd carries each layer's lr in its delta: going down a layer rescales it to the next layer's lr
        lr_ratio = self._lr_ratio if step is not None and step.fused and self.lr_scale is not None else unit_ratio
        for layer in reversed(range(len(self.weights))):
            if layer:
                upstream = path.upstream(delta, output_error, layer, lr_ratio)  # (pop, batch, in)
                plain_upstream = None if plain is None else path.upstream(plain, output_error, layer, lr_ratio)
            if step is not None:
                self._update(layer, delta, acts[layer], step)
            if layer:
                # upstream products are fresh: the derivative overwrites them, never h, which the
                # alignment's second pass down and the step rules read again
                delta = self.activation.backward_(upstream, acts[layer])
                if plain is not None:
                    plain = self.activation.backward_(plain_upstream, acts[layer])
                if replace and layer - 1 in replace:
                    signal = delta if plain is None else plain
                    delta = replace[layer - 1](signal)
                    plain = signal if any(h < layer - 1 for h in replace) else None
                if sizes is not None:
                    delta = sizes.rescale_(layer - 1, delta)
                deltas.insert(0, delta)
        return deltas

    def _lr_ratio(self, to_layer: int, from_layer: int) -> Tensor:
        return (self.lr_scale[to_layer] / self.lr_scale[from_layer]).view(-1, 1, 1)

    def _update(self, layer: int, delta: Tensor, x: Tensor, step: Step) -> None:
        """Every member's optimizer step on layer `layer` from its deltas (pop, batch, out) and input x
        (pop, batch, in), for the first layer one batch per data-order group (groups, batch, in)."""
        w, b, fb = self.weights[layer], self.biases[layer], self.feedback[layer]
        blocks = self.blocks if layer == 0 else [(slice(None), slice(None))]
        layer_lr = step.lr if self.lr_scale is None else step.lr * self.lr_scale[layer]
        if self.optimizer is None:  # sgd: the step lr * dL/da rides in the gradient GEMMs
            scaled = delta if step.fused else delta * layer_lr.view(-1, 1, 1)
            coupled = self.hooks.coupled_signals(layer, scaled, x, layer_lr)  # the signals carry each lr
            if self.weight_decay:  # p - lr (grad + wd p) = (1 - lr wd) p - lr grad; grads are pre-step
                _decay_(w, b, fb, coupled, layer_lr * self.weight_decay)
            for members, groups in blocks:
                sgd_update_(w[members], b[members], scaled[members], x[groups])
            coupled.after_sgd_(w, fb)
            return
        grads = [weight_grad(delta[members], x[groups]) for members, groups in blocks]
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        coupled = self.hooks.coupled_signals(layer, delta, x)
        grad_fb = coupled.gradients(grad, fb)
        if grad_fb is not None:  # B takes its own optimizer step, as torch.optim does for a parameter
            self.optimizer.step_(2 * len(self.weights) + layer, fb, grad_fb, coupled_lr(coupled, layer_lr))
        self.optimizer.step_(2 * layer, w, grad, layer_lr)
        self.optimizer.step_(2 * layer + 1, b, delta.sum(-2), layer_lr)

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        """One optimizer step of every member on its group's batch: x (groups, batch, in), y (groups, batch),
        lr (pop,). Returns the per-member loss before the step."""
        y = y.index_select(0, self.member_group)  # (pop, batch)
        self.steps += 1  # read only by so_'s warm-up, which is why so_ steps are never captured
        if self.second_order is not None and self.steps > self.second_order.warmup:
            loss = self._two_pass_step(x, y, lr)
        else:
            acts = self.forward(x)
            loss, log_probs = cross_entropy(acts[-1], y)
            output_error = output_error_(log_probs, y)  # (pop, batch, classes)
            if self.optimizer is None:  # sgd's step rides in the gradient GEMMs
                output_error.mul_((lr if self.lr_scale is None else lr * self.lr_scale[-1]).view(-1, 1, 1))
            self.error_signals(acts, output_error, self.hooks.path(scale=self.feedback_scale),
                               Step(lr, fused=self.optimizer is None), sizes=self._step_sizes(acts, output_error))
        # The first layer's B sends nothing down (no gradient goes to the data): complete_feedback()
        # brings it up to date for whatever reads it, which spares copying the largest weight every step.
        self.hooks.sync_tracking(range(1, len(self.weights)))
        return loss

    def _step_sizes(self, acts: list[Tensor], output_error: Tensor) -> LayerSizes | None:
        """The step rules' per-layer sizes on these states (before the step: q's B is the pre-step one)."""
        if self.step_rules is None:
            return None
        return self.step_rules.sizes(acts, output_error, self.activation, self.feedback_scale)

    def _two_pass_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        """Activity propagation (soap.activity_propagation): g1, then the step from the perturbed pass."""
        settings, path = self.second_order, self.hooks.path(scale=self.feedback_scale)
        acts = self.forward(x)
        loss, log_probs = cross_entropy(acts[-1], y)
        g1 = self.error_signals(acts, output_error_(log_probs, y), path)
        scales = {h: perturbation_scale(settings.eta, g1[h]) for h in self.second_order_layers}
        acts = self.forward(x, shifts={h: g1[h] * scales[h] for h in self.second_order_layers})
        error = output_error_(cross_entropy(acts[-1], y)[1], y)

        def newton(h: int) -> Callable[[Tensor], Tensor]:
            def step(g2: Tensor) -> Tensor:
                n = newton_step(g1[h], g2, scales[h], settings.curvature_bias)
                self.soap_gains[h] = soap_gain(n, g2)
                return n
            return step

        replace = {h: newton(h) for h in self.second_order_layers}
        self.error_signals(acts, error, path, Step(lr, fused=False), replace=replace)
        return loss

    @torch.no_grad()
    def complete_feedback(self) -> None:
        """Bring the first layer's B up to date (a step leaves it stale: soap.population.feedback)."""
        self.hooks.complete()

    @torch.no_grad()
    def refresh(self, due: np.ndarray) -> None:
        """After each step: the members' periodic and every-step B (PopulationFeedback.refresh), and
        their step rules' B."""
        self.hooks.refresh(due)
        if self.step_rules is not None:
            self.step_rules.refresh(due)

    @torch.no_grad()
    def freeze(self, members: Tensor) -> None:
        """Zero the parameters of diverged members so non-finite values never reach later arithmetic."""
        for tensor in [*self.weights, *self.biases, *self.feedback]:
            tensor[members] = 0.0
        if self.optimizer is not None:
            self.optimizer.freeze(members)
        if self.step_rules is not None:
            self.step_rules.freeze(members)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of every member on a shared set: (n, in), (n,) -> (pop,), (pop,)."""
        # at most ~64M activations a chunk, so large populations fit in device memory
        chunk = eval_chunk(x.device, len(self.members) * max(self.sizes[1:]))
        return evaluate_in_chunks(lambda xs: self.forward(xs)[-1], x, y, chunk)

    @torch.no_grad()
    def alignment(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per layer: angle(B, W); per hidden layer: cosine and norm ratio of the rule's error signal
        against BP's on the same batch and weights. x (groups, batch, in), y (groups, batch)."""
        self.complete_feedback()  # the only layer train_step leaves stale
        y = y.index_select(0, self.member_group)
        acts = self.forward(x)
        output_error = output_error_(cross_entropy(acts[-1], y)[1], y)
        # a step rule's member logs the signal it sends: its method's direction at its step rule's size
        rule = self.error_signals(acts, output_error, self.hooks.path(scale=self.feedback_scale),
                                  sizes=self._step_sizes(acts, output_error))
        bp = self.error_signals(acts, output_error, SignalPath(self.weights))
        out = {f"angle_l{layer}": angle for layer, angle in enumerate(self.hooks.angles())}
        for layer in range(len(self.weights) - 1):  # hidden layers: the output layer's signal is exact
            out[f"cos_l{layer}"], out[f"norm_ratio_l{layer}"] = signal_agreement(rule[layer], bp[layer])
        for layer, gain in self.soap_gains.items():  # |n| / |g2| of the last two-pass step
            out[f"soap_gain_l{layer}"] = gain.clone()
        return out


def coupled_lr(coupled, lr: Tensor) -> Tensor:
    """lr (pop,) for the coupled rules' members and 0 for the others, whose B is no parameter: a step
    at lr 0 leaves their B as it is under weight decay too."""
    mask = torch.zeros_like(lr)
    for index, *_ in coupled.signals:
        mask[index] = 1.0
    return lr * mask


@torch.no_grad()
def _decay_(weight: Tensor, bias: Tensor, feedback: Tensor, coupled, rate: Tensor) -> None:
    """Shrink W, b (and the coupled rules' B, a trained parameter) by 1 - lr * weight_decay per member."""
    weight.mul_((1 - rate).view(-1, 1, 1))
    bias.mul_((1 - rate).view(-1, 1))
    for index, *_ in coupled.signals:
        feedback[index] *= (1 - rate[index]).view(-1, 1, 1)


# On CPU each member's product of a chunk is its own small GEMM, fastest while its operands stay in
# cache: 40 bp members of 784-256-256-10 took 8.1 s on 10,000 examples in chunks of 6,553 (the memory
# bound) and 4.0 s in chunks of 512 (256: 4.0 s, 128: 4.4 s) on a 2-core AMD EPYC, one thread.
CPU_EVAL_CHUNK = 512


def eval_chunk(device: torch.device, activations_per_example: int) -> int:
    """Examples evaluated at once: ~64M activations (device memory), and on CPU at most CPU_EVAL_CHUNK."""
    chunk = max(16, 2**26 // activations_per_example)
    return min(chunk, CPU_EVAL_CHUNK) if device.type == "cpu" else chunk


def evaluate_in_chunks(logits_of: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, chunk: int
                       ) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy of every member, (pop,) each, from logits_of(x chunk) -> (pop, chunk, classes)."""
    total_loss = correct = None
    for start in range(0, len(y), chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        logits = logits_of(xs)
        loss, hits = cross_entropy(logits, ys)[0] * len(ys), (logits.argmax(-1) == ys).sum(1)
        total_loss, correct = (loss, hits) if total_loss is None else (total_loss + loss, correct + hits)
    return total_loss / len(y), correct / len(y)


def cross_entropy(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy per member (pop,) and the log-probabilities it came from.

    logits (pop, batch, classes); y (pop, batch), or (batch,) shared by every member.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, _targets(y, logits)).mean((-2, -1)), log_probs


def output_error_(log_probs: Tensor, y: Tensor) -> Tensor:
    """dL/dlogits of each member's mean cross-entropy, (softmax - onehot) / batch, overwriting log_probs."""
    targets = _targets(y, log_probs)
    delta = log_probs.exp_()
    delta.scatter_add_(-1, targets, torch.full(targets.shape, -1.0, dtype=delta.dtype, device=delta.device))
    return delta.div_(log_probs.shape[-2])


def _targets(y: Tensor, logits: Tensor) -> Tensor:
    return y.expand(logits.shape[:-1]).unsqueeze(-1)  # (pop, batch, 1), for gather and scatter
