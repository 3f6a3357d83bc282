"""The models of one stack of synthetic-study members and their MCL regularisers (used by train.py).

Each MD-VAE+MCL member has its own MCL regulariser (critic and heads), initialised as a :class:`mclcore.MCL` module
built under the member's own seed (``derive_seed(seed, 13)``). The members' modules are stacked into one
:class:`mclcore.losses.mcl.StackedMCL` (parameters with a leading member axis), which runs the MCL term of all
members in one call of each native op (``critic_grad`` and ``infonce`` take member-stacked inputs) on the batched
decoder (``StackedVAE.decode``): the numbers of a loop over the per-member modules (float64 to 1e-12,
tests/losses/test_stacked_mcl.py) without its per-member Python, dispatch and autograd overhead (1.3-1.5x per step at
dz = 5, B = 256, M = 10, 1 thread: benchmarks/bench_synthetic.py --mcl-loop). ``STACK_MCL = False`` keeps that loop
(the trainer's path before the stacked ops) as the benchmark's baseline. Checkpoints written with per-member
modules (``mcls.<m>.*`` keys) load into the stacked layout: their weights and Adam moments are stacked on load.
"""
from __future__ import annotations

from typing import Callable

import torch

from mclcore.losses.mcl import MCL, StackedMCL, stack_member_optimizer_state, stack_member_state
from mclcore.models.vae import StackedVAE

# One StackedMCL call for all members (True), or a loop over per-member MCL modules (False: the baseline of
# benchmarks/bench_synthetic.py --mcl-loop; same numbers to rounding).
STACK_MCL = True


class Members(torch.nn.Module):
    """M stacked VAEs and (MD-VAE+MCL) their MCL regularisers: ``mcl``, a StackedMCL, or (``STACK_MCL = False``)
    ``mcls``, one MCL module per member (the layout of checkpoints written before the stacked MCL); None otherwise."""

    def __init__(self, vae: StackedVAE, mcl: StackedMCL | None = None, mcls: torch.nn.ModuleList | None = None):
        super().__init__()
        self.vae, self.mcl, self.mcls = vae, mcl, mcls
        if mcl is not None:  # a checkpoint written with one MCL module per member (mcls.<m>.*) loads stacked
            self._register_load_state_dict_pre_hook(
                lambda state, prefix, *_: stack_member_state(state, f"{prefix}mcls.", f"{prefix}mcl."))

    @classmethod
    def build(cls, vae: StackedVAE, make_mcl: Callable[[int], MCL] | None) -> "Members":
        """``make_mcl(m)``: member m's MCL module (None: a model without MCL)."""
        if make_mcl is None:
            return cls(vae)
        mcls = [make_mcl(m) for m in range(vae.members)]
        if not STACK_MCL:
            return cls(vae, mcls=torch.nn.ModuleList(mcls))
        return cls(vae, StackedMCL.from_members(mcls))                   # member m starts as mcls[m]

    @property
    def has_mcl(self) -> bool:
        return self.mcl is not None or self.mcls is not None

    def mcl_losses(self, z: torch.Tensor, u: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """(M,) MCL losses of the members' decoders at z (M, B, dz), u (M, B, du), groups (M, B) or None."""
        if self.mcl is not None:
            return self.mcl(self.vae.decode, z, u, groups=groups)         # all members in one call
        return torch.stack([self.mcls[m](self.vae.decoder_member(m), z[m], u[m],
                                         groups=None if groups is None else groups[m]) for m in range(len(z))])

    def mcl_member(self, m: int) -> MCL:
        """Member m's MCL module (a detached copy when stacked), for measurements such as readout."""
        return self.mcl.member(m) if self.mcl is not None else self.mcls[m]

    def adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam over ``params`` (elementwise: one optimiser over the stacked tensors = M independent Adams), whose
        load_state_dict also takes the state of a checkpoint written with per-member MCL modules (their moments,
        stacked)."""
        opt = torch.optim.Adam(params, lr=lr)
        if self.mcl is not None:
            n, M = len(list(self.mcl.parameters())), self.vae.members
            opt.register_load_state_dict_pre_hook(
                lambda o, sd: stack_member_optimizer_state(sd, o.param_groups[0]["params"], n, M))
        return opt
