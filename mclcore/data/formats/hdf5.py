"""HDF5 (h5py): opening with a clear error, reading scattered rows in runs, and a memory-mappable ``.npy`` cache.

h5py is imported on first use, so the package imports without it until an HDF5 file is read.
"""
from __future__ import annotations

import os

import numpy as np

from mclcore._io import atomic_path

from mclcore.data.formats.errors import DatasetFileError

__all__ = ["open_h5", "read_runs", "h5_to_npy"]


def open_h5(path: str, required=()):
    """``h5py.File(path, "r")``, or a :class:`DatasetFileError` when the file is unreadable or lacks a dataset
    named in ``required`` (the file is closed again in that case)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetFileError(f"{path}: not a readable HDF5 file: {e} (corrupt or truncated download?)")
    for key in required:
        if key not in f:
            found = sorted(f.keys())
            f.close()
            raise DatasetFileError(f"{path}: missing HDF5 dataset '{key}' (found {found})")
    return f


def read_runs(dset, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) of an h5py dataset, one slice read per run of consecutive indices.

    h5py's fancy (list) selection measured ~2,800 scattered rows/s on 64x64x3 images against ~5,700 rows/s for
    reading row by row (2-core AMD EPYC VM, 2026-11); runs of consecutive rows (sequential batches) are read as
    single slices.
    """
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.r_[0, breaks]
    stops = np.r_[breaks, idx.size]
    return np.concatenate([dset[int(idx[a]):int(idx[b - 1]) + 1] for a, b in zip(starts, stops)], axis=0)


def h5_to_npy(dset, path: str, cache_dir: str) -> np.ndarray:
    """Copy an h5py uint8 dataset once into ``cache_dir`` as an uncompressed .npy and memory-map it.

    The copy is named after the source's name, size and mtime (a changed source gets a new copy) and is written
    under a temporary name, then renamed, so an interrupted copy is never used.
    """
    os.makedirs(cache_dir, exist_ok=True)
    st = os.stat(path)
    target = os.path.join(cache_dir, f"{os.path.basename(path)}.images.{st.st_size}.{int(st.st_mtime)}.npy")
    if not os.path.exists(target):
        with atomic_path(target) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=dset.shape)
            step = 8192
            for i in range(0, dset.shape[0], step):  # sequential reads: fast even for a contiguous 5.9 GB dataset
                out[i:i + step] = dset[i:i + step]
            out.flush()
            del out
    return np.load(target, mmap_mode="r")
