#!/usr/bin/env bash
# Copy the small files of finished `cpu`-preset runs into experiments/worldmodel/cpu/<run>/ and rebuild the tables
# there (tests/studies/test_worldmodel_results.py checks that the committed tables are this report's output).
#   bash experiments/worldmodel/collect_cpu.sh RUN_ROOT      # RUN_ROOT: the --out of `mcl train worldmodel --preset cpu`
set -euo pipefail
root="${1:?usage: collect_cpu.sh RUN_ROOT (the --out folder of the cpu-preset runs)}"
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/cpu"
shopt -s nullglob
runs=("$root"/worldmodel-*-cpu-seed*)
[[ ${#runs[@]} -gt 0 ]] || { echo "collect_cpu.sh: no worldmodel-*-cpu-seed* runs under $root" >&2; exit 2; }
for d in "${runs[@]}"; do
  [[ -f "$d/metrics.json" && -f "$d/following.json" ]] || { echo "skip $d (not evaluated)"; continue; }
  mkdir -p "$dest/$(basename "$d")"
  cp "$d"/{config.json,metrics.json,following.json,following.md} "$dest/$(basename "$d")/"
done
python -m mclcore.studies.worldmodel.report "$dest"/worldmodel-*-cpu-seed* --out "$dest"
