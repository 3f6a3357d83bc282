"""Action following of the world model, the measurement (issue #19 items 1 and 5; what is measured and why:
:mod:`~mclcore.studies.worldmodel.following`, which holds the constants, statistics and outputs).

The moving region and its per-frame metrics (:func:`moving_mask`, :func:`frame_metrics`, :func:`episode_metrics`),
and everything that runs the model: the conditioning of every action mode (:func:`conditioning`), teacher-forced
one-step predictions (:func:`one_step`), open-loop rollouts (:func:`open_loop`), all episodes' predictions of one
mode (:func:`predictions`) and the whole evaluation of a split (:func:`split_following`).

This module imports no training code either; the functions that run a model take it duck-typed (``variant``,
``u_dim``, ``ae.encode/decode``, ``latent_actions``, ``predict_next``:
:class:`~mclcore.models.worldmodel.WorldModel`'s own pieces, so no sampler is duplicated here).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mclcore.metrics.video import mse as frame_mse
from mclcore.metrics.video import ssim as frame_ssim
from mclcore.studies.worldmodel.following import ACTION_MODES, MODES, NOISE_SEED_OFFSET, PSNR_EPS, ROWS

if TYPE_CHECKING:  # only for annotations: importing them would load the training code into the report
    from mclcore.studies.worldmodel.config import RunConfig
    from mclcore.studies.worldmodel.data import Episodes

__all__ = ["moving_mask", "masked_mse", "frame_metrics", "episode_metrics", "conditioning", "one_step",
           "open_loop", "predictions", "split_following"]


# ----------------------------------------------------------------------------------------------- the moving region
def moving_mask(gt: torch.Tensor, threshold: float, dilate: int = 0) -> torch.Tensor:
    """The pixels that change between consecutive GT frames: (N, H+1, C, Hpx, Wpx) in [0, 1] -> bool (N, H, Hpx,
    Wpx), where ``mask[:, t]`` belongs to the predicted frame t+1 (the change from frame t to frame t+1).

    A pixel moves when ``|gt_{t+1} - gt_t| > threshold`` on any channel (``eval.moving_threshold``, in [0, 1] units:
    the simulator's frames also differ by 1-3 grey levels at anti-aliased edges and shading, which is not motion;
    0.05 = 13 grey levels keeps the arm and the carried object -- about 5% of a cpu-smoke frame -- and drops that).
    The mask covers both where a part was and where it went, so a copy of the previous frame is wrong on all of
    it. ``dilate`` > 0 grows it by that many pixels (a (2 dilate + 1)^2 max filter, ``eval.moving_dilate``, default
    0) so soft edges below the threshold count too; it also adds static neighbours where a copy of the last frame is
    exact, which favours the copy baseline (cpu preset, ACG, one-step: copy-last 20.7 dB with 1 px, 12.9 without).
    """
    if gt.ndim != 5 or gt.shape[1] < 2:
        raise ValueError(f"gt: expected (N, H+1, C, Hpx, Wpx) with H >= 1, got {tuple(gt.shape)}")
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ValueError(f"threshold: expected a number in [0, 1), got {threshold!r}")
    if isinstance(dilate, bool) or not isinstance(dilate, int) or dilate < 0:
        raise ValueError(f"dilate: expected an integer >= 0, got {dilate!r}")
    g = gt.float()
    m = ((g[:, 1:] - g[:, :-1]).abs() > threshold).any(dim=2)                  # (N, H, Hpx, Wpx)
    if dilate > 0:
        k = 2 * dilate + 1
        m = F.max_pool2d(m.flatten(0, 1)[:, None].float(), k, stride=1, padding=dilate)[:, 0].unflatten(
            0, m.shape[:2]) > 0
    return m


def masked_mse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """MSE over the masked pixels (all channels) per frame: (N, H, C, Hpx, Wpx) x 2, bool (N, H, Hpx, Wpx) ->
    float64 (N, H); NaN where a frame's mask is empty (nothing moved: the frame is skipped, not scored 0)."""
    if pred.shape != gt.shape or pred.ndim != 5 or mask.shape != pred.shape[:2] + pred.shape[3:]:
        raise ValueError(f"mask: expected pred, gt (N, H, C, Hpx, Wpx) and mask (N, H, Hpx, Wpx), got "
                         f"{tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(mask.shape)}")
    w = mask[:, :, None].double()                                              # (N, H, 1, Hpx, Wpx)
    se = ((pred.double() - gt.double()) ** 2 * w).sum(dim=(2, 3, 4))           # (N, H)
    count = w.sum(dim=(2, 3, 4)) * pred.shape[2]                               # masked pixels x channels
    out = (se / count.clamp_min(1)).cpu().numpy()
    out[count.cpu().numpy() == 0] = np.nan
    return out


def _psnr(m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return 10.0 * np.log10(1.0 / np.maximum(m, PSNR_EPS))                # NaN stays NaN


def frame_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, device="cpu") -> dict[str, np.ndarray]:
    """Per frame, each float64 (N, H): whole-frame ``ssim``, ``psnr``, ``mse`` (:mod:`mclcore.metrics.video`) and
    ``moving_psnr``, ``moving_mse`` on the moving region (NaN on frames with an empty mask). Computed on ``device``
    (the float64 SSIM is most of the evaluation's cost on a CPU)."""
    pred, gt, mask = pred.float().to(device), gt.float().to(device), mask.to(device)
    mse = frame_mse(pred, gt).double().cpu().numpy()
    mm = masked_mse(pred, gt, mask)
    return {"ssim": frame_ssim(pred, gt).double().cpu().numpy(), "psnr": _psnr(mse), "mse": mse,
            "moving_psnr": _psnr(mm), "moving_mse": mm}


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over finite entries; NaN where there are none (without numpy's empty-slice warning)."""
    ok = np.isfinite(x)
    n = ok.sum(axis)
    s = np.where(ok, x, 0.0).sum(axis)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def episode_metrics(frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`frame_metrics` averaged over each episode's frames: metric -> float64 (N,). Like Table 2's PSNR, the
    PSNR is per frame, then averaged. Moving-region metrics average over the frames with a non-empty mask; an
    episode in which nothing moved is NaN (and left out of every interval, which states its n)."""
    return {k: _nanmean(v, 1) for k, v in frames.items()}

# ------------------------------------------------------------------------------------------------ running the model
def conditioning(model, lat: torch.Tensor, actions: torch.Tensor, embodiment: torch.Tensor, mode: str,
                 source: str = "idm", *, other_lat: torch.Tensor | None = None,
                 other_actions: torch.Tensor | None = None) -> torch.Tensor:
    """The forward model's conditioning u for every transition t -> t+1: (B, H, d_u).

    lat: (B, H+1, C, h, w) GT latent frames; actions: (B, >= H, 4); embodiment: (B,). ``mode``: "right"
    (:meth:`WorldModel.latent_actions` with ``source``), "shuffled" (the same with ``other_actions`` and, for the
    IDM, ``other_lat``: another episode's; the embodiment stays the episode's own, as in ``rollouts``) or "zero"
    (ACG: the recorded action 0, standardised like any action; LACG: u = 0)."""
    if mode not in ACTION_MODES:
        raise ValueError(f"mode: expected one of {ACTION_MODES}, got {mode!r}")
    b, h = lat.shape[0], lat.shape[1] - 1
    if mode == "zero" and model.variant != "acg":
        return torch.zeros(b, h, model.u_dim, device=lat.device, dtype=lat.dtype)
    if mode == "shuffled":
        if other_actions is None or (other_lat is None and model.variant != "acg" and source == "idm"):
            raise ValueError("other_actions: mode 'shuffled' needs another episode's actions (and, for LACG with "
                             "the IDM, its latent frames other_lat)")
        actions, lat = other_actions, (other_lat if other_lat is not None else lat)
    a = actions[:, :h]
    if mode == "zero":
        a = torch.zeros_like(a)
    u = model.latent_actions(lat[:, :-1].flatten(0, 1), lat[:, 1:].flatten(0, 1), a.flatten(0, 1),
                             embodiment.repeat_interleave(h), source)       # (B*H, d_u)
    return u.unflatten(0, (b, h))


def _encode(model, frames: torch.Tensor, horizon: int) -> torch.Tensor:
    """GT latents (B, horizon+1, C, h, w), encoded as :meth:`WorldModel.rollout` does (one flattened batch)."""
    b = frames.shape[0]
    return model.ae.encode(frames[:, : horizon + 1].flatten(0, 1)).unflatten(0, (b, horizon + 1))


@torch.no_grad()
def one_step(model, lat: torch.Tensor, u: torch.Tensor, *, steps: int, method: str = "euler",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Teacher-forced one-step predictions: frame t+1 sampled from the GT latent frame t and u_t, for every t.

    lat: (B, H+1, C, h, w) GT latents; u: (B, H, d_u) -> (B, H, 3, 64, 64) in [0, 1] (decoded). All B*H
    transitions go through :meth:`WorldModel.predict_next` as one batch (the noise: one draw of that shape)."""
    b, h = u.shape[:2]
    v = model.predict_next(lat[:, :h].flatten(0, 1), u.flatten(0, 1), steps=steps, method=method,
                           generator=generator)                             # (B*H, C, h, w)
    return model.ae.decode(v).unflatten(0, (b, h))


@torch.no_grad()
def open_loop(model, lat: torch.Tensor, u: torch.Tensor, *, steps: int, method: str = "euler",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Open-loop rollout from the GT latent frame 0 driven by the conditioning u: (B, H+1, C, h, w), (B, H, d_u)
    -> (B, H, 3, 64, 64). The loop of :meth:`WorldModel.rollout` with the conditioning given, not computed (so a
    zero latent action can drive LACG); with the same u and generator it draws the same samples."""
    v, preds = lat[:, 0], []
    for t in range(u.shape[1]):
        v = model.predict_next(v, u[:, t], steps=steps, method=method, generator=generator)
        preds.append(model.ae.decode(v))
    return torch.stack(preds, dim=1)


@torch.no_grad()
def predictions(model, cfg: "RunConfig", eps: "Episodes", device, kind: str, mode: str) -> torch.Tensor:
    """All episodes' predictions of one (``kind`` in :data:`MODES`) x (``mode`` in :data:`ACTION_MODES`):
    (N, H, 3, 64, 64) in [0, 1] on the CPU, H = min(eval.horizon, T), batches of ``eval.batch_size`` episodes; the
    noise generator is re-seeded per call with ``cfg.seed + NOISE_SEED_OFFSET`` (the same noise for every mode)."""
    if kind not in MODES:
        raise ValueError(f"kind: expected one of {MODES}, got {kind!r}")
    e = cfg.eval
    horizon = min(e.horizon, eps.actions.shape[1])
    other = eps.subset(np.roll(np.arange(len(eps)), -1))                     # episode i -> actions of i+1
    g = torch.Generator(device=device).manual_seed(cfg.seed + NOISE_SEED_OFFSET)
    out = []
    for i in range(0, len(eps), e.batch_size):
        sl = slice(i, i + e.batch_size)
        lat = _encode(model, eps.float_frames(sl).to(device), horizon)        # (b, H+1, C, h, w)
        actions = torch.from_numpy(eps.actions[sl]).to(device)                # (b, T, 4)
        emb = torch.from_numpy(eps.embodiment[sl]).to(device)
        kw = {}
        if mode == "shuffled":
            kw["other_actions"] = torch.from_numpy(other.actions[sl]).to(device)
            if model.variant != "acg" and e.lacg_actions == "idm":
                kw["other_lat"] = _encode(model, other.float_frames(sl).to(device), horizon)
        u = conditioning(model, lat, actions, emb, mode, e.lacg_actions, **kw)
        run = one_step if kind == "one_step" else open_loop
        out.append(run(model, lat, u, steps=e.sample_steps, method=e.sampler, generator=g).cpu())
    return torch.cat(out)


@torch.no_grad()
def split_following(model, cfg: "RunConfig", eps: "Episodes", device, *,
                    open_loop_preds: dict[str, torch.Tensor] | None = None,
                    ae_recon: torch.Tensor | None = None) -> dict:
    """The whole evaluation of one split: per-episode metrics of every mode x row (plain lists in the returned
    dict, JSON-ready), the per-frame moving-region PSNR averaged over episodes (for :func:`per_frame_figure`), the
    mask statistics, and under ``"_frames"`` (not for JSON) the first ``eval.figure_episodes`` episodes' frames for
    the rollout figure.

    ``open_loop_preds``: open-loop predictions the caller already has ({mode: (N, H, 3, 64, 64)}, e.g. the Table 2
    rollouts, drawn with the same noise); missing modes are computed. ``ae_recon``: the AE reconstruction of GT
    frames 1..H, likewise.
    """
    e = cfg.eval
    horizon = min(e.horizon, eps.actions.shape[1])
    frames = eps.float_frames()[:, : horizon + 1]                            # (N, H+1, 3, 64, 64) on the CPU
    gt = frames[:, 1:]
    mask = moving_mask(frames, e.moving_threshold, e.moving_dilate)          # (N, H, 64, 64)
    if ae_recon is None:
        ae_recon = torch.stack([model.ae.decode(model.ae.encode(f.to(device))).cpu() for f in gt.unbind(1)], 1)
    preds = {"one_step": {m: predictions(model, cfg, eps, device, "one_step", m) for m in ACTION_MODES},
             "open_loop": {m: (open_loop_preds or {}).get(m) for m in ACTION_MODES}}
    for m, p in preds["open_loop"].items():
        if p is None:
            preds["open_loop"][m] = predictions(model, cfg, eps, device, "open_loop", m)
    first = frames[:, :1].expand_as(gt)
    refs = {"copy_last": frames[:, :-1], "copy_first": first, "ae_recon": ae_recon}
    per_episode, per_frame, ref_metrics = {}, {}, {}
    for kind in MODES:
        per_episode[kind], per_frame[kind] = {}, {}
        for row in ROWS[kind]:
            if row in ACTION_MODES:
                fm = frame_metrics(preds[kind][row], gt, mask, device)
            else:       # the references are the same frames in both modes: scored once (SSIM dominates the cost)
                fm = ref_metrics[row] = ref_metrics.get(row) or frame_metrics(refs[row], gt, mask, device)
            per_episode[kind][row] = {k: _list(v) for k, v in episode_metrics(fm).items()}
            per_frame[kind][row] = _list(_nanmean(fm["moving_psnr"], 0))       # (H,) over episodes
    k = e.figure_episodes
    n_moving = mask.flatten(2).any(-1).sum(1)                                # (N,) frames with motion
    return {"episodes": len(eps), "horizon": horizon, "per_episode": per_episode, "per_frame": per_frame,
            "moving": {"frames_with_motion": n_moving.tolist(), "frames": horizon,
                       "pixel_fraction": float(mask.float().mean())},
            "_frames": {"gt": gt[:k], "right": preds["open_loop"]["right"][:k],
                        "shuffled": preds["open_loop"]["shuffled"][:k], "zero": preds["open_loop"]["zero"][:k]}}

def _list(x: np.ndarray) -> list:
    """float array -> list with None for NaN (standard JSON has no NaN)."""
    return [None if not math.isfinite(v) else float(v) for v in np.asarray(x, np.float64).reshape(-1)]
