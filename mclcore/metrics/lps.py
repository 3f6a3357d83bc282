"""Latent Predictability Score (LPS): an unsupervised measure of statistical dependence between code dimensions.

From "Sculpting Latent Spaces With MMD: Disentanglement With Programmable Priors" (Fruytier et al. 2025). Its
idea: if the dimensions z_1..z_K of a representation are mutually independent, no z_i can be predicted from the
others. The summary we have gives no formula, so this is our reading, stated exactly:

1. Standardise the codes (mean 0, std 1 per dimension, statistics from the training split) and split the N
   samples into train / test (``test_fraction`` = 0.2) with the seeded generator.
2. For every dimension i fit a regressor predicting z_i from z_{-i} (all other dimensions) on the train split.
3. ``R2_i = 1 - MSE_test / Var_test(z_i)``, clipped to [0, 1] (a predictor worse than the mean is "not
   predictable").
4. ``lps.score`` = mean_i R2_i (0 = no dimension predictable from the rest, 1 = fully redundant); ``lps.max`` =
   max_i R2_i; per-dimension values under ``lps.per_dim`` when requested. Lower is more independent.

Regressors: ``"mlp"`` (default; the paper uses neural regressors): K independent MLPs (K-1 -> 32 -> 32 -> 1,
ReLU), trained together as one batched network (dimension i's input is z with column i zeroed, equivalent to
dropping it), Adam (lr 3e-3), ``steps`` = 1500 minibatches of 256, seeded, on one thread - a few seconds for
K = 20.
``"linear"``: ordinary least squares with intercept, which measures linear dependence only (0 for uncorrelated
codes even when they are dependent).
"""
from __future__ import annotations

import numpy as np

from mclcore.metrics.utils import as_encoded, as_generator, check_codes

__all__ = ["lps", "lps_from_codes"]


def _r2(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    var = target.var(axis=0)
    mse = ((pred - target) ** 2).mean(axis=0)
    return np.clip(1.0 - mse / np.where(var > 0, var, 1.0), 0.0, 1.0)


def _fit_mlp(xtr, xte, seed: int, hidden: int, steps: int, batch: int, lr: float) -> np.ndarray:
    import torch

    # The matrices are tiny (K x 256 x 32): intra-op threads only add synchronisation. On 2 shared, loaded cores
    # we measured 300 steps at 54 s with torch's 2 threads and 1.0 s with one, so train single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_mlp(xtr, xte, seed, hidden, steps, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _train_mlp(xtr, xte, seed, hidden, steps, batch, lr):
    import torch

    k = xtr.shape[1]
    gen = torch.Generator().manual_seed(seed)
    mask = 1.0 - torch.eye(k)                                       # (K, K): network i never sees input i

    def init(*shape, fan_in):
        return (torch.rand(*shape, generator=gen) * 2 - 1) * (1.0 / np.sqrt(fan_in))

    params = [init(k, k, hidden, fan_in=k - 1 if k > 1 else 1), torch.zeros(k, 1, hidden),
              init(k, hidden, hidden, fan_in=hidden), torch.zeros(k, 1, hidden),
              init(k, hidden, 1, fan_in=hidden), torch.zeros(k, 1, 1)]
    for p in params:
        p.requires_grad_(True)
    w1, b1, w2, b2, w3, b3 = params

    def forward(x):                                                 # x (B, K) -> predictions (K, B)
        xm = x.unsqueeze(0) * mask.unsqueeze(1)                     # (K, B, K)
        h = torch.relu(torch.baddbmm(b1, xm, w1))
        h = torch.relu(torch.baddbmm(b2, h, w2))
        return torch.baddbmm(b3, h, w3).squeeze(-1)

    xt = torch.as_tensor(xtr, dtype=torch.float32)
    opt = torch.optim.Adam(params, lr=lr)
    n = xt.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        xb = xt[idx]
        loss = ((forward(xb) - xb.T) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return forward(torch.as_tensor(xte, dtype=torch.float32)).T.double().numpy()


def lps_from_codes(codes, *, regressor: str = "mlp", test_fraction: float = 0.2, seed: int = 0, hidden: int = 32,
                   steps: int = 1500, batch_size: int = 256, lr: float = 3e-3, return_per_dim: bool = False) -> dict:
    """LPS of codes (N, K), K >= 2 (see the module doc). Returns {"lps.score", "lps.max"} (+ "lps.per_dim")."""
    if regressor not in ("mlp", "linear"):
        raise ValueError(f"regressor: expected 'mlp' or 'linear', got {regressor!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    z = check_codes(codes)
    n, k = z.shape
    if k < 2:
        raise ValueError(f"codes: LPS predicts each dimension from the others and needs K >= 2, got K = {k}")
    n_test = int(round(n * test_fraction))
    if n_test < 2 or n - n_test < 2:
        raise ValueError(f"codes: {n} samples are too few for a train/test split with test_fraction={test_fraction}")
    g = as_generator(seed)
    perm = g.permutation(n)
    tr, te = z[perm[n_test:]], z[perm[:n_test]]
    mu, sd = tr.mean(0), tr.std(0)
    const = np.flatnonzero(sd == 0)
    if const.size:
        raise ValueError(f"codes: dimension(s) {const.tolist()} are constant on the training split; LPS is undefined "
                         f"for them (drop dead units first)")
    tr, te = (tr - mu) / sd, (te - mu) / sd
    if regressor == "linear":
        pred = np.empty_like(te)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            a = np.c_[tr[:, others], np.ones(len(tr))]
            coef, *_ = np.linalg.lstsq(a, tr[:, i], rcond=None)
            pred[:, i] = np.c_[te[:, others], np.ones(len(te))] @ coef
    else:
        pred = _fit_mlp(tr, te, int(g.integers(2**31 - 1)), hidden, steps, batch_size, lr)
    r2 = _r2(pred, te)
    out = {"lps.score": float(r2.mean()), "lps.max": float(r2.max())}
    if return_per_dim:
        out["lps.per_dim"] = r2
    return out


def lps(dataset, representation, rng=0, *, num_samples: int = 10000, encode_batch_size: int = 256,
        cache: bool = True, progress: bool = False, **kwargs) -> dict:
    """LPS of ``representation`` on ``num_samples`` uniform observations of ``dataset`` (no labels used)."""
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 10:
        raise ValueError(f"num_samples: expected an int >= 10, got {num_samples!r}")
    g = as_generator(rng)
    enc = as_encoded(dataset, representation, batch_size=encode_batch_size, cache=cache, progress=progress)
    codes, _ = enc.sample(num_samples, g, desc="lps")
    return lps_from_codes(codes, seed=int(g.integers(2**31 - 1)), **kwargs)
