"""Train beta-VAE / iVAE / MD-VAE / MD-VAE+MCL on a synthetic GMD or LRD process and score MCC (paper §5.1, D.3).

One call of :func:`train` trains M independent members of one cell at once (stacked weights, batched matmuls;
see :mod:`mclcore.models.vae`) through the one training loop (:func:`mclcore.train.loop.train`; one phase,
``epochs x ceil(n_train / batch)`` steps). A member is a ``(seed, lambda_mcl)`` pair: ``seed`` draws its dataset
(generator, alphabet, samples: :func:`mclcore.data.synthetic.make_dataset`), its initial weights, its batch order
and its reparameterisation noise, each from its own stream, so a member's numbers do not depend on which other
members share the stack. Objective per member (paper Eq. 1 and §4.2)::

    L = -ELBO(x, u)                                  betavae (KL x beta), ivae, mdvae
    L = -ELBO(x, u) + lambda_mcl * L_MCL(G, z, u)    mdvae_mcl: mclcore.MCL on the MD-VAE decoder G(z, u),
                                                      z the encoder's reparameterised sample
    L = the principle model's loss                   compvae, mmdvae, qlae (AdamW), intervae (their extra noise:
                                                      each member's batch stream after its eps; models/principles.py)

**MCL under stacking.** Each member's MCL regulariser is its own :class:`mclcore.MCL` module at initialisation;
the members' modules run stacked (:class:`mclcore.losses.mcl.StackedMCL`: one call of each native op for the
whole stack, on the batched decoder), with the numbers of a loop over them (mclcore/studies/synthetic/members.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from mclcore.data.synthetic import derive_seed, make_dataset
from mclcore.losses.diagnostics import READ_KEYS, MCLWeight, gradient_norms, readout
from mclcore.models.vae import StackedVAE
from mclcore.studies.synthetic.config import MODELS, TrainConfig
from mclcore.studies.synthetic.members import Members
from mclcore.studies.synthetic.principles import PRINCIPLE_MODELS, eval_metrics, principle_model, principle_row
from mclcore.train import loop

__all__ = ["MODELS", "TrainConfig", "train", "load_checkpoint", "MCL_OPS"]

# Stream tags of derive_seed for the training randomness (the data uses tags 1-3 in mclcore.data.synthetic).
_INIT, _BATCHES, _MCL_INIT = 11, 12, 13
# Every native op of an MCL training step (the forwards, critic_grad's backward and the fused InfoNCE).
MCL_OPS = ("critic_grad", "critic_grad_backward", "infonce_with_grad")
load_checkpoint = loop.load_checkpoint


@functools.lru_cache(maxsize=32)
def _dataset(cfg_items: tuple, seed: int):
    """The dataset of one seed, cached: the units of a cell (one per model) run back to back on the same datasets
    (up to 32 seeds, ~1.2 GB at dz = 20, N = 50,000), which saves regenerating them (~1 s each, 2-core AMD EPYC VM,
    2026-11)."""
    c = dict(cfg_items)
    return make_dataset(c["process"], c["dz"], c["n_alphabet"], n=c["n"], du=c["du"], noise_var=c["noise_var"],
                        mixing=c["mixing"], test_frac=c["test_frac"], seed=seed, mean_bound=c["lrd_mean_bound"],
                        std_bounds=(c["lrd_std_low"], c["lrd_std_high"]), modulation_range=c["modulation_range"],
                        shift_scale=c["shift_scale"])


# Every TrainConfig field that make_dataset reads (the dataset cache key).
_DATA_KEYS = ("process", "dz", "n_alphabet", "n", "du", "noise_var", "mixing", "test_frac", "lrd_mean_bound",
              "lrd_std_low", "lrd_std_high", "modulation_range", "shift_scale")
ACTIVE_KL = 0.01        # nats: a latent dimension whose mean KL on the evaluation split exceeds it is active


@dataclass
class StackData:
    """The stacked datasets and the members' training state (what a checkpoint keeps beyond the weights)."""
    X: torch.Tensor                      # (S, N, dx) observations of the S distinct seeds
    U: torch.Tensor                      # (S, N, du) conditions
    UI: torch.Tensor                     # (S, N) condition ids
    Z: torch.Tensor                      # (S, N, dz) true latents (CPU, for MCC)
    data_of: torch.Tensor                # (M,) dataset of each member
    lam: torch.Tensor                    # (M,) MCL weights
    rngs: list                           # per member: batch order + reparameterisation noise
    n_train: int
    steps_per_epoch: int
    members: dict
    perm: torch.Tensor | None = None     # (M, n_train) this epoch's batch order
    sums: dict | None = None             # running sums of this epoch's losses, (M,) each
    history: list = field(default_factory=list)   # per finished epoch: {"loss": [M], "rec", "kl", "mcl"}
    weight: MCLWeight | None = None      # the MCL weight per member (absolute lambda, or relative to the ELBO)
    diagnostics: list = field(default_factory=list)   # per measurement: {"step", "acc": [M], ..., "grad_ratio"}


class StackedStudy:
    """The study object of :func:`mclcore.train.loop.train` for one stack of members."""

    PHASES = ("train",)

    def __init__(self, seeds: list[int], lambdas: list[float]):
        self.seeds, self.lambdas = seeds, lambdas
        self.data: StackData | None = None
        self.steps_done, self.resuming = 0, False

    def build_model(self, cfg: TrainConfig) -> Members:
        import mclcore

        dx = _dataset(tuple((k, getattr(cfg, k)) for k in _DATA_KEYS), self.seeds[0]).x.shape[1]
        if cfg.model in PRINCIPLE_MODELS:
            return Members.build(principle_model(cfg, dx, [derive_seed(s, _INIT) for s in self.seeds]), None)
        vae = StackedVAE("mdvae" if cfg.model == "mdvae_mcl" else cfg.model, dx, cfg.du, cfg.dz,
                         [derive_seed(s, _INIT) for s in self.seeds], hidden=cfg.hidden or None, slope=cfg.slope,
                         beta=cfg.beta if cfg.model == "betavae" else 1.0, decoder_var=cfg.decoder_var,
                         learn_decoder_var=cfg.decoder_var_learned)
        def make_mcl(m: int):
            with torch.random.fork_rng(devices=[]):                     # MCL draws its init from the global RNG
                torch.manual_seed(derive_seed(self.seeds[m], _MCL_INIT))
                return mclcore.MCL.from_config(cfg.mcl, z_dim=cfg.dz, x_dim=dx, u_dim=cfg.du)
        return Members.build(vae, make_mcl if cfg.model == "mdvae_mcl" else None)

    def phases(self, cfg: TrainConfig) -> list[tuple[str, int]]:
        return [("train", cfg.epochs * math.ceil(cfg.splits()[0] / cfg.batch_size))]

    def setup(self, model: Members, cfg: TrainConfig, device) -> StackData:
        uniq = sorted(set(self.seeds))
        datasets = [_dataset(tuple((k, getattr(cfg, k)) for k in _DATA_KEYS), s) for s in uniq]
        n_train = cfg.splits()[0]
        self.data = StackData(
            X=torch.stack([d.x for d in datasets]).to(device), U=torch.stack([d.u for d in datasets]).to(device),
            UI=torch.stack([d.u_index for d in datasets]).to(device), Z=torch.stack([d.z for d in datasets]),
            data_of=torch.tensor([uniq.index(s) for s in self.seeds], device=device),
            lam=torch.tensor(self.lambdas, device=device),
            weight=MCLWeight(self.lambdas, cfg.mcl.weighting, cfg.mcl.diagnose_every)
            if cfg.model == "mdvae_mcl" else None,
            rngs=[torch.Generator().manual_seed(derive_seed(s, _BATCHES)) for s in self.seeds],
            n_train=n_train, steps_per_epoch=math.ceil(n_train / cfg.batch_size),
            members={"seeds": self.seeds, "lambdas": self.lambdas})
        return self.data

    def trainable(self, model: Members, cfg, phase: str) -> list:
        return list(model.parameters())

    def optimizers(self, model: Members, cfg: TrainConfig, phase: str, params) -> tuple[list, list]:
        if cfg.model == "qlae":      # the paper's AdamW; decoupled weight decay is elementwise too: M independent
            return [torch.optim.AdamW(model.vae.param_groups(cfg.qlae_weight_decay), lr=cfg.lr)], []
        return [model.adam(params, cfg.lr)], []                          # M independent Adams (elementwise)

    def train_step(self, model: Members, cfg: TrainConfig, phase: str, step: int, d: StackData, ctx) -> dict:
        M, B, dz = len(self.seeds), cfg.batch_size, cfg.dz
        epoch, s = divmod(step, d.steps_per_epoch)
        if s == 0:                                                              # a new epoch: new batch order
            d.perm = torch.stack([torch.randperm(d.n_train, generator=g) for g in d.rngs]).to(d.X.device)
            d.sums = {k: torch.zeros(M, dtype=torch.float64, device=d.X.device) for k in ("loss", "rec", "kl", "mcl")
                      + (("aux",) if cfg.model in PRINCIPLE_MODELS else ())}
        idx = d.perm[:, s * B:(s + 1) * B]                                      # (M, b), b <= B
        b = idx.shape[1]
        x = d.X[d.data_of[:, None], idx]                                        # (M, b, dx)
        u = d.U[d.data_of[:, None], idx]                                        # (M, b, du)
        eps = torch.stack([torch.randn(b, dz, generator=g) for g in d.rngs]).to(d.X.device)  # (M, b, dz)
        extra = model.vae.draw(b, d.rngs) if cfg.model in PRINCIPLE_MODELS else None   # after each member's eps
        out = model.vae(x, u, eps) if extra is None else model.vae(x, u, eps, extra.to(d.X.device))   # (M,) each
        loss = out["loss"]                                                      # (M,) -ELBO
        if model.has_mcl:
            gids = d.UI[d.data_of[:, None], idx] if cfg.mcl.multi_positive else None       # (M, b)
            l_mcl = model.mcl_losses(out["z"], u, gids)                         # (M,)
            every = cfg.mcl.diagnose_every
            if d.weight.due(step) or (every and step % every == 0):
                self._diagnose(model, cfg, step, d, out, u, gids, l_mcl)
            w = d.lam if d.weight.weighting == "absolute" else d.weight.weight().to(l_mcl)   # (M,)
            loss = loss + w * l_mcl
        else:
            l_mcl = torch.zeros(M, device=d.X.device)
        for k, v in (("loss", loss), ("rec", out["rec"]), ("kl", out["kl"]), ("mcl", l_mcl), ("aux", out.get("aux"))):
            if k in d.sums:         # "aux": principle models only
                d.sums[k] += v.detach().double() * b
        if s == d.steps_per_epoch - 1:
            d.history.append({k: (v / d.n_train).cpu().tolist() for k, v in d.sums.items()})   # epoch means

        def hint() -> str:
            bad = [self.seeds[m] for m in torch.nonzero(~torch.isfinite(loss)).flatten().tolist()]
            return (f"{cfg.model} (process {cfg.process}, dz {dz}, |U| {cfg.n_alphabet}): seed(s) {bad} at epoch "
                    f"{epoch + 1}, step {s + 1}; try a lower lr (now {cfg.lr:g})")
        # members are independent: d total / d theta_m = d loss_m / d theta_m
        return {"loss": loss.sum(), "hint": hint}

    def _diagnose(self, model: Members, cfg: TrainConfig, step: int, d: StackData, out: dict, u, gids, l_mcl):
        """Measure the MCL weight (relative mode) and the diagnostics of every member; appended to d.diagnostics.
        Nothing here draws random numbers or changes the step's graph, so diagnostics never change results."""
        M = len(self.seeds)
        params = list(model.vae.decoder.parameters())
        norms = d.weight.update(l_mcl.sum(), out["loss"].sum(), params, members=M) \
            if d.weight.weighting == "relative" else gradient_norms(l_mcl.sum(), out["loss"].sum(), params, members=M)
        w = d.weight.weight().double().cpu()
        reads = [readout(model.mcl_member(m), model.vae.decoder_member(m), out["z"][m], u[m],
                         groups=None if gids is None else gids[m]) for m in range(M)]
        rec = {"step": step, "weight": w.tolist(), "mcl": l_mcl.detach().double().cpu().tolist(),
               "grad_ratio": (w * norms["ratio"].cpu()).tolist()}            # |grad w L_MCL| / |grad -ELBO|
        for k in READ_KEYS:
            rec[k] = [r[k] for r in reads]
        d.diagnostics.append(rec)

    def extra_state(self, d: StackData) -> dict:
        return {"members": d.members, "rng": [g.get_state() for g in d.rngs], "perm": d.perm, "sums": d.sums,
                "history": d.history, "weight": d.weight.state_dict() if d.weight else None,
                "diagnostics": d.diagnostics}

    def load_extra_state(self, d: StackData, state: dict) -> None:
        if state["members"] != d.members:
            raise ValueError(f"checkpoint: written for a different run (members {state['members']} vs "
                             f"{d.members}); delete it or use another output directory")
        for g, st in zip(d.rngs, state["rng"]):
            g.set_state(st)
        d.perm = None if state["perm"] is None else state["perm"].to(d.X.device)
        d.sums = None if state["sums"] is None else {k: v.to(d.X.device) for k, v in state["sums"].items()}
        d.history = state["history"]
        if d.weight is not None and state.get("weight"):
            d.weight.load_state_dict(state["weight"])
        d.diagnostics = state.get("diagnostics") or []
        self.resuming = True


def _mcc_rows(z_true: torch.Tensor, z_hat: torch.Tensor) -> tuple[float, float]:
    from mclcore.metrics import mcc

    zt, zh = z_true.double().numpy(), z_hat.double().numpy()
    if not np.isfinite(zh).all():
        raise FloatingPointError("posterior means contain NaN/inf: the model diverged")
    return mcc(zt, zh, "pearson")["mcc.mean"], mcc(zt, zh, "spearman")["mcc.mean"]


def _evaluation_extras(cfg: TrainConfig, vae: StackedVAE, seeds: list[int], x_ev: torch.Tensor,
                       u_ev: torch.Tensor, rows: slice, chunk: int = 8192) -> list[dict]:
    """Per member, beside the MCC (no random numbers drawn, no state changed): ``mcc_ceiling``, the Pearson MCC of
    ``y = z * m(u) + b(u)`` (true FiLM maps) against z on the evaluation rows, the oracle of the best u-blind
    recovery (1 for ``"lrd"``: y = z); ``kl_per_dim``, the mean over those rows of KL(q(z_i|.) || p(z_i|.)) per
    dimension in closed form against the model's prior (N(0, 1), or iVAE's u-conditional one), unweighted by beta;
    ``active_dims``, the dimensions above ``ACTIVE_KL`` nats (collapse shows as few); ``snr`` of the dataset."""
    from mclcore.metrics import mcc

    key = tuple((k, getattr(cfg, k)) for k in _DATA_KEYS)
    kl_sum = torch.zeros(x_ev.shape[0], cfg.dz, dtype=torch.float64)
    gaussian = getattr(vae, "gaussian_posterior", True)       # qlae: a deterministic code, no KL to report
    with torch.no_grad():
        for i in range(0, x_ev.shape[1] if gaussian else 0, chunk):
            x, u = x_ev[:, i:i + chunk], u_ev[:, i:i + chunk]
            mu, logvar = vae.encode(x, u)                                        # (M, b, dz)
            mu, logvar = mu.double(), logvar.double()
            prior = vae.prior_params(u)
            if prior is None:
                kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)
            else:
                mu_p, logvar_p = (t.double() for t in prior)
                kl = 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) / logvar_p.exp() - 1.0)
            kl_sum += kl.sum(1).cpu()
    kl_dim = kl_sum / x_ev.shape[1]                                              # (M, dz)
    out = []
    for m, seed in enumerate(seeds):
        data = _dataset(key, seed)
        ceiling = mcc(data.z[rows].double().numpy(), data.u_blind(rows).numpy(), "pearson")["mcc.mean"]
        kl_m = kl_dim[m].tolist() if gaussian else None
        out.append({"mcc_ceiling": ceiling, "kl_per_dim": kl_m,
                    "active_dims": int(sum(v > ACTIVE_KL for v in kl_m)) if gaussian else None,
                    "snr": data.snr(cfg.noise_var)})
    return out


def train(cfg: TrainConfig, seeds: Sequence[int], lambdas: Sequence[float] | None = None, *,
          checkpoint: str | None = None, on_step: Callable[[int], None] | None = None,
          on_epoch: Callable[[int, dict], None] | None = None, device: str = "cpu",
          diagnostics: list | None = None) -> list[dict]:
    """Train one member per ``(seeds[m], lambdas[m])`` of the cell ``cfg`` at once; return one result row each.

    Args:
        cfg: the cell and hyper-parameters (:class:`TrainConfig`).
        seeds: member seeds (M of them; repeats allowed with different lambdas).
        lambdas: per-member MCL weights for ``mdvae_mcl`` (default ``cfg.lambda_mcl`` for all); must be None or
            all equal to ``cfg.lambda_mcl`` for the other models.
        checkpoint: path of a resumable checkpoint: loaded if it exists (same config and members, else an error),
            written atomically every ``cfg.checkpoint_every`` epochs and at the end.
        on_step: called with the number of steps just done (progress bars).
        on_epoch: called with ``(epoch, {"loss": (M,), "rec": (M,), "kl": (M,), "mcl": (M,)})`` epoch means, after
            that epoch's checkpoint is written.
        device: torch device.
        diagnostics: a list that receives the MCL diagnostics of ``mdvae_mcl`` (one dict per measurement, every
            ``cfg.mcl.diagnose_every`` steps: step, weight, mcl, acc, acc_generator, acc_direct, chance,
            shortcut_share, grad_ratio, each a list over members; :mod:`mclcore.losses.diagnostics`).

    Returns:
        one dict per member: cell fields, ``seed``, ``lambda_mcl``, ``split``, ``mcc`` (Pearson), ``mcc_spearman``,
        final-epoch means ``neg_elbo``, ``rec``, ``kl``, ``mcl_loss``, and ``epochs``, ``steps``, ``members``; for
        ``mdvae_mcl`` also the last diagnostics ``mcl_weight``, ``mcl_acc``, ``mcl_acc_generator``,
        ``mcl_acc_direct``, ``mcl_chance``, ``mcl_shortcut_share``, ``mcl_grad_ratio``. Every row also has
        ``mcc_ceiling`` (the oracle MCC of the best u-blind recovery y = z * m(u) + b(u)), ``kl_per_dim`` (list,
        dz), ``active_dims`` and ``snr`` (:func:`_evaluation_extras`; they change none of the other numbers; None
        KL columns for qlae). Principle models add ``objective``, ``principle_loss``; ``cfg.eval_metrics`` its columns.
    """
    import os

    cfg.validate()
    M = len(seeds)
    if M < 1:
        raise ValueError("seeds: expected at least one seed")
    seeds = [int(s) for s in seeds]
    lambdas = [float(cfg.lambda_mcl)] * M if lambdas is None else [float(v) for v in lambdas]
    if len(lambdas) != M:
        raise ValueError(f"lambdas: expected {M} values (one per seed), got {len(lambdas)}")
    if cfg.model != "mdvae_mcl" and any(v != cfg.lambda_mcl for v in lambdas):
        raise ValueError(f"lambdas: model {cfg.model!r} has no MCL term; per-member lambdas need 'mdvae_mcl'")
    if any(not (math.isfinite(v) and v >= 0) for v in lambdas):
        raise ValueError(f"lambdas: expected finite numbers >= 0, got {lambdas}")
    dev = loop.resolve_device(device)
    if cfg.model == "mdvae_mcl":
        # Fail before training, not at the first MCL step: the step runs every op of MCL_OPS, not just the forwards.
        from mclcore.ops import available

        for op in MCL_OPS:
            ok, why = available(op, dev)
            if not ok:
                raise ValueError(f"device: mdvae_mcl needs the native op mclcore::{op} on {dev.type}, which is not "
                                 f"usable here ({why}); use --device cpu for it")
    study = StackedStudy(seeds, lambdas)
    spe = math.ceil(cfg.splits()[0] / cfg.batch_size)

    def step_done(n: int) -> None:          # after the step and its checkpoint
        if on_step is not None:
            on_step(n)
        if study.resuming:                  # the loop's first call after a resume: the steps done before
            study.resuming = False
        elif on_epoch is not None and (study.data.history and n == 1
                                       and len(study.data.history) * spe == study.steps_done + 1):
            on_epoch(len(study.data.history), {k: torch.tensor(v) for k, v in study.data.history[-1].items()})
        study.steps_done += n

    out_dir, name = (os.path.dirname(os.path.abspath(checkpoint)), os.path.basename(checkpoint)) if checkpoint \
        else (None, "checkpoint.pt")
    model, cfg, d, _ = loop.train(study, cfg, out_dir, checkpoint=name, write_config=False, log=False,
                                  progress=False, on_step=step_done, config_mismatch="error",
                                  label=f"synthetic/{cfg.model}", seed=0, device=str(dev), log_every=0,
                                  ckpt_every=spe * cfg.checkpoint_every)

    # ---- evaluation: MCC of posterior means against the true z (paper App. D.3) ----
    vae = model.vae.eval()
    n_train, n_val, n_test = cfg.splits()
    lo, hi = (n_train, n_train + n_val) if cfg.eval_split == "val" else (cfg.n - n_test, cfg.n)
    x_ev, u_ev = d.X[d.data_of, lo:hi], d.U[d.data_of, lo:hi]                  # (M, Ne, dx), (M, Ne, du)
    with torch.no_grad():
        z_hat = vae.posterior_mean(x_ev, u_ev).cpu()                            # (M, Ne, dz)
    last, has_mcl, principle = d.history[-1], cfg.model == "mdvae_mcl", cfg.model in PRINCIPLE_MODELS
    extras = _evaluation_extras(cfg, vae, seeds, x_ev, u_ev, slice(lo, hi))
    dec_var, rows = vae.decoder_variance().tolist(), []                         # (M,): learnt, or the fixed one
    for m in range(M):
        pearson, spearman = _mcc_rows(d.Z[d.data_of[m].item(), lo:hi], z_hat[m])
        rows.append({"process": cfg.process, "mixing": cfg.mixing, "dz": cfg.dz, "n_alphabet": cfg.n_alphabet,
                     "model": cfg.model, "seed": seeds[m], "lambda_mcl": lambdas[m] if has_mcl else 0.0,
                     "split": cfg.eval_split, "mcc": pearson, "mcc_spearman": spearman,
                     "neg_elbo": last["loss"][m] - (lambdas[m] * last["mcl"][m] if has_mcl else 0.0),
                     "rec": last["rec"][m], "kl": last["kl"][m], "mcl_loss": last["mcl"][m] if has_mcl else None,
                     "epochs": cfg.epochs, "steps": cfg.epochs * spe, "members": M, "decoder_var_final": dec_var[m],
                     **{k: getattr(cfg, k) for k in ("decoder_var", "decoder_var_learned", "shift_scale",
                                                     "modulation_range")}, **extras[m]})
        rows[-1].update(principle_row(cfg, last, m) if principle else {}, **eval_metrics(
            cfg, d.Z[d.data_of[m].item(), lo:hi], z_hat[m], seeds[m],
            member=(_dataset(tuple((k, getattr(cfg, k)) for k in _DATA_KEYS), seeds[m]), vae, m)))
        if has_mcl and d.diagnostics:      # the last measurement (the unit record keeps them all)
            last_d = d.diagnostics[-1]
            rows[-1].update({f"mcl_{k}": last_d[k][m] for k in ("weight", *READ_KEYS, "grad_ratio")
                             if k in last_d})      # a unit resumed from before acc_generator_independent existed
    if diagnostics is not None:
        diagnostics.extend(d.diagnostics)
    return rows
