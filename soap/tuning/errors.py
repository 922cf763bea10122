"""The tuning error, below the objective and the workers that both raise it."""

from __future__ import annotations

from soap.config import ConfigError


class TuneError(ConfigError):
    """A study that cannot give a learning rate (e.g. every trial diverged: the range is too high)."""
