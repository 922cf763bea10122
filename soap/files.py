"""Files that later steps trust: written whole or not at all, and figures embedded by value.

The lowest module of the package (it imports nothing of soap), so the data, tuning, analysis and
report stages share one definition of each.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path), then rename into place: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results unreadable to others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def png_data_uri(png_path: str | os.PathLike) -> str:
    """A PNG file as a data: URI, so a report embeds its figures and stays one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(Path(png_path).read_bytes()).decode("ascii")
