#!/usr/bin/env bash
# Pre-registered 2026-12-07 (committed before it ran): issue #22. In MDDiff, z (the image's first-stage latent) and
# u (its concept code) come from the same image, so the MCL contrast can be solved by reading u off z through any
# generator: the training readout (0.88-0.91 at cpu-long) need not involve G's use of u at all, and G barely uses u
# (u-decoder gap 0.046). stages.mcl_pairing=independent contrasts g(z_{i-1}, u_i) instead, as the paper's population
# objective draws (z, u) ~ p(z) p(u), so only G's use of u can solve it. One arm, forked from mcl_dose.sh's shared
# first stage and stage 1 (the same command trains them if they are missing):
#   stages.mcl_pairing=independent, lambda_MCL = 1e-2 x seeds 0 1 2, cpu-long with a 2000-step stage 2 (as mcl_dose.sh)
# into OUT/indep1e-2, then code_use.py and mcl_probe.py on each run. Read-outs, paired by seed against mcl_dose.sh's
# lam1e-2 (the same weight, paired z and u) and lam0 (mcl_dose_report.py reports all four arms): mcl_probe.py's
# x/own/independent (what only G's use of u carries), the u-decoder's conditioning gap, FactorVAE, DCI, code use.
# Cost (2-core VM, one thread per run): ~35 min per run after the shared phases, ~20 min for its two read-outs.
#   bash experiments/disentanglement/mcl_pairing.sh OUT [NJOBS]      # OUT: mcl_dose.sh's OUT
set -euo pipefail
out=${1:?usage: mcl_pairing.sh OUT [NJOBS]}
njobs=${2:-2}
common="mddiff --dataset shapes3d --preset cpu-long --threads 1 --quiet --set stages.stage2_steps=2000"
for s in 0 1 2; do
  echo "$common --seeds $s --out $out/shared --stop-before stage2"
done | xargs -P "$njobs" -L 1 python -m mclcore train
for s in 0 1 2; do
  echo "$common --seeds $s --out $out/indep1e-2 --set stages.lambda_mcl=1e-2 --set stages.mcl_pairing=independent" \
       "--fork-from $out/shared"
done | xargs -P "$njobs" -L 1 python -m mclcore train
for script in code_use mcl_probe; do          # each writes RUN/<script>.json; finished runs are skipped
  for s in 0 1 2; do
    run=$out/indep1e-2/mddiff-shapes3d-cpu-long-seed$s
    [ -e "$run/$script.json" ] || echo "$run"
  done | xargs -r -P "$njobs" -L 1 python "experiments/disentanglement/$script.py"
done
