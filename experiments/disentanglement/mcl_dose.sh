#!/usr/bin/env bash
# Pre-registered 2026-12-07 (committed before it ran): issue #22. Does MCL change MDDiff when it acts longer and
# harder than at cpu-long? There (cpu_long.sh, 3 seeds) MDDiff - MDDiff(lambda_MCL = 0) is within 0.01 on every
# disentanglement score, MDDiff's u-decoder barely uses u (relative conditioning gap 0.046 in both arms), and MCL
# acts only in stage 2's 500 steps, at lambda = 1e-3, where its gradient on the u-decoder is 0.06-0.11 of the host
# loss's. Here stage 2 runs 2000 steps and lambda_MCL takes three values:
#   lambda_MCL in {0, 1e-3, 1e-2} x seeds 0 1 2: 9 runs, cpu-long otherwise (Shapes3D twin), stages.stage2_steps=2000
# Each seed's first stage and stage 1 (the same in the three arms) train once into OUT/shared (--stop-before stage2)
# and are forked (--fork-from) into OUT/lam0, OUT/lam1e-3, OUT/lam1e-2; then code_use.py reads every arm's run.
# Read-outs, paired by seed against lambda = 0, every cell reported: the u-decoder's conditioning gap (what MCL
# should raise if it makes g(z, u) depend on u), FactorVAE, DCI, per-factor informativeness, the code-use rows and
# MCL's diagnostics. Cost (2-core VM, one thread per run): shared ~35 min per seed, an MCL arm ~50 min, a
# lambda = 0 arm ~10 min, code_use ~4 min per run: ~4.5 h at two runs at a time.
# Added 2026-12-07, before any arm had finished training (the shared phases of seeds 0 and 1 were in stage 1): a
# fresh-critic probe on every arm (mcl_probe.py: 4 probes x 300 steps, ~15 min per run). The training readout has no
# lambda = 0 baseline, and with z and u of the same image z alone can give u away; the probe's x/own/independent
# reads only what the generator's use of u carries, paired against lambda = 0.
# At most NJOBS (default 2) runs at a time, --threads 1; a killed grid resumes (re-run the same command: the
# shared runs stop again where they stopped, forked runs resume, finished ones are skipped).
#   bash experiments/disentanglement/mcl_dose.sh OUT [NJOBS]
set -euo pipefail
out=${1:?usage: mcl_dose.sh OUT [NJOBS]}
njobs=${2:-2}
common="mddiff --dataset shapes3d --preset cpu-long --threads 1 --quiet --set stages.stage2_steps=2000"
for s in 0 1 2; do
  echo "$common --seeds $s --out $out/shared --stop-before stage2"
done | xargs -P "$njobs" -L 1 python -m mclcore train
for s in 0 1 2; do
  for lam in 0 1e-3 1e-2; do
    echo "$common --seeds $s --out $out/lam$lam --set stages.lambda_mcl=$lam --fork-from $out/shared"
  done
done | xargs -P "$njobs" -L 1 python -m mclcore train
for script in code_use mcl_probe; do          # each writes RUN/<script>.json; finished runs are skipped
  for lam in 0 1e-3 1e-2; do
    for s in 0 1 2; do
      run=$out/lam$lam/mddiff-shapes3d-cpu-long-seed$s
      [ -e "$run/$script.json" ] || echo "$run"
    done
  done | xargs -r -P "$njobs" -L 1 python "experiments/disentanglement/$script.py"
done
