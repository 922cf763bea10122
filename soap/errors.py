"""Errors caused by user input (config, data, tables, CLI arguments): reported as one line, no trace."""

from __future__ import annotations

from soap.config import ConfigError
from soap.data import DataError
from soap.tables import TableError


def _user_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [ConfigError, DataError, TableError]
    try:  # the analysis defines its own input errors
        from soap.analysis.errors import AnalysisError
    except ImportError:
        pass
    else:
        errors.append(AnalysisError)
    return tuple(errors)


USER_ERRORS = _user_errors()
