#!/usr/bin/env bash
# Pre-registered 2026-12-06 (committed before it ran): issue #22 item 1, screening only (seed 0, n = 1 per cell: it
# picks what a next preset tries, it compares nothing). At cpu-long EncDiff's concept code stays below the beta-VAE's
# (FactorVAE 0.630 / 0.554 against 0.816 / 0.752, seeds 0 / 1), holding hues partly and scale, shape and orientation
# barely, while the first-stage latent the diffusion model denoises carries them (first_stage_probe.py); stage 1 at
# 7000 steps was no better than at 4000. [Corrected 2026-12-07, comment only: that compared evaluations at two sample
# scales; at the same one (0.1) seed 0 moved from FactorVAE 0.596 at 4000 steps to 0.630 at 7000.] Two options of
# the public MDDiff code are screened, one at a time and together, on the 1000 / 4000 / 600-step schedule of the
# committed screening run (results/cpu_long_screening), evaluated as cpu-long evaluates (eval.sample_scale = 0.1):
#   base       the committed screening run itself, re-scored at eval.sample_scale = 0.1 (--eval-only; its folder is
#              copied from BASE, default /tmp/long/a, where that run was trained)
#   l1         diffusion.loss=l1           (theirs: loss_type l1)
#   attn16     diffusion.attention_ds=1,2  (theirs: transformer blocks at 16x16 too; ours at cpu-smoke only 8x8)
#   attn16-l1  both
# One run at a time, --threads 1, in this order; a killed screen resumes (re-run the same command).
#   bash experiments/disentanglement/encdiff_screen.sh OUT [BASE]
set -euo pipefail
out=${1:?usage: encdiff_screen.sh OUT [BASE]}
base=${2:-/tmp/long/a}
sched=(--set first_stage.steps=1000 --set stages.stage1_steps=4000 --set stages.stage2_steps=600
       --set stages.warmup1=200 --set stages.warmup2=50)
common=(encdiff --dataset shapes3d --preset cpu-smoke --seeds 0 --threads 1 --quiet "${sched[@]}")
run=encdiff-shapes3d-cpu-smoke-seed0
if [ ! -e "$out/base/$run/checkpoint.pt" ]; then
  mkdir -p "$out/base/$run"
  cp "$base/$run/checkpoint.pt" "$base/$run/config.json" "$out/base/$run/"
fi
if [ ! -e "$out/base/$run/metrics.json" ]; then
  python -m mclcore train "${common[@]}" --out "$out/base" --eval-only --set eval.sample_scale=0.1
fi
python -m mclcore train "${common[@]}" --out "$out/l1" --set eval.sample_scale=0.1 --set diffusion.loss=l1
python -m mclcore train "${common[@]}" --out "$out/attn16" --set eval.sample_scale=0.1 --set diffusion.attention_ds=1,2
python -m mclcore train "${common[@]}" --out "$out/attn16-l1" --set eval.sample_scale=0.1 \
  --set diffusion.attention_ds=1,2 --set diffusion.loss=l1
