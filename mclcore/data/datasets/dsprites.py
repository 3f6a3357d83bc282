"""dSprites: factor spec, the loader of the release ``.npz``, registration with its twin.

File format: ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` with ``imgs`` uint8 (737280, 64, 64), values
{0, 1}, and ``latents_classes`` int (737280, 6), row-major over (colour 1, shape 3, scale 6, orientation 40, x 32,
y 32). Returned as RGB 0/255. The release is compressed: see :mod:`mclcore.data.formats.npz` for ``cache_dir``.

Procedural twin: :class:`mclcore.data.render.dsprites.DSpritesRender`.
"""
from __future__ import annotations

import numpy as np

from mclcore.data.base import GroundTruthDataset, read_sorted
from mclcore.data.datasets.common import check_images, check_row_major
from mclcore.data.datasets.registry import DatasetEntry, FactorSpec, register
from mclcore.data.formats.errors import DatasetFileError, require_file
from mclcore.data.formats.npz import open_npz_array, warn_if_decompressed_large

__all__ = ["SPEC", "DSpritesFile"]

SPEC = FactorSpec(
    "dsprites", ("color", "shape", "scale", "orientation", "position_x", "position_y"), (1, 3, 6, 40, 32, 32),
    values=(np.ones(1), np.arange(1.0, 4.0), np.linspace(0.5, 1, 6), np.linspace(0, 2 * np.pi, 40),
            np.linspace(0, 1, 32), np.linspace(0, 1, 32)))


class DSpritesFile(GroundTruthDataset):
    """dSprites from ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (``imgs``, ``latents_classes``).

    The release is compressed (26 MB on disk, 3 GB of pixels): without ``cache_dir`` the images are decompressed
    into memory. ``metadata`` (a pickled dict) is never loaded. Observations are RGB uint8 with the sprite at 255.
    """

    name = "dsprites"

    def __init__(self, path, factor_sizes=SPEC.factor_sizes, *, cache_dir=None):
        self.path = require_file(path, "dSprites file")
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 6:
            raise ValueError(f"factor_sizes: dSprites has 6 factors {SPEC.factor_names}, got {sizes}")
        n = int(np.prod(sizes))
        imgs = open_npz_array(self.path, "imgs", cache_dir=cache_dir)
        warn_if_decompressed_large(imgs, self.path, "imgs")
        lead = check_images(imgs.shape, imgs.dtype, n, self.path, "imgs", sizes, SPEC.factor_names,
                            image_shape=(64, 64))
        if lead > 1:
            imgs = imgs.reshape(n, 64, 64)
        classes = np.asarray(open_npz_array(self.path, "latents_classes", mmap=False))
        if classes.dtype.kind not in "iu":
            raise DatasetFileError(f"{self.path}: 'latents_classes' has dtype {classes.dtype}, expected integers")
        check_row_major(classes.astype(np.int64), sizes, self.path, "latents_classes")
        probe = np.asarray(imgs[: min(n, 256)])
        if probe.max(initial=0) > 1:
            raise DatasetFileError(f"{self.path}: 'imgs' values exceed 1 (max {probe.max()}); dSprites stores 0/1 "
                                   f"masks")
        super().__init__(SPEC.factor_names, sizes, SPEC.factor_values() if sizes == SPEC.factor_sizes else None)
        self._imgs = imgs

    def _observations(self, index):
        masks = np.asarray(read_sorted(lambda i: self._imgs[i], index))
        # The constructor probes the first 256 images only (reading all 737,280 would take the whole file); every
        # batch read is checked too, so a 0/255 image anywhere raises instead of loading as 255 * 255 (wrapped).
        if masks.size and masks.max() > 1:
            bad = int(np.asarray(index).reshape(-1)[int(np.argmax(masks.reshape(len(masks), -1).max(1) > 1))])
            raise DatasetFileError(f"{self.path}: image {bad} of 'imgs' has values above 1 (max {masks.max()}); "
                                   f"dSprites stores 0/1 masks")
        return np.repeat((masks * np.uint8(255))[..., None], 3, axis=3)


register(DatasetEntry(SPEC, DSpritesFile, twin="mclcore.data.render.dsprites:DSpritesRender"))
