"""Ground-truth image datasets: factor grids, samplers, file loaders, procedural twins and torch glue.

    from mclcore.data import get_dataset
    ds = get_dataset("shapes3d")                          # procedural twin (no file needed)
    ds = get_dataset("shapes3d", path="3dshapes.h5")      # the real file
    factors = ds.sample_factors(64, rng=0)                # (64, 6) int64 classes
    images = ds.observations(factors)                     # (64, 64, 64, 3) uint8

See :mod:`mclcore.data.base` for the conventions (row-major factor order, uint8 HWC observations).
"""
from __future__ import annotations

from mclcore.data.base import GroundTruthDataset, as_generator, to_float_nchw
from mclcore.data.files import (Cars3DFiles, DatasetFileError, DSpritesFile, MPI3DFile, Shapes3DFile,
                                open_npz_array, resize_area)
from mclcore.data.render import RENDERERS, Cars3DRender, DSpritesRender, MPI3DRender, Shapes3DRender
from mclcore.data.torch_data import GroundTruthTorch, make_loader

DATASET_NAMES = ("shapes3d", "mpi3d", "cars3d", "dsprites")


def get_dataset(name: str, path: str | None = None, **kwargs) -> GroundTruthDataset:
    """A dataset by name: the file loader when ``path`` is given, else the procedural twin.

    ``name`` is one of shapes3d, mpi3d (or mpi3d_toy / mpi3d_realistic / mpi3d_real with a file), cars3d,
    dsprites. ``kwargs`` go to the loader (e.g. ``cache_dir``, ``factor_sizes``) or the renderer.
    """
    base = name.split("_")[0] if name.startswith("mpi3d") else name
    if base not in DATASET_NAMES:
        raise ValueError(f"name: unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    if path is None:
        if base != name:
            raise ValueError(f"name: {name!r} needs a file (path=...); the procedural twin is 'mpi3d'")
        return RENDERERS[base](**kwargs)
    if base == "shapes3d":
        return Shapes3DFile(path, **kwargs)
    if base == "mpi3d":
        variant = name.split("_", 1)[1] if "_" in name else kwargs.pop("variant", "toy")
        return MPI3DFile(path, variant=variant, **kwargs)
    if base == "cars3d":
        return Cars3DFiles(path, **kwargs)
    return DSpritesFile(path, **kwargs)


__all__ = [
    "GroundTruthDataset", "as_generator", "to_float_nchw", "get_dataset", "DATASET_NAMES", "DatasetFileError",
    "Shapes3DFile", "MPI3DFile", "Cars3DFiles", "DSpritesFile", "open_npz_array", "resize_area",
    "Shapes3DRender", "DSpritesRender", "MPI3DRender", "Cars3DRender", "RENDERERS",
    "GroundTruthTorch", "make_loader",
]
