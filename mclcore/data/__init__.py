"""Ground-truth image datasets: factor grids, samplers, file loaders, procedural twins and torch glue.

    from mclcore.data import get_dataset
    ds = get_dataset("shapes3d")                          # procedural twin (no file needed)
    ds = get_dataset("shapes3d", path="3dshapes.h5")      # the real file
    factors = ds.sample_factors(64, rng=0)                # (64, 6) int64 classes
    images = ds.observations(factors)                     # (64, 64, 64, 3) uint8

See :mod:`mclcore.data.base` for the conventions (row-major factor order, uint8 HWC observations).

Layout (where things go):

* ``base.py`` - :class:`GroundTruthDataset` (index <-> factors, samplers, validation), ``to_float_nchw``.
* ``datasets/`` - **one module per dataset** (``shapes3d.py``, ``mpi3d.py``, ``cars3d.py``, ``dsprites.py``): its
  :class:`~mclcore.data.datasets.registry.FactorSpec` ``SPEC`` (factor names, sizes, values), its file loader class
  (what the file must hold, checked with messages naming the file) and a ``register(DatasetEntry(...))`` call naming
  its procedural twin. ``datasets/registry.py`` holds ``DATASETS`` and :func:`get_dataset` (a table lookup);
  ``datasets/common.py`` the grid checks and worker-pickling helpers the loaders share. A new dataset is a new
  module there plus one import line in ``datasets/__init__.py`` (which fixes the order of ``DATASET_NAMES``).
* ``render/`` - the procedural twins, one module per dataset (the rendering code), each importing its dataset's
  ``SPEC``; ``RENDERERS`` maps names to twin classes.
* ``formats/`` - **one module per file format**, knowing nothing about datasets: ``npz.py`` (memory-mapped members,
  uncompressed cache), ``hdf5.py`` (checked open, run reads, ``.npy`` cache), ``mat.py`` (MATLAB variables via
  scipy), ``errors.py`` (:class:`DatasetFileError`, the one error type of every file reader). A new format goes
  there.
* ``images.py`` - image utilities shared by loaders and twins (``resize_area``).
* ``torch_data.py`` - DataLoader glue; ``synthetic.py`` - the synthetic GMD / LRD processes.
* ``tabletop/`` - the tabletop manipulation simulator and its episode files (``spec.py`` constants and embodiments
  shared by ``sim.py`` and ``render.py``; ``episodes.py`` writes and reads the files, :func:`read_episodes` being
  the one validating reader).

Modules here import nothing from ``mclcore.train``, ``mclcore.studies`` or ``mclcore.cli``, and the import graph of
the package is acyclic (``tests/data/test_data_layout.py`` checks both).
"""
from __future__ import annotations

from mclcore.data.base import GroundTruthDataset, as_generator, to_float_nchw
from mclcore.data.datasets import (DATASET_NAMES, DATASETS, Cars3DFiles, DatasetEntry, DSpritesFile, FactorSpec,
                                   MPI3DFile, Shapes3DFile, get_dataset)
from mclcore.data.formats import DatasetFileError, open_npz_array
from mclcore.data.images import resize_area
from mclcore.data.render import RENDERERS, Cars3DRender, DSpritesRender, MPI3DRender, Shapes3DRender
from mclcore.data.torch_data import GroundTruthTorch, make_loader

__all__ = [
    "GroundTruthDataset", "as_generator", "to_float_nchw", "get_dataset", "DATASET_NAMES", "DatasetFileError",
    "Shapes3DFile", "MPI3DFile", "Cars3DFiles", "DSpritesFile", "open_npz_array", "resize_area",
    "Shapes3DRender", "DSpritesRender", "MPI3DRender", "Cars3DRender", "RENDERERS",
    "GroundTruthTorch", "make_loader", "DATASETS", "DatasetEntry", "FactorSpec",
]
