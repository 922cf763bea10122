"""The direction x step-size factorial's cells and effects, defined once (STUDY.md): the synthetic worlds
(soap.synthetic_factorial) compute their truths from these definitions and the analysis
(soap.analysis.decomposition) estimates them.

A cell is named for a rule r: "bp", "r", "bp@r" (bp's direction with r's per-layer step sizes: method
bp, step_rule r) and "r@bp" (r's direction with bp's steps: method r, step_rule bp).
"""

from __future__ import annotations

from soap.rules import REFERENCE

CELL_NAMES = ("bp", "r", "bp@r", "r@bp")
# effect -> {cell: coefficient}: the linear combination of cell means it is
EFFECTS = {
    "total": {"r": 1, "bp": -1},
    "step": {"bp@r": 1, "bp": -1},
    "direction_at_r_steps": {"r": 1, "bp@r": -1},
    "direction_at_bp_steps": {"r@bp": 1, "bp": -1},
    "interaction": {"r": 1, "bp@r": -1, "r@bp": -1, "bp": 1},
}


def cell_roles(cell: str) -> tuple[str, str]:
    """(direction, step) of a cell as "bp" or "r": whose error direction, whose per-layer step sizes."""
    direction, _, step = cell.partition("@")
    return direction, step or direction


def cell_key(cell: str, rule: str) -> tuple[str, str]:
    """(method, step_rule) of a cell for rule r."""
    name = {"bp": REFERENCE, "r": rule}
    direction, step = cell_roles(cell)
    return name[direction], name[step]


def cell_label(cell: str, rule: str) -> str:
    """A cell as the tables write it for rule r: bp, r, bp@r, r@bp with r's name."""
    method, step = cell_key(cell, rule)
    return method if method == step else f"{method}@{step}"
