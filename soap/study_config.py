"""The study config (config.yaml): its schema, loading and checks, and the TrainConfig of one population.

The study config is a plain dict validated with jsonschema against soap/schemas/config.schema.yaml
(package data; defaults filled in), whose `train` block is generated from TrainConfig (soap.config), what
one population is trained with. The workflow (workflow/rules/common.smk), `soap tune` and the tuning
objective read it through here; nothing here imports Snakemake.
"""

from __future__ import annotations

import copy
from pathlib import Path

from soap.config import ConfigError, TrainConfig, check, data_root, load_yaml, train_schema

# Package data, so a wheel install validates configs without the workflow folder.
SCHEMA_RESOURCE = ("soap", "schemas/config.schema.yaml")
# TrainConfig fields the pipeline sets itself; the rest form the study config's `train` block.
PIPELINE_TRAIN_KEYS = ("dataset", "data_root", "download", "prepared", "methods", "lrs", "seeds", "members",
                       "phase", "device", "target_loss")


def study_schema() -> dict:
    """The study config's JSON schema: soap/schemas/config.schema.yaml with its `train` block's keys
    generated from soap.config.TrainConfig (their one definition)."""
    from dataclasses import fields
    from importlib.resources import files

    package, name = SCHEMA_RESOURCE
    schema = load_yaml(files(package).joinpath(name).read_text(), name)
    keys = [f.name for f in fields(TrainConfig) if f.name not in PIPELINE_TRAIN_KEYS]
    schema["properties"]["train"].update(train_schema(keys))
    return schema


def _validator_filling_defaults():
    """A Draft 2020-12 validator that also fills in each property's default: the recipe from
    jsonschema's FAQ, since jsonschema only validates (Snakemake's validate does the same)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties})


def load_study_config(path: str | Path | list | None = None, values: dict | None = None) -> dict:
    """Read config.yaml (or several files, each overriding the last key by key, as Snakemake's
    --configfile does; or take `values`, filled in place), validate it against the schema and fill in
    its defaults. ConfigError names the file and the first bad key."""
    label = path or "study config"
    label = ", ".join(map(str, label)) if isinstance(label, (list, tuple)) else str(label)
    if values is None:
        paths = path if isinstance(path, (list, tuple)) else [path]
        values = {}
        for one in paths:
            if one is None or not Path(one).is_file():
                raise ConfigError(f"study config not found: {one}")
            loaded = load_yaml(Path(one).read_text(), str(one)) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{one} must hold a mapping of config keys")
            _merge(values, loaded)
    schema = study_schema()
    check(values, schema, label)  # one line naming the first bad key
    _validator_filling_defaults()(schema).validate(values)  # valid already: this fills in the defaults
    check_study_config(values)
    return values


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def check_study_config(cfg: dict) -> None:
    """Checks across keys that the schema cannot express; ConfigError names the key."""
    from soap.rules import RULES

    unknown = [m for m in cfg["methods"] if m not in RULES]
    if unknown:
        raise ConfigError(f"methods: unknown method(s) {unknown}; known: {', '.join(RULES)}")
    for section in ("tune", "grid"):
        if cfg[section]["lr_low"] >= cfg[section]["lr_high"]:
            raise ConfigError(f"{section}.lr_low must be below {section}.lr_high")
    evaluation_seeds = max(cfg["grid"]["seeds"], cfg["tuned"]["seeds"])
    if cfg["tune"]["seed"] < evaluation_seeds:
        raise ConfigError(f"tune.seed must be at least {evaluation_seeds} so that tuning seeds are distinct "
                          "from evaluation seeds (0 .. seeds-1)")
    from soap.interventions import check_config, enabled

    check_config(cfg)
    primary, factorial = cfg["analysis"]["primary"]["rule"], cfg["interventions"]["factorial"]
    if enabled(cfg) and primary not in factorial:  # the verdict runs with any arm, and tests bp@rule vs rule
        raise ConfigError(f"analysis.primary.rule {primary} must be in interventions.factorial {factorial}")


def seeds_per_job(phase: dict, gpus: bool) -> int:
    """Seeds per training job of a phase's section (grid or tuned): seeds_per_job on CPUs; on GPUs
    seeds_per_gpu_job, by default every seed (one population of all methods x lrs x seeds per job:
    a GPU runs a step of hundreds of members in about the time of one, where a CPU's cost grows with
    each member)."""
    if not gpus:
        return phase["seeds_per_job"]
    return phase.get("seeds_per_gpu_job") or phase["seeds"]


def device_for(gpus) -> str:
    # With GPUs the job's lease narrows CUDA_VISIBLE_DEVICES to one device, which "auto" then finds.
    return "cpu" if gpus == 0 else "auto"


def train_config(train: dict, dataset: str, phase: str, members: list[dict], *, prepared: str | None = None,
                 data: dict | None = None, epochs: float | None = None, device: str = "auto") -> TrainConfig:
    """The TrainConfig of one population: the config's `train` section plus what the pipeline sets.

    data: the config's `data` section, used when no prepared file is given. Raises ConfigError naming
    a bad key.
    """
    values = dict(train)
    values.update(dataset=dataset, phase=phase, members=members, prepared=prepared, device=device,
                  methods=sorted({m["method"] for m in members}))
    if data is not None:
        values.update(data_root=data_root(data["root"]), download=data["download"])
    if epochs is not None:
        values["epochs"] = epochs
    return TrainConfig.from_dict(values)
