"""Cars3D: factor spec, the loader of the folder of ``.mat`` files, registration with its twin.

File format: a folder of ``*.mat`` files (one per car, 183 in the release; read in sorted file-name order), each
with key ``im`` uint8 of shape (128, 128, 3, 24, 4) = (H, W, RGB, azimuth, elevation), the layout
disentanglement_lib reads with ``einsum("abcde->deabc")``. Images are area-resized to 64x64 (2x2 box average for
128 px inputs; disentanglement_lib uses PIL's antialiased thumbnail, so pixels may differ by a few levels).
Factors (elevation 4, azimuth 24, identity 183), row-major. Each file is decoded on first use and kept.

Procedural twin: :class:`mclcore.data.render.cars3d.Cars3DRender`.
"""
from __future__ import annotations

import glob
import os
import warnings

import numpy as np

from mclcore.data.base import GroundTruthDataset
from mclcore.data.datasets.registry import DatasetEntry, FactorSpec, register
from mclcore.data.formats.errors import DatasetFileError, require_file
from mclcore.data.formats.mat import mat_variables, read_mat_variable
from mclcore.data.images import resize_area

__all__ = ["SPEC", "Cars3DFiles"]

SPEC = FactorSpec("cars3d", ("elevation", "azimuth", "identity"), (4, 24, 183))


class Cars3DFiles(GroundTruthDataset):
    """Cars3D from a folder of ``.mat`` files (key ``im``, (H, W, 3, azimuths, elevations) uint8 per car).

    Files are taken in sorted name order (identity = position in that order; disentanglement_lib lists the folder
    unsorted, so its identity labels depend on the file system). Shapes of all files are checked up front with
    ``scipy.io.whosmat`` (no pixel data read); each file is read and resized on first use and then kept
    (64x64x3 x 96 views = 1.2 MB per car, 216 MB for all 183).

    Args:
        path: the folder (or a single ``.mat`` file).
        factor_sizes: (elevations, azimuths, cars); default inferred from the files, checked against them if given.
    """

    name = "cars3d"

    def __init__(self, path, factor_sizes=None):
        path = os.fspath(path)
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "*.mat")))
            if not files:
                raise DatasetFileError(f"{path}: no .mat files in this folder (expected one per car, key 'im')")
        else:
            files = [require_file(path, "Cars3D .mat file")]
        self.path = path
        self.files = files
        shape = None
        for fn in files:
            im_shape = self._whos(fn)
            if shape is None:
                shape = im_shape
            elif im_shape != shape:
                raise DatasetFileError(f"{fn}: 'im' has shape {im_shape}, but {files[0]} has {shape}")
        h, w, c, n_az, n_el = shape
        inferred = (n_el, n_az, len(files))
        if factor_sizes is not None and tuple(int(s) for s in factor_sizes) != inferred:
            raise DatasetFileError(f"{path}: files hold (elevation, azimuth, identity) = {inferred}, "
                                   f"expected {tuple(factor_sizes)}")
        if factor_sizes is None and inferred != SPEC.factor_sizes:
            warnings.warn(f"{path}: Cars3D grid is {inferred}, not the released {SPEC.factor_sizes}", stacklevel=2)
        self._views = n_az * n_el
        self._cache: dict[int, np.ndarray] = {}
        super().__init__(SPEC.factor_names, inferred)

    @staticmethod
    def _whos(fn):
        info = mat_variables(fn)
        if "im" not in info:
            raise DatasetFileError(f"{fn}: no variable 'im' (found {sorted(info)})")
        shp, cls = info["im"]
        if len(shp) != 5 or shp[2] != 3:
            raise DatasetFileError(f"{fn}: 'im' has shape {shp}, expected (H, W, 3, azimuths, elevations)")
        if cls != "uint8":
            raise DatasetFileError(f"{fn}: 'im' has class {cls}, expected uint8")
        return shp

    def _car(self, ident: int) -> np.ndarray:
        """(elevations, azimuths, 64, 64, 3) uint8 views of car ``ident``."""
        got = self._cache.get(ident)
        if got is not None:
            return got
        fn = self.files[ident]
        im = read_mat_variable(fn, "im")
        if im.dtype != np.uint8 or im.ndim != 5:
            raise DatasetFileError(f"{fn}: 'im' is {im.dtype} {im.shape}, expected uint8 (H, W, 3, az, el)")
        views = np.transpose(im, (4, 3, 0, 1, 2))  # (el, az, H, W, 3)
        el, az = views.shape[:2]
        views = resize_area(views.reshape(el * az, *views.shape[2:]), 64).reshape(el, az, 64, 64, 3)
        self._cache[ident] = views
        return views

    def _observations(self, index):
        f = self.index_to_factors(index)
        out = np.empty((index.size, 64, 64, 3), dtype=np.uint8)
        for ident in np.unique(f[:, 2]):
            sel = f[:, 2] == ident
            out[sel] = self._car(int(ident))[f[sel, 0], f[sel, 1]]
        return out


register(DatasetEntry(SPEC, Cars3DFiles, twin="mclcore.data.render.cars3d:Cars3DRender"))
