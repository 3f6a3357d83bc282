"""The layering of the package (README "Layout"): dependencies point inward.

Library packages (ops, losses, models, data, metrics, mechanism) never import a study, the training machinery
(mclcore.train) or the command line; report modules of a study import no training code; study modules stay small.
Checked on the source with ``ast`` (every import statement, also those inside functions).
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mclcore")
LIBRARY = ("ops", "losses", "models", "data", "metrics", "mechanism")


def _modules(folder):
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def _imports(path) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    pkg = os.path.relpath(os.path.dirname(path), os.path.dirname(ROOT)).replace(os.sep, ".")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # relative: resolve against the module's package
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("package", LIBRARY)
def test_library_packages_never_import_studies_train_or_cli(package):
    bad = []
    for path in _modules(package):
        for name in _imports(path):
            if name.startswith(("mclcore.studies", "mclcore.train", "mclcore.cli", "mclcore.demo")):
                bad.append(f"{os.path.relpath(path, ROOT)} imports {name}")
    assert not bad, bad


def test_train_machinery_never_imports_a_study():
    bad = [f"{os.path.relpath(p, ROOT)} imports {n}" for p in _modules("train") for n in _imports(p)
           if n.startswith(("mclcore.studies", "mclcore.cli"))]
    assert not bad, bad


def test_report_modules_import_no_training_code():
    reports = [p for p in _modules("studies") if os.path.basename(p) == "report.py"]
    assert len(reports) >= 3, reports                         # synthetic, disentangle, worldmodel
    for path in reports:
        study = os.path.basename(os.path.dirname(path))
        for name in _imports(path):
            assert not name.startswith(("mclcore.train", f"mclcore.studies.{study}.run",
                                        f"mclcore.studies.{study}.train")), f"{path} imports {name}"


def test_study_modules_stay_small():
    # "No study module above ~350 lines" (the structure issue): a module that grows past it should split by concern.
    big = {os.path.relpath(p, ROOT): n for p in _modules("studies") if (n := sum(1 for _ in open(p))) > 360}
    assert not big, big


def test_no_torch_C_outside_the_backend_module():
    bad = [os.path.relpath(p, ROOT) for folder in ("", ) for p in _modules(folder)
           if "torch._C" in open(p).read() and not p.endswith(os.path.join("ops", "_backend.py"))]
    assert not bad, bad
