"""``mcl demo``: runs in seconds at a few steps; bad arguments are one line and exit code 2."""
import pytest

from mclcore.cli import main


def test_demo_runs_and_reports_mcc(capsys):
    assert main(["demo", "--steps", "3", "--dz", "2", "--batch", "32"]) == 0
    out = capsys.readouterr().out
    assert "MCL loss" in out and "MCC of posterior means" in out


@pytest.mark.parametrize("argv, flag", [(["--steps", "-1"], "--steps"), (["--dz", "0"], "--dz"),
                                        (["--alphabet", "1"], "--alphabet"), (["--lam", "nan"], "--lam"),
                                        (["--device", "tpu"], "--device"), (["--batch", "1"], "--batch")])
def test_demo_bad_arguments(argv, flag, capsys):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mcl demo: {flag}") and len(err.splitlines()) == 1
