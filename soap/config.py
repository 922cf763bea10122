"""Training configuration: one dataclass, defaults with meanings and units, strict loading.

A config file is YAML with any subset of TrainConfig's fields; command-line overrides are `key=value`
with YAML values (`lrs=[0.01,0.1]`). Unknown keys and wrong types raise ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from soap.activity_propagation import ActivityPropagation
from soap.rules import KOLEN_POLLACK_DECAY, RULES


class ConfigError(ValueError):
    """A configuration value that is missing, unknown or of the wrong type."""


@dataclass(frozen=True)
class Member:
    """One run of a population: a method at a learning rate with a paired seed."""

    method: str
    lr: float
    seed: int
    refresh_period: int = 6400  # examples between feedback refreshes (sign, sign_scaled, stale_bp)
    feedback_scale: float = 1.0  # alpha: errors go down as alpha * grad_y B (bp's B = alpha W)


OPTIMIZERS = ("sgd", "momentum", "adam", "signsgd")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist"  # mnist | fashion_mnist | synthetic
    data_root: str = "data"  # torchvision root holding MNIST/raw/...
    download: bool = True  # download through torchvision when the files are missing
    prepared: str | None = None  # a file from `soap prepare-data`; replaces data_root when set
    val_size: int = 10_000  # validation examples split off the training set
    split_seed: int = 0  # seed of that split (fixed across the study)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # hidden layer widths
    activation: str = "tanh"
    batch_size: int = 64  # examples per SGD step
    epochs: float = 1.0  # passes over the training split; fractions allowed
    methods: list[str] = field(default_factory=lambda: ["bp", "fa"])
    lrs: list[float] = field(default_factory=lambda: [0.1])  # nominal SGD learning rates
    seeds: list[int] = field(default_factory=lambda: [0])
    # explicit [{method, lr, seed, refresh_period (optional)}]; replaces methods x lrs x seeds
    members: list[dict] | None = None
    refresh_period: int = 6400  # examples between feedback refreshes (sign, sign_scaled, stale_bp)
    feedback_scale: float = 1.0  # alpha of every member not given its own (see Member)
    optimizer: str = "sgd"  # sgd | momentum | adam | signsgd (W -= lr sign(grad_W), "Batch Manhattan")
    momentum: float = 0.9  # of the momentum optimizer (torch.optim.SGD's, no dampening)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's beta1, beta2
    adam_eps: float = 1e-8
    phase: str = "grid"  # grid | tuned | tune: recorded in the runs table
    log_every: int = 640  # examples between training-loss log points
    eval_every: int = 10_000  # examples between validation and alignment log points
    eval_subset: int = 1_000  # validation examples used at intermediate points (all at the end)
    ema_beta: float = 0.99  # smoothing of the logged training loss (per step)
    target_loss: float | None = None  # EMA training loss for examples_to_target; None: not computed
    divergence_factor: float = 10.0  # diverged when the EMA loss exceeds this x ln(num_classes)
    kp_decay: float = KOLEN_POLLACK_DECAY  # kolen_pollack's lambda: B - W shrinks by (1 - lr lambda) a step
    # so_ methods (soap.activity_propagation): activity step eta_ap / (batch * units) times g1, curvature
    # bias c, hidden layers carrying it (0 = first; None: all), plain steps before the first two-pass step
    soap_eta: float = ActivityPropagation.eta
    soap_curvature_bias: float = ActivityPropagation.curvature_bias
    soap_layers: list[int] | None = None
    soap_warmup: int = ActivityPropagation.warmup
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        checked = {key: _check_type(key, value, hints[key]) for key, value in values.items()}
        return cls(**checked)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ("batch_size", "refresh_period", "log_every", "eval_every", "eval_subset", "val_size")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if not 0 <= self.ema_beta < 1:
            raise ConfigError(f"ema_beta must be in [0, 1), got {self.ema_beta}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if len(self.adam_betas) != 2 or not all(0 <= beta < 1 for beta in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not self.adam_eps > 0:
            raise ConfigError(f"adam_eps must be positive, got {self.adam_eps}")
        if self.phase not in ("grid", "tuned", "tune"):
            raise ConfigError(f"phase must be grid, tuned or tune, got {self.phase!r}")
        from soap.nn import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")
        if any(width <= 0 for width in self.hidden):
            raise ConfigError(f"hidden widths must be positive, got {self.hidden}")
        if self.kp_decay < 0:
            raise ConfigError(f"kp_decay must be >= 0, got {self.kp_decay}")
        try:
            self.second_order().hidden_layers(len(self.hidden))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        members = self.population()
        if not members:
            raise ConfigError("the population is empty: give methods, lrs and seeds, or members")
        for member in members:
            if member.method not in RULES:
                raise ConfigError(f"unknown method {member.method!r}; known methods: {', '.join(RULES)}")
            if not member.lr > 0:
                raise ConfigError(f"learning rates must be positive, got {member.lr}")
            if member.refresh_period <= 0:
                raise ConfigError(f"refresh_period must be positive, got {member.refresh_period}")
            if not (math.isfinite(member.feedback_scale) and member.feedback_scale > 0):
                raise ConfigError(f"feedback_scale must be a positive number, got {member.feedback_scale}")

    def population(self) -> list[Member]:
        """The members to train, in a fixed order (methods x lrs x seeds, or the explicit list)."""
        if self.members is not None:
            try:
                return [Member(str(m["method"]), float(m["lr"]), int(m["seed"]),
                               int(m.get("refresh_period", self.refresh_period)),
                               float(m.get("feedback_scale", self.feedback_scale))) for m in self.members]
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"members: each entry needs method, lr and seed ({err})") from None
        return [Member(m, float(lr), int(s), self.refresh_period, self.feedback_scale)
                for m, lr, s in itertools.product(self.methods, self.lrs, self.seeds)]

    def second_order(self) -> ActivityPropagation:
        """The so_ methods' settings."""
        layers = None if self.soap_layers is None else tuple(self.soap_layers)
        return ActivityPropagation(self.soap_eta, self.soap_curvature_bias, layers, self.soap_warmup)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(key: str, value, hint):
    """Return value converted to the field's type (ints accepted for floats), or raise naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check_type(key, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(f"{key}[{i}]", item, item_hint) for i, item in enumerate(value)]
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")


def parse_overrides(overrides: list[str]) -> dict:
    """['epochs=2', 'lrs=[0.01, 0.1]'] -> {'epochs': 2, 'lrs': [0.01, 0.1]} (values parsed as YAML)."""
    parsed = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        parsed[key.strip()] = yaml.safe_load(raw)
    return parsed


def load_train_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
    values.update(parse_overrides(list(overrides)))
    return TrainConfig.from_dict(values)
