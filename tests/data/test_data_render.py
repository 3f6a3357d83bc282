"""Procedural renderers: exact grids, determinism by index, every factor visible, the sample-grid script."""
import numpy as np
import pytest

from mclcore.data import RENDERERS, Cars3DRender, DSpritesRender, MPI3DRender, Shapes3DRender, get_dataset
from mclcore.data.render.__main__ import main as render_main

GRIDS = {"shapes3d": (10, 10, 10, 8, 4, 15), "dsprites": (1, 3, 6, 40, 32, 32),
         "mpi3d": (6, 6, 2, 3, 3, 40, 40), "cars3d": (4, 24, 183)}


@pytest.fixture(scope="module")
def datasets():
    return {name: cls() for name, cls in RENDERERS.items()}


@pytest.mark.parametrize("name", list(GRIDS))
def test_grid_shape_and_determinism(datasets, name):
    ds = datasets[name]
    assert ds.factor_sizes == GRIDS[name] and len(ds) == int(np.prod(GRIDS[name]))
    idx = ds.sample_index(12, 0)
    a = ds.observations_at(idx)
    assert a.shape == (12, 64, 64, 3) and a.dtype == np.uint8
    # same images whatever the batch they come in, and from a fresh instance
    b = np.concatenate([ds.observations_at(idx[i:i + 1]) for i in range(0, 12, 1)])
    c = type(ds)().observations_at(idx[::-1])[::-1]
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert a.std() > 10                                           # not blank


@pytest.mark.parametrize("name", list(GRIDS))
def test_every_factor_changes_the_image(datasets, name):
    ds = datasets[name]
    base = ds.sample_factors(3, 1)
    for f, size in enumerate(ds.factor_sizes):
        if size == 1:
            continue
        for row in base:
            ref = row.copy()
            other = row.copy()
            other[f] = (row[f] + 1) % size
            if name == "dsprites" and f == 3 and {ref[f], other[f]} == {0, 39}:
                continue                                          # orientation 0 and 2*pi coincide, as in the release
            x, y = ds.observations(np.stack([ref, other])).astype(int)
            assert np.abs(x - y).sum() > 0, f"{name}: factor {ds.factor_names[f]} did not change the image"


def test_shapes3d_fast_path_matches_float_path(datasets):
    ds = datasets["shapes3d"]
    idx = ds.sample_index(200, 2)
    fast, exact = ds.observations_at(idx), Shapes3DRender(exact=True).observations_at(idx)
    assert np.abs(fast.astype(int) - exact.astype(int)).max() <= 1


def test_shapes3d_colours_follow_hues(datasets):
    ds = datasets["shapes3d"]
    f = np.array([[0, 5, 2, 7, 2, 7]])                             # red floor, cyan wall, large sphere
    img = ds.observations(f)[0].astype(int)
    floor, wall, obj = img[60, 32], img[3, 32], img[32, 32]
    assert floor[0] > floor[1] and floor[0] > floor[2]                # hue 0 = red
    assert wall[2] > wall[0] and wall[1] > wall[0]                    # hue 0.5 = cyan
    assert obj[1] > obj[0] and obj[1] > obj[2]                        # hue 0.2 = green-yellow


def test_dsprites_binary_and_centred():
    ds = DSpritesRender()
    f = np.array([[0, 0, 5, 0, 16, 16], [0, 0, 5, 0, 0, 0]])
    img = ds.observations(f)
    assert set(np.unique(img)) <= {0, 255}
    ys, xs = np.nonzero(img[0, :, :, 0])
    assert abs(xs.mean() - 32.5) < 2 and abs(ys.mean() - 32.5) < 2
    ys, xs = np.nonzero(img[1, :, :, 0])
    assert xs.mean() < 20 and ys.mean() < 20


def test_cars3d_cache_and_identity_mesh():
    ds = Cars3DRender()
    f = np.array([[1, 3, 17], [2, 3, 17], [1, 3, 18]])
    a = ds.observations(f)
    assert ds._have.sum() == 3
    assert np.array_equal(ds.observations(f), a)
    nc = Cars3DRender(cache=False)
    assert np.array_equal(nc.observations(f), a)


def test_mpi3d_background_and_arm():
    ds = MPI3DRender()
    f = np.array([[0, 5, 1, 1, 0, 0, 20], [0, 5, 1, 1, 0, 39, 20]])
    a, b = ds.observations(f).astype(int)
    assert np.abs(a - b).sum() > 0
    assert np.abs(a[5, 2] - b[5, 2]).sum() == 0                       # corner is background in both


def test_get_dataset_names():
    assert isinstance(get_dataset("dsprites"), DSpritesRender)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("celeba")
    with pytest.raises(ValueError, match="needs a file"):
        get_dataset("mpi3d_toy")


def test_sample_grid_script(tmp_path):
    import matplotlib.image

    assert render_main(["--grid", str(tmp_path), "--datasets", "dsprites,mpi3d"]) == 0
    img = matplotlib.image.imread(str(tmp_path / "samples_dsprites.png"))
    assert img.shape[:2] == (8 * 66 + 2, 8 * 66 + 2)
    assert (tmp_path / "samples_mpi3d.png").exists() and not (tmp_path / "samples_cars3d.png").exists()
    with pytest.raises(SystemExit):
        render_main(["--grid", str(tmp_path), "--datasets", "celeba"])
