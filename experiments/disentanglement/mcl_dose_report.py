"""Report the pre-registered mcl_dose.sh grid (issue #22): MDDiff at cpu-long with a 2000-step stage 2 and
lambda_MCL in {0, 1e-3, 1e-2}, seeds 0-2, every arm forked from one shared first stage and stage 1 per seed; with
mcl_pairing.sh's arm (lambda_MCL = 1e-2, z and u of different images) forked from the same shared runs.

The table is cpu_long_report.py's (per arm the mean [95% bootstrap interval] over seeds; differences paired by
seed; per-factor informativeness; code use; the u-decoder's conditioning gap as a column; mcl_probe.py's fresh
critics), with the dose grid's arms ``lam0``, ``lam1e-3``, ``lam1e-2`` (mcl_dose.sh's folders) and ``indep1e-2``
(mcl_pairing.sh's), the differences against lambda = 0, between the two weights and between the two pairings, and the
MCL diagnostics of the MCL arms.

    python experiments/disentanglement/mcl_dose_report.py /tmp/mcldose --results experiments/disentanglement/results/mcl_dose
    python experiments/disentanglement/mcl_dose_report.py experiments/disentanglement/results/mcl_dose --from-results
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cpu_long_report import Grid, main as grid_main  # noqa: E402  (here)

# mcl_dose.sh's --out folders, one per lambda_MCL, and mcl_pairing.sh's (lambda_MCL = 1e-2, z and u independent)
ARMS = ("lam0", "lam1e-3", "lam1e-2", "indep1e-2")
DOSE = Grid(
    title="MDDiff, cpu-long with stage 2 of 2000 steps, Shapes3D twin, pre-registered grids "
          "experiments/disentanglement/mcl_dose.sh (lam<x>: lambda_MCL = x) and mcl_pairing.sh (indep1e-2: "
          "lambda_MCL = 1e-2 with stages.mcl_pairing = independent); shared phases forked per seed",
    arms=tuple((arm, arm, "mddiff") for arm in ARMS),
    pairs=(("lam1e-3", "lam0"), ("lam1e-2", "lam0"), ("lam1e-2", "lam1e-3"), ("indep1e-2", "lam1e-2"),
           ("indep1e-2", "lam0")),
    diagnostics=(("lam1e-3", "lambda_MCL = 1e-3"), ("lam1e-2", "lambda_MCL = 1e-2"),
                 ("indep1e-2", "lambda_MCL = 1e-2, independent pairing")))


def main(argv=None) -> int:
    return grid_main(argv, DOSE, __doc__.split("\n")[0],
                     "mcl_dose.sh's OUT folder (lam0/, lam1e-3/, lam1e-2/), or a --results folder with --from-results")


if __name__ == "__main__":
    sys.exit(main())
