#!/usr/bin/env bash
# The worker under GPU plans (llava_soccer/gpus.py) on the device's GPU, one slice of a 224p video
# each: "own" is the GPU's own plan; CC,GIB runs that card's plan with --assume-gpu, PyTorch's memory
# capped at what the card leaves (benchmarks/RESULTS.md, session 4).
#   bash benchmarks/plans_on_device.sh VIDEO CHECKPOINT NUM_WORKERS PLAN [PLAN ...]
# Worker settings come from the environment (LLAVA_BATCH_SIZE, LLAVA_MAX_NEW_TOKENS, ...). Prints
# each worker's log (plan line, s/window, peak memory, skipped windows) and nvidia-smi's peak.
set -euo pipefail
video=$(realpath "$1")
checkpoint=$2
workers=$3
shift 3
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

for plan in "$@"; do
  project=$(mktemp -d)/project
  mkdir -p "${project}/raw_data/league/game"
  ln -s "${video}" "${project}/raw_data/league/game/1_224p.mkv"
  assume=()
  [[ ${plan} == own ]] || assume=(--assume-gpu "${plan}")
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"${project}/smi.txt" &
  smi=$!
  log "plan ${plan}"
  status=0
  python3 llava_split_worker.py --gpu-id 0 --num-workers "${workers}" --video-index 0 --project "${project}" \
    --model "${checkpoint}" --progress-every 20 "${assume[@]}" || status=$?
  kill "${smi}"
  log "plan ${plan}: worker exit ${status}, nvidia-smi peak $(sort -n "${project}/smi.txt" | tail -1) MiB"
done
