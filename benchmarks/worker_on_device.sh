#!/usr/bin/env bash
# Run the real worker on one GPU with the full-size llava-v1.6-mistral-7b architecture
# (random weights, built from its config: no download) on a 224p H.264 video.
#   bash benchmarks/worker_on_device.sh VIDEO NUM_WORKERS QUANT [QUANT ...]
# Needs bitsandbytes importable (PYTHONPATH) for nf4. Prints the worker's own log lines
# (s/window, peak GPU memory) and writes nvidia-smi samples to ${OUT:-/tmp}/smi_<quant>.csv.
set -euo pipefail
video=$(realpath "$1"); workers=$2; shift 2
out=${OUT:-/tmp}
work=$(mktemp -d)
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

log "building the full-size checkpoint (random bf16 weights) in ${work}/ckpt"
python3 -m llava_soccer.synthetic checkpoint "${work}/ckpt" --size full --dtype bfloat16 --device cuda
for quant in "$@"; do
  project="${work}/project_${quant}"
  mkdir -p "${project}/raw_data/league/game"
  ln -s "${video}" "${project}/raw_data/league/game/1_224p.mkv"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 500 >"${out}/smi_${quant}.csv" &
  smi=$!
  log "worker: ${quant}"
  python3 llava_split_worker.py --gpu-id 0 --num-workers "${workers}" --video-index 0 --project "${project}" \
    --model "${work}/ckpt" --quantization "${quant}" --max-new-tokens "${MAX_NEW_TOKENS:-64}" \
    --batch-size "${BATCH_SIZE:-1}" --progress-every 10
  kill "${smi}"
  cp "${project}/partial_results_llava_vid0_gpu0.json" "${out}/partial_${quant}.json"
done
