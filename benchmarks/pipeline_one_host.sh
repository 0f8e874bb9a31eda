#!/usr/bin/env bash
# The whole pipeline on one GPU host, through submit_llava.sh's local mode (no Slurm): four
# workers, then the merge, with the full-size llava-v1.6-mistral-7b architecture (random
# weights, NF4, 64 new tokens per window). Used for issue 7; see benchmarks/RESULTS.md.
#   bash benchmarks/pipeline_one_host.sh VIDEO WORKDIR [NUM_WORKERS]
# Writes WORKDIR/llava.log (the job log, ending with "wall N s") and WORKDIR/apps.csv
# (nvidia-smi per-process GPU memory every 5 s).
set -euo pipefail
video=$(realpath "$1")
work=$2
workers=${3:-4}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "${work}/project/raw_data/league/game"
ln -sf "${video}" "${work}/project/raw_data/league/game/1_224p.mkv"
(cd "${here}" && python3 -m llava_soccer.synthetic checkpoint "${work}/ckpt" --size full --dtype bfloat16 --device cuda)
nvidia-smi --query-compute-apps=timestamp,pid,gpu_uuid,used_memory --format=csv -l 5 >"${work}/apps.csv" &
smi=$!
start=$(date +%s)
status=0
SOCCER_PROJECT="${work}/project" LLAVA_MODEL="${work}/ckpt" LLAVA_QUANT=nf4 LLAVA_MAX_NEW_TOKENS=64 \
  LLAVA_NUM_WORKERS="${workers}" LLAVA_PYTHON=python3 bash "${here}/submit_llava.sh" 0 0 >"${work}/llava.log" 2>&1 ||
  status=$?
echo "wall $(($(date +%s) - start)) s, exit ${status}" >>"${work}/llava.log"
kill "${smi}"
