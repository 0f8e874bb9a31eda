#!/usr/bin/env bash
#
# setup_llava.sh - install the LLaVA soccer pipeline into the project directory and check it.
#
#   bash setup_llava.sh                                  # into ~/soccer_project
#   SOCCER_PROJECT=/scratch/me/soccer bash setup_llava.sh
#
# 1. copies llava_split_worker.py, merge_results_llava.py, submit_llava.sh, the llava_soccer
#    package and requirements.txt to $SOCCER_PROJECT (only files that changed), creates
#    $SOCCER_PROJECT/raw_data/ for the videos;
# 2. creates the virtual environment $SOCCER_PROJECT/venv from requirements.txt if it is
#    missing, and updates it when requirements.txt changed (set LLAVA_PYTHON to use another
#    python instead; submit_llava.sh then needs the same LLAVA_PYTHON);
# 3. checks what it can: python and packages, GPUs visible, ffmpeg/OpenCV, HF_TOKEN or a cached
#    model, videos in raw_data/, Slurm's sbatch.
# Safe to run again at any time. Exit status: 0 ready (warnings are printed), 1 a problem
# that stops the pipeline (printed as ERROR).
#
# Settings (environment): SOCCER_PROJECT (~/soccer_project), LLAVA_PYTHON (python to use instead
# of creating venv/), LLAVA_MODEL (model to look for in the cache), HF_TOKEN, PYTHON (python3:
# the interpreter that creates the venv).

set -euo pipefail

readonly FILES=(llava_split_worker.py merge_results_llava.py submit_llava.sh requirements.txt)
readonly OPTIONAL_FILES=(compare_counts.py evaluate_soccernet.py)
readonly DEFAULT_MODEL=llava-hf/llava-v1.6-mistral-7b-hf

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
ok() { log "ok:      $*"; }
warn() { log "WARNING: $*"; WARNINGS=$((WARNINGS + 1)); }
error() { log "ERROR:   $*"; ERRORS=$((ERRORS + 1)); }
WARNINGS=0
ERRORS=0

# copy_if_changed SRC DST: copy and say so, or say nothing changed.
copy_if_changed() {
  local src=$1 dst=$2
  if [[ -f ${dst} ]] && cmp -s "${src}" "${dst}"; then
    return 0
  fi
  mkdir -p "$(dirname "${dst}")"
  cp "${src}" "${dst}"
  log "copied  ${dst#"${PROJECT}/"}"
  COPIED=$((COPIED + 1))
}

install_files() {
  local name
  COPIED=0
  if [[ ${SRC} -ef ${PROJECT} ]]; then
    ok "running inside ${PROJECT}: nothing to copy"
    return 0
  fi
  for name in "${FILES[@]}"; do
    [[ -f ${SRC}/${name} ]] || { error "${SRC}/${name} is missing: run this script from the pipeline's repository"; return 0; }
    copy_if_changed "${SRC}/${name}" "${PROJECT}/${name}"
  done
  for name in "${OPTIONAL_FILES[@]}"; do
    [[ -f ${SRC}/${name} ]] && copy_if_changed "${SRC}/${name}" "${PROJECT}/${name}"
  done
  for name in "${SRC}"/llava_soccer/*.py; do
    copy_if_changed "${name}" "${PROJECT}/llava_soccer/$(basename "${name}")"
  done
  ok "scripts in ${PROJECT} (${COPIED} file(s) updated)"
}

# Sets PY: LLAVA_PYTHON, or the project's venv (created or updated from requirements.txt).
install_venv() {
  local venv=${PROJECT}/venv stamp
  if [[ -n ${LLAVA_PYTHON:-} ]]; then
    PY=${LLAVA_PYTHON}
    ok "using LLAVA_PYTHON=${PY} (no venv created; export the same LLAVA_PYTHON before sbatch)"
    return 0
  fi
  PY=${venv}/bin/python
  stamp=${venv}/llava-requirements.txt   # the requirements.txt last installed
  if [[ ! -x ${PY} ]]; then
    command -v "${PYTHON:-python3}" >/dev/null 2>&1 || { error "${PYTHON:-python3} not found: install Python 3.10+ (or module load python)"; return 0; }
    log "creating ${venv} (pip downloads ~3 GB of packages the first time: torch, transformers, ...)"
    "${PYTHON:-python3}" -m venv "${venv}" || { error "python3 -m venv failed (Debian/Ubuntu: apt install python3-venv)"; return 0; }
  elif [[ -f ${stamp} ]] && cmp -s "${stamp}" "${PROJECT}/requirements.txt"; then
    ok "venv ${venv} is up to date with requirements.txt"
    return 0
  fi
  log "installing requirements.txt into ${venv}"
  # The SoccerNet evaluator (evaluate_soccernet.py) without its heavy declared dependencies:
  # its scoring code needs only numpy and tqdm (README: Evaluating against SoccerNet labels).
  if "${PY}" -m pip install --disable-pip-version-check -q -r "${PROJECT}/requirements.txt" &&
    "${PY}" -m pip install --disable-pip-version-check -q --no-deps SoccerNet==0.2.0; then
    cp "${PROJECT}/requirements.txt" "${stamp}"
    ok "venv ${venv} installed"
  else
    error "pip install -r requirements.txt failed (see above); rerun when fixed"
  fi
}

# One python run checks the interpreter, packages, GPUs, OpenCV and the model; it prints
# "ok|...", "warn|..." or "error|..." lines, which become this script's messages.
check_python() {
  local out line status=0
  if ! command -v "${PY}" >/dev/null 2>&1; then
    error "python ${PY} not found"
    return 0
  fi
  out=$("${PY}" - "${LLAVA_MODEL:-${DEFAULT_MODEL}}" 2>&1 <<'EOF'
import os, sys
v = sys.version_info
if v < (3, 10):
    sys.exit(print(f"error|Python {v[0]}.{v[1]} ({sys.executable}) is too old: 3.10 or newer is needed"))
print(f"ok|python {sys.executable} ({v[0]}.{v[1]})")
try:
    import accelerate, numpy, PIL, tqdm, torch, transformers, cv2
except ImportError as e:
    sys.exit(print(f"error|package missing: {e} (rerun setup, or pip install -r requirements.txt)"))
print(f"ok|torch {torch.__version__}, transformers {transformers.__version__}, OpenCV {cv2.__version__}")
try:
    import bitsandbytes
    print(f"ok|bitsandbytes {bitsandbytes.__version__} (LLAVA_QUANT=nf4, 4-bit)")
except Exception:
    print("warn|bitsandbytes missing: LLAVA_QUANT=nf4 (the default) fails; use bf16 or pip install bitsandbytes")
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
if n:
    print(f"ok|CUDA: {n} GPU(s) visible here: {torch.cuda.get_device_name(0)}")
else:
    print("warn|no GPU visible here: normal on a login node (jobs get theirs from #SBATCH --gres); "
          "on CPU the 7B model is far too slow" + (" - and this torch is a CPU build" if torch.version.cuda is None else ""))
build = cv2.getBuildInformation().replace(" ", "")
if "FFMPEG:YES" in build:
    print("ok|OpenCV can decode videos (FFMPEG backend)")
else:
    print("warn|OpenCV has no FFMPEG backend: it may not read .mkv/.mp4 (pip install opencv-python-headless)")
model = sys.argv[1]
if os.path.isdir(model):
    if os.path.isfile(os.path.join(model, "config.json")):
        print(f"ok|model: local checkpoint {model}")
    else:
        print(f"error|LLAVA_MODEL={model} is a directory without config.json")
else:
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        print(f"ok|model {model} is in the Hugging Face cache")
    elif os.environ.get("HF_TOKEN"):
        print(f"ok|HF_TOKEN is set: {model} (~15 GB) downloads on first use "
              "(better: pre-download it once, README: Troubleshooting)")
    else:
        print(f"warn|HF_TOKEN is not set and {model} is not cached: export HF_TOKEN=hf_... "
              "or pre-download the model (README: Troubleshooting)")
EOF
  ) || status=$?
  while IFS= read -r line; do
    case ${line} in
      ok\|*) ok "${line#ok|}" ;;
      warn\|*) warn "${line#warn|}" ;;
      error\|*) error "${line#error|}" ;;
      *) [[ -z ${line} ]] || ((status == 0)) || log "         ${line}" ;;  # a traceback
    esac
  done <<<"${out}"
  [[ ${out} == *'|'* ]] || error "${PY} could not run the checks (see above)"
}

check_ffmpeg() {
  if command -v ffmpeg >/dev/null 2>&1; then
    ok "ffmpeg $(ffmpeg -version 2>/dev/null | awk 'NR == 1 {print $3}')"
  else
    warn "ffmpeg not found: only needed to make the demo/test videos (apt install ffmpeg)"
  fi
}

check_project() {
  local n
  n=$(find -L "${PROJECT}/raw_data" -type f \( -iname '*.mkv' -o -iname '*.mp4' \) 2>/dev/null | wc -l)
  if ((n > 0)); then
    ok "${n} video(s) under ${PROJECT}/raw_data"
  else
    warn "no .mkv/.mp4 under ${PROJECT}/raw_data yet: put the match videos there (sub-folders are fine)"
  fi
  local partitions
  if command -v sbatch >/dev/null 2>&1; then
    if partitions=$(timeout 30 sinfo -h -o '%P(%G)' 2>&1); then
      ok "Slurm answers; partitions(GPUs): $(sort -u <<<"${partitions}" | tr '\n' ' ')"
    else
      warn "sbatch found but Slurm does not answer here: ${partitions##*$'\n'}"
    fi
  else
    warn "sbatch not found: no Slurm here; 'bash submit_llava.sh START END' runs on this machine"
  fi
}

main() {
  (($# == 0)) || { printf 'usage: [SOCCER_PROJECT=DIR] bash setup_llava.sh\n' >&2; exit 2; }
  SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  PROJECT=${SOCCER_PROJECT:-${HOME}/soccer_project}
  mkdir -p "${PROJECT}/raw_data"
  PROJECT=$(cd "${PROJECT}" && pwd)
  log "setting up the LLaVA soccer pipeline in ${PROJECT}"
  install_files
  install_venv
  check_python
  check_ffmpeg
  check_project
  if ((ERRORS)); then
    log "setup incomplete: ${ERRORS} error(s), ${WARNINGS} warning(s); fix the ERROR lines and rerun"
    exit 1
  fi
  log "setup done (${WARNINGS} warning(s)). Next: put videos in ${PROJECT}/raw_data, then"
  log "  cd $(printf '%q' "${PROJECT}") && sbatch submit_llava.sh 0 39    # or without Slurm: bash submit_llava.sh 0 0"
}

main "$@"
