"""Certificates for the identifiability assumptions: sufficient GMD (Assumption 2) and sufficient LRD (Assumption 1).

Both assumptions have the same shape (paper §2, §3.2; docs/DESIGN.md §2.4). At a latent z and an alphabet of conditions
u^(0), ..., u^(n-1), stack a per-condition vector ``v(z, u) in R^{2dz}`` into the contrast matrix

    C(z) = [v(z,u^(1)) - v(z,u^(0)); ...; v(z,u^(n-1)) - v(z,u^(0))]          ((n-1) x 2dz)

The assumption holds at z iff some 2dz + 1 conditions give 2dz linearly independent contrasts, i.e. iff
``rank C(z) = 2dz`` (the rank of C is the dimension of the affine hull of the v(z,u^(n)), whatever the base u^(0));
this needs ``n >= 2dz + 1``.

* Assumption 2 (:func:`certify`): ``v = V(z,u) = (m'_1..m'_dz, m''_11..m''_dzdz)``, the mechanism derivatives of
  the generator's log-volume (:func:`mclcore.mechanism.derivatives`).
* Assumption 1 (:func:`certify_lrd`): ``v = w(z,u) = (d/dz_i log p(z|u), d^2/dz_i^2 log p(z|u))_{i=1..dz}`` for a
  u-conditional prior log-density. For a prior with conditionally independent components,
  ``log p(z|u) = sum_i q_i(z_i, u)``, this is exactly the paper's ``(dq_i/dz_i, d^2q_i/dz_i^2)_i`` (iVAE); for a
  non-factorised prior it is the diagonal generalisation. (Components are ordered all-first-then-all-second, as V;
  the rank does not depend on the order.)

Numerical rank: the columns of C are first scaled to unit norm (``normalize=True``; a change of coordinates in
v-space, so the exact rank is unchanged, while first and second derivatives, which have different scales, become
comparable), then ``rank = #{sigma_k > rtol * sigma_max}``. We report per z the rank and ``sigma_min/sigma_max``
(``sigma_min`` = the 2dz-th singular value, 0 when there are fewer rows), and over all z the fraction that pass,
with plain-language reasons when they cannot.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch.func import jacrev, vmap

from mclcore.mechanism.derivatives import _in_dtype, derivatives
from mclcore.ops import _checks

__all__ = ["Certificate", "certify", "certify_lrd", "contrast_certificate"]


@dataclasses.dataclass
class Certificate:
    """Per-latent result of a GMD / LRD certificate.

    Attributes:
        assumption: which assumption was checked.
        dz, n_alphabet: latent dimension and number of conditions |U|.
        rank: (Nz,) int64 numerical rank of C(z) (0 where v is undefined).
        sigma_min, sigma_max: (Nz,) the 2dz-th and the largest singular value of (column-scaled) C(z); NaN where
            v is undefined.
        passed: (Nz,) bool, ``rank == 2dz``.
        pass_fraction: fraction of latents that pass.
        reasons: plain-language reasons why the assumption fails somewhere (empty when it holds at every z).
        degenerate: the generator is piecewise linear (V = 0 almost everywhere).
        path: how v was computed (``"op"``, ``"torch.func"``).
        rtol, normalize: the numerical-rank settings.
    """

    assumption: str
    dz: int
    n_alphabet: int
    rank: torch.Tensor
    sigma_min: torch.Tensor
    sigma_max: torch.Tensor
    passed: torch.Tensor
    pass_fraction: float
    reasons: list
    degenerate: bool = False
    path: str = ""
    rtol: float = 1e-6
    normalize: bool = True

    @property
    def holds(self) -> bool:
        """True when the assumption passes at every latent checked."""
        return bool(self.passed.all()) and self.passed.numel() > 0

    @property
    def ratio(self) -> torch.Tensor:
        """(Nz,) sigma_min / sigma_max (0 where sigma_max is 0, NaN where v is undefined)."""
        return torch.where(self.sigma_max > 0, self.sigma_min / self.sigma_max.clamp_min(1e-300),
                           torch.zeros_like(self.sigma_max))

    def summary(self) -> str:
        D = 2 * self.dz
        n = self.rank.numel()
        lines = [
            f"{self.assumption}: {n} latents, |U| = {self.n_alphabet}, dz = {self.dz} "
            f"(needs rank 2dz = {D}, so |U| >= {D + 1})" + (f"; V by {self.path}" if self.path else ""),
            f"  passes at {int(self.passed.sum())}/{n} latents ({100 * self.pass_fraction:.1f}%): "
            + ("HOLDS at every latent checked" if self.holds else "DOES NOT HOLD everywhere"),
        ]
        if n:
            r = self.rank.double()
            lines.append(f"  rank of the contrast matrix: min {int(r.min())}, median {float(r.median()):g}, "
                         f"max {int(r.max())} (of {D})")
            ratio = self.ratio[torch.isfinite(self.ratio)]
            if ratio.numel():
                lines.append(f"  sigma_min/sigma_max: min {float(ratio.min()):.3g}, "
                             f"median {float(ratio.median()):.3g}, "
                             f"max {float(ratio.max()):.3g} (rank threshold rtol = {self.rtol:g}"
                             + (", unit-norm columns)" if self.normalize else ")"))
        for reason in self.reasons:
            lines.append(f"  - {reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def contrast_certificate(v: torch.Tensor, *, assumption: str, names: list[str], rtol: float = 1e-6,
                         normalize: bool = True, degenerate: bool = False, degenerate_reason: str | None = None,
                         path: str = "") -> Certificate:
    """The certificate from per-condition vectors ``v`` (Nz, n, 2dz): contrasts against condition 0, SVD per z.

    ``names`` (2dz strings) name the components in the reasons.
    """
    _checks.tensor(v, "v", ndim=3)
    Nz, n, D = v.shape
    if D % 2:
        raise ValueError(f"v: expected an even last dimension 2dz, got shape {tuple(v.shape)}")
    _checks.positive_float(rtol, "rtol")
    dz = D // 2
    v = v.double()
    defined = torch.isfinite(v).all(dim=2).all(dim=1)                      # (Nz,)
    v = torch.where(defined[:, None, None], v, torch.zeros_like(v))        # undefined latents: reported, not used
    C = v[:, 1:] - v[:, :1]                                                # (Nz, n-1, D)
    col = C.norm(dim=1)                                                    # (Nz, D)
    scale = v.abs().amax(dim=(1, 2)).clamp_min(1.0)                        # (Nz,)
    zero_col = col <= 1e-12 * scale[:, None]                               # contrast of that component vanishes
    if normalize:
        C = C / torch.where(zero_col, torch.ones_like(col), col)[:, None, :]
    if n >= 2:
        s = torch.linalg.svdvals(C)                                        # (Nz, min(n-1, D)), descending
        sigma_max = s[:, 0]
        sigma_min = s[:, D - 1] if s.shape[1] >= D else torch.zeros(Nz, dtype=torch.float64)
        rank = (s > rtol * sigma_max[:, None]).sum(dim=1)
        rank = torch.where(sigma_max > 0, rank, torch.zeros_like(rank))
    else:
        sigma_max = sigma_min = torch.zeros(Nz, dtype=torch.float64)
        rank = torch.zeros(Nz, dtype=torch.int64)
    nan = torch.full_like(sigma_max, math.nan)
    sigma_max, sigma_min = torch.where(defined, sigma_max, nan), torch.where(defined, sigma_min, nan)
    rank = torch.where(defined, rank, torch.zeros_like(rank))
    passed = defined & (rank == D)
    frac = float(passed.double().mean()) if Nz else 0.0

    reasons = []
    if n < D + 1:
        reasons.append(f"the alphabet has |U| = {n} conditions, but the assumption needs at least 2dz + 1 = {D + 1}: "
                       f"{max(n - 1, 0)} contrast rows can have rank at most {max(n - 1, 0)} < 2dz = {D}")
    if degenerate:
        reasons.append(degenerate_reason or "the generator is degenerate")
    n_undef = int((~defined).sum())
    if n_undef:
        reasons.append(f"at {n_undef} of {Nz} latents the vector could not be computed (NaN/inf: e.g. the generator's "
                       f"Jacobian is numerically rank-deficient there), so those latents fail")
    if not degenerate and Nz and n >= 2:
        always_zero = (zero_col | ~defined[:, None]).all(dim=0) & defined.any()
        if bool(always_zero.any()):
            which = [names[i] for i in torch.nonzero(always_zero).flatten().tolist()]
            reasons.append(f"the contrasts of {', '.join(which)} vanish at every latent: these components do not "
                           f"change with u, so the contrast matrix can never reach rank {D}")
    if n >= D + 1 and not degenerate:
        low = defined & (rank < D)
        if bool(low.any()):
            rk = rank[low]
            reasons.append(f"the contrast matrix is numerically rank-deficient at {int(low.sum())} of {Nz} latents "
                           f"(rank {int(rk.min())}..{int(rk.max())} < {D}: singular values below rtol = {rtol:g} "
                           f"times the largest)")
    return Certificate(assumption=assumption, dz=dz, n_alphabet=n, rank=rank, sigma_min=sigma_min,
                       sigma_max=sigma_max, passed=passed, pass_fraction=frac, reasons=reasons,
                       degenerate=degenerate, path=path, rtol=float(rtol), normalize=normalize)


def _check_inputs(z, alphabet):
    _checks.tensor(z, "z", ndim=2)
    _checks.tensor(alphabet, "alphabet", ndim=2)
    if z.shape[0] < 1:
        raise ValueError("z: expected at least one latent")
    if alphabet.shape[0] < 1:
        raise ValueError("alphabet: expected at least one condition (shape (|U|, du))")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pair", disable=not enabled, leave=False)


def certify(G, z: torch.Tensor, alphabet: torch.Tensor, *, rtol: float = 1e-6, normalize: bool = True,
            dtype: torch.dtype = torch.float64, path: str = "auto", batch_size: int = 4096,
            progress: bool = False) -> Certificate:
    """Check Assumption 2 (sufficient GMD) for ``x = G(z, u)`` at each latent of ``z`` over ``alphabet``.

    Args:
        G: generator, as accepted by :func:`mclcore.mechanism.derivatives` (fast native path for MLP / FiLM /
            nn.Sequential generators).
        z: (Nz, dz) latents at which to check.
        alphabet: (|U|, du) conditions u^(0..|U|-1).
        rtol: numerical-rank threshold relative to the largest singular value.
        normalize: scale the columns of C to unit norm before the SVD.
        dtype: compute dtype of V (float64 by default: the certificate is about small singular values).
        path: ``"auto"``, ``"op"`` or ``"torch.func"`` (see :func:`derivatives`).
        batch_size: (z, u) pairs per call.
        progress: show a tqdm progress bar.

    Returns:
        :class:`Certificate`; ``str()`` of it is a readable report.
    """
    _check_inputs(z, alphabet)
    Nz, dz = z.shape
    n = alphabet.shape[0]
    G = _in_dtype(G, dtype)                    # convert once, not per batch
    Z = z.repeat_interleave(n, dim=0)          # pair (k, m) at row k * n + m
    U = alphabet.repeat(Nz, 1)
    Vs, degenerate, reason, used = [], False, None, ""
    with _progress(Z.shape[0], "V(z,u)", progress) as bar:
        for start in range(0, Z.shape[0], batch_size):
            res = derivatives(G, Z[start:start + batch_size], U[start:start + batch_size], path=path, dtype=dtype,
                              warn=False)
            Vs.append(res.V)
            used = res.path
            if res.path == "op":
                degenerate, reason = res.degenerate, res.reason
            else:  # torch.func: degenerate only if V vanished in every batch
                degenerate = res.degenerate if start == 0 else (degenerate and res.degenerate)
                reason = reason or res.reason
            bar.update(res.V.shape[0])
    V = torch.cat(Vs).reshape(Nz, n, 2 * dz)
    names = [f"m'_{i + 1}" for i in range(dz)] + [f"m''_{i + 1}{i + 1}" for i in range(dz)]
    return contrast_certificate(V, assumption="Assumption 2 (sufficient GMD)", names=names, rtol=rtol,
                                normalize=normalize, degenerate=degenerate, degenerate_reason=reason, path=used)


def lrd_vectors(log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
                u: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """``w(z,u) = (d/dz_i log p(z|u), d^2/dz_i^2 log p(z|u))_i``: (B, 2dz) for z (B, dz), u (B, du).

    ``log_prob(z, u)`` takes batches (B, dz), (B, du) and returns (B,). Reverse over reverse per sample.
    """

    def lp(zb, ub):
        out = log_prob(zb[None], ub[None])
        if out.numel() != 1:
            raise ValueError(f"log_prob: expected one log-density per sample, got shape {tuple(out.shape)} for one")
        return out.reshape(())

    def one(zb, ub):
        def grad_and_aux(t):
            g = jacrev(lp)(t, ub)
            return g, g

        H, g = jacrev(grad_and_aux, has_aux=True)(zb)
        return torch.cat([g, torch.diagonal(H)])

    with torch.enable_grad():
        return vmap(one, chunk_size=chunk_size)(z, u).detach()


def certify_lrd(log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
                alphabet: torch.Tensor, *, rtol: float = 1e-6, normalize: bool = True, batch_size: int = 4096,
                progress: bool = False) -> Certificate:
    """Check Assumption 1 (sufficient LRD, iVAE) for a u-conditional prior at each latent of ``z``.

    The vector contrasted across conditions is ``w(z,u) = (d/dz_i log p(z|u), d^2/dz_i^2 log p(z|u))_{i=1..dz}``
    (the paper's ``(dq_i/dz_i, d^2 q_i/dz_i^2)`` for a prior with conditionally independent components).
    Example (iVAE's Gaussian prior): ``log p(z|u) = sum_i -(z_i - mu_i(u))^2 / (2 s_i(u)^2) - log s_i(u) + c``
    gives ``w = (-(z - mu)/s^2, -1/s^2)``: it passes when mu and s vary enough across u, and fails when the variance
    does not depend on u (the second-derivative contrasts vanish).

    Args:
        log_prob: ``log_prob(z, u) -> (B,)`` for z (B, dz), u (B, du), differentiable in z by torch.func.
        z: (Nz, dz); alphabet: (|U|, du). Computation in z's dtype (use float64).
        rtol, normalize, batch_size, progress: as in :func:`certify`.
    """
    if not callable(log_prob):
        raise TypeError(f"log_prob: expected a callable log_prob(z, u) -> (B,), got {type(log_prob).__name__}")
    _check_inputs(z, alphabet)
    Nz, dz = z.shape
    n = alphabet.shape[0]
    Z = z.repeat_interleave(n, dim=0)
    U = alphabet.to(z.dtype).repeat(Nz, 1)
    ws = []
    with _progress(Z.shape[0], "w(z,u)", progress) as bar:
        for start in range(0, Z.shape[0], batch_size):
            ws.append(lrd_vectors(log_prob, Z[start:start + batch_size], U[start:start + batch_size]))
            bar.update(ws[-1].shape[0])
    W = torch.cat(ws).reshape(Nz, n, 2 * dz)
    names = [f"d log p/dz_{i + 1}" for i in range(dz)] + [f"d2 log p/dz_{i + 1}^2" for i in range(dz)]
    return contrast_certificate(W, assumption="Assumption 1 (sufficient LRD)", names=names, rtol=rtol,
                                normalize=normalize, path="torch.func")
