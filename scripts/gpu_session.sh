#!/usr/bin/env bash
# One prepared GPU session for issue 10 (<= 9 minutes in one device call): CUDA-vs-CPU checks, timings,
# then training of the default 3D model for the time left. Run from the repository root:
#   OUT=/path/to/out bash scripts/gpu_session.sh                      # on the device ($OUT is set there)
#   DRDM_GPU_DRYRUN=1 OUT=gpu_dry bash scripts/gpu_session.sh    # tiny sizes on the CPU (test)
# Needs training_data/volumes_64.pt (committed; rebuild: scripts/build_volume_cache.py). Results:
# $OUT/gpu_session.json, $OUT/validation.md, $OUT/default3d/{model.pt,checkpoint.pt,*.csv}, $OUT/session.log.
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
    args+=(--dry-run --budget-s "${DRDM_GPU_BUDGET_S:-45}" --reserve-s 10 --batch 2)
else
    args+=(--budget-s "${DRDM_GPU_BUDGET_S:-480}" --batch "${DRDM_GPU_BATCH:-8}")
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"${PYTHON:-python3}" scripts/gpu_session.py "${args[@]}" 2>&1 | tee "$OUT/session.log"
exit "${PIPESTATUS[0]}"
