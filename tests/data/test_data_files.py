"""File loaders on tiny files written in the real formats (h5, npz stored/compressed, .mat per car)."""
import os

import h5py
import numpy as np
import pytest
import scipy.io

from mclcore.data import (Cars3DFiles, DatasetFileError, DSpritesFile, MPI3DFile, Shapes3DFile, get_dataset,
                          open_npz_array, resize_area)

S3_SIZES = (2, 2, 3, 2, 2, 3)          # 144 images instead of 480,000


def _tagged_images(n, shape=(64, 64, 3)):
    """Images whose first pixels spell the index (base 256), so a test can tell which row came back."""
    img = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    idx = np.arange(n)
    img[:, 0, 0, 0], img[:, 0, 1, 0] = idx % 256, idx // 256
    return img


def _index_of(obs):
    return obs[:, 0, 0, 0].astype(int) + 256 * obs[:, 0, 1, 0].astype(int)


def _shapes3d_labels(sizes):
    grids = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1)
    values = [np.linspace(0, 1, sizes[0], endpoint=False), np.linspace(0, 1, sizes[1], endpoint=False),
              np.linspace(0, 1, sizes[2], endpoint=False), np.linspace(0.75, 1.25, sizes[3]),
              np.arange(sizes[4], dtype=float), np.linspace(-30, 30, sizes[5])]
    return np.stack([values[f][grids[:, f]] for f in range(6)], 1), values


@pytest.fixture
def shapes3d_h5(tmp_path):
    n = int(np.prod(S3_SIZES))
    labels, values = _shapes3d_labels(S3_SIZES)
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=_tagged_images(n), chunks=(16, 64, 64, 3))
        f.create_dataset("labels", data=labels)
    return str(path), values


def test_shapes3d_h5_lazy_and_row_major(shapes3d_h5):
    path, values = shapes3d_h5
    ds = Shapes3DFile(path, S3_SIZES)
    assert isinstance(ds._images, h5py.Dataset)                      # read on demand
    idx = np.array([143, 0, 7, 7, 100])
    assert np.array_equal(_index_of(ds.observations_at(idx)), idx)
    f = ds.index_to_factors(idx)
    np.testing.assert_allclose(ds.factor_values(f)[:, 3], values[3][f[:, 3]])
    mem = Shapes3DFile(path, S3_SIZES, in_memory=True)
    assert isinstance(mem._images, np.ndarray)
    assert np.array_equal(mem.observations_at(idx), ds.observations_at(idx))
    assert get_dataset("shapes3d", path, factor_sizes=S3_SIZES).name == "shapes3d"


def test_shapes3d_npz_variant_with_factor_axes(tmp_path):
    n = int(np.prod(S3_SIZES))
    labels, _ = _shapes3d_labels(S3_SIZES)
    path = str(tmp_path / "3dshapes.npz")
    np.savez(path, images=_tagged_images(n).reshape(*S3_SIZES, 64, 64, 3), labels=labels.reshape(*S3_SIZES, 6))
    ds = Shapes3DFile(path, S3_SIZES)
    assert isinstance(ds._images, np.memmap)                          # stored npz members are memory-mapped
    idx = np.arange(0, n, 5)
    assert np.array_equal(_index_of(ds.observations_at(idx)), idx)


def test_shapes3d_errors(tmp_path, shapes3d_h5):
    path, _ = shapes3d_h5
    with pytest.raises(DatasetFileError, match="expected 480000"):   # tiny file against the real grid
        Shapes3DFile(path)
    n = int(np.prod(S3_SIZES))
    labels, _ = _shapes3d_labels(S3_SIZES)
    bad = tmp_path / "short.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("images", data=_tagged_images(n - 1))
        f.create_dataset("labels", data=labels[:-1])
    with pytest.raises(DatasetFileError, match="truncated or partial"):
        Shapes3DFile(str(bad), S3_SIZES)
    small = tmp_path / "small.h5"
    with h5py.File(small, "w") as f:
        f.create_dataset("images", data=np.zeros((n, 32, 32, 3), np.uint8))
        f.create_dataset("labels", data=labels)
    with pytest.raises(DatasetFileError, match=r"expected \(N, 64, 64, 3\)"):
        Shapes3DFile(str(small), S3_SIZES)
    shuffled = tmp_path / "shuffled.h5"
    with h5py.File(shuffled, "w") as f:
        f.create_dataset("images", data=_tagged_images(n))
        f.create_dataset("labels", data=labels[::-1])
    with pytest.raises(DatasetFileError, match="row-major"):
        Shapes3DFile(str(shuffled), S3_SIZES)
    floats = tmp_path / "floats.h5"
    with h5py.File(floats, "w") as f:
        f.create_dataset("images", data=np.zeros((n, 64, 64, 3), np.float32))
        f.create_dataset("labels", data=labels)
    with pytest.raises(DatasetFileError, match="uint8"):
        Shapes3DFile(str(floats), S3_SIZES)
    cut = tmp_path / "cut.h5"
    data = open(path, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFileError, match="truncated|corrupt"):
        Shapes3DFile(str(cut), S3_SIZES)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(DatasetFileError, match="not a readable HDF5"):
        Shapes3DFile(str(junk), S3_SIZES)
    with pytest.raises(DatasetFileError, match="no such file"):
        Shapes3DFile(str(tmp_path / "missing.h5"), S3_SIZES)


MPI_SIZES = (2, 2, 2, 1, 3, 2, 4)      # 192 images


def test_mpi3d_stored_compressed_and_cached(tmp_path):
    n = int(np.prod(MPI_SIZES))
    imgs = _tagged_images(n)
    stored, packed = str(tmp_path / "mpi3d_toy.npz"), str(tmp_path / "mpi3d_real.npz")
    np.savez(stored, images=imgs)
    np.savez_compressed(packed, images=imgs)
    idx = np.array([191, 3, 64, 3])
    a = MPI3DFile(stored, "toy", MPI_SIZES)
    assert isinstance(a._images, np.memmap)
    assert np.array_equal(_index_of(a.observations_at(idx)), idx)
    b = MPI3DFile(packed, "real", MPI_SIZES)                          # decompressed into memory
    assert not isinstance(b._images, np.memmap) and b.name == "mpi3d_real"
    assert np.array_equal(b.observations_at(idx), a.observations_at(idx))
    cache = tmp_path / "cache"
    c = MPI3DFile(packed, "real", MPI_SIZES, cache_dir=str(cache))    # streamed to an uncompressed .npy once
    assert isinstance(c._images, np.memmap) and len(os.listdir(cache)) == 1
    assert np.array_equal(c.observations_at(idx), a.observations_at(idx))
    MPI3DFile(packed, "real", MPI_SIZES, cache_dir=str(cache))
    assert len(os.listdir(cache)) == 1                                # reused
    axes = str(tmp_path / "axes.npz")
    np.savez(axes, images=imgs.reshape(*MPI_SIZES, 64, 64, 3))
    assert np.array_equal(MPI3DFile(axes, factor_sizes=MPI_SIZES).observations_at(idx), a.observations_at(idx))


def test_mpi3d_errors(tmp_path):
    n = int(np.prod(MPI_SIZES))
    path = str(tmp_path / "m.npz")
    np.savez(path, images=_tagged_images(n))
    with pytest.raises(DatasetFileError, match="expected 1036800"):
        MPI3DFile(path)
    with pytest.raises(ValueError, match="variant"):
        MPI3DFile(path, "cartoon", MPI_SIZES)
    wrong_key = str(tmp_path / "k.npz")
    np.savez(wrong_key, imgs=_tagged_images(n))
    with pytest.raises(DatasetFileError, match="no array 'images'"):
        MPI3DFile(wrong_key, factor_sizes=MPI_SIZES)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetFileError, match="corrupt or truncated"):
        MPI3DFile(str(cut), factor_sizes=MPI_SIZES)
    obj = str(tmp_path / "obj.npz")
    np.savez(obj, images=np.array([None, 1], dtype=object))
    with pytest.raises(DatasetFileError, match="Python objects"):
        open_npz_array(obj, "images")


def _write_cars(folder, n_cars=3, n_az=3, n_el=2, size=128):
    os.makedirs(folder, exist_ok=True)
    for car in range(n_cars):
        im = np.zeros((size, size, 3, n_az, n_el), dtype=np.uint8)
        for az in range(n_az):
            for el in range(n_el):
                im[:, :, 0, az, el] = 10 * el
                im[:, :, 1, az, el] = 10 * az
                im[:, :, 2, az, el] = 10 * car
        im[:size // 2, :size // 2, 0] = 200                           # a quadrant to check the resize
        scipy.io.savemat(os.path.join(folder, f"car_{car:03d}_mesh.mat"), {"im": im})


def test_cars3d_layout_and_resize(tmp_path):
    folder = str(tmp_path / "cars")
    _write_cars(folder)
    with pytest.warns(UserWarning, match="not the released"):
        ds = Cars3DFiles(folder)
    assert ds.factor_sizes == (2, 3, 3)                               # (elevation, azimuth, identity)
    f = np.array([[0, 0, 0], [1, 2, 0], [1, 1, 2], [0, 2, 1]])
    obs = ds.observations(f)
    assert obs.shape == (4, 64, 64, 3)
    assert np.array_equal(obs[:, 40, 40], 10 * f)                      # channel = 10 * (el, az, car)
    assert np.all(obs[:, :32, :32, 0] == 200) and np.all(obs[:, 32:, 32:, 0] == 10 * f[:, :1, None])
    assert len(ds._cache) == 3                                         # each car decoded once
    assert Cars3DFiles(folder, factor_sizes=(2, 3, 3)).factor_sizes == (2, 3, 3)
    with pytest.raises(DatasetFileError, match="expected"):
        Cars3DFiles(folder, factor_sizes=(4, 24, 183))


def test_cars3d_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetFileError, match="no .mat files"):
        Cars3DFiles(str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    scipy.io.savemat(str(bad / "a.mat"), {"images": np.zeros((4, 4), np.uint8)})
    with pytest.raises(DatasetFileError, match="no variable 'im'"):
        Cars3DFiles(str(bad))
    flat = tmp_path / "flat"
    flat.mkdir()
    scipy.io.savemat(str(flat / "a.mat"), {"im": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(DatasetFileError, match="H, W, 3, azimuths, elevations"):
        Cars3DFiles(str(flat))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.mat").write_bytes(os.urandom(300))
    with pytest.raises(DatasetFileError, match="not a readable MATLAB"):
        Cars3DFiles(str(junk))


DS_SIZES = (1, 3, 2, 2, 3, 3)          # 108 images


def _dsprites_file(path, sizes=DS_SIZES, order=slice(None), scale=1):
    n = int(np.prod(sizes))
    classes = np.stack(np.unravel_index(np.arange(n), sizes), 1)[order]
    masks = np.zeros((n, 64, 64), np.uint8)
    for i in range(n):
        masks[i, :i % 60 + 1, 0] = scale                              # the count of lit pixels encodes the index
    np.savez_compressed(path, imgs=masks, latents_classes=classes, latents_values=classes.astype(float))
    return n


def test_dsprites(tmp_path):
    path = str(tmp_path / "dsprites.npz")
    n = _dsprites_file(path)
    ds = DSpritesFile(path, DS_SIZES)
    idx = np.array([0, 59, 107, 59])
    obs = ds.observations_at(idx)
    assert obs.shape == (4, 64, 64, 3) and set(np.unique(obs)) <= {0, 255}
    assert np.array_equal((obs[:, :, 0, 1] == 255).sum(1), idx % 60 + 1)
    assert ds.varying_factors == (1, 2, 3, 4, 5)
    bad = str(tmp_path / "order.npz")
    _dsprites_file(bad, order=slice(None, None, -1))
    with pytest.raises(DatasetFileError, match="row-major"):
        DSpritesFile(bad, DS_SIZES)
    scaled = str(tmp_path / "scaled.npz")
    _dsprites_file(scaled, scale=255)
    with pytest.raises(DatasetFileError, match="exceed 1"):
        DSpritesFile(scaled, DS_SIZES)
    with pytest.raises(DatasetFileError, match="expected 737280"):
        DSpritesFile(path)
    assert n == 108


def test_dsprites_masks_above_one_past_the_probe_are_refused_when_read(tmp_path):
    # the constructor probes the first 256 images; a 0/255 image later in the file must not load as (255*255) % 256
    sizes = (1, 3, 6, 4, 4, 4)                                    # 1152 images
    n = int(np.prod(sizes))
    masks = np.zeros((n, 64, 64), np.uint8)
    masks[:, 0, 0] = 1
    masks[1000, 0, 0] = 255
    classes = np.stack(np.unravel_index(np.arange(n), sizes), 1)
    path = str(tmp_path / "late.npz")
    np.savez(path, imgs=masks, latents_classes=classes)
    ds = DSpritesFile(path, sizes)
    assert ds.observations_at(np.array([0, 999])).max() == 255
    with pytest.raises(DatasetFileError, match="image 1000 of 'imgs' has values above 1"):
        ds.observations_at(np.array([3, 1000]))


def test_resize_area():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 128, 128, 3), dtype=np.uint8)
    y = resize_area(x, 64)
    expect = x.reshape(2, 64, 2, 64, 2, 3).astype(float).mean((2, 4))
    assert np.abs(y.astype(float) - expect).max() <= 0.5
    z = resize_area(np.full((1, 100, 90, 3), 77, np.uint8), 64)      # non-integer factor keeps constants
    assert z.shape == (1, 64, 64, 3) and np.all(z == 77)
    g = resize_area(x[:, :100, :90].astype(np.float32), 64)
    assert abs(g.mean() - x[:, :100, :90].mean()) < 0.5


def test_h5_cache_dir_and_pickling_for_workers(tmp_path, shapes3d_h5):
    import pickle

    path, _ = shapes3d_h5
    idx = np.array([5, 6, 7, 100, 3, 143])                             # a run of consecutive rows and scattered
    lazy = Shapes3DFile(path, S3_SIZES)
    cached = Shapes3DFile(path, S3_SIZES, cache_dir=str(tmp_path / "cache"))
    assert isinstance(cached._images, np.memmap)
    for ds in (lazy, cached):
        clone = pickle.loads(pickle.dumps(ds))
        assert type(clone._images) is type(ds._images)
        assert np.array_equal(_index_of(clone.observations_at(idx)), idx)
    mpi = str(tmp_path / "m.npz")
    np.savez(mpi, images=_tagged_images(int(np.prod(MPI_SIZES))).reshape(*MPI_SIZES, 64, 64, 3))
    m = pickle.loads(pickle.dumps(MPI3DFile(mpi, factor_sizes=MPI_SIZES)))
    assert isinstance(m._images, np.memmap) and np.array_equal(_index_of(m.observations_at(idx)), idx)
