"""The network a run trained, as the runs table records it (`architecture`, `layers`) and as titles name it.

A study's estimands compare rules within one network: a contrast pooled over an MLP's and a LeNet-5's
runs would mix two lr scales and two fan-ins (issue 20), so every table that pools runs keys them by
(dataset, architecture), and every figure and table title says which network it shows, e.g.
"MLP 784-256-256-10 tanh", read from the runs themselves. Runs tables written before the architecture
was configurable carry neither column; nothing guesses one for them.
"""

from __future__ import annotations

import pandas as pd

from soap.tables import TableError

NETWORK_COLUMNS = ("architecture", "layers")
# How titles name each TrainConfig.architecture.
ARCHITECTURE_NAMES = {"mlp": "MLP", "lenet5": "LeNet-5"}


def require_network(runs: pd.DataFrame, source: str = "runs table") -> None:
    """TableError naming the network columns `runs` lacks."""
    missing = [c for c in NETWORK_COLUMNS if c not in runs.columns]
    if missing:
        raise TableError(f"{source} has no {' or '.join(missing)} column (written before train.architecture "
                         "existed?): retrain, or add the columns the trainer writes (soap.population.records)")


def network_label(architecture: str, layers: str) -> str:
    """"MLP 784-256-256-10 tanh", "LeNet-5 1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu"."""
    return f"{ARCHITECTURE_NAMES.get(architecture, architecture)} {layers}".strip()


def network_title(runs: pd.DataFrame, source: str = "runs table") -> str:
    """Every network in `runs`, labelled and joined by "; " in order of appearance (TableError without
    the network columns)."""
    require_network(runs, source)
    pairs = runs[list(NETWORK_COLUMNS)].astype(str).drop_duplicates()
    return "; ".join(network_label(a, layers) for a, layers in pairs.itertuples(index=False))


def single_network_per_dataset(runs: pd.DataFrame, source: str = "runs table") -> None:
    """TableError naming the first dataset whose runs come from more than one architecture: estimands
    keyed by dataset alone would pool them."""
    require_network(runs, source)
    for dataset, rows in runs.groupby("dataset", sort=True):
        kinds = sorted(rows["architecture"].astype(str).unique())
        if len(kinds) > 1:
            raise TableError(f"{source}: dataset {dataset!r} holds runs of architectures {', '.join(kinds)}; its "
                             "estimands are per dataset, so analyse each architecture's runs on their own")
