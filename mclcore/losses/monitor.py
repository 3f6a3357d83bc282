"""The MCL weight and diagnostics of one MCL term inside a training step (the image study's MDDiff stage 2, the world
model's ``dynamics`` phase): the glue between a model's ``losses(..., mcl_weight=)`` and
:mod:`mclcore.losses.diagnostics`.

A model that supports it computes its host loss and the unweighted L_MCL, then calls ``mcl_weight(terms)`` with
``terms = {"mcl", "host", "generator", "z", "u", "params"}`` (the two losses with their graphs, the generator
``(z, u) -> x_hat`` and the (z, u) MCL was computed at, the generator's parameters) and adds ``w * L_MCL`` with the
weight it returns. :meth:`MCLMonitor.weigher` makes that callable for one step:

* every ``mcl.diagnose_every`` steps of the phase (0: never), and whenever the relative weight is due (``mcl.weighting
  = "relative"``: at those steps, or once at the first step when ``diagnose_every`` is 0), it measures the readout
  accuracies on the step's (z, u) and the gradient norms of L_MCL and of the host loss on the generator's
  parameters, appends one record (``RECORD_KEYS``, scalars) and puts them into the step's logs as 0-dim tensors
  ``mcl/<key>`` (TensorBoard, through the loop);
* it returns ``lambda`` (absolute: the same Python float the study passed before, so the numbers are unchanged) or
  the relative weight ``lambda |grad_G host| / |grad_G L_MCL|`` of the last measurement.

Measuring draws no random numbers and leaves the step's graph as it is (two ``retain_graph`` gradient passes and a
graph-free readout), so diagnostics never change training. The records and the relative weight's scale are part of
the study's checkpoint (``state_dict``); :meth:`MCLMonitor.write` writes ``<run_dir>/mcl_diagnostics.json``, which
``mcl inspect-mcl RUN_DIR`` prints and :func:`last_measurement` turns into ``metrics.json`` keys.
"""
from __future__ import annotations

import json
import math
import os

import torch

from mclcore._io import write_json_atomic
from mclcore.losses.diagnostics import READ_KEYS, MCLWeight, gradient_norms, readout

__all__ = ["MCLMonitor", "RECORD_KEYS", "FILE_NAME", "last_measurement"]

RECORD_KEYS = ("step", "weight", "mcl", *READ_KEYS, "grad_ratio")
FILE_NAME = "mcl_diagnostics.json"
# record key -> metrics.json key (as the synthetic study's result rows name them)
_METRIC_NAMES = {"step": "mcl_step", "weight": "mcl_weight", "mcl": "mcl_loss"}


class MCLMonitor:
    """The weight of L_MCL (``lam``, ``mcl_cfg.weighting``) and its diagnostics every ``mcl_cfg.diagnose_every``
    steps of one phase; ``records`` holds one dict per measurement."""

    def __init__(self, lam: float, mcl_cfg):
        self.lam = float(lam)
        self.every = int(mcl_cfg.diagnose_every)
        self.weight = MCLWeight(self.lam, mcl_cfg.weighting, self.every)
        self.records: list[dict] = []

    @property
    def relative(self) -> bool:
        return self.weight.weighting == "relative"

    def due(self, step: int) -> bool:
        """Whether ``step`` measures: a diagnostics step, or the relative weight needs a (first) measurement."""
        diagnose = bool(self.every) and step % self.every == 0
        return diagnose or (self.relative and self.weight.scale is None)

    def weigher(self, step: int, mcl, logs: dict):
        """The ``mcl_weight`` callable of step ``step`` for a model whose MCL module is ``mcl``; the measurements
        of the step (if any) go into ``logs``."""
        def weigh(terms: dict) -> float:
            if self.due(step):
                logs.update(self.measure(step, mcl, terms))
            return float(self.weight.weight()) if self.relative else self.lam
        return weigh

    def measure(self, step: int, mcl, terms: dict) -> dict:
        """One measurement at ``terms`` (see the module doc): updates the relative weight, appends the record and
        returns it as ``{"mcl/<key>": 0-dim tensor}``."""
        params = list(terms["params"])
        if self.relative:
            norms = self.weight.update(terms["mcl"], terms["host"], params)
        else:
            try:
                norms = gradient_norms(terms["mcl"], terms["host"], params)
            except ValueError:          # the host loss does not train the generator (e.g. lambda_recon = 0)
                norms = None
        w = float(self.weight.weight())
        reads = readout(mcl, terms["generator"], terms["z"], terms["u"])
        ratio = w * float(norms["ratio"]) if norms is not None else math.inf   # |grad w L_MCL| / |grad host|
        rec = {"step": int(step), "weight": w, "mcl": float(terms["mcl"].detach()), **reads, "grad_ratio": ratio}
        rec = {k: rec[k] for k in RECORD_KEYS}
        self.records.append(rec)
        return {f"mcl/{k}": torch.tensor(float(v), dtype=torch.float64) for k, v in rec.items() if k != "step"}

    def state_dict(self) -> dict:
        return {"weight": self.weight.state_dict(), "records": list(self.records)}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:                   # a checkpoint written before the monitor existed
            return
        self.weight.load_state_dict(state["weight"])
        self.records = list(state["records"])

    def write(self, run_dir: str) -> str:
        """``<run_dir>/mcl_diagnostics.json`` (a list of the records), atomically; returns its path."""
        path = os.path.join(run_dir, FILE_NAME)
        write_json_atomic(self.records, path, indent=1, sort_keys=False)
        return path


def last_measurement(run_dir: str) -> dict:
    """The last record of ``<run_dir>/mcl_diagnostics.json`` as metrics keys (``mcl_weight``, ``mcl_loss``,
    ``mcl_acc``, ``mcl_acc_generator``, ..., ``mcl_grad_ratio``, ``mcl_step``); {} without a file or records."""
    path = os.path.join(run_dir, FILE_NAME)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable MCL diagnostics ({err}); delete it to evaluate without them") from None
    if not isinstance(records, list) or not records or not isinstance(records[-1], dict):
        return {}
    return {_METRIC_NAMES.get(k, f"mcl_{k}"): v for k, v in records[-1].items() if k in RECORD_KEYS}
