#!/usr/bin/env bash
# Pre-registered 2026-12-06 (committed before it ran): Table 1 and Table 6 at the cpu-smoke preset, every implemented
# row (beta-VAE, FactorVAE, beta-TCVAE, InfoGAN-CR, DisDiff, EncDiff, MDDiff) on the three procedural twins
# (Shapes3D, MPI3D, Cars3D), seed 0: 21 runs, each a fresh `mcl train` with --threads 1. One seed per cell: the
# table reproduces the paper's layout at toy scale; the paired, multi-seed comparisons are the MCL ablation and the
# principles tables. Every run is reported; collect_table1.py copies each run's metrics.json and its figures
# (downscaled) into results/table1/ and make_tables.py builds the README's tables from there.
#   bash experiments/disentanglement/table1.sh OUT [LANE NLANES]     (LANE of NLANES: run every NLANES-th cell)
set -euo pipefail
out=${1:?usage: table1.sh OUT [LANE NLANES]}
lane=${2:-0}
nlanes=${3:-1}
i=0
for d in shapes3d mpi3d cars3d; do
  for m in mddiff betavae encdiff factorvae disdiff btcvae infogan_cr; do
    if (( i % nlanes == lane )); then
      python -m mclcore train "$m" --dataset "$d" --preset cpu-smoke --seeds 0 --threads 1 --quiet --out "$out"
    fi
    i=$((i + 1))
  done
done
