"""MPI3D (toy / realistic / real): factor spec, the ``.npz`` loader, registration with its twin.

File format: ``images`` uint8 (1036800, 64, 64, 3) (or the 7 factor axes first), row-major over (object colour 6,
object shape 6, object size 2, camera height 3, background colour 3, horizontal axis 40, vertical axis 40). The three
variants share the grid; ``get_dataset("mpi3d_real", path)`` names one (default toy), and all share the one
procedural twin :class:`mclcore.data.render.mpi3d.MPI3DRender` (``get_dataset("mpi3d")``).

``.npz`` members stored uncompressed (``np.savez``) are memory-mapped in place; for compressed ones pass
``cache_dir`` (else the 12.7 GB array is decompressed into memory); see :mod:`mclcore.data.formats.npz`.
"""
from __future__ import annotations

import numpy as np

from mclcore.data.base import GroundTruthDataset, read_sorted
from mclcore.data.datasets.common import check_images, detach_images, reattach_images
from mclcore.data.datasets.registry import DatasetEntry, FactorSpec, register
from mclcore.data.formats.errors import require_file
from mclcore.data.formats.npz import open_npz_array, warn_if_decompressed_large

__all__ = ["SPEC", "VARIANTS", "MPI3DFile"]

SPEC = FactorSpec("mpi3d", ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                            "horizontal_axis", "vertical_axis"), (6, 6, 2, 3, 3, 40, 40))
VARIANTS = ("toy", "realistic", "real")


class MPI3DFile(GroundTruthDataset):
    """MPI3D toy / realistic / real from its ``.npz`` (key ``images``); see the module docstring.

    ``variant`` only names the dataset (the three share the grid). Uncompressed archives are memory-mapped;
    for compressed ones pass ``cache_dir`` (else the 12.7 GB array is decompressed into memory).
    """

    def __init__(self, path, variant: str = "toy", factor_sizes=SPEC.factor_sizes, *, cache_dir=None):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.path = require_file(path, "MPI3D file")
        self.variant = variant
        self.name = f"mpi3d_{variant}"
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 7:
            raise ValueError(f"factor_sizes: MPI3D has 7 factors {SPEC.factor_names}, got {sizes}")
        n = int(np.prod(sizes))
        images = open_npz_array(self.path, "images", cache_dir=cache_dir)
        warn_if_decompressed_large(images, self.path, "images")
        lead = check_images(images.shape, images.dtype, n, self.path, "images", sizes, SPEC.factor_names)
        if lead > 1:
            images = images.reshape(n, 64, 64, 3)
        super().__init__(SPEC.factor_names, sizes)
        self._images = images

    def _observations(self, index):
        return np.asarray(read_sorted(lambda i: self._images[i], index))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"], state["_reopen"] = detach_images(self._images)
        return state

    def __setstate__(self, state):
        reattach_images(self, state)


register(DatasetEntry(SPEC, MPI3DFile, twin="mclcore.data.render.mpi3d:MPI3DRender", variants=VARIANTS))
