#!/usr/bin/env bash
# The λ = 0 baseline of the world model's MCL readout (README: "Where the MCL readout comes from"): a fresh critic
# probes the frozen one-step generator of ACG, ACG+MCL, LACG and LACG+MCL (cpu preset, seed 0; mcl_probe.py's four
# probes, the same batches and noise for every run). Seed-0 checks, fixed here before any probe ran; every cell is
# reported. OUT: readout.sh's folder (its ACG+MCL and LACG+MCL runs are reused; the runs without MCL are trained
# there, ~5-10 min each on one core). Then ~15-20 min of probes per run on one core.
#   bash experiments/worldmodel/mcl_probe.sh OUT     # writes experiments/worldmodel/readout/{<run>/, mcl_probe.md}
set -euo pipefail
out="${1:?usage: mcl_probe.sh OUT, the folder of readout.sh}"
here="$(cd "$(dirname "$0")" && pwd)"
common="--preset cpu --threads 1 --seeds 0 --quiet"
for v in acg lacg; do
  python -m mclcore train worldmodel --variant $v $common --out "$out"       # a finished run is skipped
  python -m mclcore train worldmodel --variant $v --mcl $common --out "$out"
done
names=(acg acg-mcl lacg lacg-mcl)
for name in "${names[@]}"; do
  run="$out/worldmodel-$name-cpu-seed0"
  [ -e "$run/mcl_probe.json" ] || python "$here/mcl_probe.py" "$run"
  mkdir -p "$here/readout/$name"
  cp "$run"/{config.json,metrics.json,mcl_probe.json} "$here/readout/$name/"
done
python "$here/mcl_probe.py" --table "$here/readout/mcl_probe.md" $(for n in "${names[@]}"; do echo "$n=$here/readout/$n"; done)
