"""One module per dataset, each registering itself in :data:`DATASETS` (see :mod:`~.registry`).

A dataset module declares its :class:`FactorSpec` ``SPEC``, its file loader, and calls ``register(DatasetEntry(SPEC,
loader, twin="module:Class", variants=...))``. Importing this package imports every dataset module; the import order
below is the registration order, i.e. the order of :data:`DATASET_NAMES` (and of the names listed in
:func:`get_dataset`'s error message).
"""
from mclcore.data.datasets.registry import DATASETS, DatasetEntry, FactorSpec, dataset_entry, get_dataset, register

from mclcore.data.datasets import shapes3d, mpi3d, cars3d, dsprites  # isort: skip  (registration order)
from mclcore.data.datasets.cars3d import Cars3DFiles
from mclcore.data.datasets.dsprites import DSpritesFile
from mclcore.data.datasets.mpi3d import MPI3DFile
from mclcore.data.datasets.shapes3d import Shapes3DFile

DATASET_NAMES = tuple(DATASETS)

__all__ = ["DATASETS", "DATASET_NAMES", "DatasetEntry", "FactorSpec", "get_dataset", "dataset_entry", "register",
           "shapes3d", "mpi3d", "cars3d", "dsprites", "Shapes3DFile", "MPI3DFile", "Cars3DFiles", "DSpritesFile"]
