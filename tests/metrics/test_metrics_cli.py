"""`mcl eval`: saved modules (torch.save / TorchScript) on a procedural dataset, JSON written atomically."""
import json
import os

import numpy as np
import pytest
import torch

from mclcore.cli import main
from mclcore.metrics import torch_representation
from mclcore.metrics.cli import load_module, write_json_atomic


def _encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 6), torch.nn.Tanh())


def test_eval_torch_save_module(tmp_path, capsys):
    model, out = tmp_path / "enc.pt", tmp_path / "res" / "results.json"
    torch.save(_encoder(), model)
    rc = main(["eval", "--model", str(model), "--dataset", "dsprites", "--metrics", "factorvae,dci,mig,sap",
               "--sample-scale", "0.005", "--dci-model", "lasso", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("factorvae.eval_accuracy", "dci.disentanglement", "mig.score", "sap.score"):
        assert 0.0 <= res["scores"][key] <= 1.0
    assert res["num_codes"] == 6 and res["procedural"] and res["protocol"]["dci_model"] == "lasso"
    assert set(res["seconds"]) == {"factorvae", "dci", "mig", "sap"}
    assert [p for p in os.listdir(out.parent) if p != "results.json"] == []   # no temporary file left
    assert "factorvae.eval_accuracy" in json.loads(capsys.readouterr().out)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit is deprecated but still how users save
def test_eval_torchscript_and_tuple_outputs(tmp_path):
    class MuLogvar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = _encoder()

        def forward(self, x):
            mu = self.enc(x)
            return mu, torch.zeros_like(mu)

    path = tmp_path / "enc.ts"
    torch.jit.save(torch.jit.script(MuLogvar()), str(path))
    module = load_module(str(path))
    assert isinstance(module, torch.jit.ScriptModule)
    rep = torch_representation(module)
    codes = rep(np.zeros((3, 64, 64, 3), np.uint8))
    assert codes.shape == (3, 6) and codes.dtype == np.float64
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(path), "--dataset", "mpi3d", "--metrics", "mig", "--sample-scale", "0.02",
                 "--out", str(out), "--no-progress"]) == 0
    assert "mig.score" in json.loads(out.read_text())["scores"]


def test_eval_errors(tmp_path, capsys):
    sd = tmp_path / "state.pt"
    torch.save(_encoder().state_dict(), sd)
    with pytest.raises(ValueError, match="state_dict"):
        load_module(str(sd))
    with pytest.raises(FileNotFoundError, match="--model"):
        load_module(str(tmp_path / "missing.pt"))
    model = tmp_path / "enc.pt"
    torch.save(_encoder(), model)
    assert main(["eval", "--model", str(model), "--dataset", "dsprites", "--metrics", "beta_vae"]) == 2
    assert "unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(model), "--dataset", "celeba"])
    # a user's mistake or a damaged file: one line naming it, exit code 2, no traceback, nothing written
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    base = ["eval", "--dataset", "mpi3d", "--metrics", "mig", "--sample-scale", "0.02", "--no-progress"]
    for argv, needle in (([*base, "--model", str(tmp_path / "missing.pt")], "--model: no such file"),
                         ([*base, "--model", str(junk)], "is not a readable torch.save"),
                         ([*base, "--model", str(sd)], "state_dict"),
                         ([*base, "--model", str(model), "--out", str(blocker / "r.json")], "--out:"),
                         ([*base, "--model", str(model), "--data-path", str(tmp_path / "none.npz")], "none.npz")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1] and "Traceback" not in "\n".join(err), err


def test_eval_prints_the_scores_before_writing_them(tmp_path, capsys, monkeypatch):
    from mclcore.metrics import cli

    model = tmp_path / "enc.pt"
    torch.save(_encoder(), model)

    def refuse(obj, path, **kw):
        raise PermissionError(f"[Errno 13] Permission denied: {path!r}")

    monkeypatch.setattr(cli, "write_json_atomic", refuse)
    rc = main(["eval", "--model", str(model), "--dataset", "mpi3d", "--metrics", "mig", "--sample-scale", "0.02",
               "--no-progress", "--out", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert rc == 2 and "mig.score" in captured.out and "Permission denied" in captured.err


def test_write_json_atomic_replaces(tmp_path):
    p = tmp_path / "x.json"
    write_json_atomic({"a": 1}, str(p))
    write_json_atomic({"a": 2}, str(p))
    assert json.loads(p.read_text()) == {"a": 2} and os.listdir(tmp_path) == ["x.json"]
