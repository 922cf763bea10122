"""Training configuration: one dataclass, the single definition of every training key.

Each TrainConfig field carries its default, its meaning and its JSON-schema constraints. The JSON schema
that checks a training config (`train_schema()`) and the `train` block of the study config's schema
(soap/schemas/config.schema.yaml, see soap.pipeline) are generated from these fields, so a default or a
limit lives in exactly one place. A config file is YAML with any subset of the fields; command-line
overrides are `key=value` with YAML values (`lrs=[0.01,0.1]`). Unknown keys and invalid values raise
ConfigError naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from soap.rules import KOLEN_POLLACK_DECAY, RULES, SECOND_ORDER_PREFIX, get_rule


class ConfigError(ValueError):
    """A configuration value that is missing, unknown or of the wrong type."""


DATA_ROOT_ENV = "SOAP_DATA_ROOT"


def data_root(configured: str | Path) -> str:
    """The data root every command reads: $SOAP_DATA_ROOT when set (machines without internet keep
    MNIST elsewhere), else the configured one."""
    return os.environ.get(DATA_ROOT_ENV) or str(configured)


# The hidden nonlinearities: the keys of soap.nn.ACTIVATIONS, named here because config sits below the
# network modules (tests/test_config.py holds the two equal).
ACTIVATIONS = ("tanh", "sigmoid", "relu")
# The networks a population trains (soap.population.population_model builds each).
ARCHITECTURES = ("mlp", "lenet5")


@dataclass(frozen=True)
class ActivityPropagation:
    """Settings of the so_ methods (the original: eta 1.0 with SGD lr 0.01, 784-256-10 tanh, 5 warm-up steps).

    soap.activity_propagation implements the method; its settings are training configuration, defined
    here so that config imports nothing above it (TrainConfig.second_order() builds them)."""

    eta: float = 1.0  # eta_ap: the activity step is eta_ap / (batch * units) times g1
    curvature_bias: float = 1e-3  # c
    layers: tuple[int, ...] | None = None  # hidden layers carrying it (0 = first); None: every hidden layer
    warmup: int = 5  # plain single-pass steps before the first two-pass step

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"activity propagation: eta must be positive, got {self.eta}")
        if not self.curvature_bias > 0:
            raise ValueError(f"activity propagation: curvature_bias must be positive, got {self.curvature_bias}")
        if self.warmup < 0:
            raise ValueError(f"activity propagation: warmup must be >= 0, got {self.warmup}")

    def hidden_layers(self, n_hidden: int) -> tuple[int, ...]:
        if self.layers is None:
            return tuple(range(n_hidden))
        bad = [layer for layer in self.layers if not 0 <= layer < n_hidden]
        if bad:
            raise ValueError(f"activity propagation: hidden layers {bad} do not exist (the network has {n_hidden})")
        return tuple(sorted(set(self.layers)))


def _field(default, meaning: str, **schema):
    """A TrainConfig field: its default, what it means, and JSON-schema keywords beyond its type."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"meaning": meaning, "schema": schema})
    return field(default=default, metadata={"meaning": meaning, "schema": schema})


POSITIVE = {"exclusiveMinimum": 0}
MEMBER_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["method", "lr", "seed"],
    "properties": {"method": {"type": "string"},
                   # one number, or one lr per layer (input to output): the nominal lr is then the
                   # output layer's, the layer no feedback rule scales, and the others are multiples of it
                   "lr": {"oneOf": [{"type": "number", **POSITIVE},
                                    {"type": "array", "minItems": 1, "items": {"type": "number", **POSITIVE}}]},
                   "seed": {"type": "integer"}, "refresh_period": {"type": "integer", "minimum": 1},
                   "feedback_scale": {"type": "number", **POSITIVE},
                   # the rule whose per-layer step sizes the member takes (default: its method)
                   "step_rule": {"type": "string"}},
}


@dataclass(frozen=True)
class Member:
    """One run of a population: a method at a learning rate with a paired seed."""

    method: str
    lr: float
    seed: int
    refresh_period: int = 6400  # examples between feedback refreshes (sign, sign_scaled, stale_bp)
    feedback_scale: float = 1.0  # alpha: errors go down as alpha * grad_y B (bp's B = alpha W)
    lr_scale: tuple[float, ...] | None = None  # per-layer lr multipliers (input to output); None: all 1
    # the rule whose per-layer step sizes the member takes: its method's error direction with step_rule's
    # size at every hidden layer (soap.population.step_rules); None: its method
    step_rule: str | None = None

    def __post_init__(self) -> None:
        if self.step_rule is None:  # so that a member equals the same member given step_rule = method
            object.__setattr__(self, "step_rule", self.method)

    def layer_lrs(self, layers: int) -> list[float]:
        """The learning rate of every weight layer, input to output."""
        scale = self.lr_scale or (1.0,) * layers
        if len(scale) != layers:
            raise ConfigError(f"members: {self.method} seed {self.seed} has {len(scale)} learning rates "
                              f"for {layers} layers")
        return [self.lr * s for s in scale]


def step_rule_conflict(method: str, step_rule: str, optimizer: str = "sgd", per_layer_lrs: bool = False) -> str | None:
    """Why a member of `method` cannot take `step_rule`'s per-layer step sizes, or None when it can."""
    if step_rule == method:
        return None
    method_rule, step = get_rule(method), get_rule(step_rule)
    if optimizer != "sgd":
        # any other optimizer rescales the step itself, so a matched signal size is not a matched step
        return f"a step rule needs optimizer sgd, got {optimizer}"
    if per_layer_lrs:
        return "a step rule takes one lr for every layer, got one per layer"
    if step.coupled is not None:
        return f"{step.name} cannot be a step rule: its B is trained by its own update, which this member never takes"
    if method_rule.second_order or step.second_order:
        return "so_ rules take no step rule: their second pass replaces the signal a step rule rescales"
    return None


def check_step_rule(member: Member, optimizer: str) -> None:
    """ConfigError unless the member's step rule can rescale its method's signal under `optimizer`."""
    problem = step_rule_conflict(member.method, member.step_rule, optimizer, member.lr_scale is not None)
    if problem:
        raise ConfigError(f"members: {member.method} with step_rule {member.step_rule} (seed {member.seed}): "
                          f"{problem}")


OPTIMIZERS = ("sgd", "momentum", "adam", "signsgd")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = _field("mnist", "Dataset: mnist, fashion_mnist or synthetic.",
                          enum=["mnist", "fashion_mnist", "synthetic"])
    data_root: str = _field("data", "torchvision data root holding MNIST/raw/... ($SOAP_DATA_ROOT overrides it "
                                    "for `soap train` and `soap tune`).")
    download: bool = _field(True, "Download through torchvision when the raw files are missing.")
    prepared: str | None = _field(None, "A file from `soap prepare-data`; replaces data_root when set.")
    val_size: int = _field(10_000, "Validation examples split off the training set (never used for training).",
                           minimum=1)
    split_seed: int = _field(0, "Seed of the train/validation split, fixed across the whole study.", minimum=0)
    architecture: str = _field("mlp", "The network: mlp (dense layers of widths `hidden`, nonlinearity `activation`) "
                                      "or lenet5 (soap.models.lenet5, LeNet-5 on 28x28 images zero-padded to 32x32, "
                                      "nonlinearity `lenet_activation`).", enum=list(ARCHITECTURES))
    hidden: list[int] = _field([256, 256], "Hidden layer widths of the MLP.", minItems=1, items={"minimum": 1})
    activation: str = _field("tanh", "Hidden nonlinearity of the MLP (soap.nn.ACTIVATIONS).", enum=list(ACTIVATIONS))
    lenet_activation: str = _field("relu", "Hidden nonlinearity of lenet5 (relu, as BioTorch's le_net_mnist).",
                                   enum=list(ACTIVATIONS))
    batch_size: int = _field(64, "Examples per SGD step.", minimum=1)
    epochs: float = _field(1.0, "Passes over the training split (fractions allowed).", **POSITIVE)
    methods: list[str] = _field(["bp", "fa"], "Feedback rules (soap.rules), crossed with lrs and seeds.",
                                minItems=1)
    lrs: list[float] = _field([0.1], "Nominal SGD learning rates.", minItems=1, items=POSITIVE)
    seeds: list[int] = _field([0], "Paired seeds.", minItems=1)
    members: list[dict] | None = _field(None, "Explicit [{method, lr, seed, refresh_period, feedback_scale and "
                                              "step_rule (optional)}], lr a number or one per layer (input to "
                                              "output); replaces methods x lrs x seeds.", minItems=1,
                                        items=MEMBER_SCHEMA)
    refresh_period: int = _field(6400, "Examples between feedback refreshes (sign, sign_scaled, stale_bp).",
                                 minimum=1)
    feedback_scale: float = _field(1.0, "Feedback scale alpha of every member not given its own: errors go "
                                        "down as alpha * grad_y B (bp's B = alpha W).", **POSITIVE)
    optimizer: str = _field("sgd", "sgd, momentum, adam or signsgd (W -= lr sign(grad_W), 'Batch Manhattan').",
                            enum=list(OPTIMIZERS))
    weight_decay: float = _field(0.0, "L2 penalty as SGD's weight decay (torch.optim's weight_decay): every step adds "
                                      "weight_decay * p to the gradient of each trained parameter (W, b, and "
                                      "kolen_pollack's B), under every optimizer.", minimum=0)
    momentum: float = _field(0.9, "Momentum of the momentum optimizer (torch.optim.SGD's, no dampening).",
                             minimum=0, exclusiveMaximum=1)
    adam_betas: list[float] = _field([0.9, 0.999], "Adam's beta1 and beta2.", minItems=2, maxItems=2,
                                     items={"minimum": 0, "exclusiveMaximum": 1})
    adam_eps: float = _field(1e-8, "Adam's epsilon.", **POSITIVE)
    phase: str = _field("grid", "Study phase recorded in the runs table.", enum=["grid", "tuned", "tune"])
    log_every: int = _field(640, "Examples between training-loss log points (the resolution of "
                                 "examples_to_target).", minimum=1)
    eval_every: int = _field(10_000, "Examples between validation and alignment log points.", minimum=1)
    eval_subset: int = _field(1_000, "Validation examples used at intermediate log points (all at the end).",
                              minimum=1)
    ema_beta: float = _field(0.99, "Per-step smoothing of the logged training loss.", minimum=0,
                             exclusiveMaximum=1)
    target_loss: float | None = _field(None, "EMA training loss for examples_to_target; null: not computed.")
    divergence_factor: float = _field(10.0, "A run has diverged when its EMA loss exceeds this times "
                                            "ln(num_classes).", **POSITIVE)
    kp_decay: float = _field(KOLEN_POLLACK_DECAY, "kolen_pollack's lambda: W and B both decay by it, so B - W "
                                                  "shrinks by (1 - lr lambda) a step.", minimum=0)
    soap_eta: float = _field(ActivityPropagation.eta, "so_ methods: eta_ap; pass 2 moves the hidden activity by "
                                                      "eta_ap / (batch * units) times g1.", **POSITIVE)
    soap_curvature_bias: float = _field(ActivityPropagation.curvature_bias, "so_ methods: the curvature bias c of "
                                        "d = (g1 - g2) + 2c sign(g1 - g2).", **POSITIVE)
    soap_layers: list[int] | None = _field(None, "so_ methods: the hidden layers (0 = first) carrying activity "
                                                 "propagation; null: every hidden layer.", items={"minimum": 0})
    soap_warmup: int = _field(ActivityPropagation.warmup, "so_ methods: plain single-pass steps before the first "
                                                          "two-pass step.", minimum=0)
    device: str = _field("auto", "auto, cpu, cuda or cuda:N.")
    capture: bool | str = _field("auto", "Replay each step from a CUDA graph (soap.step_graph), so a large "
                                         "population is not bound by kernel launches: auto (on for CUDA "
                                         "populations that can be captured: no so_ member), true (an error "
                                         "where the population cannot be captured), false.",
                                 enum=["auto", True, False])
    matmul_precision: str = _field("highest", "torch.set_float32_matmul_precision for the run: highest (full "
                                              "fp32 products, as on a CPU) or high (TF32 on GPUs that have it; "
                                              "faster, ~1e-3 relative products).", enum=["highest", "high"])

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        check(values, train_schema())  # before construction, so an unknown key gets this message
        return cls(**values)

    def __post_init__(self) -> None:
        self.validate()
        # Integers given for float fields become floats (2 -> 2.0): equal configs compare and hash equal.
        for key, value in _float_fields(self.to_dict()).items():
            object.__setattr__(self, key, value)

    def validate(self) -> None:
        """Check every field against the schema generated from the fields (one validator for from_dict
        and direct construction)."""
        check(self.to_dict(), train_schema())
        if self.architecture == "lenet5":  # FeedbackConv2d says why so_ stops at dense hidden layers
            second = sorted({m.method for m in self.population() if m.method.startswith(SECOND_ORDER_PREFIX)})
            if second:
                raise ConfigError(f"methods: {', '.join(second)} (second-order activity propagation) are defined "
                                  "for dense hidden layers, not architecture lenet5")
            stepped = sorted({f"{m.method}@{m.step_rule}" for m in self.population() if m.step_rule != m.method})
            if stepped:  # soap.population.conv_model has no second rule's chain to take norms from
                raise ConfigError(f"members: step rules ({', '.join(stepped)}) are built for architecture mlp, "
                                  "not lenet5")
        try:  # the one limit the schema cannot state: the so_ layers must exist in `hidden`
            self.second_order().hidden_layers(len(self.hidden))
        except ValueError as err:
            raise ConfigError(f"soap_layers: {err}") from None
        for member in self.population():
            check_step_rule(member, self.optimizer)

    def population(self) -> list[Member]:
        """The members to train, in a fixed order (methods x lrs x seeds, or the explicit list)."""
        if self.members is not None:
            return [Member(str(m["method"]), _nominal_lr(m["lr"])[0], int(m["seed"]),
                           int(m.get("refresh_period", self.refresh_period)),
                           float(m.get("feedback_scale", self.feedback_scale)), _nominal_lr(m["lr"])[1],
                           m.get("step_rule"))
                    for m in self.members]
        return [Member(m, float(lr), int(s), self.refresh_period, self.feedback_scale)
                for m, lr, s in itertools.product(self.methods, self.lrs, self.seeds)]

    def network_activation(self) -> str:
        """The hidden nonlinearity of the configured architecture: each has its own key, so lenet5's
        relu default leaves the MLP's tanh default as it was."""
        return self.lenet_activation if self.architecture == "lenet5" else self.activation

    def second_order(self) -> ActivityPropagation:
        """The so_ methods' settings."""
        layers = None if self.soap_layers is None else tuple(self.soap_layers)
        return ActivityPropagation(self.soap_eta, self.soap_curvature_bias, layers, self.soap_warmup)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _nominal_lr(lr) -> tuple:
    """A members entry's lr -> (nominal lr, per-layer multipliers or None): a list of per-layer lrs is
    its output layer's lr times multipliers."""
    if not isinstance(lr, list):
        return float(lr), None
    return float(lr[-1]), tuple(float(l) / float(lr[-1]) for l in lr)


# --- the schema, generated from the fields ---------------------------------------------------------------

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


def _json_schema(hint) -> dict:
    """The JSON-schema type of a field's annotation (str, int, float, bool, dict, list[X], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if len(options) > 1:  # scalars of several types (capture: a bool or "auto")
            return {"type": [_JSON_TYPES[o] for o in options]}
        (inner,) = options
        schema = _json_schema(inner)
        return {**schema, "type": [schema["type"], "null"]}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": _json_schema(item)}
    return {"type": _JSON_TYPES[hint]}


def train_schema(keys: typing.Iterable[str] | None = None) -> dict:
    """JSON schema of TrainConfig (or of the fields `keys`): types, defaults, meanings and limits."""
    hints = typing.get_type_hints(TrainConfig)
    properties = {}
    for f in dataclasses.fields(TrainConfig):
        if keys is not None and f.name not in keys:
            continue
        schema = _json_schema(hints[f.name])
        extra = dict(f.metadata["schema"])
        if "items" in extra:
            schema["items"] = {**schema["items"], **extra.pop("items")}
        schema.update(extra)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        properties[f.name] = {"description": f.metadata["meaning"], **schema, "default": default}
    # Enums that follow the rule registry, so that adding a rule needs no schema edit.
    if "methods" in properties:
        properties["methods"]["items"]["enum"] = list(RULES)
    if "members" in properties:
        properties["members"]["items"] = copy.deepcopy(MEMBER_SCHEMA)
        for key in ("method", "step_rule"):
            properties["members"]["items"]["properties"][key]["enum"] = list(RULES)
    return {"type": "object", "additionalProperties": False, "properties": properties}


def check(values: dict, schema: dict, label: str | None = None) -> None:
    """Validate `values` against a JSON schema with jsonschema; ConfigError names the first bad key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(values))
    if error is None:
        return
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message
    if error.validator == "additionalProperties":  # name the keys that are allowed, for a misspelling
        allowed = ", ".join(error.schema.get("properties", {}))
        message = f"{message}; known keys: {allowed}"
    raise ConfigError(f"{label + ': ' if label else ''}{key}: {message}")


def _float_fields(values: dict) -> dict:
    """The float-typed fields of `values`, as floats."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for key, value in values.items():
        hint = hints[key]
        if hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                             and float in typing.get_args(hint)):
            out[key] = None if value is None else float(value)
        elif hint == list[float]:
            out[key] = [float(v) for v in value]
    return out


# --- YAML -----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 (no dot) as a string; configs mean the number, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str, source: str = "config"):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None


def parse_overrides(overrides: list[str]) -> dict:
    """['epochs=2', 'lrs=[0.01, 0.1]'] -> {'epochs': 2, 'lrs': [0.01, 0.1]} (values parsed as YAML)."""
    parsed = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        parsed[key.strip()] = load_yaml(raw, f"override {item!r}")
    return parsed


def load_train_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A config file, then $SOAP_DATA_ROOT (for data_root), then key=value overrides, each winning over the last."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        values = load_yaml(path.read_text(), str(path)) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
    values["data_root"] = data_root(values.get("data_root", TrainConfig.data_root))
    values.update(parse_overrides(list(overrides)))
    return TrainConfig.from_dict(values)
