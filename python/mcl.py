"""Pure-autograd reference of the MCL loss: Algorithm 1 of the paper, line by line (``contrast="total"``), plus the
options mclcore exposes (per-sample gradient clip, separate key, multi-positive groups, norm floor). Used by tests (to 1e-10 in
float64) and benchmarks as the baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_dense(q, k, tau, groups=None):
    """B x B InfoNCE on already-normalised q, k; diagonal positives or SupCon-L_in multi-positive groups."""
    logits = q @ k.t() / tau
    if groups is None:
        return F.cross_entropy(logits, torch.arange(q.size(0), device=q.device))
    pos = groups[:, None] == groups[None, :]
    lse_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - lse_pos).mean()


def mcl_loss(decoder_G, z, u, *, critic, Pi_g, Pi_u, tau=0.1, create_graph=True, clip=None, u_key=None,
             groups=None, eps=1e-12, critic_input="xzu", contrast="generator"):
    """``critic_input``: what the critic sees ("xzu" = c(x, z, u) as in Algorithm 1, "xz", "x"; a left-out input is
    passed as a zero-width tensor). ``contrast``: "generator" (mclcore's default) = J_G^T grad_x c (the critic's direct
    z-term left out) or "total" = grad_z c(G(z, u), z, u) (Algorithm 1, line by line)."""
    u_key = u if u_key is None else u_key
    if not z.requires_grad:
        z = z.detach().requires_grad_(True)
    x_hat = decoder_G(z, u)
    z_in = z if "z" in critic_input else z.new_zeros(z.shape[0], 0)
    u_in = u if "u" in critic_input else u.new_zeros(u.shape[0], 0)
    s = critic(x_hat, z_in, u_in)

    # mechanism gradient w.r.t. the latent: all of it, or only the path through the generator
    if contrast == "total":
        g = torch.autograd.grad(s.sum(), z, create_graph=create_graph)[0].flatten(1)
    else:
        gx = torch.autograd.grad(s.sum(), x_hat, create_graph=True)[0]
        g = torch.autograd.grad(x_hat, z, grad_outputs=gx, create_graph=create_graph)[0].flatten(1)
    if clip:
        g = g * (clip / g.norm(dim=1, keepdim=True).clamp_min(clip))

    # L2-normalized projections
    q = Pi_g(g)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(eps)
    k = Pi_u(u_key.flatten(1))
    k = k / k.norm(dim=1, keepdim=True).clamp_min(eps)
    return infonce_dense(q, k, tau, groups)
