"""lenet5: layout, parameter count, seed streams, DFA's signals by hand, and a short training run on MNIST."""

import math

import pytest
import torch
import torch.nn.functional as F

from soap.nn import FeedbackConv2d
from soap.data import DATASETS, load_dataset
from soap.models import LeNet5, lenet5, pad_to_32
from soap.nn import FeedbackLinear
from soap.rules import RULES
from soap.seeding import stream_seed

PLAIN_RULES = [name for name, rule in RULES.items() if not rule.second_order]
GEN = torch.Generator().manual_seed(13)
IMAGES = torch.randn(3, 1, 32, 32, generator=GEN)
LABELS = torch.tensor([3, 0, 9])


def test_pad_to_32_adds_a_two_pixel_border_of_the_fill_value():
    flat = torch.randn(4, 784, generator=GEN)
    padded = pad_to_32(flat, fill=-0.5)
    assert padded.shape == (4, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], flat.view(4, 1, 28, 28))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(padded[:, :, border] == -0.5)
    assert pad_to_32(torch.zeros(2, 3, 28, 28)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"pad_to_32 takes \(N, 784\) or \(N, C, 28, 28\) images, got shape \(4, 783\)"):
        pad_to_32(torch.zeros(4, 783))


@pytest.mark.parametrize("rule", PLAIN_RULES)
def test_output_shapes_for_every_rule(rule):
    assert lenet5(rule, seed=0)(IMAGES).shape == (3, 10)
    colour = lenet5(rule, seed=0, num_classes=7, in_channels=3, activation="tanh")
    assert colour(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_layout_and_parameter_count_by_hand():
    model = lenet5("fa", seed=0)
    layers = model.feedback_layers()
    assert [type(layer) for layer in layers] == [FeedbackConv2d] * 3 + [FeedbackLinear] * 2
    assert [tuple(layer.weight.shape) for layer in layers] == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 16, 5, 5),
                                                               (84, 120), (10, 84)]
    # weights + biases: 6*25+6, 16*6*25+16, 120*16*25+120, 84*120+84, 10*84+10
    hand = 156 + 2_416 + 48_120 + 10_164 + 850
    assert hand == 61_706
    assert sum(p.numel() for p in model.parameters()) == hand
    # Kolen-Pollack also trains each layer's B, one per weight: 150 + 2,400 + 48,000 + 10,080 + 840
    assert sum(p.numel() for p in lenet5("kolen_pollack").parameters()) == hand + 61_470


def test_a_seed_gives_every_rule_the_same_weights_and_fa_matrices_from_its_streams():
    seed = 3
    models = {rule: lenet5(rule, seed=seed) for rule in PLAIN_RULES}
    again = lenet5("brsf", seed=seed).state_dict()
    for name, tensor in models["brsf"].state_dict().items():
        assert torch.equal(tensor, again[name]), name
    # the first conv's W, then b, come first in the init stream, drawn as a (6, 25) matrix like nn.Linear's
    init = torch.Generator().manual_seed(stream_seed(seed, "init"))
    weight = torch.empty(6, 25).uniform_(-0.2, 0.2, generator=init)
    bias = torch.empty(6).uniform_(-0.2, 0.2, generator=init)
    first = models["bp"].feedback_layers()[0]
    assert torch.equal(first.weight, weight.view(6, 1, 5, 5)) and torch.equal(first.bias, bias)
    fa = torch.empty(6, 25).uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(stream_seed(seed, "feedback")))
    assert torch.equal(models["fa"].feedback_layers()[0].feedback, fa.view(6, 1, 5, 5))
    for rule, model in models.items():
        for layer, reference in zip(model.feedback_layers(), models["fa"].feedback_layers()):
            assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias), rule
            if not layer.rule.uses_weight:  # fa, dfa, kolen_pollack, the periodic and step rules' FA matrix
                assert torch.equal(layer.feedback, reference.feedback), rule
    other = lenet5("fa", seed=seed + 1).feedback_layers()
    assert not torch.equal(other[0].weight, first.weight)
    assert not torch.equal(other[0].feedback, fa.view(6, 1, 5, 5))


def test_brsf_redraws_are_reproducible_from_the_seed():
    feedback = []
    for _ in range(2):
        model = lenet5("brsf", seed=5)
        model(IMAGES)
        model(IMAGES)
        feedback.append([layer.feedback.clone() for layer in model.feedback_layers()])
    assert all(torch.equal(a, b) for a, b in zip(*feedback))
    first = lenet5("brsf", seed=5)
    first(IMAGES)
    assert not torch.equal(first.feedback_layers()[1].feedback.abs(), feedback[0][1].abs())  # a second draw


def test_refresh_feedback_refreshes_every_layer():
    model = lenet5("sign", seed=1)
    model.refresh_feedback()
    for layer in model.feedback_layers():
        assert torch.equal(layer.feedback, torch.sign(layer.weight))


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_dfa_signals_by_hand(alpha):
    """Each hidden block's output h_l gets alpha e D_l; within a block the error passes through the
    pooling (to each window's maximum) and f'(a) = [a > 0] to the conv, and no error crosses blocks."""
    model = lenet5("dfa", seed=4, feedback_scale=alpha).double()
    x, labels = IMAGES.double(), LABELS
    F.cross_entropy(model(x), labels).backward()

    conv1, conv2, conv3, fc1, fc2 = model.feedback_layers()
    d = model.direct_matrices()
    assert [tuple(m.shape) for m in d] == [(10, 6 * 14 * 14), (10, 16 * 5 * 5), (10, 120), (10, 84)]
    assert d[-1] is fc2.feedback  # the top hidden block's D is the output layer's FA matrix
    assert d[0].abs().max() <= 1 / math.sqrt(6 * 14 * 14)  # drawn like a (10, 1176) weight
    with torch.no_grad():  # the forward pass, by hand
        a1 = F.conv2d(x, conv1.weight, conv1.bias)
        h1, where1 = F.max_pool2d(torch.relu(a1), 2, return_indices=True)
        a2 = F.conv2d(h1, conv2.weight, conv2.bias)
        h2, where2 = F.max_pool2d(torch.relu(a2), 2, return_indices=True)
        a3 = F.conv2d(h2, conv3.weight, conv3.bias)
        h3 = torch.relu(a3).flatten(1)
        a4 = h3 @ fc1.weight.T + fc1.bias
        h4 = torch.relu(a4)
        logits = h4 @ fc2.weight.T + fc2.bias
    e = (torch.softmax(logits, 1) - F.one_hot(labels, 10)) / len(labels)

    def unpool(signal, where, like):  # max-pool's backward: each window's signal to its maximum
        return torch.zeros_like(like).flatten(2).scatter_(2, where.flatten(2), signal.flatten(2)).view_as(like)

    delta1 = (a1 > 0) * unpool((alpha * e @ d[0]).view_as(h1), where1, a1)
    delta2 = (a2 > 0) * unpool((alpha * e @ d[1]).view_as(h2), where2, a2)
    delta3 = (a3 > 0) * (alpha * e @ d[2]).view_as(a3)
    delta4 = (a4 > 0) * (alpha * e @ d[3])
    tol = dict(rtol=1e-10, atol=1e-12)  # float64; each value sums at most 3 * 28 * 28 products
    for layer, delta, inputs in [(conv1, delta1, x), (conv2, delta2, h1), (conv3, delta3, h2)]:
        grad_w = torch.nn.grad.conv2d_weight(inputs, layer.weight.shape, delta)
        torch.testing.assert_close(layer.weight.grad, grad_w, **tol)
        torch.testing.assert_close(layer.bias.grad, delta.sum((0, 2, 3)), **tol)
    for layer, delta, inputs in [(fc1, delta4, h3), (fc2, e, h4)]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inputs, **tol)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0), **tol)

    # paired with fa at the same seed: the output layer's (true) and the top hidden layer's gradients agree
    fa = lenet5("fa", seed=4, feedback_scale=alpha).double()
    F.cross_entropy(fa(x), labels).backward()
    for dfa_layer, fa_layer in zip(model.feedback_layers()[3:], fa.feedback_layers()[3:]):
        torch.testing.assert_close(dfa_layer.weight.grad, fa_layer.weight.grad, **tol)


@pytest.mark.parametrize("rule", [name for name, rule in RULES.items() if rule.second_order])
def test_second_order_rules_are_refused(rule):
    with pytest.raises(ValueError, match=f"^{rule}: second-order activity propagation is defined for dense hidden "
                                         "layers, not FeedbackConv2d$"):
        lenet5(rule)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown activation 'gelu'; known: tanh, sigmoid, relu"):
        lenet5("fa", activation="gelu")
    with pytest.raises(ValueError, match=r"lenet5 takes \(N, 1, 32, 32\) inputs, got shape \(2, 1, 28, 28\); pad"):
        lenet5("fa")(torch.zeros(2, 1, 28, 28))


@pytest.fixture(scope="module")
def mnist_512(data_root):
    splits = load_dataset("mnist", data_root, download=False)
    spec = DATASETS["mnist"]
    # black borders: the raw images' background, -mean/std after soap.data's normalisation
    return pad_to_32(splits.train_x[:512], fill=-spec.mean / spec.std), splits.train_y[:512]


@pytest.fixture
def one_thread():
    """Small convolutions on a shared 2-core machine run ~10x faster on one thread than on two, which
    wait on each other whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def first_layer_grad_norm(model: LeNet5, x, y) -> float:
    model.refresh_feedback()
    F.cross_entropy(model(x), y).backward()
    return model.feedback_layers()[0].weight.grad.norm().item()


@pytest.mark.slow
@pytest.mark.parametrize("rule", PLAIN_RULES)
def test_thirty_sgd_steps_on_real_mnist_reduce_the_training_loss(rule, mnist_512, one_thread):
    """SGD with momentum 0.9, batch 32, periodic rules refreshed before steps 0, 10 and 20.

    Each rule's lr makes the first layer's first gradient as long as bp's at lr 0.03: unscaled sign
    feedback reaches the first conv amplified by about 2e5 at initialisation (1/mean|W| per layer above
    it, compounded over four layers), so any one lr that trains bp makes sign diverge. bp learns at 0.03
    (2.30 -> 1.6 here); the other rules' ratios are 0.5 to 10.
    """
    x, y = mnist_512
    lr = 0.03 * first_layer_grad_norm(lenet5("bp", seed=0), x[:32], y[:32]) / first_layer_grad_norm(
        lenet5(rule, seed=0), x[:32], y[:32])
    model = lenet5(rule, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    for step in range(30):
        if step % 10 == 0:
            model.refresh_feedback()
        batch = slice(32 * step % 512, 32 * step % 512 + 32)
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < before, f"{rule} at lr {lr:.3g}: training loss {before:.4f} -> {after:.4f}"
