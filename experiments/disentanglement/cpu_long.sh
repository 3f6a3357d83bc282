#!/usr/bin/env bash
# Pre-registered 2026-12-06 (committed before it ran): issue #22 item 1 at the cpu-long preset, Shapes3D twin,
# seeds 0 1 2 (the same seeds in every arm: paired), every run reported:
#   1. EncDiff vs beta-VAE: does EncDiff's concept encoder learn? (target: EncDiff FactorVAE >= beta-VAE's)
#   2. MDDiff (its default MCL, App. D.4's lambda = 1e-3 on Shapes3D) vs EncDiff vs MDDiff with lambda_MCL = 0,
#      with MDDiff's MCL diagnostics (mcl_diagnostics.json).
# 12 runs, each a fresh `mcl train` with --threads 1, at most NJOBS (default 2) at a time, pulled from one queue in
# the order below. A killed grid resumes: re-run the same command (finished runs are skipped, started ones resume
# from their checkpoint).
#   bash experiments/disentanglement/cpu_long.sh OUT [NJOBS]
set -euo pipefail
out=${1:?usage: cpu_long.sh OUT [NJOBS]}
njobs=${2:-2}
common="--dataset shapes3d --preset cpu-long --threads 1 --quiet"
{
  for s in 0 1 2; do
    echo "encdiff $common --seeds $s --out $out/main"
    echo "betavae $common --seeds $s --out $out/main"
  done
  for s in 0 1 2; do
    echo "mddiff $common --seeds $s --out $out/main"
    echo "mddiff $common --seeds $s --out $out/lambda0 --set stages.lambda_mcl=0"
  done
} | xargs -P "$njobs" -L 1 python -m mclcore train
