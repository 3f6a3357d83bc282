"""Checks and pickling support shared by the file loaders: image arrays against a grid, row-major labels, and
re-opening file-backed images in DataLoader workers."""
from __future__ import annotations

import numpy as np

from mclcore.data.formats.errors import DatasetFileError

__all__ = ["check_images", "check_row_major", "detach_images", "reattach_images"]


def check_images(shape, dtype, n_expected: int, path: str, key: str, sizes, names, image_shape=(64, 64, 3)) -> int:
    """Validate an image array's shape/dtype; return the number of leading axes that index the grid (1 or F)."""
    if dtype != np.uint8:
        raise DatasetFileError(f"{path}: '{key}' has dtype {dtype}, expected uint8")
    shape = tuple(int(s) for s in shape)
    tail = tuple(image_shape)
    if shape[-len(tail):] != tail:
        raise DatasetFileError(f"{path}: '{key}' has shape {shape}, expected (N, {', '.join(map(str, tail))})")
    lead = shape[:-len(tail)]
    if lead == tuple(sizes):
        return len(lead)
    if len(lead) == 1 and lead[0] == n_expected:
        return 1
    grid = " x ".join(f"{n}={s}" for n, s in zip(names, sizes))
    got = lead[0] if len(lead) == 1 else lead
    hint = " (truncated or partial file?)" if len(lead) == 1 and lead[0] < n_expected else ""
    raise DatasetFileError(f"{path}: '{key}' holds {got} images, expected {n_expected} = {grid}{hint}")


def check_row_major(classes: np.ndarray, sizes, path: str, key: str) -> None:
    """Raise unless ``classes`` (N, F) enumerates the grid in row-major order (index == ravel_multi_index)."""
    n = int(np.prod(sizes))
    if classes.shape != (n, len(sizes)):
        raise DatasetFileError(f"{path}: '{key}' has shape {classes.shape}, expected ({n}, {len(sizes)})")
    idx = np.ravel_multi_index(tuple(classes.T), tuple(sizes), mode="raise")
    if not np.array_equal(idx, np.arange(n)):
        bad = int(np.argmax(idx != np.arange(n)))
        raise DatasetFileError(f"{path}: '{key}' is not in row-major factor order (first mismatch at row {bad}: "
                               f"{classes[bad].tolist()}); the loader assumes the last factor varies fastest")


def detach_images(images):
    """(picklable images or None, how to reopen them) for ``__getstate__`` of file-backed datasets.

    DataLoader workers started with "spawn" pickle the dataset: h5py handles cannot be pickled and a memmap would
    be pickled as a full copy, so both are reopened in the worker (:func:`reattach_images`).
    """
    if isinstance(images, np.memmap) and images.filename is not None:
        return None, (images.filename, images.dtype, images.offset, images.shape)
    if not isinstance(images, np.ndarray):
        return None, "h5"
    return images, None


def reattach_images(dataset, state: dict) -> None:
    """``__setstate__`` of a file-backed dataset whose ``__getstate__`` stored ``detach_images(...)`` as
    ``state["_images"], state["_reopen"]``: restores the attributes and reopens the images."""
    reopen = state.pop("_reopen", None)
    dataset.__dict__.update(state)
    if reopen == "h5":
        import h5py

        dataset._h5 = h5py.File(dataset.path, "r")
        dataset._images = dataset._h5["images"]
    elif reopen is not None:
        dataset._images = np.memmap(reopen[0], dtype=reopen[1], mode="r", offset=reopen[2], shape=reopen[3])
