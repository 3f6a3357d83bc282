"""The action-conditioned generative world model (ACG / LACG) with MCL on the action channel (paper App. D.5).

Objective of stage 2 (App. D.5)::

    L_total = L_rec + beta L_KL + lambda_adv L_GRL + lambda_MCL L_MCL

* ``L_rec``: rectified flow matching on the next latent frame, ``|v_theta(x_tau, tau, v_t, A(u_t)) - (eps - x_0)|^2``
  with ``x_tau = (1 - tau) x_0 + tau eps``, context = the previous latent frame ``v_t``. The flow's data ``x_0`` is
  the next frame itself (``residual=False``) or, by default, the scaled frame change
  ``x_0 = s (v_{t+1} - v_t)`` (``residual=True``, ``s`` = 1 / std of the training frame changes, so x_0 has unit
  variance): most of a manipulation frame does not change, and predicting the change makes "copy the context" the
  zero solution instead of something the flow must learn. Either way the model's output is the next latent frame
  ``v_{t+1} = v_t + x_0 / s`` (or ``x_0``).
  Parameterisation (``prediction``): by default the network predicts ``x0_hat`` and the velocity is
  ``(x_tau - x0_hat) / tau``; the loss is then ``|x0_hat - x_0|^2``, the velocity loss weighted by ``tau^2`` (the
  "x-prediction" form of flow matching). With the zero-initialised output layer the untrained model predicts
  "no change", and a frame that does not change costs it nothing to learn. ``prediction="velocity"`` predicts
  ``eps - x_0`` directly with the plain velocity loss.
* ``L_KL``: KL of the IDM posterior ``q(a_t | v_t, v_{t+1})`` to N(0, I) (LACG only).
* ``L_GRL``: cross-entropy of the embodiment classifier on the latent action behind a gradient-reversal layer
  (LACG only).
* ``L_MCL``: :func:`mclcore.losses.mcl.mcl_loss` with the generator
  ``g(z, u) = v_t + (z - tau * v_theta(z, tau, v_t, A(u))) / s`` (residual; ``z - tau v_theta`` without it)
  -- the one-step prediction of the clean next latent frame ``x_hat_{t+1}`` from the diffusion latent
  ``z = x_tau`` (the latent that "enters through v_tau", App. D.5) -- and the mechanism critic
  ``c(x_hat_{t+1}, z, u)`` (the MLP critic of the paper on ``[z, x_hat, u]``, native ``critic_grad`` op). The
  InfoNCE key is the action itself (``u_key = u``): the recorded action (ACG) or the latent action (LACG).

Variants: ``acg`` feeds the (standardised) recorded 4-d action ``a_t`` to the action interface; ``lacg`` feeds the
IDM's latent action sample. The IDM, KL and GRL terms exist only in LACG: in ACG the latent action would not reach
the forward model, so nothing would train it (the paper says both regimes "use an IDM"; ours has no use for it in
ACG and we leave it out rather than train a disconnected module).

LACG at test time has no frame t+1, so the latent action must come from somewhere. ``latent_actions(..., source=)``:

* ``"idm"`` (default, the latent-action world-model evaluation protocol): the IDM posterior mean on the
  ground-truth frame pair (v_t, v_{t+1}) -- the IDM sees the future frame, which is information ACG does not get;
* ``"regressor"``: a small MLP ``(a_t, embodiment) -> a_t^latent`` trained jointly on the detached IDM mean
  (no gradient into the IDM), which needs only the recorded action -- the honest controller interface.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mclcore.losses.mcl import MCL, MCLConfig
from mclcore.models.worldmodel.modules import (ActionInterface, EmbodimentClassifier, ForwardDynamics,
                                               FrameAutoencoder, InverseDynamics, flow_matching_pair,
                                               kl_standard_normal, sample_flow)

__all__ = ["WorldModel", "VARIANTS"]

VARIANTS = ("acg", "lacg")


class WorldModel(nn.Module):
    """Frame autoencoder + (IDM) + action interface + forward dynamics (+ MCL heads).

    Args:
        variant: ``"acg"`` (recorded actions) or ``"lacg"`` (IDM latent actions).
        action_dim: size of the recorded action (4). latent_action_dim: d_a of the IDM.
        num_embodiments: classes of the GRL classifier. idm_logvar_init: the IDM's initial log-variance bias
            (None: default init); idm_norm: BatchNorm on the IDM's mean; idm_inputs: "frames" or "delta" (see
            :class:`InverseDynamics`; its ``delta_scale`` follows :meth:`set_delta_scale`).
        fdm: a forward model with ``forward(x_tau, tau, context, cond)`` and ``cond_dim`` (:class:`ForwardDynamics`
            or :class:`mclcore.models.worldmodel.wan_adapter.WanForwardModel`); default: a small DiT.
        mcl: the MCL options (:class:`mclcore.losses.mcl.MCLConfig`; ``None``: no MCL heads). The critic and heads
            are sized here (z and x: the flattened latent frame, u: the action or latent action), so a config
            names only what the caller chooses.
    """

    def __init__(self, variant: str = "acg", *, action_dim: int = 4, latent_action_dim: int = 8,
                 num_embodiments: int = 2, ae: FrameAutoencoder | None = None, fdm: nn.Module | None = None,
                 idm_ch: int = 32, idm_hidden: int = 128, grl_scale: float = 1.0, mcl: MCLConfig | None = None,
                 residual: bool = True, prediction: str = "x0", idm_logvar_init: float | None = None,
                 idm_norm: bool = False, idm_inputs: str = "frames"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.ae = ae if ae is not None else FrameAutoencoder()
        c = self.ae.latent_shape
        self.fdm = fdm if fdm is not None else ForwardDynamics(c)
        self.action_dim, self.latent_action_dim = int(action_dim), int(latent_action_dim)
        self.u_dim = self.action_dim if variant == "acg" else self.latent_action_dim
        self.interface = ActionInterface(self.u_dim, self.fdm.cond_dim)
        # standardisation of the recorded actions (set from the training set by the trainer)
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        # flow data x_0 = delta_scale * (v_{t+1} - v_t) when residual (delta_scale set from the training latents)
        self.residual = bool(residual)
        if prediction not in ("x0", "velocity"):
            raise ValueError(f"prediction: expected 'x0' or 'velocity', got {prediction!r}")
        self.prediction = prediction
        self.register_buffer("delta_scale", torch.ones(()))
        if variant == "lacg":
            self.idm = InverseDynamics(c[0], latent_action_dim, idm_ch, idm_hidden, idm_logvar_init, idm_norm,
                                       idm_inputs)
            self.embodiment_clf = EmbodimentClassifier(latent_action_dim, num_embodiments, grl_scale=grl_scale)
            self.regressor = nn.Sequential(nn.Linear(action_dim + num_embodiments, idm_hidden), nn.SiLU(),
                                           nn.Linear(idm_hidden, idm_hidden), nn.SiLU(),
                                           nn.Linear(idm_hidden, latent_action_dim))
        self.num_embodiments = int(num_embodiments)
        # the IDM's delta_scale is not saved (old checkpoints load unchanged): copy the saved one after a load
        self.register_load_state_dict_post_hook(lambda module, keys: module.set_delta_scale(module.delta_scale))
        self.mcl = None
        if mcl is not None:
            n = int(torch.tensor(c).prod())
            self.mcl = MCL.from_config(mcl, z_dim=n, x_dim=n, u_dim=self.u_dim)   # TypeError unless an MCLConfig

    # ------------------------------------------------------------------------------------------ conditioning
    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:  # (..., 4) -> (..., 4)
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions: expected last dimension {self.action_dim}, got {tuple(actions.shape)}")
        return (actions - self.action_mean) / self.action_std

    def condition(self, v_t, v_next, actions, *, sample: bool = True, generator=None):
        """u_t for the forward model: (B, d_u), plus the IDM's (mu, logvar) (None for ACG)."""
        if self.variant == "acg":
            return self.normalize_actions(actions), None, None
        return self.idm(v_t, v_next, sample=sample, generator=generator)

    def latent_actions(self, v_t, v_next, actions, embodiment, source: str = "idm") -> torch.Tensor:
        """Test-time conditioning (B, d_u): ACG -> standardised actions; LACG -> IDM mean on GT frames
        (``source="idm"``) or the action->latent-action regressor (``source="regressor"``)."""
        if self.variant == "acg":
            return self.normalize_actions(actions)
        if source == "idm":
            return self.idm(v_t, v_next, sample=False)[1]
        if source == "regressor":
            return self.regressor(self._regressor_input(actions, embodiment))
        raise ValueError(f"source: expected 'idm' or 'regressor', got {source!r}")

    def _regressor_input(self, actions, embodiment):
        return torch.cat([self.normalize_actions(actions),
                          F.one_hot(embodiment.long(), self.num_embodiments).to(actions.dtype)], dim=1)

    # ------------------------------------------------------------------------------------------- generator
    def predict_x0(self, x_tau, tau, context, u) -> torch.Tensor:
        """The clean flow datum x0_hat(x_tau, tau, context, A(u)): (B, C, H, W)."""
        out = self.fdm(x_tau, tau, context, self.interface(u))
        if self.prediction == "x0":
            return out
        return x_tau - tau.view(-1, 1, 1, 1) * out

    def velocity(self, x_tau, tau, context, u) -> torch.Tensor:
        """v_theta(x_tau, tau, context, A(u)) = (x_tau - x0_hat) / tau (x0 prediction) or the network output:
        (B, C, H, W)."""
        out = self.fdm(x_tau, tau, context, self.interface(u))
        if self.prediction == "velocity":
            return out
        return (x_tau - out) / tau.clamp_min(1e-3).view(-1, 1, 1, 1)

    def one_step_generator(self, tau: torch.Tensor, context: torch.Tensor) -> Callable:
        """g(z, u) = z - tau v_theta(z, tau, context, A(u)): the clean next latent frame predicted from the diffusion
        latent z = x_tau in one step (the GMD generator of App. D.5)."""
        def g(z, u):
            return self.from_flow(self.predict_x0(z, tau, context, u), context)
        return g

    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters of the MCL generator :meth:`one_step_generator`: the forward dynamics model and the
        action interface (the MCL gradient also reaches the IDM through u in LACG, which is not part of g)."""
        return list(self.fdm.parameters()) + list(self.interface.parameters())

    @torch.no_grad()
    def set_delta_scale(self, scale: float) -> None:
        """s = 1 / std of the training frame changes: the residual flow's scale and the delta-input IDM's."""
        self.delta_scale.fill_(float(scale))
        if getattr(self, "idm", None) is not None:
            self.idm.delta_scale.fill_(float(scale))

    def to_flow(self, v_next: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        """The flow's data x_0 for the transition v_t -> v_next: s (v_next - v_t) (residual) or v_next."""
        return (v_next - v_t) * self.delta_scale if self.residual else v_next

    def from_flow(self, x0: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_flow`: the next latent frame."""
        return v_t + x0 / self.delta_scale if self.residual else x0

    # ---------------------------------------------------------------------------------------------- losses
    def losses(self, v_t: torch.Tensor, v_next: torch.Tensor, actions: torch.Tensor, embodiment: torch.Tensor, *,
               beta: float = 1e-3, lambda_adv: float = 0.1, lambda_mcl: float = 0.0, context_noise: float = 0.0,
               kl_free_bits: float = 0.0, self_context=None, generator: torch.Generator | None = None,
               mcl_weight=None) -> dict:
        """Stage-2 loss terms on a batch of transitions. Scalars in the returned dict; ``loss`` is L_total.

        v_t, v_next: (B, C, H, W) latent frames t and t+1 (frozen AE); actions: (B, 4) recorded a_t;
        embodiment: (B,) int ids. kl_free_bits: LACG's KL floor per latent dimension (nats; free bits,
        :func:`~mclcore.models.worldmodel.modules.kl_standard_normal`), 0 = the plain KL (logged as ``kl_raw``
        when > 0). self_context: None, or ``(v_prev, actions_prev, use)`` -- latent frame t-1 (B, C, H, W), action
        a_{t-1} (B, 4) and a (B,) bool mask: where ``use``, the forward model's context is its own one-step
        prediction of frame t from frame t-1 (the flow's x0 estimate at tau = 1, no gradient) instead of the GT frame
        t, and the target is the GT frame t+1 (residual: taken from that context), so the model learns to continue
        from -- and correct -- the kind of frame a rollout feeds it (scheduled sampling). context_noise: the forward
        model's context is ``v_t + sigma n`` with
        ``sigma ~ U(0, context_noise)`` per sample and the residual target is taken from that noisy context, so the
        model learns to correct a drifting context (its own predictions in a rollout); the IDM sees clean frames.
        mcl_weight: None (L_MCL weighted by ``lambda_mcl``) or a callable that gets the step's MCL terms
        ``{"mcl": L_MCL, "host": the loss without it, "generator", "z", "u", "params"}`` (both losses with their
        graphs; :meth:`generator_parameters`) and returns the weight of L_MCL (diagnostics and relative weighting:
        :mod:`mclcore.losses.monitor`). Only called when ``lambda_mcl`` > 0.
        """
        b, dev = v_t.shape[0], v_t.device
        u, mu, logvar = self.condition(v_t, v_next, actions, generator=generator)          # (B, d_u)
        tau = torch.rand(b, generator=generator, device=dev)                                # (B,)
        eps = torch.randn(v_next.shape, generator=generator, device=dev, dtype=v_next.dtype)
        ctx = v_t
        if self_context is not None:
            v_prev, a_prev, use = self_context
            with torch.no_grad():
                u_prev = self.latent_actions(v_prev, v_t, a_prev, embodiment, "idm")         # (B, d_u)
                x1 = torch.randn(v_t.shape, generator=generator, device=dev, dtype=v_t.dtype)
                pred = self.from_flow(self.predict_x0(x1, torch.ones(b, device=dev), v_prev, u_prev), v_prev)
            ctx = torch.where(use.view(-1, 1, 1, 1), pred, v_t)
        if context_noise > 0:
            sigma = context_noise * torch.rand(b, 1, 1, 1, generator=generator, device=dev)
            ctx = ctx + sigma * torch.randn(v_t.shape, generator=generator, device=dev, dtype=v_t.dtype)
        x0 = self.to_flow(v_next, ctx)                                                      # (B, C, H, W)
        x_tau, target = flow_matching_pair(x0, tau, eps)                                    # (B, C, H, W) x 2
        if self.prediction == "x0":                                                         # L_rec
            flow = F.mse_loss(self.fdm(x_tau, tau, ctx, self.interface(u)), x0)
        else:
            flow = F.mse_loss(self.fdm(x_tau, tau, ctx, self.interface(u)), target)
        out = {"flow": flow}
        loss = flow
        if self.variant == "lacg":
            kl = kl_standard_normal(mu, logvar, kl_free_bits)                               # L_KL
            logits = self.embodiment_clf(u)                                                 # GRL inside
            grl = F.cross_entropy(logits, embodiment.long())                                # L_GRL
            reg = F.mse_loss(self.regressor(self._regressor_input(actions, embodiment)), mu.detach())
            loss = loss + beta * kl + lambda_adv * grl + reg
            out.update(kl=kl, grl=grl, grl_acc=(logits.argmax(1) == embodiment).float().mean(), regressor=reg)
            if kl_free_bits > 0:                                                            # the KL itself
                out["kl_raw"] = kl_standard_normal(mu, logvar).detach()
        if lambda_mcl > 0:
            if self.mcl is None:
                raise ValueError("lambda_mcl: > 0 but the model was built without MCL heads (mcl=None)")
            # a fresh noise level for the MCL generator; z = x_tau carries the gradient of the mechanism critic
            tau_m = torch.rand(b, generator=generator, device=dev).clamp(0.05, 1.0)
            eps_m = torch.randn(v_next.shape, generator=generator, device=dev, dtype=v_next.dtype)
            z, _ = flow_matching_pair(x0, tau_m, eps_m)                                     # (B, C, H, W)
            g = self.one_step_generator(tau_m, ctx)
            # the math attention kernel: the fused CPU/flash kernels have no double backward (create_graph=True)
            with sdpa_kernel([SDPBackend.MATH]):
                mcl = self.mcl(g, z, u)                                                     # L_MCL, u_key = u
            w = lambda_mcl if mcl_weight is None else mcl_weight(
                {"mcl": mcl, "host": loss, "generator": g, "z": z, "u": u, "params": self.generator_parameters()})
            loss = loss + w * mcl
            out["mcl"] = mcl
        out["loss"] = loss
        return out

    # -------------------------------------------------------------------------------------------- rollouts
    @torch.no_grad()
    def predict_next(self, v_t: torch.Tensor, u: torch.Tensor, *, steps: int = 4, method: str = "euler",
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample v_{t+1} ~ p(. | v_t, u_t): (B, C, H, W) by integrating the flow from noise."""
        x1 = torch.randn(v_t.shape, generator=generator, device=v_t.device, dtype=v_t.dtype)
        x0 = sample_flow(lambda x, tau: self.velocity(x, tau, v_t, u), x1, steps, method)
        return self.from_flow(x0, v_t)

    @torch.no_grad()
    def rollout(self, frames: torch.Tensor, actions: torch.Tensor, embodiment: torch.Tensor, horizon: int, *,
                steps: int = 4, method: str = "euler", lacg_source: str = "idm",
                generator: torch.Generator | None = None, idm_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Autoregressive rollout from the first ground-truth frame.

        frames: (B, T+1, 3, 64, 64) ground truth (frame 0 starts the rollout; LACG with ``lacg_source="idm"`` reads
        the GT pairs for its latent actions); actions: (B, T, 4). ``idm_frames``: the frames the IDM reads instead
        (same shape; e.g. another episode's, to test action-following). Returns predicted frames 1..horizon,
        (B, horizon, 3, 64, 64) in [0, 1].
        """
        if frames.ndim != 5 or frames.shape[2:] != (3, 64, 64):
            raise ValueError(f"frames: expected (B, T+1, 3, 64, 64), got {tuple(frames.shape)}")
        if not 1 <= horizon <= min(frames.shape[1] - 1, actions.shape[1]):
            raise ValueError(f"horizon: expected 1..{min(frames.shape[1] - 1, actions.shape[1])}, got {horizon}")
        b = frames.shape[0]
        gt_lat = self.ae.encode(frames[:, : horizon + 1].flatten(0, 1)).unflatten(0, (b, horizon + 1))
        v, preds = gt_lat[:, 0], []
        if idm_frames is not None and self.variant == "lacg" and lacg_source == "idm":
            if idm_frames.shape != frames.shape:
                raise ValueError(f"idm_frames: expected the shape of frames {tuple(frames.shape)}, "
                                 f"got {tuple(idm_frames.shape)}")
            gt_lat = self.ae.encode(idm_frames[:, : horizon + 1].flatten(0, 1)).unflatten(0, (b, horizon + 1))
        for t in range(horizon):
            u = self.latent_actions(gt_lat[:, t], gt_lat[:, t + 1], actions[:, t], embodiment, lacg_source)
            v = self.predict_next(v, u, steps=steps, method=method, generator=generator)   # (B, C, H, W)
            preds.append(self.ae.decode(v))
        return torch.stack(preds, dim=1)
