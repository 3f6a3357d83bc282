"""File formats the dataset loaders read: one module per format, no dataset knowledge in any of them.

* :mod:`~mclcore.data.formats.errors` - :class:`DatasetFileError` (the one error type of every file reader) and
  :func:`require_file`.
* :mod:`~mclcore.data.formats.npz` - ``.npz`` members, memory-mapped in place or through an uncompressed cache.
* :mod:`~mclcore.data.formats.hdf5` - HDF5 via h5py: checked open, row reads in runs, ``.npy`` cache copy.
* :mod:`~mclcore.data.formats.mat` - MATLAB ``.mat`` via scipy: variable listing, one-variable reads.

A new format gets its own module here; what a dataset's file must contain (keys, shapes, factor order) is checked
in that dataset's module under :mod:`mclcore.data.datasets`.
"""
from mclcore.data.formats.errors import DatasetFileError, require_file
from mclcore.data.formats.hdf5 import h5_to_npy, open_h5, read_runs
from mclcore.data.formats.mat import mat_variables, read_mat_variable
from mclcore.data.formats.npz import open_npz_array, read_npy_stream, warn_if_decompressed_large

__all__ = ["DatasetFileError", "require_file", "open_npz_array", "read_npy_stream", "warn_if_decompressed_large",
           "open_h5", "read_runs", "h5_to_npy", "mat_variables", "read_mat_variable"]
