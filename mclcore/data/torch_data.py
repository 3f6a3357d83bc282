"""torch.utils.data glue for ground-truth datasets.

Rendering and file reads are vectorised over a batch of indices, so the loader hands the dataset whole batches:
``make_loader`` uses a ``BatchSampler`` as the sampler with ``batch_size=None`` and :class:`GroundTruthTorch`
accepts a list of indices in ``__getitem__``. Each batch is ``(images, factors)``: images (B, 3, 64, 64) float32
in [0, 1] (or uint8 (B, 64, 64, 3) with ``as_float=False``), factors (B, F) int64 classes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from mclcore.data.base import GroundTruthDataset, to_float_nchw

__all__ = ["GroundTruthTorch", "make_loader"]


class GroundTruthTorch(Dataset):
    """Map-style view of a :class:`GroundTruthDataset`: ``ds[i]`` is one sample, ``ds[[i, j, ...]]`` a batch."""

    def __init__(self, dataset: GroundTruthDataset, as_float: bool = True):
        if not isinstance(dataset, GroundTruthDataset):
            raise TypeError(f"dataset: expected a GroundTruthDataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.as_float = as_float

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        single = np.ndim(index) == 0
        idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
        obs = self.dataset.observations_at(idx)
        images = to_float_nchw(obs) if self.as_float else torch.from_numpy(obs)
        factors = torch.from_numpy(self.dataset.index_to_factors(idx))
        if single:
            return images[0], factors[0]
        return images, factors


def make_loader(dataset: GroundTruthDataset, batch_size: int = 64, *, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0, as_float: bool = True, **kwargs) -> DataLoader:
    """A DataLoader yielding ``(images, factors)`` batches rendered/read one batch at a time.

    ``shuffle`` draws a seeded random permutation each epoch (``torch.Generator`` seeded with ``seed``), so two
    loaders with the same seed yield the same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    ds = GroundTruthTorch(dataset, as_float=as_float)
    if shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(int(seed)))
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                      num_workers=num_workers, **kwargs)
