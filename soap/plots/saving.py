"""Saving a figure: separate from drawing it, so plot functions can be used (and tested) without files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from soap.files import write_atomic
from soap.plots.style import STYLE_RC

FORMATS = ("png", "pdf")


def save_figure(fig, path_stem: str | Path, dpi: int = 200, formats: tuple[str, ...] = FORMATS) -> tuple[Path, ...]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (or the given ``formats``) atomically; returns the paths
    in the order of ``formats``.

    Freezes the figure's layout (constrained layout runs once, then is switched off), so every file
    has the same geometry. PDFs carry no creation date, so the same figure gives the same bytes.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"save_figure: formats must be some of {', '.join(FORMATS)}, got {list(formats)}")
    stem = Path(path_stem)
    if fig.get_layout_engine() is not None:
        # Lay out once and freeze; otherwise every savefig re-runs constrained layout.
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    paths = []
    for fmt in formats:
        # bbox "tight" as a safety net for anything the layout let overflow (a long legend).
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        # Inside the style: some of it (PDF font embedding) acts at save time. The format is given
        # explicitly because the temporary file's suffix is ".tmp".
        def write(tmp, fmt=fmt, metadata=metadata):
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)

        with plt.rc_context(STYLE_RC):
            paths.append(write_atomic(stem.with_suffix(f".{fmt}"), write))
    return tuple(paths)
