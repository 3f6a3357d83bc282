"""The Triton-interpreter harness shared by tests/ops/test_triton.py and tests/ops/test_gpu_paths.py.

``TRITON_INTERPRET=1`` must be set before triton is first imported, so each of those files re-runs itself as a
script in a subprocess (:func:`run_file`), where :func:`run_checks` runs its checks and prints the results as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_checks(checks: dict, catch: type = Exception, limit: int = 2000) -> None:
    """Run every check (this process has TRITON_INTERPRET=1); print ``JSON:{name: None or message}``."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 (set before importing triton)"
    import warnings

    warnings.simplefilter("ignore")  # numpy's divide/overflow warnings from masked lanes of the interpreter
    results, seconds = {}, {}
    for name, check in checks.items():
        t0 = time.time()
        try:
            check()
            results[name] = None
        except catch as err:  # reported per check by the test cases
            results[name] = f"{type(err).__name__}: {err}"[:limit]
        seconds[name] = round(time.time() - t0, 2)
    if os.environ.get("MCLCORE_TRITON_TIMES"):
        print(json.dumps(seconds), file=sys.stderr)
    print("JSON:" + json.dumps(results))


def run_file(path: str, drop_env: tuple = ("MCLCORE_BACKEND",)) -> dict:
    """Run the test file ``path`` as a script under the interpreter; its checks' results ({name: None or message})."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for var in drop_env:
        env.pop(var, None)
    proc = subprocess.run([sys.executable, os.path.abspath(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")]
    assert proc.returncode == 0 and lines, f"worker failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][5:])
