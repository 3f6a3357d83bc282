"""Package layout of mclcore.data: an acyclic import graph, no imports of training code, and the dataset registry
(one module per dataset, get_dataset as a table lookup)."""
import ast
import graphlib
from pathlib import Path

import numpy as np
import pytest

import mclcore.data
from mclcore.data import DATASET_NAMES, DATASETS, RENDERERS, DatasetFileError, MPI3DFile, get_dataset
from mclcore.data.datasets import cars3d, dsprites, mpi3d, shapes3d

PKG_DIR = Path(mclcore.data.__file__).parent
FORBIDDEN = ("mclcore.train", "mclcore.studies", "mclcore.cli")


def _modules() -> dict[str, Path]:
    root = PKG_DIR.parent.parent
    out = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """Every module ``name`` imports, at module level or inside functions (``from pkg import sub`` counts as
    importing ``pkg.sub`` when that is a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return out


def _graph():
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def test_import_graph_is_acyclic():
    modules, graph = _graph()
    assert "mclcore.data.tabletop.spec" in modules and "mclcore.data.datasets.registry" in modules
    internal = {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}
    try:
        list(graphlib.TopologicalSorter(internal).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle among mclcore.data modules: {' -> '.join(e.args[1])}")
    # the tabletop renderer takes its constants from spec.py, not from the simulator
    assert "mclcore.data.tabletop.sim" not in graph["mclcore.data.tabletop.render"]
    assert "mclcore.data.tabletop.spec" in graph["mclcore.data.tabletop.render"]
    # dataset modules know nothing about rendering (the twin is named, imported on first use)
    for m in ("shapes3d", "mpi3d", "cars3d", "dsprites", "registry", "common"):
        assert not any(t.startswith("mclcore.data.render") for t in graph[f"mclcore.data.datasets.{m}"]), m
    # file formats know nothing about datasets
    for m in ("errors", "npz", "hdf5", "mat"):
        assert not any(t.startswith("mclcore.data.datasets") for t in graph[f"mclcore.data.formats.{m}"]), m


def test_no_imports_of_training_code():
    _, graph = _graph()
    bad = {m: sorted(t for t in targets if any(t == f or t.startswith(f + ".") for f in FORBIDDEN))
           for m, targets in graph.items()}
    assert not {m: t for m, t in bad.items() if t}


def test_cycle_check_sees_cycles(tmp_path, monkeypatch):
    # the checker itself: two modules importing each other (one inside a function) form a cycle
    modules = {"p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}
    modules["p.a"].write_text("from p.b import x\n")
    modules["p.b"].write_text("def f():\n    from p import a\n")
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


# ------------------------------------------------------------------------------------------------ registry
def test_registry_has_one_entry_per_dataset_module():
    assert DATASET_NAMES == ("shapes3d", "mpi3d", "cars3d", "dsprites") == tuple(DATASETS)
    for module in (shapes3d, mpi3d, cars3d, dsprites):
        entry = DATASETS[module.SPEC.name]
        assert entry.spec is module.SPEC
        assert entry.loader.__module__ == module.__name__
        twin = entry.twin_class
        assert twin is RENDERERS[entry.name]
        ds = twin()
        assert (ds.factor_names, ds.factor_sizes) == (entry.spec.factor_names, entry.spec.factor_sizes)
        assert ds.name == entry.name and len(ds) == entry.spec.num_images
    assert DATASETS["mpi3d"].variants == ("toy", "realistic", "real")
    assert all(not DATASETS[n].variants for n in ("shapes3d", "cars3d", "dsprites"))


def test_spec_values_are_shared_read_only_and_copied_out():
    vals = shapes3d.SPEC.factor_values()
    vals[0][0] = 99.0                                       # a dataset may modify its copy ...
    assert shapes3d.SPEC.factor_values()[0][0] == 0.0      # ... without touching the spec
    with pytest.raises(ValueError):
        shapes3d.SPEC.values[3][0] = 1.0
    assert mpi3d.SPEC.factor_values() is None and cars3d.SPEC.values is None


def test_get_dataset_lookup_and_messages(tmp_path):
    sizes = (1, 1, 1, 1, 1, 2, 2)
    path = str(tmp_path / "mpi3d.npz")
    np.savez(path, images=np.zeros((4, 64, 64, 3), np.uint8))
    for name, kwargs, variant in (("mpi3d", {}, "toy"), ("mpi3d_real", {}, "real"),
                                  ("mpi3d", {"variant": "realistic"}, "realistic")):
        ds = get_dataset(name, path, factor_sizes=sizes, **kwargs)
        assert isinstance(ds, MPI3DFile) and ds.variant == variant and ds.name == f"mpi3d_{variant}"
    with pytest.raises(ValueError, match=r"^variant: expected one of \('toy', 'realistic', 'real'\), got 'sim'"):
        get_dataset("mpi3d_sim", path, factor_sizes=sizes)
    with pytest.raises(ValueError, match=r"^name: 'mpi3d_real' needs a file \(path=\.\.\.\); the procedural twin is "
                                         r"'mpi3d'$"):
        get_dataset("mpi3d_real")
    for bad in ("celeba", "shapes3d_real", "mpi3dx", "MPI3D"):
        with pytest.raises(ValueError, match=rf"^name: unknown dataset '{bad}'; expected one of "
                                             r"\('shapes3d', 'mpi3d', 'cars3d', 'dsprites'\)$"):
            get_dataset(bad)
    with pytest.raises(DatasetFileError, match="no such file"):
        get_dataset("dsprites", tmp_path / "missing.npz")
