#!/usr/bin/env bash
# The first device check of the evidence study (issue 24, item 7), prepared for a lent GPU: how
# fast the paper's SE-R-ResNet50 recipe trains there, and so how many minutes a 200-epoch run
# takes, with torch.compile and without. One call of the `device` tool, well under its 10 minutes:
#
#   run: bash benchmarks/gpu_check.sh        (results under $OUT, or runs/gpu_check here)
#
# Real CIFAR-100 (168 MB) cannot travel with the working tree (64 MiB a call), so the timing uses
# the synthetic stand-in at CIFAR-100's size (50,000 train / 10,000 test 32x32 images): the same
# tensors, shapes and GPU-resident uint8 pipeline, so the same speed; its accuracy means nothing.
# Each run trains EPOCHS epochs (the first includes warm-up and compilation); the extrapolation
# uses the mean of the later epochs. Then benchmarks/throughput.py times SE, SE-A and SE-R train
# steps of ResNet-50 side by side (what conditioning costs on this card).
#
# Environment: OUT (where results go; on the device machine pass OUT=$OUT so they come back),
# EPOCHS (default 4), TRAIN and TEST (synthetic images, default 50000 and 10000), MODES (the
# torch.compile modes timed, default "default off"), RECIPE (default
# recipes/table3/se_r_resnet50.toml), SETS (extra --set items; to try it on a CPU with a tiny
# model: SETS="model.widths=[8,8,16,16]" TRAIN=128 TEST=64 EPOCHS=2 MODES=off), THROUGHPUT_ARGS
# (extra flags of benchmarks/throughput.py, e.g. "--widths-scale 0.125 --batch 8 --repeats 1").
set -uo pipefail
fail=0  # a failed step does not stop the others (a compile error leaves the eager run); exit 1 at the end
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
EPOCHS=${EPOCHS:-4}
TRAIN=${TRAIN:-50000}
TEST=${TEST:-10000}
MODES=${MODES:-default off}
RECIPE=${RECIPE:-recipes/table3/se_r_resnet50.toml}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

"$PY" - <<'EOF'
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"device: {name}; torch {torch.__version__}", flush=True)
EOF

extra=()
for s in ${SETS:-}; do extra+=(--set "$s"); done
for mode in $MODES; do
  echo "== train $RECIPE, compile=$mode, $EPOCHS epoch(s) of $TRAIN synthetic images"
  "$PY" -m condattn.cli train "$RECIPE" --synthetic --out "$OUT/compile_$mode" --overwrite \
    --set "data.synthetic_train=$TRAIN" --set "data.synthetic_test=$TEST" \
    --set "optim.epochs=$EPOCHS" --set "optim.milestones=[]" --set "system.compile=$mode" \
    --set system.progress=off "${extra[@]}" 2>&1 | tail -n "$((EPOCHS + 3))" || fail=1
done

"$PY" - "$OUT" $MODES <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for mode in sys.argv[2:]:
    path = out / f"compile_{mode}" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not rows:
        print(f"compile={mode}: no epoch finished"); continue
    later = rows[1:] or rows  # the first epoch carries warm-up and compilation
    epoch_s = sum(r["epoch_time_s"] for r in later) / len(later)
    img_s = sum(r["img_per_s"] for r in later) / len(later)
    print(
        f"compile={mode}: {img_s:.0f} img/s train, {epoch_s:.1f} s per epoch with eval "
        f"(first epoch {rows[0]['epoch_time_s']:.1f} s) -> {200 * epoch_s / 60:.1f} min per "
        f"200-epoch run (goal: 15 min on one H100)"
    )
EOF
[ $? -eq 0 ] || fail=1

echo "== SE vs SE-A vs SE-R train steps, ResNet-50, batch 128"
"$PY" benchmarks/throughput.py --part a --depths 50 --batch 128 --kinds train --no-profile \
  --out "$OUT" ${THROUGHPUT_ARGS:-} 2>&1 | tail -n 20 || fail=1
exit $fail
