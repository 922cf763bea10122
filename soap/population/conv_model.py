"""The stacked LeNet-5: P LeNets (soap.models.lenet5), one per member, as one batched computation with a
hand-written backward.

Parameters are stacked along a leading population dimension, kernels (pop, out, in, k, k). The rules
see every layer as the registry's (pop, out, fan_in) matrices (views of the kernels, as FeedbackConv2d
views its kernel), so PopulationFeedback keeps every member's B with the same hooks as for MLPs.

How each layer runs, chosen by measurement on a 2-core CPU (one thread, batch 64, P = 16, forward plus
backward; ms):

    layer                          grouped conv2d   im2col (unfold) + batched GEMM
    conv 1->6 on 32x32 (own input)      575               1608
    conv 1->6, shared input             255                 92
    conv 6->16 on 14x14                 285               1042
    conv 16->120 on 5x5                  77                 47

- conv 1 (members sharing a data order share its input): one unfold per data order, then one GEMM of
  the order's members' kernels side by side (Cin = 1 leaves a grouped conv little to batch);
- conv 2: one grouped conv2d, members as groups (weights (P*16, 6, 5, 5), maps (N, P*6, H, W)), the
  layout it reads and writes: unfold's columns would be 25x the maps, and folding them back costs more;
- conv 3 sees a 5x5 input with a 5x5 kernel: it is a dense layer on the flattened maps, so it and the
  two fc layers run soap.nn's stacked linear maths, (pop, batch, features).

A conv's error goes down as conv2d_input with B, its weight gradient is conv2d_weight (soap.conv's
maths, on the groups); max-pooling sends the error to the maxima (max_unpool2d of the pool's indices).
Under dfa the outputs of the four hidden blocks take e D_l (soap.population.feedback.DirectFeedback).
so_ rules are refused (soap.nn.FeedbackConv2d says why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from soap.config import Member
from soap.metrics import signal_agreement
from soap.models import BLOCK_OUTPUTS, lenet_initial_parameters, pad_to_32
from soap.nn import ACTIVATIONS, linear_forward, weight_grad
from soap.optim import StackedOptimizer
from soap.population.feedback import PopulationFeedback, SignalPath
from soap.population.model import (PopulationMLP, coupled_lr, cross_entropy, eval_chunk, evaluate_in_chunks,
                                   output_error_)
from soap.population.orders import DataOrders
from soap.rules import KOLEN_POLLACK_DECAY, get_rule

KERNEL = 5
CONVS = 2  # the layers run as convolutions; the third conv and the fc layers run as dense layers
LAYERS = 5


class PopulationLeNet:
    """Stacked LeNet-5s, one per member, with the members' feedback rules (`hooks`), behind
    PopulationMLP's interface (train_step, refresh, freeze, evaluate, alignment, complete_feedback).

    Inputs are MNIST-sized images, flat (.., 784) or (.., C, 28, 28): each batch is zero-padded to 32x32
    (soap.models.pad_to_32), as lenet5 is trained alone. The training input is one batch per
    data-order group, x (groups, batch, ...).

    optimizer: "sgd" or one of soap.optim's, with its hyperparameters as keywords.
    """

    def __init__(self, members: list[Member], activation: str, device: torch.device, optimizer: str = "sgd",
                 decay: float = KOLEN_POLLACK_DECAY, num_classes: int = 10, in_channels: int = 1,
                 dtype: torch.dtype = torch.float32, weight_decay: float = 0.0, **hyperparameters):
        second = sorted({m.method for m in members if get_rule(m.method).second_order})
        if second:
            raise ValueError(f"{', '.join(second)}: second-order activity propagation is defined for dense hidden "
                             "layers, not lenet5")
        stepped = sorted({f"{m.method}@{m.step_rule}" for m in members if m.step_rule != m.method})
        if stepped:
            raise ValueError(f"{', '.join(stepped)}: step rules are built for the MLP population, not lenet5")
        self.members, self.device, self.in_channels = members, device, in_channels
        self.sizes = [in_channels * 32 * 32, *BLOCK_OUTPUTS, num_classes]  # each layer's input, flattened
        self.weight_decay = weight_decay
        self.optimizer = None if optimizer == "sgd" else StackedOptimizer(optimizer, weight_decay=weight_decay,
                                                                          **hyperparameters)
        scales = [m.feedback_scale for m in members]
        self.feedback_scale = 1.0 if set(scales) == {1.0} else torch.tensor(scales, device=device).view(-1, 1, 1)
        self.lr_scale = torch.tensor([[s / m.lr for s in m.layer_lrs(LAYERS)] for m in members], device=device).T
        self.activation = ACTIVATIONS[activation]
        orders = DataOrders(members, device)
        self.group_seeds, self.blocks, self.member_group = orders.group_seeds, orders.blocks, orders.member_group
        inits = {seed: lenet_initial_parameters(seed, num_classes, in_channels) for seed in self.group_seeds}

        def stack(part: str, layer: int) -> Tensor:
            return torch.stack([getattr(inits[m.seed][layer], part) for m in members]).to(device, dtype)

        self.weights = [stack("weight", l) for l in range(LAYERS)]  # kernels (pop, out, in, k, k), fc (pop, out, in)
        self.biases = [stack("bias", l) for l in range(LAYERS)]
        self.feedback = [stack("feedback", l) for l in range(LAYERS)]
        self.weight_matrices = [_matrix(w) for w in self.weights]  # (pop, out, fan_in) views
        self.hooks = PopulationFeedback(members, self.weight_matrices, [_matrix(fb) for fb in self.feedback], inits,
                                        self.member_group, decay)
        self.step_rules = None  # (refused above) read by the refresh and freeze borrowed from PopulationMLP
        self.capturable = True

    # --- forward ----------------------------------------------------------------------------------------

    def forward(self, x: Tensor, blocks: list[tuple[slice, slice]] | None = None) -> dict:
        """Every tensor the backward reads: the first layer's columns per block, each block's
        activations before pooling (h), pooled maps and their indices, the dense inputs, and the logits.

        x: (groups, batch, ...) MNIST-sized images, one batch per data-order group (`blocks` pairs the
        groups with the members, default the population's own).
        """
        blocks = self.blocks if blocks is None else blocks
        groups, batch = x.shape[:2]
        images = pad_to_32(x.reshape(groups * batch, *x.shape[2:]))  # (groups*batch, C, 32, 32)
        cols = F.unfold(images, KERNEL)  # (groups*batch, C*25, 784): one unfold per data order
        cols = cols.view(groups, batch, *cols.shape[1:]).permute(0, 2, 1, 3).reshape(groups, cols.shape[1], -1)
        pop = len(self.members)
        parts = []
        for members, group in blocks:
            count = group.stop - group.start
            w = self.weight_matrices[0][members].reshape(count, -1, cols.shape[1])  # members side by side
            b = self.biases[0][members].reshape(count, -1, 1)
            a = torch.baddbmm(b, w, cols[group])  # (count, size*6, batch*784)
            parts.append(a.view(count, -1, batch, 28 * 28).permute(2, 0, 1, 3).reshape(batch, -1, 28, 28))
        a = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # (batch, pop*6, 28, 28)
        acts = {"cols": cols, "blocks": blocks, "h": [], "pooled": [], "indices": []}
        for layer in range(CONVS):
            if layer:
                w, b = self.weights[layer], self.biases[layer]
                a = F.conv2d(maps, w.flatten(0, 1), b.flatten(), groups=pop)
            h = self.activation.forward_(a)
            maps, indices = F.max_pool2d(h, 2, return_indices=True)
            acts["h"].append(h)
            acts["pooled"].append(maps)
            acts["indices"].append(indices)
        x = _members_first(maps, pop)  # (pop, batch, 16*5*5)
        dense = [x]
        for layer in range(CONVS, LAYERS):
            a = linear_forward(x, self.weight_matrices[layer], self.biases[layer])
            x = self.activation.forward_(a) if layer < LAYERS - 1 else a
            dense.append(x)
        acts["dense"] = dense  # [inputs of layers 2, 3, 4 (pop, batch, in)], logits (pop, batch, classes)
        return acts

    # --- backward ---------------------------------------------------------------------------------------

    def error_signals(self, acts: dict, output_error: Tensor, path: SignalPath) -> list[Tensor]:
        """delta_l = dL/da_l at every layer's pre-activation, sent down from the logits' `output_error`
        along `path` (the rules' B, or W for backprop's reference), over `path.matrices` (pop, out, fan_in)
        views: the conv layers' (batch, pop*out, H, W), the dense layers' (pop, batch, out)."""
        pop, dense = len(self.members), acts["dense"]
        delta = output_error
        deltas = [delta]
        for layer in range(LAYERS - 1, CONVS - 1, -1):  # the dense layers, down to the pooled maps
            upstream = path.upstream(delta, output_error, layer)
            if layer > CONVS:
                delta = self.activation.backward(upstream, dense[layer - CONVS])
                deltas.insert(0, delta)
        for layer in range(CONVS - 1, -1, -1):
            if layer < CONVS - 1:  # through the conv above: conv2d_input with B, members as groups
                kernels = path.matrices[layer + 1].view_as(self.weights[layer + 1]).flatten(0, 1)
                maps = torch.nn.grad.conv2d_input(acts["pooled"][layer].shape, kernels, delta, groups=pop)
                upstream = _members_first(maps, pop)
                upstream = upstream if _is_one(path.scale) else upstream.mul_(path.scale)
                if path.direct is not None:
                    upstream[path.direct.members] = path.direct.upstream(output_error, layer + 1, path.scale)
            pooled = acts["pooled"][layer]
            grad_pooled = _members_last(upstream, pooled.shape)
            grad_h = F.max_unpool2d(grad_pooled, acts["indices"][layer], 2, output_size=acts["h"][layer].shape[-2:])
            delta = self.activation.backward(grad_h, acts["h"][layer])
            deltas.insert(0, delta)
        return deltas

    def _gradients(self, acts: dict, deltas: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(grad_W as (pop, out, fan_in), grad_b (pop, out)) of every layer, summed over the batch."""
        pop = len(self.members)
        grads = []
        cols, batch = acts["cols"], deltas[0].shape[0]
        rows = []
        for members, group in acts["blocks"]:  # the first layer: one GEMM per data order, members side by side
            count = group.stop - group.start
            d = deltas[0][:, _channels(members, self.weights[0].shape[1], pop)]
            d = d.reshape(batch, count, -1, 28 * 28).permute(1, 2, 0, 3).reshape(count, -1, batch * 28 * 28)
            rows.append(torch.bmm(d, cols[group].mT).view(-1, *self.weight_matrices[0].shape[1:]))
        grads.append((rows[0] if len(rows) == 1 else torch.cat(rows), deltas[0].sum((0, 2, 3)).view(pop, -1)))
        for layer in range(1, CONVS):
            grad = torch.nn.grad.conv2d_weight(acts["pooled"][layer - 1], self.weights[layer].flatten(0, 1).shape,
                                               deltas[layer], groups=pop)
            grads.append((grad.view_as(self.weight_matrices[layer]), deltas[layer].sum((0, 2, 3)).view(pop, -1)))
        for layer in range(CONVS, LAYERS):
            grads.append((weight_grad(deltas[layer], acts["dense"][layer - CONVS]), deltas[layer].sum(-2)))
        return grads

    def _step(self, slot: int, param: Tensor, grad: Tensor, lr: Tensor) -> None:
        if self.optimizer is None:
            if self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            param.sub_(grad.mul_(lr.view(-1, *[1] * (param.dim() - 1))))
        else:
            self.optimizer.step_(slot, param, grad, lr)

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor, lr: Tensor) -> Tensor:
        """One optimizer step of every member on its group's batch: x (groups, batch, ...), y (groups, batch),
        lr (pop,). Returns the per-member loss before the step."""
        y = y.index_select(0, self.member_group)
        acts = self.forward(x)
        loss, log_probs = cross_entropy(acts["dense"][-1], y)
        deltas = self.error_signals(acts, output_error_(log_probs, y), self.hooks.path(scale=self.feedback_scale))
        grads = self._gradients(acts, deltas)  # every gradient from the pre-step weights
        for layer, (grad_w, grad_b) in enumerate(grads):
            layer_lr = lr * self.lr_scale[layer]
            # kolen_pollack: both signals from grad_W (the hook is the registry's; decay not lr-scaled here)
            coupled = self.hooks.coupled_signals(layer, None, None, grad=grad_w)
            grad_fb = coupled.gradients(grad_w, self.hooks.matrices[layer])
            if grad_fb is not None:
                self._step(2 * LAYERS + layer, self.hooks.matrices[layer], grad_fb, coupled_lr(coupled, layer_lr))
            self._step(2 * layer, self.weight_matrices[layer], grad_w, layer_lr)
            self._step(2 * layer + 1, self.biases[layer], grad_b, layer_lr)
        self.hooks.sync_tracking(range(1, LAYERS))  # the first layer's B: complete_feedback()
        return loss

    # --- the rest of PopulationMLP's interface -----------------------------------------------------------

    # PopulationMLP's own: they read only the hooks, the parameter stacks and the optimizer, which this
    # model holds under the same names
    complete_feedback = PopulationMLP.complete_feedback
    refresh = PopulationMLP.refresh
    freeze = PopulationMLP.freeze

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of every member on a shared set: (n, ...), (n,) -> (pop,), (pop,)."""
        every = [(slice(0, len(self.members)), slice(0, 1))]  # one input shared by every member
        # the first layer's maps dominate the memory (a quarter of the MLP's activation budget)
        chunk = eval_chunk(x.device, 4 * len(self.members) * 6 * 28 * 28)
        return evaluate_in_chunks(lambda xs: self.forward(xs.unsqueeze(0), every)["dense"][-1], x, y, chunk)

    @torch.no_grad()
    def alignment(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per layer: angle(B, W) of the flattened kernels; per hidden layer: cosine and norm ratio of the
        rule's error signal against BP's on the same batch and weights."""
        self.complete_feedback()
        y = y.index_select(0, self.member_group)
        acts = self.forward(x)
        output_error = output_error_(cross_entropy(acts["dense"][-1], y)[1], y)
        rule = self.error_signals(acts, output_error, self.hooks.path(scale=self.feedback_scale))
        bp = self.error_signals(acts, output_error, SignalPath(self.weight_matrices))
        pop = len(self.members)
        out = {f"angle_l{layer}": angle for layer, angle in enumerate(self.hooks.angles())}
        for layer in range(LAYERS - 1):
            rule_delta, bp_delta = rule[layer], bp[layer]
            if layer < CONVS:
                rule_delta, bp_delta = _members_first(rule_delta, pop), _members_first(bp_delta, pop)
            out[f"cos_l{layer}"], out[f"norm_ratio_l{layer}"] = signal_agreement(rule_delta, bp_delta)
        return out


def _matrix(stack: Tensor) -> Tensor:
    """(pop, out, ...) -> (pop, out, fan_in), a view: the registry's matrix of every member's layer."""
    return stack.view(stack.shape[0], stack.shape[1], -1)


def _members_first(maps: Tensor, pop: int) -> Tensor:
    """(batch, pop*C, H, W) -> (pop, batch, C*H*W): the maps as each member's flat features."""
    return maps.reshape(maps.shape[0], pop, -1).transpose(0, 1).contiguous()


def _members_last(features: Tensor, shape: torch.Size) -> Tensor:
    """(pop, batch, C*H*W) -> (batch, pop*C, H, W) of `shape`, _members_first's inverse."""
    return features.transpose(0, 1).reshape(shape)


def _channels(members: slice, channels: int, pop: int) -> slice:
    start, stop, _ = members.indices(pop)
    return slice(start * channels, stop * channels)


def _is_one(scale) -> bool:
    return isinstance(scale, float) and scale == 1.0

