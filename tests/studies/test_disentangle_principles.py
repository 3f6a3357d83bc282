"""The four principle models (compvae, mmdvae, qlae, intervae) in the disentanglement study: registered as VAE kinds
with beta-VAE's budget and architecture, trained and evaluated end to end through the shared loop at tiny sizes, a
stopped run resumes to the uninterrupted run's weights (same seed -> same weights is
tests/studies/test_disentangle.py::test_every_model_trains_deterministically, parametrised over MODELS), options
are checked."""
import os

import numpy as np
import pytest
import torch

from mclcore._io import load_checkpoint
from mclcore.models.image_principles import IMAGE_PRINCIPLES
from mclcore.studies.disentangle import run as study
from mclcore.studies.disentangle.config import MODELS, build_config, validate
from mclcore.studies.disentangle.evaluate import evaluate, generate_samples
from mclcore.studies.disentangle.principle_config import PRINCIPLE_MODELS
from mclcore.train.config import apply_overrides

from test_disentangle import TINY, states_equal

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)

EXTRA = ["principles.comp_rows=2", "eval.dci_model=hist_gbt"]   # DCI at 40-class factors: gbt ~35 s, hist_gbt ~7 s


def tiny(model, seed=0, extra=()):
    cfg = build_config(model, "mpi3d", "cpu-smoke", seed)
    return validate(apply_overrides(cfg, [*TINY, *EXTRA, *extra]))


def test_registered_as_vae_kinds_with_the_beta_vae_budget():
    assert PRINCIPLE_MODELS == IMAGE_PRINCIPLES and set(PRINCIPLE_MODELS) <= set(MODELS)
    beta = build_config("betavae", "mpi3d", "cpu-smoke")
    for model in PRINCIPLE_MODELS:
        cfg = build_config(model, "mpi3d", "cpu-smoke")
        assert study.phases(cfg) == study.phases(beta) == [("vae", 800)]
        assert study.batch_sizes(cfg) == study.batch_sizes(beta)
        assert (cfg.vae.lr, cfg.vae.latent_dim, cfg.vae.hidden, cfg.vae.fc) == (1e-3, 20, 32, 128)
        torch.manual_seed(0)
        m = study.build_model(cfg)
        torch.manual_seed(0)
        b = study.build_model(beta)
        # the same encoder and decoder shapes as beta-VAE (qlae: a deterministic encoder, K outputs not 2K)
        dec = {k: v.shape for k, v in m.decoder.state_dict().items()}
        assert dec == {k: v.shape for k, v in b.decoder.state_dict().items()}
        assert m.encoder.fc[-1].out_features == (20 if model == "qlae" else 40)
        assert [v.shape for v in m.encoder.convs.state_dict().values()] == \
            [v.shape for v in b.encoder.convs.state_dict().values()]


def test_qlae_trains_with_adamw_and_no_decay_on_the_codebooks():
    cfg = tiny("qlae")
    m = study.build_model(cfg)
    params = study.trainable(m, cfg, "vae")
    opts, _ = study.optimizers(m, cfg, "vae", params)
    assert len(opts) == 1 and isinstance(opts[0], torch.optim.AdamW)
    groups = opts[0].param_groups
    assert [g["weight_decay"] for g in groups] == [cfg.principles.qlae_weight_decay, 0.0]
    assert groups[1]["params"] == [m.codebook] and groups[0]["lr"] == cfg.vae.lr
    assert isinstance(study.optimizers(study.build_model(tiny("mmdvae")), cfg, "vae",
                                       params)[0][0], torch.optim.Adam)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One FID feature-net cache for the module's evaluations (as ``mcl train`` shares one per ``--out``)."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("model", PRINCIPLE_MODELS)
def test_train_and_evaluate_end_to_end(model, tmp_path, cache):
    cfg = tiny(model, extra=["eval.figures=false"] if model != "qlae" else ())
    m, done = study.train(cfg, str(tmp_path / "run"), progress=False, log=False)
    assert done
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["done"] == ["vae"]
    res = evaluate(m, cfg, str(tmp_path / "run"), cache_dir=cache, progress=False)
    assert 0 <= res["factorvae"] <= 1 and 0 <= res["dci"] <= 1
    assert np.isfinite(res["fid_standin"]) and np.isfinite(res["recon_mse"])
    if model == "qlae":
        assert os.path.getsize(res["figures"]["traversal"]) > 1000
        # FID samples decode codebook values (the quantised prior), not N(0, I) draws
        x = generate_samples(m, cfg, torch.zeros(6, 3, 64, 64), torch.device("cpu"), seed=0)
        g = torch.Generator().manual_seed(777)
        z = m.sample_latents(6, g, "cpu")
        torch.testing.assert_close(x, m.decode(z).detach())


@pytest.mark.parametrize("model", PRINCIPLE_MODELS)
def test_resume_equals_uninterrupted(model, tmp_path):
    full, _ = study.train(tiny(model), str(tmp_path / "full"), progress=False, log=False)
    run = str(tmp_path / "cut")
    _, done = study.train(tiny(model), run, stop_after=3, progress=False, log=False)
    ck = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert not done and (ck["phase"], ck["step"]) == ("vae", 3)
    resumed, done = study.train(tiny(model), run, progress=False, log=False)
    assert done and states_equal(full, resumed)


@pytest.mark.parametrize("field, value", [("comp_lambda", "-1"), ("comp_rows", "0"), ("comp_pool", "3"),
                                          ("mmd_weight", "nan"), ("mmd_rows", "1"), ("qlae_values", "1"),
                                          ("qlae_range", "0"), ("commit_weight", "-0.5"), ("inter_prob", "1.5")])
def test_options_are_checked(field, value):
    with pytest.raises(ValueError, match=rf"^principles\.{field}: "):
        tiny("compvae", extra=[f"principles.{field}={value}"])


def test_committed_principles_tables_are_regenerated_from_the_committed_results(tmp_path):
    """experiments/disentanglement/results/principles/{table.md,table_vs_vae_beta1.md} are what principles_table.py
    --from-results builds from the committed metrics.json / extra_metrics.json (every run of the grid present), and
    the README shows those tables' rows unedited."""
    import importlib.util
    import os

    exp = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "disentanglement")
    res = os.path.join(exp, "results", "principles")
    spec = importlib.util.spec_from_file_location("principles_table", os.path.join(exp, "principles_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = sorted(d for d in os.listdir(res) if os.path.isdir(os.path.join(res, d)))
    want = [f"{m}-mpi3d-cpu-smoke-seed{s}" for m in mod.MODELS for s in range(5)]
    want += [f"vae_beta1-compvae-mpi3d-cpu-smoke-seed{s}" for s in range(5)]
    assert sorted(runs) == sorted(want + [f"mddiff-mpi3d-cpu-smoke-seed{s}" for s in range(5)])
    readme = open(os.path.join(exp, "README.md")).read()
    for name, extra in (("table.md", []), ("table_vs_vae_beta1.md", ["--baseline", "vae_beta1"])):
        out = str(tmp_path / name)
        assert mod.main([res, "--from-results", "--also", "vae_beta1=-:compvae", "--also", "mddiff=-:mddiff",
                         *extra, "--out", out]) == 0
        text = open(out).read()
        assert text == open(os.path.join(res, name)).read(), name
        for line in text.splitlines():
            if line.startswith("| ") and not line.startswith("|---"):
                assert line in readme, line


def test_principles_table_skips_undefined_values_and_single_runs(tmp_path):
    """A metric stored as None (undefined, e.g. LPS with a constant code dimension) is left out of its cell, which then
    says its n ("n/a" when no seed has it), in the summary and the paired table; a model with one run gets a bare
    mean and no paired row."""
    import importlib.util
    import json
    import os
    import shutil

    exp = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "disentanglement")
    spec = importlib.util.spec_from_file_location("principles_table", os.path.join(exp, "principles_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = str(tmp_path / "principles")
    shutil.copytree(os.path.join(exp, "results", "principles"), res)

    def set_none(run, key):
        path = os.path.join(res, run, "extra_metrics.json")
        d = json.load(open(path))
        d[key] = None
        json.dump(d, open(path, "w"))

    set_none("compvae-mpi3d-cpu-smoke-seed0", "lps")
    for s in (0, 1, 3, 4):
        set_none(f"qlae-mpi3d-cpu-smoke-seed{s}", "mcc")
    for s in range(5):
        set_none(f"intervae-mpi3d-cpu-smoke-seed{s}", "lps")
    for s in (1, 2, 3, 4):
        shutil.rmtree(os.path.join(res, f"mmdvae-mpi3d-cpu-smoke-seed{s}"))
    out = str(tmp_path / "table.md")
    assert mod.main([res, "--from-results", "--out", out]) == 0
    summary, paired = open(out).read().split("Paired differences")
    cols = [c for _, c in mod.COLUMNS]

    def row(text, model):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {model} |"))
        return dict(zip(["model", "n", *cols], line.strip("| ").split(" | ")))

    assert row(summary, "compvae")["LPS"].endswith("] (n=4)")
    assert row(summary, "qlae")["MCC"].endswith(" (n=1)") and "[" not in row(summary, "qlae")["MCC"]
    assert row(summary, "intervae")["LPS"] == "n/a"
    mmd = row(summary, "mmdvae")
    assert mmd["n"] == "1" and "[" not in mmd["MCC"] and "(n=" not in mmd["MCC"]
    assert row(paired, "compvae")["LPS"].endswith("] (n=4)") and "(n=" not in row(paired, "compvae")["MCC"]
    assert row(paired, "qlae")["MCC"].endswith(" (n=1)") and row(paired, "intervae")["LPS"] == "n/a"
    assert "| mmdvae |" not in paired
