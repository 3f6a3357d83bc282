"""Loaders for the dataset files users download: Shapes3D, MPI3D, Cars3D, dSprites.

Formats (the loaders check each of these and name the file and what was expected when a check fails):

* **Shapes3D** ``3dshapes.h5``: HDF5 datasets ``images`` uint8 (480000, 64, 64, 3) and ``labels`` float
  (480000, 6) with factor values (floor hue, wall hue, object hue, scale, shape, orientation), row-major over
  sizes (10, 10, 10, 8, 4, 15). Read on demand with h5py (``in_memory=True`` loads the 5.9 GB array once).
  The ``.npz`` variant (disentanglement_lib's) holds the same two arrays, possibly shaped
  (10, 10, 10, 8, 4, 15, 64, 64, 3) / (..., 6).
* **MPI3D** toy / realistic / real ``.npz``: ``images`` uint8 (1036800, 64, 64, 3) (or the 7 factor axes first),
  row-major over (object colour 6, object shape 6, object size 2, camera height 3, background colour 3,
  horizontal axis 40, vertical axis 40).
* **Cars3D**: a folder of ``*.mat`` files (one per car, 183 in the release; read in sorted file-name order), each
  with key ``im`` uint8 of shape (128, 128, 3, 24, 4) = (H, W, RGB, azimuth, elevation), the layout
  disentanglement_lib reads with ``einsum("abcde->deabc")``. Images are area-resized to 64x64 (2x2 box average
  for 128 px inputs; disentanglement_lib uses PIL's antialiased thumbnail, so pixels may differ by a few levels).
  Factors (elevation 4, azimuth 24, identity 183), row-major. Each file is decoded on first use and kept.
* **dSprites** ``.npz``: ``imgs`` uint8 (737280, 64, 64) with values {0, 1} and ``latents_classes`` int
  (737280, 6), row-major over (colour 1, shape 3, scale 6, orientation 40, x 32, y 32). Returned as RGB 0/255.

``.npz`` members stored uncompressed (``np.savez``) are memory-mapped in place. Compressed members
(``np.savez_compressed``, e.g. the dSprites release) cannot be; they are decompressed into memory, or, with
``cache_dir=``, streamed once into an uncompressed ``.npy`` there and memory-mapped from then on.

Tests write tiny grids in these formats, so every loader takes ``factor_sizes`` (default: the real grid).
"""
from __future__ import annotations

import glob
import os
import struct
import warnings
import zipfile
import zlib

import numpy as np

from mclcore.data.base import GroundTruthDataset, read_sorted

__all__ = [
    "DatasetFileError", "Shapes3DFile", "MPI3DFile", "Cars3DFiles", "DSpritesFile", "open_npz_array",
    "SHAPES3D_SIZES", "MPI3D_SIZES", "CARS3D_SIZES", "DSPRITES_SIZES", "resize_area",
]

SHAPES3D_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_SIZES = (10, 10, 10, 8, 4, 15)
MPI3D_NAMES = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
               "horizontal_axis", "vertical_axis")
MPI3D_SIZES = (6, 6, 2, 3, 3, 40, 40)
MPI3D_VARIANTS = ("toy", "realistic", "real")
CARS3D_NAMES = ("elevation", "azimuth", "identity")
CARS3D_SIZES = (4, 24, 183)
DSPRITES_NAMES = ("color", "shape", "scale", "orientation", "position_x", "position_y")
DSPRITES_SIZES = (1, 3, 6, 40, 32, 32)


class DatasetFileError(ValueError):
    """A dataset file is missing, of the wrong format, truncated or corrupt (the message says which and why)."""


def _require_file(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetFileError(f"{what}: no such file {path!r}")
    if not os.path.isfile(path):
        raise DatasetFileError(f"{what}: {path!r} is not a file")
    return path


def _check_images(shape, dtype, n_expected: int, path: str, key: str, sizes, names, image_shape=(64, 64, 3)):
    """Validate an image array's shape/dtype; return the number of leading axes that index the grid (1 or F)."""
    if dtype != np.uint8:
        raise DatasetFileError(f"{path}: '{key}' has dtype {dtype}, expected uint8")
    shape = tuple(int(s) for s in shape)
    tail = tuple(image_shape)
    if shape[-len(tail):] != tail:
        raise DatasetFileError(f"{path}: '{key}' has shape {shape}, expected (N, {', '.join(map(str, tail))})")
    lead = shape[:-len(tail)]
    if lead == tuple(sizes):
        return len(lead)
    if len(lead) == 1 and lead[0] == n_expected:
        return 1
    grid = " x ".join(f"{n}={s}" for n, s in zip(names, sizes))
    got = lead[0] if len(lead) == 1 else lead
    hint = " (truncated or partial file?)" if len(lead) == 1 and lead[0] < n_expected else ""
    raise DatasetFileError(f"{path}: '{key}' holds {got} images, expected {n_expected} = {grid}{hint}")


def _check_row_major(classes: np.ndarray, sizes, path: str, key: str) -> None:
    """Raise unless ``classes`` (N, F) enumerates the grid in row-major order (index == ravel_multi_index)."""
    n = int(np.prod(sizes))
    if classes.shape != (n, len(sizes)):
        raise DatasetFileError(f"{path}: '{key}' has shape {classes.shape}, expected ({n}, {len(sizes)})")
    idx = np.ravel_multi_index(tuple(classes.T), tuple(sizes), mode="raise")
    if not np.array_equal(idx, np.arange(n)):
        bad = int(np.argmax(idx != np.arange(n)))
        raise DatasetFileError(f"{path}: '{key}' is not in row-major factor order (first mismatch at row {bad}: "
                               f"{classes[bad].tolist()}); the loader assumes the last factor varies fastest")


# ------------------------------------------------------------------------------------------------------- npz
def open_npz_array(path: str, key: str, *, cache_dir: str | None = None, mmap: bool = True) -> np.ndarray:
    """Member ``key`` of an ``.npz`` file as a numpy array, memory-mapped when possible.

    Uncompressed members are memory-mapped in place (read-only). Compressed members are decompressed into memory,
    or, when ``cache_dir`` is given, streamed into ``cache_dir/<file>.<key>.npy`` (once; reused while the source's
    size and mtime are unchanged) and memory-mapped. ``mmap=False`` always reads into memory.
    Raises :class:`DatasetFileError` for a missing key, a corrupt or truncated archive, or a non-array member.
    """
    path = _require_file(path, "npz file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetFileError(f"{path}: not a readable .npz (zip) archive: {e} (corrupt or truncated download?)")
    with zf:
        member = key + ".npy"
        if member not in zf.namelist():
            raise DatasetFileError(f"{path}: no array '{key}' (found {sorted(n[:-4] for n in zf.namelist())})")
        info = zf.getinfo(member)
        try:
            if mmap and info.compress_type == zipfile.ZIP_STORED:
                return _memmap_stored_member(path, info)
            if mmap and cache_dir is not None:
                return _memmap_cached_member(path, zf, info, key, cache_dir)
            with zf.open(member) as f:
                return _read_npy_stream(f, path, key)
        except DatasetFileError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            raise DatasetFileError(f"{path}: array '{key}' could not be read: {e} (corrupt or truncated file?)")


def _read_npy_stream(f, path, key) -> np.ndarray:
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = _read_header(f, version)
    if dtype.hasobject:
        raise DatasetFileError(f"{path}: array '{key}' holds Python objects; refusing to unpickle it")
    count = int(np.prod(shape))
    buf = bytearray(count * dtype.itemsize)
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(view[got:])
        if not n:
            raise DatasetFileError(f"{path}: array '{key}' is truncated ({got} of {len(buf)} bytes)")
        got += n
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return np.lib.format._read_array_header(f, version)  # (3, 0): utf8 field names


def _memmap_stored_member(path, info) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise DatasetFileError(f"{path}: bad zip local header for {info.filename} (corrupt file?)")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = _read_header(f, version)
        offset = f.tell()
    if dtype.hasobject:
        raise DatasetFileError(f"{path}: array '{info.filename[:-4]}' holds Python objects; refusing to unpickle it")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if offset + nbytes > os.path.getsize(path):
        raise DatasetFileError(f"{path}: array '{info.filename[:-4]}' is truncated: needs {nbytes} bytes from offset "
                               f"{offset}, the file has {os.path.getsize(path)}")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


def _memmap_cached_member(path, zf, info, key, cache_dir) -> np.ndarray:
    os.makedirs(cache_dir, exist_ok=True)
    st = os.stat(path)
    stem = os.path.basename(path)
    target = os.path.join(cache_dir, f"{stem}.{key}.{st.st_size}.{int(st.st_mtime)}.npy")
    if not os.path.exists(target):
        tmp = target + f".tmp{os.getpid()}"
        with zf.open(info) as src, open(tmp, "wb") as dst:
            while True:
                block = src.read(1 << 24)
                if not block:
                    break
                dst.write(block)
        os.replace(tmp, target)  # atomic: a crash mid-copy leaves no half cache
    try:
        return np.load(target, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DatasetFileError(f"{target}: cached copy of '{key}' from {path} is unreadable ({e}); delete it")


def _maybe_warn_large(arr, path, key):
    if not isinstance(arr, np.memmap) and arr.nbytes > (2 << 30):
        warnings.warn(f"{path}: '{key}' is compressed and was decompressed into memory "
                      f"({arr.nbytes / 2**30:.1f} GiB); pass cache_dir=... to memory-map an uncompressed copy",
                      stacklevel=3)


# -------------------------------------------------------------------------------------------------- Shapes3D
def _read_runs(dset, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) of an h5py dataset, one slice read per run of consecutive indices.

    h5py's fancy (list) selection measured ~2,800 scattered rows/s on 64x64x3 images against ~5,700 rows/s for
    reading row by row; runs of consecutive rows (sequential batches) are read as single slices.
    """
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.r_[0, breaks]
    stops = np.r_[breaks, idx.size]
    return np.concatenate([dset[int(idx[a]):int(idx[b - 1]) + 1] for a, b in zip(starts, stops)], axis=0)


def _h5_to_npy(dset, path: str, cache_dir: str) -> np.ndarray:
    """Copy an h5py image dataset once into ``cache_dir`` as an uncompressed .npy and memory-map it."""
    os.makedirs(cache_dir, exist_ok=True)
    st = os.stat(path)
    target = os.path.join(cache_dir, f"{os.path.basename(path)}.images.{st.st_size}.{int(st.st_mtime)}.npy")
    if not os.path.exists(target):
        tmp = target + f".tmp{os.getpid()}.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=dset.shape)
        step = 8192
        for i in range(0, dset.shape[0], step):  # sequential reads: fast even for a contiguous 5.9 GB dataset
            out[i:i + step] = dset[i:i + step]
        out.flush()
        del out
        os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


def _shapes3d_values():
    return [np.linspace(0, 1, 10, endpoint=False)] * 3 + [np.linspace(0.75, 1.25, 8), np.arange(4.0),
                                                          np.linspace(-30, 30, 15)]


class Shapes3DFile(GroundTruthDataset):
    """Shapes3D from ``3dshapes.h5`` (or disentanglement_lib's ``.npz`` variant); see the module docstring.

    Args:
        path: the ``.h5``/``.hdf5`` or ``.npz`` file.
        factor_sizes: the grid (default (10, 10, 10, 8, 4, 15)); tests pass tiny grids.
        in_memory: read all images into RAM at once (5.9 GB for the real file) instead of on demand.
        cache_dir: where to keep a memory-mappable uncompressed copy of the images (for ``.h5`` and compressed
            ``.npz``), made once with sequential reads.

    Reading the ``.h5`` on demand costs ~0.2 ms per scattered image (h5py), i.e. over a minute for the ~430,000
    distinct images of the metric protocol; for metrics use ``in_memory=True`` or ``cache_dir=`` (memory-mapped,
    served from the page cache).

    The labels are read whole (23 MB), checked to enumerate the grid in row-major order, and their distinct values
    per column become :meth:`factor_values`.
    """

    name = "shapes3d"

    def __init__(self, path, factor_sizes=SHAPES3D_SIZES, *, in_memory: bool = False, cache_dir=None):
        self.path = _require_file(path, "Shapes3D file")
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 6:
            raise ValueError(f"factor_sizes: Shapes3D has 6 factors {SHAPES3D_NAMES}, got {sizes}")
        n = int(np.prod(sizes))
        self._h5 = None
        ext = os.path.splitext(self.path)[1].lower()
        if ext in (".h5", ".hdf5"):
            images, labels = self._open_h5(n, sizes)
        elif ext == ".npz":
            images = open_npz_array(self.path, "images", cache_dir=cache_dir)
            _maybe_warn_large(images, self.path, "images")
            labels = np.asarray(open_npz_array(self.path, "labels", mmap=False))
            lead = _check_images(images.shape, images.dtype, n, self.path, "images", sizes, SHAPES3D_NAMES)
            if lead > 1:
                images = images.reshape(n, 64, 64, 3)
            labels = labels.reshape(-1, labels.shape[-1]) if labels.ndim > 2 else labels
        else:
            raise DatasetFileError(f"{self.path}: unknown Shapes3D file type {ext!r} (expected .h5, .hdf5 or .npz)")
        values = self._check_labels(labels, sizes, n)
        super().__init__(SHAPES3D_NAMES, sizes, values)
        if cache_dir is not None and self._h5 is not None:
            images = _h5_to_npy(images, self.path, cache_dir)
        if in_memory and not isinstance(images, np.ndarray):
            images = images[()]
        elif in_memory and isinstance(images, np.memmap):
            images = np.array(images)
        self._images = images

    def _open_h5(self, n, sizes):
        import h5py

        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise DatasetFileError(f"{self.path}: not a readable HDF5 file: {e} (corrupt or truncated download?)")
        for key in ("images", "labels"):
            if key not in self._h5:
                raise DatasetFileError(f"{self.path}: missing HDF5 dataset '{key}' (found {sorted(self._h5.keys())})")
        images = self._h5["images"]
        _check_images(images.shape, images.dtype, n, self.path, "images", sizes, SHAPES3D_NAMES)
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
                raise DatasetFileError(f"{self.path}: label column {f} ({SHAPES3D_NAMES[f]}) has {uniq.size} distinct "
                                       f"values, expected {sizes[f]}")
            classes[:, f] = inv.reshape(-1)
            values.append(uniq)
        _check_row_major(classes, sizes, self.path, "labels")
        return values

    def _observations(self, index):
        imgs = self._images
        if isinstance(imgs, np.ndarray):  # in memory or memory-mapped
            return np.asarray(read_sorted(lambda i: imgs[i], index))
        try:
            return read_sorted(lambda i: _read_runs(imgs, i), index)
        except OSError as e:
            raise DatasetFileError(f"{self.path}: reading images failed: {e} (truncated or corrupt file?)")

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self):
        # DataLoader workers started with "spawn" pickle the dataset: h5py handles cannot be pickled and a memmap
        # would be pickled as a full copy, so both are reopened in the worker.
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_images"], state["_reopen"] = _detach_images(self._images)
        return state

    def __setstate__(self, state):
        reopen = state.pop("_reopen", None)
        self.__dict__.update(state)
        if reopen == "h5":
            import h5py

            self._h5 = h5py.File(self.path, "r")
            self._images = self._h5["images"]
        elif reopen is not None:
            self._images = np.memmap(reopen[0], dtype=reopen[1], mode="r", offset=reopen[2], shape=reopen[3])


def _detach_images(images):
    """(picklable images or None, how to reopen them) for __getstate__ of file-backed datasets."""
    if isinstance(images, np.memmap) and images.filename is not None:
        return None, (images.filename, images.dtype, images.offset, images.shape)
    if not isinstance(images, np.ndarray):
        return None, "h5"
    return images, None


# ----------------------------------------------------------------------------------------------------- MPI3D
class MPI3DFile(GroundTruthDataset):
    """MPI3D toy / realistic / real from its ``.npz`` (key ``images``); see the module docstring.

    ``variant`` only names the dataset (the three share the grid). Uncompressed archives are memory-mapped;
    for compressed ones pass ``cache_dir`` (else the 12.7 GB array is decompressed into memory).
    """

    def __init__(self, path, variant: str = "toy", factor_sizes=MPI3D_SIZES, *, cache_dir=None):
        if variant not in MPI3D_VARIANTS:
            raise ValueError(f"variant: expected one of {MPI3D_VARIANTS}, got {variant!r}")
        self.path = _require_file(path, "MPI3D file")
        self.variant = variant
        self.name = f"mpi3d_{variant}"
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 7:
            raise ValueError(f"factor_sizes: MPI3D has 7 factors {MPI3D_NAMES}, got {sizes}")
        n = int(np.prod(sizes))
        images = open_npz_array(self.path, "images", cache_dir=cache_dir)
        _maybe_warn_large(images, self.path, "images")
        lead = _check_images(images.shape, images.dtype, n, self.path, "images", sizes, MPI3D_NAMES)
        if lead > 1:
            images = images.reshape(n, 64, 64, 3)
        super().__init__(MPI3D_NAMES, sizes)
        self._images = images

    def _observations(self, index):
        return np.asarray(read_sorted(lambda i: self._images[i], index))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"], state["_reopen"] = _detach_images(self._images)
        return state

    __setstate__ = Shapes3DFile.__setstate__


# ---------------------------------------------------------------------------------------------------- Cars3D
def resize_area(images: np.ndarray, size: int = 64) -> np.ndarray:
    """Area (box-filter) resize of (N, H, W, C) images to (N, size, size, C), uint8 in -> uint8 out.

    Each output pixel is the mean of the input area it covers (exact 2x2 means for 128 -> 64), implemented as two
    small matrix products so it works for any input size without PIL or torchvision.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    if h % size == 0 and w % size == 0:  # integer factor: a reshape-mean is exact and ~10x faster than einsum
        fh, fw = h // size, w // size
        x = images.reshape(n, size, fh, size, fw, c).mean(axis=(2, 4), dtype=np.float32)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8) if images.dtype == np.uint8 else x
    rows, cols = _area_matrix(h, size), _area_matrix(w, size)
    x = images.astype(np.float32)
    x = np.einsum("oh,nhwc->nowc", rows, x, optimize=True)
    x = np.einsum("pw,nowc->nopc", cols, x, optimize=True)
    if images.dtype == np.uint8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: the overlap of output cell [o, o+1) * n_in/n_out with each input pixel, rows sum 1."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


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
            files = [_require_file(path, "Cars3D .mat file")]
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
        if factor_sizes is None and inferred != CARS3D_SIZES:
            warnings.warn(f"{path}: Cars3D grid is {inferred}, not the released {CARS3D_SIZES}", stacklevel=2)
        self._views = n_az * n_el
        self._cache: dict[int, np.ndarray] = {}
        super().__init__(CARS3D_NAMES, inferred)

    @staticmethod
    def _whos(fn):
        import scipy.io

        try:
            info = {name: (shp, cls) for name, shp, cls in scipy.io.whosmat(fn)}
        except Exception as e:  # scipy raises several types for bad headers
            raise DatasetFileError(f"{fn}: not a readable MATLAB file: {e} (corrupt or truncated?)")
        if "im" not in info:
            raise DatasetFileError(f"{fn}: no variable 'im' (found {sorted(info)})")
        shp, cls = info["im"]
        if len(shp) != 5 or shp[2] != 3:
            raise DatasetFileError(f"{fn}: 'im' has shape {shp}, expected (H, W, 3, azimuths, elevations)")
        if cls != "uint8":
            raise DatasetFileError(f"{fn}: 'im' has class {cls}, expected uint8")
        return tuple(int(s) for s in shp)

    def _car(self, ident: int) -> np.ndarray:
        """(elevations, azimuths, 64, 64, 3) uint8 views of car ``ident``."""
        got = self._cache.get(ident)
        if got is not None:
            return got
        import scipy.io

        fn = self.files[ident]
        try:
            im = scipy.io.loadmat(fn, variable_names=["im"])["im"]
        except Exception as e:
            raise DatasetFileError(f"{fn}: could not read 'im': {e} (corrupt or truncated?)")
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


# -------------------------------------------------------------------------------------------------- dSprites
def _dsprites_values():
    return [np.ones(1), np.arange(1.0, 4.0), np.linspace(0.5, 1, 6), np.linspace(0, 2 * np.pi, 40),
            np.linspace(0, 1, 32), np.linspace(0, 1, 32)]


class DSpritesFile(GroundTruthDataset):
    """dSprites from ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (``imgs``, ``latents_classes``).

    The release is compressed (26 MB on disk, 3 GB of pixels): without ``cache_dir`` the images are decompressed
    into memory. ``metadata`` (a pickled dict) is never loaded. Observations are RGB uint8 with the sprite at 255.
    """

    name = "dsprites"

    def __init__(self, path, factor_sizes=DSPRITES_SIZES, *, cache_dir=None):
        self.path = _require_file(path, "dSprites file")
        sizes = tuple(int(s) for s in factor_sizes)
        if len(sizes) != 6:
            raise ValueError(f"factor_sizes: dSprites has 6 factors {DSPRITES_NAMES}, got {sizes}")
        n = int(np.prod(sizes))
        imgs = open_npz_array(self.path, "imgs", cache_dir=cache_dir)
        _maybe_warn_large(imgs, self.path, "imgs")
        lead = _check_images(imgs.shape, imgs.dtype, n, self.path, "imgs", sizes, DSPRITES_NAMES, image_shape=(64, 64))
        if lead > 1:
            imgs = imgs.reshape(n, 64, 64)
        classes = np.asarray(open_npz_array(self.path, "latents_classes", mmap=False))
        if classes.dtype.kind not in "iu":
            raise DatasetFileError(f"{self.path}: 'latents_classes' has dtype {classes.dtype}, expected integers")
        _check_row_major(classes.astype(np.int64), sizes, self.path, "latents_classes")
        probe = np.asarray(imgs[: min(n, 256)])
        if probe.max(initial=0) > 1:
            raise DatasetFileError(f"{self.path}: 'imgs' values exceed 1 (max {probe.max()}); dSprites stores 0/1 "
                                   f"masks")
        super().__init__(DSPRITES_NAMES, sizes, _dsprites_values() if sizes == DSPRITES_SIZES else None)
        self._imgs = imgs

    def _observations(self, index):
        masks = np.asarray(read_sorted(lambda i: self._imgs[i], index))
        return np.repeat((masks * np.uint8(255))[..., None], 3, axis=3)
