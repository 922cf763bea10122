"""Errors caused by user input (config, data, tables, CLI arguments): reported as one line, no trace."""

from __future__ import annotations

from soap.analysis.errors import AnalysisError
from soap.config import ConfigError  # TuneError and study-config errors derive from it
from soap.data import DataError
from soap.tables import TableError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, TableError, AnalysisError)
