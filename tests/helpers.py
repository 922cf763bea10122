"""Shared test helpers: the synthetic data and configs of the trainer tests, training a population, and
training one run the conventional way (soap.models.mlp, torch.optim, autograd) to compare it against,
and a trainer that kills its process (a tuning job killed mid-training)."""

import os
import signal
from functools import partial

import torch
import torch.nn.functional as F

from soap.config import TrainConfig
from soap.data import synthetic_dataset
from soap.models import mlp
from soap.nn import FeedbackLinear
from soap.population import train_population
from soap.rules import KOLEN_POLLACK_DECAY
from soap.seeding import generator

# The trainer tests' device: the CPU, or another (SOAP_TEST_DEVICE=cuda: benchmarks/gpu_check.py runs the
# population tests on a GPU with it)
DEVICE = os.environ.get("SOAP_TEST_DEVICE", "cpu")
DATA = synthetic_dataset(n_train=960, n_val=256, n_test=256, dim=12, num_classes=3, seed=5)
# For sign-of-gradient steps: with sign(W) feedback at the output, a hidden unit whose column of signs
# is constant gets an error that sums softmax - onehot over classes, exactly zero, so sign() of it is a
# coin flip on rounding. Likely with 3 classes (1 column in 4), rare with 10 (1 in 512).
DATA10 = synthetic_dataset(n_train=960, n_val=256, n_test=256, dim=12, num_classes=10, seed=5)
SIZES = [12, 16, 16, 3]  # DATA's network
# the plain rules' population
PLAIN = dict(dataset="synthetic", hidden=[16, 16], batch_size=48, epochs=2.5, refresh_period=500,
             log_every=96, eval_every=480, eval_subset=128, device=DEVICE)
# the newer rules' population: a decay and so_ settings that make their effects visible in a short run
RULES_BASE = dict(dataset="synthetic", hidden=[16, 16], batch_size=48, epochs=1.5, refresh_period=500,
             log_every=96, eval_every=480, eval_subset=128, device=DEVICE, kp_decay=0.05,
             soap_eta=20.0, soap_curvature_bias=1e-6, soap_warmup=3)
NEW_RULES = ["usf", "frsf", "brsf", "kolen_pollack", "dfa"]

# a tiny network and batch for the single-model tests
TINY_SIZES = [6, 5, 4, 3]
_TINY = torch.Generator().manual_seed(11)
TINY_X = torch.randn(8, 6, generator=_TINY)
TINY_Y = torch.randint(0, 3, (8,), generator=_TINY)


def train(data=DATA, base=PLAIN, **overrides):
    return train_population(TrainConfig.from_dict({**base, **overrides}), data, progress=False)


class SignSGD(torch.optim.SGD):
    """W -= lr sign(grad): plain SGD on the gradient's sign (torch.optim lacks it)."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                param.grad.sign_()
        super().step()


def reference_run(method: str, lr: float, seed: int, base: dict = PLAIN, data=DATA, optimizer: str = "sgd",
                  feedback_scale: float = 1.0, layer_lrs: list[float] | None = None) -> tuple[float, float]:
    """One run of `base`'s schedule trained the conventional way: soap.models.mlp, a torch.optim optimizer
    over model.parameters() (kolen_pollack's B among them), autograd. layer_lrs: one lr per layer, as
    torch.optim param groups. Returns (validation loss, test accuracy)."""
    sizes = [data.train_x.shape[1], *base["hidden"], data.num_classes]
    model = mlp(sizes, method, seed=seed, decay=base.get("kp_decay", KOLEN_POLLACK_DECAY),
                feedback_scale=feedback_scale)
    linears = [m for m in model.modules() if isinstance(m, FeedbackLinear)]
    groups = [{"params": list(layer.parameters()), "lr": layer_lr}
              for layer, layer_lr in zip(linears, layer_lrs or [lr] * len(linears))]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = {"sgd": lambda: torch.optim.SGD(groups, lr=lr),
                 "momentum": lambda: torch.optim.SGD(groups, lr=lr, momentum=0.9),
                 "adam": lambda: torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8),
                 "signsgd": lambda: SignSGD(groups, lr=lr)}[optimizer]()
    order_gen, batch, period = generator(seed, "data"), base["batch_size"], base["refresh_period"]
    n = len(data.train_y)
    seen = 0
    for step in range(int(base["epochs"] * n) // batch):
        offset = step % (n // batch)
        if offset == 0:
            order = torch.randperm(n, generator=order_gen)
        index = order[offset * batch:(offset + 1) * batch]
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x[index]), data.train_y[index]).backward()
        optimizer.step()
        seen += batch
        if seen // period != (seen - batch) // period:
            for layer in model.modules():
                if isinstance(layer, FeedbackLinear):
                    layer.refresh_feedback()
    model.eval()
    with torch.no_grad():
        val = F.cross_entropy(model(data.val_x), data.val_y).item()
        test_acc = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    return val, test_acc


train_rules = partial(train, base=RULES_BASE)
reference_rules = partial(reference_run, base=RULES_BASE)


def die_on_training(n: int) -> None:
    """Make this process's population trainer SIGKILL the process as it starts its n-th population."""
    import soap.population

    train, calls = soap.population.train_population, []

    def dying(config, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return train(config, **kwargs)

    soap.population.train_population = dying
