#!/usr/bin/env bash
# One prepared GPU session (issues 17, 18; <= 9 minutes in one device call): CUDA-vs-CPU checks, timings,
# then training of the default 3D model for the time left, continued from training_data/default3d_latest.pt
# when it exists. Run from the repository root:
#   OUT=/path/to/out bash scripts/gpu_session.sh                 # on the device ($OUT is set there)
#   DRDM_GPU_DRYRUN=1 OUT=gpu_dry bash scripts/gpu_session.sh    # tiny sizes on the CPU (test)
# Needs training_data/volumes_64.pt (committed; rebuild: scripts/build_volume_cache.py). Results (at most
# 8 files of at most 16 MiB, what a device call returns): $OUT/gpu_session.json, $OUT/validation.md,
# $OUT/default3d/{checkpoint.pt,model.pt,train_log.csv,validation.csv}, $OUT/session.log (nvidia-smi first).
set -uo pipefail
OUT="${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
CACHE="${DRDM_GPU_CACHE:-training_data/volumes_64.pt}"
if [ ! -f "$CACHE" ]; then
    echo "gpu_session: error: $CACHE not found; build it with scripts/build_volume_cache.py" >&2
    exit 2
fi
args=(--out "$OUT" --cache "$CACHE")
if [ "${DRDM_GPU_DRYRUN:-0}" = 1 ]; then
    budget="${DRDM_GPU_BUDGET_S:-25}"
    args+=(--dry-run --budget-s "$budget" --reserve-s 2 --batches 1 2 4)
else
    budget="${DRDM_GPU_BUDGET_S:-480}"
    args+=(--budget-s "$budget")
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
    if [ "${DRDM_GPU_DRYRUN:-0}" != 1 ]; then
        nvidia-smi 2>&1  # into session.log: a file of its own would take one of the 8 that come back
    fi
    # the session plans to end within its budget; the timeout only guards the clean-up below
    timeout -k 10 "$(( ${budget%.*} + 40 ))" "${PYTHON:-python3}" scripts/gpu_session.py "${args[@]}"
} 2>&1 | tee "$OUT/session.log"
status="${PIPESTATUS[0]}"
# a save cut short leaves its temporary file, which would take one of the files a device call returns
find "$OUT" -type f -name '.*.tmp*' -delete
exit "$status"
