"""The dataset registry: one :class:`DatasetEntry` per dataset name, filled by the modules of this package.

Each dataset module (:mod:`~mclcore.data.datasets.shapes3d`, ...) declares a :class:`FactorSpec`, defines its file
loader and calls :func:`register`; :func:`get_dataset` is a lookup in :data:`DATASETS`.

The procedural twin is named by its import path (``"module:Class"``) and imported on first use rather than at
registration: the twin's module imports the dataset module's :class:`FactorSpec` (the twin reproduces the real
grid, so the real dataset is the source of truth), and importing the twin here as well would close an import cycle.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from mclcore.data.base import GroundTruthDataset

__all__ = ["FactorSpec", "DatasetEntry", "DATASETS", "register", "get_dataset", "dataset_entry"]


@dataclass(frozen=True)
class FactorSpec:
    """A dataset's factor grid: names and sizes in row-major order (the last factor varies fastest), and the
    physical values of each factor's classes where the dataset defines them (None: the class indices)."""

    name: str
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    values: tuple[np.ndarray, ...] | None = field(default=None, compare=False)

    def __post_init__(self):
        if len(self.factor_names) != len(self.factor_sizes):
            raise ValueError(f"{self.name}: {len(self.factor_names)} factor names for {len(self.factor_sizes)} sizes")
        if self.values is not None and [len(v) for v in self.values] != list(self.factor_sizes):
            raise ValueError(f"{self.name}: factor values of lengths {[len(v) for v in self.values]} do not match "
                             f"the sizes {self.factor_sizes}")
        for v in self.values or ():
            v.flags.writeable = False  # shared by every dataset built from the spec (factor_values() copies)

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def num_images(self) -> int:
        return int(np.prod(self.factor_sizes))

    def factor_values(self) -> list[np.ndarray] | None:
        """Fresh float64 copies of the per-factor values (a dataset may keep them), or None."""
        return None if self.values is None else [np.array(v, dtype=np.float64) for v in self.values]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    Attributes:
        spec: the factor grid (``spec.name`` is the registry key).
        loader: the file loader class, called as ``loader(path, **kwargs)`` (``variant=`` added when the dataset
            has variants).
        twin: ``"module:Class"`` of the procedural twin (no file needed); :attr:`twin_class` imports it.
        variants: file variants, named ``"<name>_<variant>"`` in :func:`get_dataset` (the first is the default); all
            share the grid and the one twin.
    """

    spec: FactorSpec
    loader: type
    twin: str
    variants: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def twin_class(self) -> type:
        module, _, attr = self.twin.partition(":")
        return getattr(importlib.import_module(module), attr)


DATASETS: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` under ``entry.name`` (a name may be registered once)."""
    if entry.name in DATASETS:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    if "_" in entry.name:
        raise ValueError(f"dataset name {entry.name!r}: '_' separates a name from its variant")
    DATASETS[entry.name] = entry
    return entry


def dataset_entry(name: str) -> tuple[DatasetEntry, str | None]:
    """(entry, variant or None) for ``name`` = ``"<dataset>"`` or ``"<dataset>_<variant>"`` of a dataset with
    variants; a ValueError naming ``name`` otherwise. The variant is not checked here (the loader checks it)."""
    entry = DATASETS.get(name)
    if entry is not None:
        return entry, None
    base, sep, variant = name.partition("_")
    entry = DATASETS.get(base)
    if sep and entry is not None and entry.variants:
        return entry, variant
    raise ValueError(f"name: unknown dataset {name!r}; expected one of {tuple(DATASETS)}")


def get_dataset(name: str, path: str | None = None, **kwargs) -> GroundTruthDataset:
    """A dataset by name: the file loader when ``path`` is given, else the procedural twin.

    ``name`` is one of shapes3d, mpi3d (or mpi3d_toy / mpi3d_realistic / mpi3d_real with a file), cars3d,
    dsprites. ``kwargs`` go to the loader (e.g. ``cache_dir``, ``factor_sizes``) or the renderer.
    """
    entry, variant = dataset_entry(name)
    if path is None:
        if variant is not None:
            raise ValueError(f"name: {name!r} needs a file (path=...); the procedural twin is {entry.name!r}")
        return entry.twin_class(**kwargs)
    if entry.variants:
        if variant is None:
            variant = kwargs.pop("variant", entry.variants[0])
        return entry.loader(path, variant=variant, **kwargs)
    return entry.loader(path, **kwargs)
