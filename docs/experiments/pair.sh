#!/bin/bash
# The lever runs of docs/RECIPE.md ("Lever 2"): agent A (top, seed 1, world 0) and agent B (oblique, seed 2,
# world 1) trained side by side with one torch thread each, then the pair study and the z-content analysis.
# usage: docs/experiments/pair.sh OUT_DIR CONFIG_JSON [SEED_A SEED_B]   (from the repository root, .venv set up;
#        model seeds default to the demo pair's 1 and 2, the world seeds stay 0 and 1)
# CONFIG_JSON, e.g. {"train": {"threads": 1}, "jepa": {"encoder": {"fused_attn": false},
#                    "predictor": {"z_head": "linear"}}}
set -euo pipefail
d=$1; cfg=$2; sa=${3:-1}; sb=${4:-2}; mkdir -p "$d"
J=.venv/bin/jepa-edge; PY=.venv/bin/python
start=$(date +%s)
$J train --out "$d/A" --view top --seed "$sa" --world-seed 0 --name agentA --config "$cfg" --no-progress > "$d/A.log" 2>&1 &
$J train --out "$d/B" --view oblique --seed "$sb" --world-seed 1 --name agentB --config "$cfg" --no-progress > "$d/B.log" 2>&1
wait
echo "TRAIN WALL $(( $(date +%s) - start )) s" | tee "$d/summary.txt"
OMP_NUM_THREADS=2 $PY docs/experiments/pair_study.py "$d/A" "$d/B" "$d/study" | tee -a "$d/summary.txt"
OMP_NUM_THREADS=2 $PY docs/experiments/z_content.py "$d/A" "$d/B" | tee -a "$d/summary.txt"
