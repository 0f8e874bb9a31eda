#!/usr/bin/env bash
#
# demo.sh - the whole pipeline in a minute or two, on any machine: no GPU, no Slurm, no download.
#
#   bash demo.sh              # works in ./llava_demo
#   bash demo.sh DIR          # or in DIR
#
# It builds the two halves of a synthetic match (barcoded H.264 videos, laid out as SoccerNet's, with
# its Labels-v2.json to try evaluate_soccernet.py on) and a tiny random LLaVA-NeXT
# checkpoint that answers every window with a goal, then runs the real loop exactly as a job
# would - `bash submit_llava.sh 0 1` with SOCCER_PROJECT=DIR: two workers per video (on CPU),
# their partial files, the merge, the final file - printing each file as it appears (+) or
# disappears (-). A second run shows finished videos being skipped.
#
# What it needs is installed first by tools/install_env.sh demo (ffmpeg, when missing and root or
# sudo; the repository's .venv from requirements.txt, only when that file changed).
#
# Settings (environment): LLAVA_PYTHON (a python that has the requirements: then nothing is
# installed; default: the repository's .venv, or LLAVA_VENV), LLAVA_NUM_WORKERS (2).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly ANSWER="{'label': 'Goal', 'team': 'home', 'confidence': 0.9, 'frame': 8, 'details': 'ball in the net'}"
readonly MARKER=.llava_demo
readonly GAME="demo_league/2024-2025/2024-08-17 - 15-00 Home 2 - 1 Away"  # <league>/<season>/<game>, as SoccerNet

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The python to run the demo with: LLAVA_PYTHON as given, else the venv that the shared install
# step makes or brings up to date.
demo_python() {
  if [[ -n ${LLAVA_PYTHON:-} ]]; then
    printf '%s\n' "${LLAVA_PYTHON}"
  else
    bash "${HERE}/tools/install_env.sh" demo || die "installing the requirements failed (see above)"
    printf '%s\n' "${LLAVA_VENV:-${HERE}/.venv}/bin/python"
  fi
}

# python -m llava_soccer.synthetic ARGS, quiet unless it fails
synthetic() {
  local out
  out=$(PYTHONPATH="${HERE}${PYTHONPATH:+:${PYTHONPATH}}" "${PY}" -m llava_soccer.synthetic "$@" 2>&1) ||
    die "python -m llava_soccer.synthetic $* failed: ${out}"
}

# SoccerNet-v2 labels (Labels-v2.json) for the demo match, to try evaluate_soccernet.py with: three goals,
# at times where the demo's model (a goal in every window) finds one and at one where it does not.
write_labels() {
  mkdir -p "$(dirname "$1")"
  "${PY}" - "$1" <<'EOF'
import json, os, sys
goals = [(1, 8), (1, 21), (2, 13)]  # (half, second)
annotations = [{"gameTime": f"{half} - 00:{s:02d}", "label": "Goal", "position": str(s * 1000),
                "team": "home", "visibility": "visible"} for half, s in goals]
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"annotations": annotations}, f, indent=1)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
EOF
}

# The pipeline's files in DIR, one per line.
list_files() {
  (cd "${DIR}" && ls -1 videos.txt partial_results_llava_* final_predictions_llava_* 2>/dev/null) || true
}

# Print "+ file" / "- file" while the files in DIR change, until the file $1 exists; the last
# comparison runs after it appears, so no change made before it is missed.
watch_files() {
  local stop=$1 before after last=0
  before=$(list_files)
  while ((!last)); do
    sleep 0.3
    [[ -e ${stop} ]] && last=1
    after=$(list_files)
    if [[ ${after} != "${before}" ]]; then
      comm -13 <(printf '%s\n' "${before}") <(printf '%s\n' "${after}") | sed '/^$/d; s/^/          [files] + /'
      comm -23 <(printf '%s\n' "${before}") <(printf '%s\n' "${after}") | sed '/^$/d; s/^/          [files] - /'
      before=${after}
    fi
  done
}

main() {
  (($# <= 1)) || { printf 'usage: bash demo.sh [DIR]\n' >&2; exit 2; }
  DIR=${1:-${PWD}/llava_demo}
  if [[ -e ${DIR} && ! -e ${DIR}/${MARKER} ]] && [[ -n $(ls -A "${DIR}" 2>/dev/null) ]]; then
    die "${DIR} exists and is not a demo directory: give another DIR"
  fi
  PY=$(demo_python)
  command -v ffmpeg >/dev/null 2>&1 || die "ffmpeg is needed to encode the demo videos (apt install ffmpeg)"
  "${PY}" -c 'import torch, transformers, cv2' 2>/dev/null ||
    die "${PY} lacks torch/transformers/OpenCV: pip install -r requirements.txt, or unset LLAVA_PYTHON"
  mkdir -p "${DIR}/raw_data"
  DIR=$(cd "${DIR}" && pwd)
  touch "${DIR}/${MARKER}"
  cd "${DIR}"

  log "1/4 the two halves of a synthetic match in ${DIR}/raw_data/${GAME} (30 s and 20 s of H.264, a barcode" \
    "on every frame), laid out as SoccerNet's, and its labels in ${DIR}/soccernet/${GAME}/Labels-v2.json"
  [[ -f raw_data/${GAME}/1_224p.mkv ]] || synthetic video "raw_data/${GAME}/1_224p.mkv" --seconds 30
  [[ -f raw_data/${GAME}/2_224p.mkv ]] || synthetic video "raw_data/${GAME}/2_224p.mkv" --seconds 20
  write_labels "soccernet/${GAME}/Labels-v2.json"
  log "2/4 a tiny random LLaVA-NeXT checkpoint in ${DIR}/tiny_llava (it answers every window: ${ANSWER})"
  [[ -f tiny_llava/config.json ]] || synthetic checkpoint tiny_llava --answer "${ANSWER}"
  # start the demo afresh
  rm -f final_predictions_llava_video_*.json raw_answers_llava_video_*.json.gz partial_results_llava_vid*_gpu*.json

  local -a run=(env -u SLURM_JOB_ID -u SLURM_ARRAY_TASK_ID
    SOCCER_PROJECT="${DIR}" LLAVA_MODEL="${DIR}/tiny_llava" LLAVA_QUANT=fp32
    LLAVA_NUM_WORKERS="${LLAVA_NUM_WORKERS:-2}" CUDA_VISIBLE_DEVICES= LLAVA_PYTHON="${PY}" LLAVA_HOME="${HERE}"
    HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
    bash "${HERE}/submit_llava.sh" 0 1)
  log "3/4 the full loop, as a Slurm job runs it: ${run[*]: -4}"
  log "    (workers -> partial_results_llava_vid*_gpu*.json -> merge -> final_predictions_llava_video_*.json)"
  local stop=${DIR}/.llava_demo_done status=0
  rm -f "${stop}"
  watch_files "${stop}" &
  local watcher=$!
  "${run[@]}" || status=$?
  touch "${stop}"
  wait "${watcher}" || true
  rm -f "${stop}"
  ((status == 0)) || die "submit_llava.sh exited with ${status} (see above)"

  log "4/4 run it again: finished videos are skipped"
  "${run[@]}" 2>&1 | grep -E 'skipped|summary' >&2 || true

  log "the result, ${DIR}/final_predictions_llava_video_0.json (first events):"
  "${PY}" - "${DIR}/final_predictions_llava_video_0.json" <<'EOF'
import json, sys
events = json.load(open(sys.argv[1]))
for e in events[:3]:
    print("   ", json.dumps(e)[:160])
print(f"    ... {len(events)} events in all")
EOF
  local q_dir q_here q_py
  q_dir=$(printf '%q' "${DIR}")
  q_here=$(printf '%q' "${HERE}")
  q_py=$(printf '%q' "${PY}")   # the python with torch: submit alone would take python3
  log "demo done. Next, reprocess one video the way users do:"
  log "  rm ${q_dir}/final_predictions_llava_video_1.json"
  log "  cd ${q_here} && SOCCER_PROJECT=${q_dir} LLAVA_MODEL=${q_dir}/tiny_llava LLAVA_QUANT=fp32 LLAVA_PYTHON=${q_py}" \
    "CUDA_VISIBLE_DEVICES= bash submit_llava.sh 1 1"
  log "  (on a Slurm cluster: the same variables, then sbatch submit_llava.sh 1 1; tail -f llava_*.log)"
  log "Score the predictions against the demo's SoccerNet labels (official mAP, precision/recall):"
  log "  cd ${q_here} && ${q_py} evaluate_soccernet.py --project ${q_dir} --soccernet ${q_dir}/soccernet"
}

main "$@"
