#!/usr/bin/env bash
# Pre-registered 2026-12-06 (committed before it ran): MDDiff with its default MCL (App. D.4's lambda = 1e-4 on MPI3D,
# absolute weighting, generator-term contrast) against MDDiff with lambda_MCL = 0, at the cpu-smoke preset on the
# MPI3D twin, seeds 0 1 2 (the same seeds on both arms: paired). Every run is reported by mcl_ablation_report.py.
#   bash experiments/disentanglement/mcl_ablation.sh [OUT]      (default OUT=runs/mcl-ablation)
set -euo pipefail
out=${1:-runs/mcl-ablation}
common=(--dataset mpi3d --preset cpu-smoke --seeds 0 1 2 --threads 1 --quiet)
python -m mclcore train mddiff "${common[@]}" --out "$out/default" &
python -m mclcore train mddiff "${common[@]}" --out "$out/lambda0" --set stages.lambda_mcl=0 &
wait
python experiments/disentanglement/mcl_ablation_report.py "$out" --results experiments/disentanglement/mcl_ablation
