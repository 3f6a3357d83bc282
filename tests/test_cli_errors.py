"""Every ``mcl`` command answers a user's mistake with one line on stderr naming the argument or file, exit code 2,
no traceback, and writes nothing (the hardening issue's probes, the fast ones)."""
import os

import pytest

from mclcore.cli import main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "a_file").write_text("")
    return tmp_path


CASES = [
    (["certify", "{d}/junk.pt"], "not a readable torch.save file"),
    (["certify", "{d}/missing.pt"], "no such file"),
    (["certify", "--synthetic", "--dz", "-1"], "dz"),
    (["tabletop", "generate", "-n", "-1", "--out", "{d}/out/x.h5"], "n: expected a positive integer"),
    (["tabletop", "generate", "-n", "2", "--out", "{d}/a_file/x.h5"], "a_file"),
    (["tabletop", "preview", "--data", "{d}/junk.pt", "--out", "{d}/out/p.png"], "not a readable HDF5 file"),
    (["tabletop", "lowdata", "--out", "{d}/out", "--n-source", "-3"], "n_source"),
    (["eval", "--model", "{d}/junk.pt", "--dataset", "mpi3d"], "not a readable torch.save"),
    (["eval", "--model", "{d}/missing.pt", "--dataset", "mpi3d"], "--model: no such file"),
    (["synthetic", "--config", "{d}/missing.json", "--out", "{d}/out"], "--config"),
    (["synthetic", "--set", "train.mcl.tau=abc", "--out", "{d}/out"], "train.mcl.tau"),
    (["synthetic", "--n", "10", "--out", "{d}/out"], "MCC needs at least"),
    (["synthetic", "--mcl-clip", "-5", "--out", "{d}/out"], "mcl.clip"),
    (["train", "betavae", "--set", "vae.lr=-1", "--out", "{d}/out"], "vae.lr"),
    (["train", "mddiff", "--set", "mcl.clip=-5", "--out", "{d}/out"], "mcl.clip"),
    (["train", "mddiff", "--data-path", "{d}/junk.pt", "--out", "{d}/out", "--quiet"], "junk.pt"),
    (["train", "worldmodel", "--data-path", "{d}/junk.pt", "--out", "{d}/out", "--quiet"], "junk.pt"),
    (["train", "worldmodel", "--set", "mcl.tau=0", "--out", "{d}/out"], "mcl.tau"),
    (["train", "betavae", "--stop-after", "-5", "--out", "{d}/out"], "--stop-after"),
    (["train", "betavae", "--stop-before", "stage2", "--out", "{d}/out", "--quiet"], "--stop-before"),
    (["train", "mddiff", "--fork-from", "{d}/missing", "--out", "{d}/out", "--quiet"], "--fork-from"),
    (["train", "betavae", "--eval-only", "--out", "{d}/out"], "no checkpoint"),
    (["demo", "--steps", "-1"], "--steps"),
]


@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_user_mistakes_are_one_line_exit_2_and_write_nothing(argv, needle, files, capsys):
    rc = main([a.format(d=files) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and needle in err[-1] and not any("Traceback" in line for line in err), err
    out = files / "out"
    assert not out.exists() or not [f for _, _, fs in os.walk(out) for f in fs], list(os.walk(out))
