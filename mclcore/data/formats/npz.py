"""``.npz`` archives: one member as a numpy array, memory-mapped when the archive allows it.

A member stored uncompressed (``np.savez``) is memory-mapped in place, straight from the zip file (the zip local
header is parsed to find where the ``.npy`` payload starts). A compressed member (``np.savez_compressed``, e.g. the
dSprites release) cannot be mapped: it is decompressed into memory, or, with ``cache_dir=``, streamed once into an
uncompressed ``.npy`` there and memory-mapped from then on. Object arrays are refused (nothing is unpickled).
"""
from __future__ import annotations

import os
import struct
import warnings
import zipfile
import zlib

import numpy as np

from mclcore._io import atomic_path

from mclcore.data.formats.errors import DatasetFileError, require_file

__all__ = ["open_npz_array", "read_npy_stream", "warn_if_decompressed_large"]


def open_npz_array(path: str, key: str, *, cache_dir: str | None = None, mmap: bool = True) -> np.ndarray:
    """Member ``key`` of an ``.npz`` file as a numpy array, memory-mapped when possible.

    Uncompressed members are memory-mapped in place (read-only). Compressed members are decompressed into memory,
    or, when ``cache_dir`` is given, streamed into ``cache_dir/<file>.<key>.npy`` (once; reused while the source's
    size and mtime are unchanged) and memory-mapped. ``mmap=False`` always reads into memory.
    Raises :class:`DatasetFileError` for a missing key, a corrupt or truncated archive, or a non-array member.
    """
    path = require_file(path, "npz file")
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
                return read_npy_stream(f, path, key)
        except DatasetFileError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            raise DatasetFileError(f"{path}: array '{key}' could not be read: {e} (corrupt or truncated file?)")


def read_npy_stream(f, path: str, key: str) -> np.ndarray:
    """Read one ``.npy`` payload from the file object ``f`` into memory (``path``/``key`` name it in errors)."""
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


def warn_if_decompressed_large(arr, path, key) -> None:
    """Warn (at the loader's caller) when a compressed member over 2 GiB was decompressed into memory."""
    if not isinstance(arr, np.memmap) and arr.nbytes > (2 << 30):
        warnings.warn(f"{path}: '{key}' is compressed and was decompressed into memory "
                      f"({arr.nbytes / 2**30:.1f} GiB); pass cache_dir=... to memory-map an uncompressed copy",
                      stacklevel=3)


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
        with atomic_path(target) as tmp, zf.open(info) as src, open(tmp, "wb") as dst:   # no half cache on a crash
            while True:
                block = src.read(1 << 24)
                if not block:
                    break
                dst.write(block)
    try:
        return np.load(target, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DatasetFileError(f"{target}: cached copy of '{key}' from {path} is unreadable ({e}); delete it")
