"""Options of the disentanglement study that match the public MDDiff code (issue #22 item 4) each change what they
should, and are validated; the real FID / LPIPS reach the evaluation when weight files are configured, labelled
apart from the stand-ins (item 2)."""
import json
import os

import pytest
import torch

from mclcore.studies.disentangle import run as study
from mclcore.studies.disentangle.config import build_config, validate
from mclcore.train.loop import StepContext

from tests.metrics.test_inception import _random_file_state_dict
from tests.metrics.test_lpips import _files as lpips_files
from tests.studies.test_disentangle import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def _step(model, cfg, phase, step=0):
    """One optimisation step of ``phase`` as the loop does it; returns the step's output and optimisers."""
    data = study.setup(model, cfg, torch.device("cpu"))
    params = study.trainable(model, cfg, phase)
    opts, _ = study.optimizers(model, cfg, phase, params)
    ctx = StepContext(cfg.seed, study.PHASES.index(phase), step, torch.device("cpu"))
    out = study.train_step(model, cfg, phase, step, data, ctx)
    opts[0].zero_grad(set_to_none=True)
    out["loss"].backward()
    opts[0].step()
    out.update(study.after_update(model, cfg, phase, step, data, ctx, out, opts))
    return out, params, opts


def test_defaults_are_ours_and_unchanged():
    cfg = build_config("mddiff", "shapes3d", "paper")
    assert (cfg.diffusion.loss, cfg.diffusion.attention_ds, cfg.stages.freeze_decoder, cfg.first_stage.ch,
            cfg.first_stage.perceptual_weight, cfg.first_stage.adversarial_weight) == ("mse", (2, 4, 8), False, 128,
                                                                                       0.0, 0.0)
    torch.manual_seed(0)
    model = study.build_model(tiny("mddiff"))
    assert not hasattr(model, "first_stage_disc") and model.diffusion.loss == "mse"


def test_diffusion_loss_l1_is_the_mean_absolute_error():
    from mclcore.models.diffusion import GaussianDiffusion

    eps_model = lambda x, t, c: 0.5 * x                                       # noqa: E731 - a fixed predictor
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = {}
    for loss in ("mse", "l1"):
        outs[loss] = GaussianDiffusion(100, loss=loss).training_losses(
            eps_model, x0, None, generator=torch.Generator().manual_seed(1))
    o = outs["l1"]
    assert torch.equal(o["t"], outs["mse"]["t"]) and torch.equal(o["eps"], outs["mse"]["eps"])   # same draws
    assert torch.allclose(o["loss"], (o["eps_pred"] - o["eps"]).abs().mean())
    assert torch.allclose(outs["mse"]["loss"], (o["eps_pred"] - o["eps"]).pow(2).mean())
    assert not torch.allclose(o["loss"], outs["mse"]["loss"])
    with pytest.raises(ValueError, match="loss: expected one of"):
        GaussianDiffusion(100, loss="huber")
    torch.manual_seed(0)
    assert study.build_model(tiny("encdiff", extra=["diffusion.loss=l1"])).diffusion.loss == "l1"


def test_cross_attention_at_the_16x16_latent():
    torch.manual_seed(0)
    base = study.build_model(tiny("mddiff"))                       # attention_ds (2,): 8x8 only
    model = study.build_model(tiny("mddiff", extra=["diffusion.attention_ds=1,2"]))
    assert base.unet.down[0].attn is None and model.unet.down[0].attn is not None
    model.unet.record_attention = True
    s = torch.randn(2, 20)
    model.eps(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), model.tokens(s))
    positions = {m.last_attention.shape[2] for _, m in model.unet.cross_attentions}
    assert 16 * 16 in positions and 8 * 8 in positions                  # (B, heads, H*W, K) at 16x16 and 8x8
    assert all(m.last_attention.shape[-1] == 20 for _, m in model.unet.cross_attentions)    # over the K tokens


def test_frozen_decoder_is_unchanged_by_an_mcl_step():
    cfg = tiny("mddiff", extra=["stages.freeze_decoder=true", "stages.lambda_mcl=0.5"])
    torch.manual_seed(0)
    model = study.build_model(cfg)
    dec = {n: p.detach().clone() for n, p in model.first_stage.named_parameters()
           if n.startswith(("decoder.", "post_quant_conv."))}
    enc0 = [p.detach().clone() for p in model.concept_encoder.parameters()]
    out, params, _ = _step(model, cfg, "stage2")
    assert "mcl" in out and torch.isfinite(out["mcl"])
    ids = {id(p) for p in params}
    for n, p in model.first_stage.named_parameters():
        if n in dec:
            assert not p.requires_grad and p.grad is None and id(p) not in ids and torch.equal(p, dec[n]), n
    assert any(not torch.equal(a, b) for a, b in zip(enc0, model.concept_encoder.parameters()))   # it trained
    # the default trains the decoder in the same step
    cfg2 = tiny("mddiff", extra=["stages.lambda_mcl=0.5"])
    torch.manual_seed(0)
    model2 = study.build_model(cfg2)
    _step(model2, cfg2, "stage2")
    moved = [n for n, p in model2.first_stage.named_parameters() if n in dec and not torch.equal(p, dec[n])]
    assert moved


def test_first_stage_width_and_losses(tmp_path):
    cfg = tiny("mddiff", extra=["first_stage.ch=32"])
    torch.manual_seed(0)
    assert study.build_model(cfg).first_stage.encoder.net[0].out_channels == 32
    b, w = lpips_files(tmp_path, "alex")
    extra = ["first_stage.perceptual_weight=1.0", "first_stage.perceptual_net=alex",
             f"first_stage.perceptual_backbone={b}", f"first_stage.perceptual_weights={w}",
             "first_stage.adversarial_weight=0.75", "first_stage.disc_ndf=8"]
    cfg = validate(tiny("mddiff", extra=extra))
    torch.manual_seed(0)
    model = study.build_model(cfg)
    disc = model.first_stage_disc
    d0 = [p.detach().clone() for p in disc.parameters()]
    out, params, opts = _step(model, cfg, "first_stage")
    assert len(opts) == 2 and not ({id(p) for p in disc.parameters()} & {id(p) for p in params})
    assert out["perceptual"] > 0 and out["adv_weight"] > 0 and "disc" in out
    want = out["rec"] + 1.0 * out["perceptual"] + out["vq"] + 0.75 * out["adv_weight"] * out["g_loss"]
    assert torch.allclose(out["loss"].detach(), want, rtol=1e-5)
    assert any(not torch.equal(a, p) for a, p in zip(d0, disc.parameters()))          # the PatchGAN stepped
    # it saw real images on the decoder's [-1, 1] scale, as the reconstructions (not [0, 1])
    assert out["x_real"].min() >= -1 and out["x_real"].min() < -0.5 and out["x_real"].shape == out["x_rec"].shape
    assert model.first_stage_disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)     # 64 -> 6x6 patches


@pytest.mark.parametrize("extra, what", [
    (["diffusion.loss=huber"], "diffusion.loss"),
    (["diffusion.attention_ds=3"], "diffusion.attention_ds"),
    (["diffusion.attention_ds=1,4"], "diffusion.attention_ds"),        # a 2-level U-Net has no 4x4 level
    (["stages.freeze_decoder=true", "mcl.weighting=relative"], "stages.freeze_decoder"),
    (["first_stage.perceptual_weight=1"], "first_stage.perceptual_weight"),
    (["first_stage.perceptual_net=squeeze"], "first_stage.perceptual_net"),
    (["first_stage.adversarial_weight=-1"], "first_stage.adversarial_weight"),
    (["eval.lpips_backbone=/nonexistent/alexnet.pth"], "eval.lpips_backbone, eval.lpips_weights"),
    (["eval.lpips_net=vgg19"], "eval.lpips_net"),
    (["eval.fid_weights=/nonexistent/pt_inception.pth"], "eval.fid_weights"),
])
def test_bad_options_are_one_line_errors(extra, what):
    with pytest.raises(ValueError) as e:
        validate(tiny("mddiff", extra=extra))
    msg = str(e.value)
    assert msg.startswith(what) and len(msg.splitlines()) == 1, msg


def test_evaluation_uses_real_fid_and_lpips_when_weights_are_configured(tmp_path, monkeypatch):
    import mclcore.metrics
    from mclcore.studies.disentangle.evaluate import evaluate

    # the disentanglement scores are not what this tests (tests/studies/test_disentangle.py runs them): skip
    # their ~30 s of tree fitting
    scores = {"factorvae.eval_accuracy": 0.5, "dci.disentanglement": 0.1, "dci.completeness": 0.1,
              "dci.informativeness_test": 0.1, "dci.informativeness_test_per_factor": [0.1] * 7,
              "factorvae.num_active_dims": 1}
    monkeypatch.setattr(mclcore.metrics, "evaluate", lambda *a, **k: (scores, None))
    # nor is the 2048-d matrix root (seconds; the formula is tested in tests/metrics/test_inception.py): record
    # what reaches it instead
    from mclcore.studies.disentangle import fid as fidlib

    seen = []
    monkeypatch.setattr(fidlib, "frechet_distance", lambda a, b: seen.append((a.shape, b.shape)) or 12.5)

    fid_file = str(tmp_path / "pt_inception.pth")
    torch.save(_random_file_state_dict(True), fid_file)
    b, w = lpips_files(tmp_path, "alex")
    cfg = tiny("betavae", extra=["eval.figures=false", "eval.fid_samples=6", "eval.recon_samples=4",
                                 f"eval.fid_weights={fid_file}", f"eval.lpips_backbone={b}",
                                 f"eval.lpips_weights={w}"])
    model, _ = study.train(validate(cfg), str(tmp_path / "run"), progress=False, log=False)
    res = evaluate(model, cfg, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False)
    assert res["fid_kind"] == "inception" and res["fid"] == 12.5 and res["fid_weights"] == fid_file
    assert seen == [((6, 2048), (6, 2048))]                               # Inception pool3 features, real vs fake
    assert res["lpips_kind"] == "lpips_v0.1_alex" and res["lpips"] > 0 and "LPIPS v0.1" in res["lpips_label"]
    assert "fid_standin" not in res and "lpips_proxy" not in res
    assert not os.path.exists(tmp_path / "cache")                      # no stand-in network was trained


def test_report_marks_stand_ins_and_never_averages_kinds(tmp_path):
    from mclcore.studies.disentangle import report

    rows = [("mddiff", {"fid_standin": 700.0, "fid_kind": "standin", "lpips_proxy": 3.0, "lpips_kind": "standin",
                        "fid_label": "FID stand-in (dataset-trained net)", "lpips_label": "fLPIPS stand-in"}),
            ("mddiff", {"fid": 12.0, "fid_kind": "inception", "lpips": 0.1, "lpips_kind": "lpips_v0.1_alex",
                        "fid_label": "FID (Inception-v3, pytorch-fid weights)", "lpips_label": "LPIPS v0.1 (alex)"}),
            ("encdiff", {"fid_standin": 650.0, "fid_kind": "standin", "lpips_proxy": 2.0, "lpips_kind": "standin",
                         "fid_label": "FID stand-in (dataset-trained net)", "lpips_label": "fLPIPS stand-in"}),
            ("betavae", {"fid": 990.0, "lpips_proxy": 0.7,            # written before fid_kind existed
                         "fid_label": "FID (dataset-trained net)", "lpips_label": "fLPIPS (old)"})]
    for i, (model, r) in enumerate(rows):
        os.makedirs(tmp_path / f"r{i}")
        json.dump({"model": model, "dataset": "mpi3d", "preset": "cpu-smoke", "factorvae": 0.5, "dci": 0.1, **r},
                  open(tmp_path / f"r{i}" / "metrics.json", "w"))
    t6 = report.table6(report.load(str(tmp_path), None))
    assert "| mixed kinds: inception, standin | mixed kinds: lpips_v0.1_alex, standin |" in t6   # MDDiff, MPI3D
    assert "650.00 (n=1) (stand-in) | 2.0000 (n=1) (stand-in) |" in t6
    assert "990.00 (n=1) (stand-in) | 0.7000 (n=1) (stand-in) |" in t6


def test_the_sanity_ranking_still_holds_for_the_stand_in_labels():
    from mclcore.studies.disentangle.fid import FeatureExtractor

    ex = FeatureExtractor(torch.nn.Identity(), None, "x", "y")
    assert (ex.fid_kind, ex.fid_key, ex.lpips_kind, ex.lpips_key) == ("standin", "fid_standin", "standin",
                                                                      "lpips_proxy")


def test_cli_refuses_a_wrong_fid_file_before_training(tmp_path, capsys):
    from mclcore.cli import main

    sd = _random_file_state_dict(False)
    sd["fc.weight"] = torch.zeros(1000, 2048)                  # torchvision's ImageNet Inception head, not FID's
    torch.save(sd, tmp_path / "inception_imagenet.pth")
    rc = main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path / "out"), "--quiet",
               "--fid-weights", str(tmp_path / "inception_imagenet.pth")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--fid-weights" in err and "fc.weight" in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []    # nothing trained
