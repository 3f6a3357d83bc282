#!/usr/bin/env bash
# The λ = 0 baseline of the world model's MCL readout (README: "Where the MCL readout comes from"): a fresh critic
# probes the frozen one-step generator of a variant with and without MCL (cpu preset; mcl_probe.py's four probes,
# the same batches and noise for every run); every cell is reported. Fixed before it ran:
#   2026-12-07, before any probe ran:                       mcl_probe.sh OUT "acg lacg" 0
#   2026-12-07, after seed 0's ACG probes were seen (MCL raised x/own/independent from 0.50 to 0.95), before any
#   seed-1/2 run trained: ACG seeds 1 and 2 (LACG's are left for lack of time):  mcl_probe.sh OUT acg 1; ... acg 2
#   2026-12-07 (session 13), after ACG seeds 0-1 were seen, before any LACG seed-1/2 run trained: LACG seeds 1 and 2,
#   the same four probes, run after ACG seed 2 as time allows:                 mcl_probe.sh OUT lacg 1; ... lacg 2
# OUT: readout.sh's folder (its seed-0 ACG+MCL and LACG+MCL runs are reused; missing runs are trained there, ~10 min
# without MCL and ~30 min with it on one core beside other runs), then ~20 min of probes per run on one core.
#   bash experiments/worldmodel/mcl_probe.sh OUT VARIANTS SEEDS   # writes experiments/worldmodel/readout/probe/
set -euo pipefail
out="${1:?usage: mcl_probe.sh OUT VARIANTS SEEDS, e.g. mcl_probe.sh /tmp/wm acg 1}"
variants="${2:?usage: mcl_probe.sh OUT VARIANTS SEEDS (VARIANTS: acg and/or lacg)}"
seeds="${3:?usage: mcl_probe.sh OUT VARIANTS SEEDS (SEEDS: e.g. 0 or \"1 2\")}"
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/readout/probe"
for s in $seeds; do
  for v in $variants; do
    for mcl in "" --mcl; do                         # a finished run is skipped
      python -m mclcore train worldmodel --variant "$v" $mcl --preset cpu --threads 1 --seeds "$s" --quiet --out "$out"
      name="$v${mcl:+-mcl}-seed$s"
      run="$out/worldmodel-$v${mcl:+-mcl}-cpu-seed$s"
      [ -e "$run/mcl_probe.json" ] || python "$here/mcl_probe.py" "$run"
      mkdir -p "$dest/$name"
      cp "$run"/{config.json,metrics.json,mcl_probe.json} "$dest/$name/"
    done
  done
done
shopt -s nullglob
args=()
for d in "$dest"/*-seed*/; do d="${d%/}"; args+=("$(basename "$d")=$d"); done
python "$here/mcl_probe.py" --table "$dest/table.md" "${args[@]}"
