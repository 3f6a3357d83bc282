"""Shapes3D: factor spec, the loader of ``3dshapes.h5`` (or its ``.npz`` variant), registration with its twin.

File format: HDF5 datasets ``images`` uint8 (480000, 64, 64, 3) and ``labels`` float (480000, 6) with factor
values (floor hue, wall hue, object hue, scale, shape, orientation), row-major over sizes (10, 10, 10, 8, 4, 15).
Read on demand with h5py (``in_memory=True`` loads the 5.9 GB array once). The ``.npz`` variant
(disentanglement_lib's) holds the same two arrays, possibly shaped (10, 10, 10, 8, 4, 15, 64, 64, 3) / (..., 6).
Tests write tiny grids in this format, so the loader takes ``factor_sizes`` (default: the real grid).

Procedural twin: :class:`mclcore.data.render.shapes3d.Shapes3DRender`.
"""
from __future__ import annotations

import os

import numpy as np

from mclcore.data.base import GroundTruthDataset, read_sorted
from mclcore.data.datasets.common import check_images, check_row_major, detach_images, reattach_images
from mclcore.data.datasets.registry import DatasetEntry, FactorSpec, register
from mclcore.data.formats.errors import DatasetFileError, require_file
from mclcore.data.formats.hdf5 import h5_to_npy, open_h5, read_runs
from mclcore.data.formats.npz import open_npz_array, warn_if_decompressed_large

__all__ = ["SPEC", "Shapes3DFile"]

SPEC = FactorSpec(
    "shapes3d", ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"), (10, 10, 10, 8, 4, 15),
    values=(np.linspace(0, 1, 10, endpoint=False),) * 3 + (np.linspace(0.75, 1.25, 8), np.arange(4.0),
                                                          np.linspace(-30, 30, 15)))


class Shapes3DFile(GroundTruthDataset):
    """Shapes3D from ``3dshapes.h5`` (or disentanglement_lib's ``.npz`` variant); see the module docstring.

    Args:
        path: the ``.h5``/``.hdf5`` or ``.npz`` file.
        factor_sizes: the grid (default (10, 10, 10, 8, 4, 15)); tests pass tiny grids.
        in_memory: read all images into RAM at once (5.9 GB for the real file) instead of on demand.
        cache_dir: where to keep a memory-mappable uncompressed copy of the images (for ``.h5`` and compressed
            ``.npz``), made once with sequential reads.

    Reading the ``.h5`` on demand costs ~0.2 ms per scattered image (h5py; 2-core AMD EPYC VM, 2026-11), i.e. over
    a minute for the ~430,000 distinct images of the metric protocol; for metrics use ``in_memory=True`` or
    ``cache_dir=`` (memory-mapped, served from the page cache).

    The labels are read whole (23 MB), checked to enumerate the grid in row-major order, and their distinct values
    per column become :meth:`factor_values`.
    """

    name = "shapes3d"

    def __init__(self, path, factor_sizes=SPEC.factor_sizes, *, in_memory: bool = False, cache_dir=None):
        self.path = require_file(path, "Shapes3D file")
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 6:
            raise ValueError(f"factor_sizes: Shapes3D has 6 factors {SPEC.factor_names}, got {sizes}")
        n = int(np.prod(sizes))
        self._h5 = None
        ext = os.path.splitext(self.path)[1].lower()
        if ext in (".h5", ".hdf5"):
            images, labels = self._open_h5(n, sizes)
        elif ext == ".npz":
            images = open_npz_array(self.path, "images", cache_dir=cache_dir)
            warn_if_decompressed_large(images, self.path, "images")
            labels = np.asarray(open_npz_array(self.path, "labels", mmap=False))
            lead = check_images(images.shape, images.dtype, n, self.path, "images", sizes, SPEC.factor_names)
            if lead > 1:
                images = images.reshape(n, 64, 64, 3)
            labels = labels.reshape(-1, labels.shape[-1]) if labels.ndim > 2 else labels
        else:
            raise DatasetFileError(f"{self.path}: unknown Shapes3D file type {ext!r} (expected .h5, .hdf5 or .npz)")
        values = self._check_labels(labels, sizes, n)
        super().__init__(SPEC.factor_names, sizes, values)
        if cache_dir is not None and self._h5 is not None:
            images = h5_to_npy(images, self.path, cache_dir)
        if in_memory and not isinstance(images, np.ndarray):
            images = images[()]
        elif in_memory and isinstance(images, np.memmap):
            images = np.array(images)
        self._images = images

    def _open_h5(self, n, sizes):
        self._h5 = open_h5(self.path, required=("images", "labels"))
        images = self._h5["images"]
        check_images(images.shape, images.dtype, n, self.path, "images", sizes, SPEC.factor_names)
        if images.ndim != 4:
            raise DatasetFileError(f"{self.path}: 'images' must be (N, 64, 64, 3) in the .h5 format, "
                                   f"got {images.shape}")
        try:
            images[0]
            images[n - 1]  # a truncated file fails here rather than in the middle of a metric
            labels = self._h5["labels"][()]
        except OSError as e:
            raise DatasetFileError(f"{self.path}: reading failed: {e} (truncated or corrupt file?)")
        return images, labels

    def _check_labels(self, labels, sizes, n):
        labels = np.asarray(labels)
        if labels.shape != (n, 6):
            raise DatasetFileError(f"{self.path}: 'labels' has shape {labels.shape}, expected ({n}, 6)")
        if not np.all(np.isfinite(labels)):
            raise DatasetFileError(f"{self.path}: 'labels' contains NaN or inf")
        classes = np.empty(labels.shape, dtype=np.int64)
        values = []
        for f in range(6):
            # Round to 6 decimals: the real labels are float32-derived values such as 0.1 (floor hue).
            uniq, inv = np.unique(np.round(labels[:, f].astype(np.float64), 6), return_inverse=True)
            if uniq.size != sizes[f]:
                raise DatasetFileError(f"{self.path}: label column {f} ({SPEC.factor_names[f]}) has {uniq.size} "
                                       f"distinct values, expected {sizes[f]}")
            classes[:, f] = inv.reshape(-1)
            values.append(uniq)
        check_row_major(classes, sizes, self.path, "labels")
        return values

    def _observations(self, index):
        imgs = self._images
        if isinstance(imgs, np.ndarray):  # in memory or memory-mapped
            return np.asarray(read_sorted(lambda i: imgs[i], index))
        try:
            return read_sorted(lambda i: read_runs(imgs, i), index)
        except OSError as e:
            raise DatasetFileError(f"{self.path}: reading images failed: {e} (truncated or corrupt file?)")

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self):
        # h5py handles and memmaps are reopened in the unpickling (DataLoader worker) process
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_images"], state["_reopen"] = detach_images(self._images)
        return state

    def __setstate__(self, state):
        reattach_images(self, state)


register(DatasetEntry(SPEC, Shapes3DFile, twin="mclcore.data.render.shapes3d:Shapes3DRender"))
