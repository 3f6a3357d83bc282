#!/usr/bin/env bash
# Does the world model's MCL readout go through the forward model? (README: "Where the MCL readout comes from")
# Seed-0 checks, not a pre-registered grid: ACG+MCL and LACG+MCL of the cpu preset as committed (critic c(x, z, u),
# generator term), and ACG+MCL with a critic that sees only x (mcl.critic_input=x). Each logs, every 50 steps, the
# generator term's readout with the step's z and with z from another transition (acc_generator_independent).
#   bash experiments/worldmodel/readout.sh OUT          # trains the three runs (~30 min each on one core), then
#                                                       # copies their small files here and writes readout.txt
set -euo pipefail
out="${1:?usage: readout.sh OUT (a folder for the three runs)}"
here="$(cd "$(dirname "$0")" && pwd)"
common="--preset cpu --threads 1 --seeds 0 --quiet"
python -m mclcore train worldmodel --variant acg --mcl $common --out "$out"
python -m mclcore train worldmodel --variant acg --mcl $common --out "$out/critic-x" --set mcl.critic_input=x
python -m mclcore train worldmodel --variant lacg --mcl $common --out "$out"
for pair in "acg-mcl:$out/worldmodel-acg-mcl-cpu-seed0" "acg-mcl-critic-x:$out/critic-x/worldmodel-acg-mcl-cpu-seed0" \
            "lacg-mcl:$out/worldmodel-lacg-mcl-cpu-seed0"; do
  name="${pair%%:*}" run="${pair#*:}"
  mkdir -p "$here/readout/$name"
  cp "$run"/{config.json,metrics.json,mcl_diagnostics.json} "$here/readout/$name/"
done
for name in acg-mcl acg-mcl-critic-x lacg-mcl; do
  python -m mclcore inspect-mcl "$here/readout/$name" --last 10
done > "$here/readout/readout.txt"
