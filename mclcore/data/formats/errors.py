"""The one error type of the dataset file readers, and the existence check every reader starts with."""
from __future__ import annotations

import os

__all__ = ["DatasetFileError", "require_file"]


class DatasetFileError(ValueError):
    """A dataset file is missing, of the wrong format, truncated or corrupt (the message says which and why)."""


def require_file(path, what: str) -> str:
    """``path`` as a str, or a :class:`DatasetFileError` naming ``what`` when it is missing or not a file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetFileError(f"{what}: no such file {path!r}")
    if not os.path.isfile(path):
        raise DatasetFileError(f"{what}: {path!r} is not a file")
    return path
