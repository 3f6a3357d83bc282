"""Latent-action probe (LACG): how much of the true action the IDM's latent action carries.

A linear (ridge) regression from the IDM's posterior mean ``mu(v_t, v_{t+1})`` on ground-truth frame pairs to the
recorded 4-d action ``a_t`` is fitted on the training episodes' transitions and scored by R^2 on held-out episodes.
A collapsed latent action (KL ~ 0, the posterior equal to the prior whatever the frames) gives R^2 ~ 0; a latent
action that encodes the end-effector displacement gives R^2 near 1 on ``dx, dy, dz``.

* :func:`ridge_probe` -- the regression on given features (numpy; any features, tested on synthetic data);
* :func:`latent_action_probe` -- the IDM features of a :class:`~mclcore.models.worldmodel.WorldModel` on two
  episode sets, then :func:`ridge_probe`;
* :func:`supervised_ceiling` -- the same probe on an IDM of the same architecture trained *with* the true actions
  (the ceiling of what this IDM can carry from the autoencoder's latent frame pairs).

R^2 per action dimension is ``1 - SSE / SST`` on the held-out set (SST about the held-out mean, as
``sklearn.metrics.r2_score``); ``r2`` is their mean over the 4 dimensions (sklearn's "uniform_average"),
``r2_displacement`` the mean over ``dx, dy, dz`` (the part of the action a frame pair shows directly; the gripper
command is a 0/1 level whose change only is visible).

Which training transitions fit the probe. The default (``r2``) fits on all training episodes, most of which are the
source embodiment, and scores on held-out target-embodiment episodes: a *cross-embodiment* probe. A latent action is
meant to be embodiment-agnostic while the recorded action is in each arm's own units, so ``same_embodiment`` also
fits the probe only on the training episodes of the evaluation episodes' embodiment (16 in the ``cpu`` preset) and
scores on the same held-out episodes. Measured on the ``cpu`` LACG run, seed 0 (2026-12-06, this repo's 2-core
VM): cross-embodiment R^2 0.28, same-embodiment 0.38, and 0.49 in 4-fold cross-validation within the source
embodiment; an MLP probe (128, 128) was no better than the linear one in either setting, so the read-out is
reported linear.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["ridge_probe", "idm_features", "latent_action_probe", "supervised_ceiling"]


def ridge_probe(x_train, y_train, x_eval, y_eval, alpha: float = 1e-3) -> dict:
    """Ridge regression ``y ~ x W + b`` fitted on (x_train, y_train), scored on (x_eval, y_eval).

    Features are standardised with the training mean/std, the intercept is not penalised; ``alpha`` >= 0 is the
    penalty on the standardised weights, scaled by the number of training rows. Returns ``{"r2", "r2_per_dim",
    "n_train", "n_eval"}`` (R^2 per target column on the held-out rows; a constant held-out column gets NaN).
    """
    x_train, y_train = np.asarray(x_train, np.float64), np.asarray(y_train, np.float64)
    x_eval, y_eval = np.asarray(x_eval, np.float64), np.asarray(y_eval, np.float64)
    if y_train.ndim == 1:
        y_train, y_eval = y_train[:, None], y_eval[:, None]
    for name, a, nd in (("x_train", x_train, 2), ("y_train", y_train, 2), ("x_eval", x_eval, 2),
                        ("y_eval", y_eval, 2)):
        if a.ndim != nd or not np.isfinite(a).all():
            raise ValueError(f"{name}: expected a finite {nd}-d array, got shape {a.shape}")
    if x_train.shape[0] != y_train.shape[0] or x_eval.shape[0] != y_eval.shape[0]:
        raise ValueError(f"x_train/y_train or x_eval/y_eval: row counts differ ({x_train.shape[0]} vs "
                         f"{y_train.shape[0]}, {x_eval.shape[0]} vs {y_eval.shape[0]})")
    if x_train.shape[1] != x_eval.shape[1] or y_train.shape[1] != y_eval.shape[1]:
        raise ValueError("x_eval/y_eval: column counts differ from the training arrays")
    if x_train.shape[0] < 2 or x_eval.shape[0] < 2:
        raise ValueError("x_train/x_eval: need at least 2 rows each")
    if not alpha >= 0:
        raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
    mx, sx = x_train.mean(0), x_train.std(0)
    sx = np.where(sx > 1e-12, sx, 1.0)
    xt, xe = (x_train - mx) / sx, (x_eval - mx) / sx
    my = y_train.mean(0)
    n, d = xt.shape
    w = np.linalg.solve(xt.T @ xt + alpha * n * np.eye(d), xt.T @ (y_train - my))
    pred = xe @ w + my
    sse = ((y_eval - pred) ** 2).sum(0)
    sst = ((y_eval - y_eval.mean(0)) ** 2).sum(0)
    r2 = np.where(sst > 1e-12, 1.0 - sse / np.maximum(sst, 1e-12), np.nan)
    return {"r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
            "r2_per_dim": [float(v) for v in r2], "n_train": int(n), "n_eval": int(xe.shape[0])}


@torch.no_grad()
def idm_features(model, episodes, device="cpu", batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(IDM posterior means (N*T, d_a), recorded actions (N*T, 4)) over every transition of ``episodes``."""
    if getattr(model, "variant", None) != "lacg":
        raise ValueError("model: the latent-action probe needs a LACG model (it reads the IDM)")
    from mclcore.studies.worldmodel.data import encode_episodes

    lat = encode_episodes(model, episodes, device, batch)                  # (N, T+1, C, H, W)
    return _idm_means(model.idm, lat, batch), episodes.actions.reshape(-1, episodes.actions.shape[-1])


@torch.no_grad()
def _idm_means(idm, lat: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The IDM's posterior means (N*T, d_a) over every transition of latent episodes ``lat`` (N, T+1, C, H, W)."""
    v_t, v_n = lat[:, :-1].flatten(0, 1), lat[:, 1:].flatten(0, 1)
    mus = [idm(v_t[i:i + batch], v_n[i:i + batch], sample=False)[1].cpu() for i in range(0, len(v_t), batch)]
    return torch.cat(mus).numpy()


def _probes(x_tr, y_tr, x_ev, y_ev, train_episodes, eval_episodes, alpha: float) -> dict:
    """:func:`ridge_probe` across embodiments plus ``r2_displacement`` (mean R^2 of dx, dy, dz) and
    ``same_embodiment``: the probe refitted on the training transitions of the evaluation episodes' (single)
    embodiment, with its ``embodiment``; None when they mix embodiments or fewer than 2 training transitions match."""
    res = ridge_probe(x_tr, y_tr, x_ev, y_ev, alpha)
    res["r2_displacement"] = float(np.nanmean(res["r2_per_dim"][:3]))
    res["same_embodiment"] = None
    embs = np.unique(np.asarray(eval_episodes.embodiment))
    if embs.size == 1:
        steps = x_tr.shape[0] // len(train_episodes)                          # transitions per episode (T)
        keep = np.repeat(np.asarray(train_episodes.embodiment) == embs[0], steps)
        if keep.sum() >= 2:
            same = ridge_probe(x_tr[keep], y_tr[keep], x_ev, y_ev, alpha)
            same["r2_displacement"] = float(np.nanmean(same["r2_per_dim"][:3]))
            same["embodiment"] = int(embs[0])
            res["same_embodiment"] = same
    return res


def latent_action_probe(model, train_episodes, eval_episodes, *, alpha: float = 1e-3, device="cpu") -> dict:
    """The latent-action probe of a LACG model: ridge from the IDM mean to the true action, fitted on
    ``train_episodes``, R^2 on ``eval_episodes`` (see the module docstring). Adds ``r2_displacement`` (mean R^2 of
    dx, dy, dz) and ``kl_per_dim`` (the IDM posterior's KL to N(0, 1) per latent dimension, mean over the held-out
    transitions, nats; computed from the posterior mean and variance) to :func:`ridge_probe`'s dict, and
    ``same_embodiment``: the probe fitted only on the training episodes whose embodiment is the (single) embodiment
    of ``eval_episodes`` (:func:`ridge_probe`'s dict plus ``r2_displacement`` and ``embodiment``; None when the
    evaluation episodes mix embodiments or fewer than 2 training transitions match)."""
    was_training = model.training
    model.eval()
    try:
        x_tr, y_tr = idm_features(model, train_episodes, device)
        x_ev, y_ev = idm_features(model, eval_episodes, device)
        from mclcore.studies.worldmodel.data import encode_episodes

        lat = encode_episodes(model, eval_episodes, device)
        with torch.no_grad():
            _, mu, logvar = model.idm(lat[:, :-1].flatten(0, 1), lat[:, 1:].flatten(0, 1), sample=False)
        kl = (0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)).mean(0).cpu().numpy()
    finally:
        model.train(was_training)
    res = _probes(x_tr, y_tr, x_ev, y_ev, train_episodes, eval_episodes, alpha)
    res["kl_per_dim"] = [round(float(k), 4) for k in kl]
    res["kl_total"] = float(kl.sum())
    return res


def supervised_ceiling(model, train_episodes, eval_episodes, *, steps: int = 3000, batch: int = 64,
                       lr: float = 1e-3, seed: int = 0, alpha: float = 1e-3, inputs: str | None = None,
                       device="cpu") -> dict:
    """The ceiling of the latent-action probe: an IDM of the LACG model's architecture, trained on the true action.

    A fresh :class:`~mclcore.models.worldmodel.modules.InverseDynamics` with the model's hyper-parameters (channels,
    latent size d_a, width, inputs, mean normalisation, ``delta_scale``) plus a linear head ``d_a -> 4`` is trained
    by mean squared error on the standardised recorded actions of ``train_episodes`` (Adam, ``steps`` x ``batch``,
    seeded), on the frozen autoencoder latents of ``model``, the IDM's own inputs. Its posterior mean is then
    probed exactly as :func:`latent_action_probe` probes the LACG latent (ridge, cross- and same-embodiment fits,
    R^2 on ``eval_episodes``). ``inputs`` overrides the IDM's input choice (``"frames"``: both frames and their
    difference, which can show the gripper's state, not only its change; None: the model's). The LACG latent is learnt without the action, so it can at best reach this number;
    the gap between the two says how much the objective, not the architecture or the frames, leaves out.
    Returns :func:`ridge_probe`'s dict plus ``r2_displacement``, ``same_embodiment`` (as in
    :func:`latent_action_probe`), ``train_mse`` (the last 100 steps' mean) and ``steps``. ``eval_episodes`` may be
    a dict ``{name: episodes}``: one IDM is trained and probed on each, and the result is ``{name: that dict}``
    (the same numbers as one call per set, at the cost of one training).
    """
    from mclcore.models.worldmodel.modules import InverseDynamics
    from mclcore.studies.worldmodel.data import encode_episodes

    if getattr(model, "variant", None) != "lacg":
        raise ValueError("model: the supervised ceiling needs a LACG model (it copies the IDM's architecture)")
    for name, v in (("steps", steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    old = model.idm
    idm_args = dict(latent_channels=old.latent_channels, action_dim=old.action_dim,
                    ch=old.net[0].out_channels, hidden=old.head[0].out_features, norm=old.mu_norm is not None,
                    inputs=old.inputs if inputs is None else inputs)
    sets = eval_episodes if isinstance(eval_episodes, dict) else {None: eval_episodes}
    with torch.no_grad():
        lat_tr = encode_episodes(model, train_episodes, device)                  # (N, T+1, C, 16, 16)
    v_t, v_n = lat_tr[:, :-1].flatten(0, 1), lat_tr[:, 1:].flatten(0, 1)         # (N T, C, 16, 16)
    y = torch.as_tensor(train_episodes.actions.reshape(-1, train_episodes.actions.shape[-1]),
                        dtype=torch.float32, device=device)                       # (N T, 4)
    ys = (y - y.mean(0)) / y.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    idm = InverseDynamics(**idm_args).to(device)
    idm.delta_scale.copy_(old.delta_scale)
    head = torch.nn.Linear(idm_args["action_dim"], y.shape[1]).to(device)
    opt = torch.optim.Adam([*idm.parameters(), *head.parameters()], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    idm.train()
    for _ in range(steps):
        i = torch.randint(len(v_t), (min(batch, len(v_t)),), generator=gen).to(device)
        _, mu, _ = idm(v_t[i], v_n[i], sample=False)
        loss = (head(mu) - ys[i]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    idm.eval()
    x_tr = _idm_means(idm, lat_tr)
    y_tr = train_episodes.actions.reshape(-1, train_episodes.actions.shape[-1])
    out = {}
    for name, ev in sets.items():
        with torch.no_grad():
            x_ev = _idm_means(idm, encode_episodes(model, ev, device))
        res = _probes(x_tr, y_tr, x_ev, ev.actions.reshape(-1, ev.actions.shape[-1]), train_episodes, ev, alpha)
        out[name] = {**res, "train_mse": float(np.mean(losses[-100:])), "steps": steps}
    return out if isinstance(eval_episodes, dict) else out[None]
