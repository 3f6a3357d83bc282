"""MATLAB ``.mat`` files (scipy.io): list the variables without reading them, read one variable.

Both raise :class:`DatasetFileError` naming the file for anything scipy cannot parse (it raises several exception
types for bad headers). scipy is imported on first use.
"""
from __future__ import annotations

import numpy as np

from mclcore.data.formats.errors import DatasetFileError

__all__ = ["mat_variables", "read_mat_variable"]


def mat_variables(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, MATLAB class)} of the variables in ``path``, from the headers only (no data read)."""
    import scipy.io

    try:
        return {name: (tuple(int(s) for s in shp), cls) for name, shp, cls in scipy.io.whosmat(path)}
    except Exception as e:  # scipy raises several types for bad headers
        raise DatasetFileError(f"{path}: not a readable MATLAB file: {e} (corrupt or truncated?)")


def read_mat_variable(path: str, name: str) -> np.ndarray:
    """Variable ``name`` of ``path`` as a numpy array."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=[name])[name]
    except Exception as e:
        raise DatasetFileError(f"{path}: could not read '{name}': {e} (corrupt or truncated?)")
