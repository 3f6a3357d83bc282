"""benchmarks/gpu_suite.sh without a GPU: its dry run, the files and flags it uses, its drivers, its failure handling.

* ``--dry-run`` prints every step with its timeout (the sum within the 9-minute budget) and runs nothing;
* every file a step names exists (the drivers: as written by ``--write-drivers``), and every benchmark / driver
  command line is accepted by that script's own argparse (parsed by its ``main`` with ``parse_args`` stopped right
  after parsing, in one subprocess);
* the embedded drivers run on the CPU (``--device cpu``: the sanitizer driver at B = 257, d = 67 with every op,
  comp_contrast included, the profiler driver with --quick);
* a failing step does not stop the suite, every failure is listed at the end with exit status 1, a step past its
  timeout is killed, and a step the budget no longer covers is reported, not run (``PYTHON`` replaced by
  ``false`` / ``true`` / ``sleep``, so no step does real work).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
BUDGET_S = 540  # 9 minutes on one H100
STEP = re.compile(r"^\[(\d+)\] (\S+) \(timeout (\d+) s\): (.*)$")
EXPECTED = ["env", "build", "pytest_gpu", "pytest_cuda_twins", "odd_sizes", "memcheck", "racecheck",
            "bench_infonce", "bench_critic_grad", "bench_mech_derivs", "bench_mcl_step", "bench_mcl_diagnostics",
            "bench_comp_contrast", "profile", "bench_mcl_gather"]


def _bash(*args, env=None, timeout=120):
    return subprocess.run(["bash", SUITE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_suite")
    proc = _bash("--write-drivers", str(d / "drivers"))
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture(scope="module")
def steps(out_dir):
    t0 = time.perf_counter()
    proc = _bash("--dry-run", "--out", str(out_dir))
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert wall < 5, f"the dry run took {wall:.1f} s: it must not run anything"
    found = [STEP.match(line) for line in proc.stdout.splitlines()]
    return [dict(n=int(m[1]), name=m[2], timeout=int(m[3]), cmd=m[4]) for m in found if m], proc.stdout


def _script_calls(cmd: str) -> list[tuple[str, list[str]]]:
    """(script, argv) of every ``*.py`` a command line runs with python (shell operators end an argv)."""
    toks = shlex.split(cmd)
    calls = []
    for i, t in enumerate(toks):
        if i and t.endswith(".py") and os.path.basename(toks[i - 1]).startswith("python"):
            argv = []
            for a in toks[i + 1:]:
                if a in ("&&", "||", ";", "|") or a.startswith(("&&", "||")):
                    break
                argv.append(a)
            calls.append((t, argv))
    return calls


def test_dry_run_lists_every_step_within_the_budget(steps):
    rows, text = steps
    assert [r["name"] for r in rows] == EXPECTED
    assert all(r["timeout"] > 0 for r in rows)
    total = sum(r["timeout"] for r in rows)
    assert total <= BUDGET_S, f"the step timeouts add up to {total} s, over the {BUDGET_S} s budget"
    assert f"sum of timeouts: {total} s" in text


def test_every_step_command_is_valid_bash(steps):
    for r in steps[0]:
        proc = subprocess.run(["bash", "-n", "-c", r["cmd"]], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"step {r['name']}: {proc.stderr}"


def test_steps_run_what_the_issue_asks(steps):
    cmd = {r["name"]: r["cmd"] for r in steps[0]}
    build = shlex.split(cmd["build"])
    assert "TORCH_CUDA_ARCH_LIST=9.0" in build and "--no-build-isolation" in build
    assert build[build.index("-e") + 1] == "."
    assert "pytest" in cmd["pytest_gpu"] and "-m gpu" in cmd["pytest_gpu"]
    for tool in ("memcheck", "racecheck"):
        assert f"--tool {tool}" in cmd[tool] and "--error-exitcode 1" in cmd[tool]
        assert "--B 257 --d 67" in cmd[tool] and "--device cuda" in cmd[tool]
    assert re.search(r"--batch( \d+)* 65536", cmd["bench_infonce"]) and "--dtype bfloat16" in cmd["bench_infonce"]
    # comp_contrast on the GPU at the training batch and at a GPU-sized one
    assert re.search(r"--batch 256( \d+)* 4096", cmd["bench_comp_contrast"]), cmd["bench_comp_contrast"]
    # every benchmark that takes --device runs with --device cuda
    gpu_benches = sorted(f for f in os.listdir(os.path.join(ROOT, "benchmarks"))
                         if f.startswith("bench_") and f.endswith(".py")
                         and "add_device_args(" in open(os.path.join(ROOT, "benchmarks", f)).read())
    assert gpu_benches
    for f in gpu_benches:
        name = f[:-3]
        assert name in cmd, f"{f} takes --device but the suite does not run it"
        assert f"benchmarks/{f}" in cmd[name] and "--device cuda" in cmd[name]
    assert "torch.profiler" in open(SUITE).read() and "--device cuda" in cmd["profile"]
    # more than one GPU: torchrun over all of them; one GPU: the same benchmark in one process
    gather = cmd["bench_mcl_gather"]
    assert "--standalone --nproc-per-node $n benchmarks/bench_mcl_gather.py --device cuda" in gather
    assert "if (( n > 1 ))" in gather and "one process" in gather


def test_every_referenced_file_exists(steps, out_dir):
    for r in steps[0]:
        for script, _ in _script_calls(r["cmd"]):
            path = script if os.path.isabs(script) else os.path.join(ROOT, script)
            assert os.path.isfile(path), f"step {r['name']}: {script} does not exist"
        for tok in shlex.split(r["cmd"]):
            if tok.startswith(("tests/", "benchmarks/")) and not tok.startswith(str(out_dir)):
                assert os.path.exists(os.path.join(ROOT, tok)), f"step {r['name']}: {tok} does not exist"
    twins = next(r["cmd"] for r in steps[0] if r["name"] == "pytest_cuda_twins")
    src = open(os.path.join(ROOT, "tests", "ops", "test_cuda_compile.py")).read()
    for word in re.search(r"-k '([^']*)'", twins)[1].replace(" or ", " ").split():
        assert re.search(rf"def test_\w*{word}", src), f"-k {word}: no such test in test_cuda_compile.py"
    markers = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert re.search(r'"gpu:', markers), "pytest -m gpu: the marker is not declared in pyproject.toml"


_PARSE = r'''
import argparse, importlib.util, json, os, sys
sys.path.insert(0, os.getcwd())

class Parsed(Exception):
    pass

_orig = argparse.ArgumentParser.parse_args

def parse_args(self, args=None, namespace=None):
    raise Parsed(_orig(self, args, namespace))

argparse.ArgumentParser.parse_args = parse_args
out = {}
for i, (script, argv) in enumerate(json.loads(sys.argv[1])):
    key = script + " " + " ".join(argv)
    spec = importlib.util.spec_from_file_location(f"suite_script_{i}", script)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        mod.main(argv)
        out[key] = "main() returned without parsing its arguments"
    except Parsed:
        out[key] = "ok"
    except SystemExit as e:
        out[key] = f"rejected by argparse (exit {e.code})"
print(json.dumps(out))
'''


def test_every_command_line_is_accepted_by_its_argparse(steps):
    calls = [c for r in steps[0] for c in _script_calls(r["cmd"])]
    names = {os.path.basename(s) for s, _ in calls}
    assert {"bench_infonce.py", "bench_critic_grad.py", "bench_mech_derivs.py", "bench_mcl_step.py",
            "bench_mcl_diagnostics.py", "bench_mcl_gather.py", "bench_comp_contrast.py", "sanitize_driver.py",
            "profile_driver.py"} <= names
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PARSE, json.dumps(calls)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in result.items() if v != "ok"}
    assert not bad, f"{bad}\n{proc.stderr[-3000:]}"


def test_the_drivers_run_on_the_cpu(out_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    drv = out_dir / "drivers"
    proc = subprocess.run([sys.executable, str(drv / "sanitize_driver.py"), "--device", "cpu", "--B", "257", "--d",
                           "67"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every op the memcheck / racecheck steps run on the GPU, here on the CPU ops
    assert "ran cpu/infonce, cpu/critic_grad, cpu/mech_derivs, cpu/comp_contrast" in proc.stdout
    proc = subprocess.run([sys.executable, str(drv / "profile_driver.py"), "--device", "cpu", "--quick", "--no-csv",
                           "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "profile.txt").read_text()
    for w in ("infonce_float32_B256", "critic_grad_B256", "mech_derivs_dz10_B256", "mcl_step_B256"):
        assert f"== {w}:" in table


def test_a_failing_step_does_not_stop_the_suite(tmp_path):
    proc = _bash("--only", "pytest_gpu,odd_sizes,bench_critic_grad", "--out", str(tmp_path),
                 env={"PYTHON": "false"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "3 step(s) failed" in summary
    for name in ("pytest_gpu", "odd_sizes", "bench_critic_grad"):
        assert re.search(rf"{name}\s+FAIL \(exit 1\)", summary), summary
        assert (tmp_path / "logs" / f"{name}.log").exists()
    assert re.search(r"bench_infonce\s+-", summary)  # not selected
    assert (tmp_path / "drivers" / "sanitize_driver.py").exists()


def test_every_step_passing_exits_zero(tmp_path):
    proc = _bash("--only", "bench_critic_grad,bench_mcl_step", "--out", str(tmp_path), env={"PYTHON": "true"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every step passed" in (tmp_path / "summary.txt").read_text()


def test_a_hung_step_is_killed_at_its_timeout(tmp_path):
    # budget 11 s: the step gets min(its 30 s, 11 - 5) = 6 s; "sleep 60 #" turns the command into a 60 s hang
    t0 = time.perf_counter()
    proc = _bash("--only", "bench_critic_grad", "--budget", "11", "--out", str(tmp_path),
                 env={"PYTHON": "sleep 60 #"})
    assert time.perf_counter() - t0 < 30
    assert proc.returncode == 1
    assert re.search(r"bench_critic_grad\s+TIMEOUT", (tmp_path / "summary.txt").read_text())


def test_a_step_past_the_budget_is_reported_not_run(tmp_path):
    proc = _bash("--only", "bench_critic_grad,bench_mcl_step", "--budget", "0", "--out", str(tmp_path),
                 env={"PYTHON": "true"})
    assert proc.returncode == 1
    summary = (tmp_path / "summary.txt").read_text()
    assert "2 step(s) failed" in summary and "budget was spent" in summary


def test_unknown_options_and_steps_are_refused():
    assert _bash("--frobnicate").returncode == 2
    assert _bash("--only", "no_such_step").returncode == 2
