"""Task success of the expert's actions replayed through the world model, read off the predicted frames by a probe.

The world model predicts frames, not simulator states, and the tabletop success rule
(:func:`mclcore.data.tabletop.success_from_states`) needs states. So:

1. a small CNN **state probe** ``P: frame (3, 64, 64) -> state (S,)`` is trained by regression on the *ground-truth*
   frames and states of the training episodes (never on predictions);
2. the expert's recorded actions of each held-out episode drive the world model open loop from the first frame
   (the rollouts of Table 2), and the probe reads the state off the **last predicted frame**;
3. **probe success** = ``success_from_states(P(last predicted frame), task)``, averaged over episodes.

The measure is only as sound as the probe, so it is reported next to two controls: the true success of the
episodes (simulator states) and the probe's success on the *ground-truth* last frames, with the per-episode
agreement between probe and truth. If the probe disagrees with the truth on GT frames, the model's probe success
says little; the README reports all three.

Open loop, not closed loop: the expert here does not react to the predicted frames (the actions are the recorded
ones). A closed-loop replay (expert acting on probe states of predicted frames) is possible with the same pieces
but not implemented.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["StateProbe", "train_probe", "success_report"]


class StateProbe(nn.Module):
    """(B, 3, 64, 64) in [0, 1] -> (B, S) states (de-standardised with the training mean/std buffers)."""

    def __init__(self, state_dim: int, ch: int = 16, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.SiLU(),               # 32
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.SiLU(),          # 16
            nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1), nn.SiLU(),      # 8
            nn.Flatten(), nn.Linear(4 * ch * 64, hidden), nn.SiLU(), nn.Linear(hidden, state_dim))
        self.register_buffer("mean", torch.zeros(state_dim))
        self.register_buffer("std", torch.ones(state_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.std + self.mean


def train_probe(frames_u8: np.ndarray, states: np.ndarray, *, steps: int = 400, batch_size: int = 64,
                lr: float = 2e-3, seed: int = 0, device="cpu") -> StateProbe:
    """Fit the probe on GT (N, T+1, 64, 64, 3) uint8 frames and (N, T+1, S) states (MSE on standardised states)."""
    frames = torch.from_numpy(frames_u8.reshape(-1, *frames_u8.shape[2:]))            # (M, 64, 64, 3)
    st = torch.from_numpy(states.reshape(-1, states.shape[-1])).float()               # (M, S)
    torch.manual_seed(seed)
    probe = StateProbe(st.shape[1]).to(device)
    probe.mean.copy_(st.mean(0))
    probe.std.copy_(st.std(0).clamp_min(1e-3))
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    rng = np.random.default_rng([seed, 77])
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(frames), batch_size))
        x = frames[idx].to(device).permute(0, 3, 1, 2).float().div_(255.0)
        y = st[idx].to(device)
        loss = F.mse_loss(probe.net(x), (y - probe.mean) / probe.std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def success_report(probe: StateProbe, pred_last: torch.Tensor, gt_last: torch.Tensor, gt_states_last: np.ndarray,
                   task: str) -> dict:
    """pred_last, gt_last: (N, 3, 64, 64) in [0, 1] last predicted / GT frames; gt_states_last: (N, S).

    Returns success rates (true, probe on GT, probe on predictions), the probe-vs-truth agreement on GT frames and
    the per-episode agreement of the predictions' probe success with the truth, plus the probe's end-effector error.
    """
    from mclcore.data.tabletop import success_from_states

    dev = next(probe.parameters()).device
    s_pred = probe(pred_last.to(dev)).cpu().numpy()
    s_gt = probe(gt_last.to(dev)).cpu().numpy()
    true = success_from_states(gt_states_last, task)
    on_gt = success_from_states(s_gt, task)
    on_pred = success_from_states(s_pred, task)
    return {"true": float(true.mean()), "probe_on_gt": float(on_gt.mean()), "probe_on_pred": float(on_pred.mean()),
            "probe_gt_agreement": float((on_gt == true).mean()), "pred_agreement": float((on_pred == true).mean()),
            "probe_ee_error_m": float(np.linalg.norm(s_gt[:, :3] - gt_states_last[:, :3], axis=1).mean()),
            "pred_ee_error_m": float(np.linalg.norm(s_pred[:, :3] - gt_states_last[:, :3], axis=1).mean())}
