#!/usr/bin/env bash
# Does another critic find the same difference? A control of mcl_probe.sh's result (MCL raised x/own/independent from
# 0.36-0.50 to 0.95-0.97 in ACG seeds 0-2): the MCL-trained forward models were shaped together with a critic of
# training's size (64, 64 at the cpu preset), and the probe's critic has that size too. Pre-registered 2026-12-07
# (session 13), after mcl_probe.sh's ACG seeds 0-2 and LACG seeds 0-1 were seen, before any run of this script:
#   the probe x/own/independent with a probe critic of hidden widths 256,256, on ACG seeds 0-2 with and without MCL
#   (the runs mcl_probe.sh trained in OUT), every cell reported; written to RUN/mcl_probe_w256.json, copied beside
#   the standard probe's files in experiments/worldmodel/readout/probe/<run>-seed<s>/, tabulated (paired by seed) in
#   readout/probe/table_w256.md.
#   bash experiments/worldmodel/mcl_probe_critic.sh OUT "0 1 2"     # OUT: mcl_probe.sh's folder
set -euo pipefail
out="${1:?usage: mcl_probe_critic.sh OUT SEEDS (OUT: the folder of mcl_probe.sh)}"
seeds="${2:?usage: mcl_probe_critic.sh OUT SEEDS, e.g. 0 or \"0 1 2\"}"
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/readout/probe"
file=mcl_probe_w256.json
for s in $seeds; do
  for mcl in "" -mcl; do
    run="$out/worldmodel-acg$mcl-cpu-seed$s"
    [ -e "$run/$file" ] || python "$here/mcl_probe.py" "$run" --critic-hidden 256,256 --probes x/own/independent \
      --file "$file"
    mkdir -p "$dest/acg$mcl-seed$s"
    cp "$run/$file" "$dest/acg$mcl-seed$s/"
  done
done
shopt -s nullglob
args=()
for f in "$dest"/*-seed*/"$file"; do d="$(dirname "$f")"; args+=("$(basename "$d")=$d"); done
python "$here/mcl_probe.py" --table "$dest/table_w256.md" --file "$file" "${args[@]}"
