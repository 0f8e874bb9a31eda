#!/usr/bin/env bash
#
# setup_llava.sh - install the LLaVA soccer pipeline into the project directory and check it.
#
#   bash setup_llava.sh                                  # into ~/soccer_project
#   SOCCER_PROJECT=/scratch/me/soccer bash setup_llava.sh
#
# 1. copies llava_split_worker.py, merge_results_llava.py, submit_llava.sh, the llava_soccer
#    package and requirements.txt to $SOCCER_PROJECT (only files that changed), creates
#    $SOCCER_PROJECT/raw_data/ for the videos, and removes the files an earlier setup copied that the
#    repository no longer ships (listed in $SOCCER_PROJECT/.llava_deployed.txt; never another file);
# 2. creates the virtual environment $SOCCER_PROJECT/venv from requirements.txt if it is
#    missing, and updates it when requirements.txt or the torch build it needs changed (set
#    LLAVA_PYTHON to use another python instead; submit_llava.sh then needs the same LLAVA_PYTHON).
#    The torch build follows this node's GPUs (nvidia-smi): PyPI's torch is a CUDA 13 build
#    (NVIDIA driver >= 580, compute capability >= 7.5); with an older driver (>= 525.60.13) or an
#    older GPU (Titan V 7.0, GTX 1080 Ti 6.1) the same torch version comes from PyTorch's CUDA 12.6
#    index first. Run setup where the jobs run: srun -p GPU --gres=gpu:1 bash setup_llava.sh;
# 3. checks what it can: python and packages, that torch has kernels for this node's GPUs and
#    suits its driver, ffmpeg/OpenCV, HF_TOKEN or a cached model (these with
#    python -m llava_soccer.doctor), videos in raw_data/, sbatch.
# Safe to run again at any time. Exit status: 0 ready (warnings are printed), 1 a problem
# that stops the pipeline (printed as ERROR).
#
# Settings (environment): SOCCER_PROJECT (~/soccer_project), LLAVA_PYTHON (python to use instead
# of creating venv/), LLAVA_MODEL (model to look for in the cache), HF_TOKEN, PYTHON (python3:
# the interpreter that creates the venv), LLAVA_TORCH_INDEX (the pip index to install torch from,
# a URL or a directory; overrides the choice from nvidia-smi, e.g. https://download.pytorch.org/whl/cu126).

set -euo pipefail

readonly FILES=(llava_split_worker.py merge_results_llava.py submit_llava.sh setup_llava.sh requirements.txt)
readonly OPTIONAL_FILES=(compare_counts.py evaluate_soccernet.py status_llava.py)
readonly DEFAULT_MODEL=llava-hf/llava-v1.6-mistral-7b-hf  # settings.DEFAULT_MODEL (tests/test_names.py)
# torch builds: PyPI's Linux torch 2.13 is built for CUDA 13.0, which needs driver >= 580 and has
# kernels for compute capability 7.5 and up only; PyTorch's cu126 index has the same version built
# for CUDA 12.6 with sm_50/60/70/75/80/86/90 kernels (5.x to 9.0, Maxwell to Hopper: no Blackwell),
# which runs on drivers >= 525.60.13 (CUDA minor version compatibility,
# docs.nvidia.com/deploy/cuda-compatibility; PyTorch RELEASE.md, "CUDA Support Matrix").
# cu126 is PyTorch's last build for GPUs below 7.5: it is planned to end after 2.14
# (pytorch/pytorch#190385), so a newer torch pin needs a new answer for Titan V / GTX 1080 Ti nodes.
readonly CUDA12_INDEX=https://download.pytorch.org/whl/cu126
readonly CUDA12_DRIVER=525.60.13
readonly CUDA13_DRIVER=580
readonly CUDA13_MIN_CC=7.5
readonly STAMP_INDEX='# setup_llava.sh: torch from '
readonly DEPLOYED=.llava_deployed.txt   # the files the last setup copied, one relative path a line

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
ok() { log "ok:      $*"; }
warn() { log "WARNING: $*"; WARNINGS=$((WARNINGS + 1)); }
error() { log "ERROR:   $*"; ERRORS=$((ERRORS + 1)); }
WARNINGS=0
ERRORS=0
VIDEOS=0

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

# remove_unshipped SHIPPED...: removes what an earlier setup copied (DEPLOYED's lines) and is not in
# SHIPPED (relative paths), then writes SHIPPED as the new DEPLOYED. A project set up before DEPLOYED
# existed has none: there the llava_soccer/ package folder, which only setup fills, is what it copied
# (an old llava_soccer/model.py). Other files are the user's and stay.
remove_unshipped() {
  local name
  local -A keep=()
  local -a before=()
  for name in "$@"; do keep[${name}]=1; done
  if [[ -f ${PROJECT}/${DEPLOYED} ]]; then
    mapfile -t before <"${PROJECT}/${DEPLOYED}"
  else
    for name in "${PROJECT}"/llava_soccer/*.py "${PROJECT}"/llava_soccer/*/*.py; do
      [[ -f ${name} ]] && before+=("${name#"${PROJECT}/"}")
    done
  fi
  for name in "${before[@]}"; do
    [[ -n ${name} && -z ${keep[${name}]:-} && -f ${PROJECT}/${name} ]] || continue
    rm -f "${PROJECT}/${name}"
    log "removed ${name} (copied by an earlier setup; the pipeline no longer ships it)"
  done
  printf '%s\n' "$@" >"${PROJECT}/${DEPLOYED}.tmp" && mv -f "${PROJECT}/${DEPLOYED}.tmp" "${PROJECT}/${DEPLOYED}"
}

install_files() {
  local name
  COPIED=0
  if [[ ${SRC} -ef ${PROJECT} ]]; then
    ok "running inside ${PROJECT}: nothing to copy"
    return 0
  fi
  local -a shipped=()
  for name in "${FILES[@]}"; do
    [[ -f ${SRC}/${name} ]] || { error "${SRC}/${name} is missing: run this script from the pipeline's repository"; return 0; }
    shipped+=("${name}")
  done
  for name in "${OPTIONAL_FILES[@]}"; do
    [[ -f ${SRC}/${name} ]] && shipped+=("${name}")
  done
  for name in "${SRC}"/llava_soccer/*.py "${SRC}"/llava_soccer/*/*.py; do   # the package and its subpackages
    [[ -f ${name} ]] && shipped+=("${name#"${SRC}/"}")
  done
  for name in "${shipped[@]}"; do
    copy_if_changed "${SRC}/${name}" "${PROJECT}/${name}"
  done
  remove_unshipped "${shipped[@]}"
  ok "scripts in ${PROJECT} (${COPIED} file(s) updated)"
}

# version_ge A B: dotted version A >= B (535.104.05 >= 525.60.13).
version_ge() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1) == "$2" ]]; }

# Sets GPUS (one "name|driver|capability" per GPU that nvidia-smi lists; none on a login node, or
# where nvidia-smi fails; capability "?" where nvidia-smi cannot tell: old drivers such as 470 have
# no compute_cap field, and are too old for torch anyway) and DRIVER (the lowest driver version).
read_gpus() {
  local out name driver cc
  GPUS=()
  DRIVER=''
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  out=$(timeout 60 nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null) ||
    out=$(timeout 60 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null) || return 0
  while IFS=, read -r name driver cc; do
    driver=${driver//[[:space:]]/} cc=${cc//[[:space:]]/}
    [[ -n ${name} && ${driver} =~ ^[0-9]+(\.[0-9]+)*$ ]] || continue
    [[ ${cc} =~ ^[0-9]+\.[0-9]+$ ]] || cc='?'
    GPUS+=("${name}|${driver}|${cc}")
    if [[ -z ${DRIVER} ]] || ! version_ge "${driver}" "${DRIVER}"; then DRIVER=${driver}; fi
  done <<<"${out}"
}

# The GPU part of the checks runs only where it can tell something: GPUs listed and a driver that
# some torch build supports (else that is the one error to fix first).
check_driver() {
  TORCH_CHECK=0
  ((${#GPUS[@]})) || return 0
  if [[ -z ${LLAVA_TORCH_INDEX:-} ]] && ! version_ge "${DRIVER}" "${CUDA12_DRIVER}"; then
    error "NVIDIA driver ${DRIVER} on this node is too old for torch $(torch_version): its CUDA 12 build needs driver >= ${CUDA12_DRIVER}, the CUDA 13 build (PyPI) >= ${CUDA13_DRIVER}; ask the admins for a newer driver, or set LLAVA_TORCH_INDEX to a pip index with a torch build for driver ${DRIVER} and rerun setup"
    return 0
  fi
  TORCH_CHECK=1
}

# The torch version pinned in requirements.txt (torch==X), or nothing.
torch_version() {
  [[ -f ${PROJECT}/requirements.txt ]] || return 0
  sed -n -E '/^[[:space:]]*torch[[:space:]]*==/{s/^[[:space:]]*torch[[:space:]]*==[[:space:]]*([^[:space:];#,]+).*/\1/p;q;}' \
    "${PROJECT}/requirements.txt"
}

# LLAVA_TORCH_INDEX as pip's --index-url: a URL as given, a directory as file://; fails if neither.
user_index() {
  local value=${LLAVA_TORCH_INDEX}
  if [[ ${value} =~ ^(https?|file)://[^[:space:]]+$ ]]; then
    printf '%s\n' "${value%/}"
  elif [[ -d ${value} ]]; then
    printf 'file://%s\n' "$(cd "${value}" && pwd)"
  else
    return 1
  fi
}

# Sets TORCH_INDEX (the pip index torch comes from; empty: PyPI, with the other packages) and
# TORCH_WHY (why, for the log). `previous` is the index the venv was installed from. Only a
# node that needs a CUDA 12 build (or LLAVA_TORCH_INDEX) changes it: the cu126 build runs on
# every GPU of the cluster (none is newer than Hopper), so setup on a login node or a Titan RTX
# node keeps it for the others; on a login node (no nvidia-smi) a new venv gets PyPI's torch, and
# the check's warning asks for setup on a GPU node. Returns 1 when nothing may be installed (the
# error is printed).
choose_torch_index() {
  local previous=$1 name cc
  local -a reasons=()
  TORCH_INDEX=''
  TORCH_WHY=''
  if [[ -n ${LLAVA_TORCH_INDEX:-} ]]; then
    if ! TORCH_INDEX=$(user_index); then
      error "LLAVA_TORCH_INDEX=${LLAVA_TORCH_INDEX} is neither a URL (https://..., file://...) nor a directory: set it to a pip index such as ${CUDA12_INDEX}, or unset it"
      return 1
    fi
    TORCH_WHY="LLAVA_TORCH_INDEX is set"
    return 0
  fi
  if ((${#GPUS[@]} == 0)); then
    TORCH_INDEX=${previous}
    TORCH_WHY="no nvidia-smi here: keeping the build chosen before on a GPU node"
    return 0
  fi
  version_ge "${DRIVER}" "${CUDA12_DRIVER}" || return 1  # check_driver said so
  version_ge "${DRIVER}" "${CUDA13_DRIVER}" || reasons+=("driver ${DRIVER%%.*} (CUDA 13 needs ${CUDA13_DRIVER})")
  while IFS='|' read -r name cc; do  # each kind of GPU once
    if [[ ${cc} == '?' ]]; then
      reasons+=("${name}: compute capability unknown")
    elif ! version_ge "${cc}" "${CUDA13_MIN_CC}"; then
      reasons+=("${name} is compute capability ${cc}")
    fi
  done < <(printf '%s\n' "${GPUS[@]}" | cut -d '|' -f 1,3 | sort -u)
  if ((${#reasons[@]})); then
    TORCH_INDEX=${CUDA12_INDEX}
    TORCH_WHY=$(printf '%s, ' "${reasons[@]}")
    TORCH_WHY=${TORCH_WHY%, }
  elif [[ -n ${previous} ]]; then
    TORCH_INDEX=${previous}
    TORCH_WHY="kept: it runs on this node too (LLAVA_TORCH_INDEX=https://pypi.org/simple switches to PyPI's build)"
  fi
  return 0
}

# What the venv stamp records: requirements.txt, plus the torch index when it is not PyPI.
stamp_text() {
  cat "${PROJECT}/requirements.txt"
  [[ -z ${TORCH_INDEX} ]] || printf '\n%s%s\n' "${STAMP_INDEX}" "${TORCH_INDEX}"
}

# Installs torch from TORCH_INDEX into PY: torch==X+cu126 for an index named like PyTorch's (so a
# torch==X from PyPI already there is replaced: pip would call it satisfied), else a reinstall.
install_torch() {
  local version label spec cmd
  local -a extra=()
  version=$(torch_version)
  label=${TORCH_INDEX%/}
  label=${label##*/}
  if [[ -n ${version} && ${version} != *+* && ${label} =~ ^(cu[0-9]+|rocm[0-9.]+|cpu|xpu)$ ]]; then
    spec="torch==${version}+${label}"
  else
    spec="torch${version:+==${version}}"
    extra=(--force-reinstall)
  fi
  log "installing ${spec} from ${TORCH_INDEX} into ${PY%/bin/python}"
  "${PY}" -m pip install --disable-pip-version-check -q "${extra[@]}" "${spec}" --index-url "${TORCH_INDEX}" && return 0
  cmd=$(printf '%q ' "${PY}" -m pip install "${extra[@]}" "${spec}" --index-url "${TORCH_INDEX}")
  error "installing torch from ${TORCH_INDEX} failed (pip's message above; nothing else was changed): run by hand ${cmd% }, then rerun setup; if this node cannot reach the index, run setup where it can (login node) with LLAVA_TORCH_INDEX=${TORCH_INDEX}"
  return 1
}

# Sets PY: LLAVA_PYTHON, or the project's venv (created or updated from requirements.txt and
# the torch build this node needs). INSTALL_FAILED=1 when installing failed.
install_venv() {
  local venv=${PROJECT}/venv stamp previous=''
  INSTALL_FAILED=0
  if [[ -n ${LLAVA_PYTHON:-} ]]; then
    PY=${LLAVA_PYTHON}
    ok "using LLAVA_PYTHON=${PY} (no venv created; export the same LLAVA_PYTHON before sbatch)"
    [[ -z ${LLAVA_TORCH_INDEX:-} ]] || warn "LLAVA_TORCH_INDEX is ignored with LLAVA_PYTHON: setup installs nothing into it"
    return 0
  fi
  PY=${venv}/bin/python
  stamp=${venv}/llava-requirements.txt   # the requirements.txt (and torch index) last installed
  [[ -f ${stamp} ]] && previous=$(sed -n "s|^${STAMP_INDEX}||p" "${stamp}" | tail -n 1)
  if ! choose_torch_index "${previous}"; then
    INSTALL_FAILED=1
    return 0
  fi
  if [[ ! -x ${PY} ]]; then
    command -v "${PYTHON:-python3}" >/dev/null 2>&1 || { error "${PYTHON:-python3} not found: install Python 3.10+ (or module load python)"; INSTALL_FAILED=1; return 0; }
    log "creating ${venv} (pip downloads ~3 GB of packages the first time: torch, transformers, ...)"
    "${PYTHON:-python3}" -m venv "${venv}" || { error "python3 -m venv failed (Debian/Ubuntu: apt install python3-venv)"; INSTALL_FAILED=1; return 0; }
  elif [[ -f ${stamp} ]] && cmp -s "${stamp}" <(stamp_text); then
    ok "venv ${venv} is up to date with requirements.txt${TORCH_INDEX:+ (torch from ${TORCH_INDEX})}"
    return 0
  fi
  log "installing requirements.txt into ${venv}"
  if [[ -n ${TORCH_INDEX} ]]; then
    ok "torch $(torch_version) from ${TORCH_INDEX}: ${TORCH_WHY}"
    install_torch || { INSTALL_FAILED=1; return 0; }
  fi
  # The cuDNN that torch pins stays: nothing installed after torch may upgrade it (cuDNN 9.11 and
  # later dropped compute capability < 7.5: GTX 1080 Ti, reportedly Titan V). The doctor warns
  # when a newer one is found next to such a card anyway.
  local constraints=${venv}/llava-constraints.txt cudnn
  cudnn=$("${PY}" -c 'import importlib.metadata as m; print(m.version("nvidia-cudnn-cu12"))' 2>/dev/null) || cudnn=''
  printf '%s\n' "${cudnn:+nvidia-cudnn-cu12==${cudnn}}" >"${constraints}"
  [[ -z ${cudnn} ]] || ok "keeping nvidia-cudnn-cu12 ${cudnn}, the cuDNN torch pins (${constraints})"
  # The SoccerNet evaluator (evaluate_soccernet.py) without its heavy declared dependencies:
  # its scoring code needs only numpy and tqdm (README: Evaluating against SoccerNet labels).
  if "${PY}" -m pip install --disable-pip-version-check -q -r "${PROJECT}/requirements.txt" -c "${constraints}" &&
    "${PY}" -m pip install --disable-pip-version-check -q --no-deps SoccerNet==0.2.0; then
    stamp_text >"${stamp}"
    ok "venv ${venv} installed"
  else
    error "pip install -r requirements.txt failed (see above); rerun when fixed"
    INSTALL_FAILED=1
  fi
}

# How to get a torch that suits this node, for the check's error line.
torch_fix() {
  local version
  version=$(torch_version)
  if ! version_ge "${DRIVER}" "${CUDA12_DRIVER}"; then
    printf 'ask the admins for NVIDIA driver >= %s (CUDA 12) or >= %s (CUDA 13), or set LLAVA_TORCH_INDEX to a pip index with a torch build for driver %s and rerun setup' \
      "${CUDA12_DRIVER}" "${CUDA13_DRIVER}" "${DRIVER}"
  else
    printf 'install the CUDA 12.6 build (compute capability 5.0-9.0, driver >= %s): %s' "${CUDA12_DRIVER}" \
      "$(printf '%q ' "${PY}" -m pip install "torch${version:+==${version}+cu126}" --index-url "${CUDA12_INDEX}")"
    if [[ -z ${LLAVA_PYTHON:-} && -n ${LLAVA_TORCH_INDEX:-} ]]; then
      printf '(or unset LLAVA_TORCH_INDEX and rerun setup on this node)'
    fi
  fi
}

# python -m llava_soccer.doctor checks the interpreter, packages, GPUs, OpenCV and the model; it
# prints "ok|...", "warn|..." or "error|..." lines, which become this script's messages. The GPU
# part (nvidia-smi's GPUs; skipped on a login node) asks llava_soccer.gpus whether this torch has
# kernels for each GPU, and checks its CUDA version against the driver.
check_python() {
  local out line status=0 seen=0 failed=0 quiet=0
  local -a args=(--cuda-drivers "11=450.80.02 12=${CUDA12_DRIVER} 13=${CUDA13_DRIVER}")
  if ((INSTALL_FAILED)); then
    log "         (the checks of python and its packages run once the install works)"
    return 0
  fi
  if ! command -v "${PY}" >/dev/null 2>&1; then
    error "python ${PY} not found"
    return 0
  fi
  if ((TORCH_CHECK)); then
    args+=(--fix "$(torch_fix)")
  else
    args+=(--skip-torch-check)  # no GPUs, or a driver too old for any torch: the error to fix first
  fi
  ((${#GPUS[@]} == 0)) || args+=("${GPUS[@]/#/--gpu=}")
  out=$(PYTHONPATH="${PROJECT}${PYTHONPATH:+:${PYTHONPATH}}" "${PY}" -m llava_soccer.doctor "${args[@]}" -- \
    "${LLAVA_MODEL:-${DEFAULT_MODEL}}" 2>&1) || status=$?
  # Its other output (a traceback, a package's own chatter) is shown only when it did not finish:
  # an exit status other than 0 (no error) or 1 (errors, each on its line).
  grep -q '^error|' <<<"${out}" && failed=1
  ((status == 0 || (status == 1 && failed))) && quiet=1
  while IFS= read -r line; do
    case ${line} in
      ok\|*) ok "${line#ok|}"; seen=1 ;;
      warn\|*) warn "${line#warn|}"; seen=1 ;;
      error\|*) error "${line#error|}"; seen=1 ;;
      *) ((quiet)) || [[ -z ${line} ]] || log "         ${line}" ;;
    esac
  done <<<"${out}"
  if ((!seen || (status != 0 && !failed))); then
    error "${PY} could not run the checks (see above)"
  fi
}

check_ffmpeg() {
  if command -v ffmpeg >/dev/null 2>&1; then
    ok "ffmpeg $(ffmpeg -version 2>/dev/null | awk 'NR == 1 {print $3}')"
  else
    warn "ffmpeg not found: only needed to make the demo/test videos (apt install ffmpeg)"
  fi
}

# Sets VIDEOS: the number of videos under raw_data/ (the closing hint's range).
check_project() {
  local n
  n=$(find -L "${PROJECT}/raw_data" -type f \( -iname '*.mkv' -o -iname '*.mp4' \) 2>/dev/null | wc -l)
  VIDEOS=${n}
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
  read_gpus
  check_driver
  install_venv
  check_python
  check_ffmpeg
  check_project
  if ((ERRORS)); then
    log "setup incomplete: ${ERRORS} error(s), ${WARNINGS} warning(s); fix the ERROR lines and rerun"
    exit 1
  fi
  local export=''
  # a project elsewhere than the default must reach the job too (submit_llava.sh reads SOCCER_PROJECT), and
  # so must a python other than the project's venv (submit_llava.sh would take python3, without torch)
  [[ ${PROJECT} == "$(cd ~ && pwd)/soccer_project" ]] || export=" SOCCER_PROJECT=$(printf '%q' "${PROJECT}")"
  [[ -z ${LLAVA_PYTHON:-} ]] || export+=" LLAVA_PYTHON=$(printf '%q' "${LLAVA_PYTHON}")"
  [[ -z ${export} ]] || export="export${export} && "
  if ((VIDEOS == 0)); then
    log "setup done (${WARNINGS} warning(s)). Next: put the match videos (.mkv/.mp4, sub-folders are fine) in" \
      "${PROJECT}/raw_data and run setup again: it then prints the command that processes them"
    return 0
  fi
  # 0..N-1: the indices videos.txt gives N videos (submit_llava.sh says so in one line if it lists fewer)
  log "setup done (${WARNINGS} warning(s)). Next: process the ${VIDEOS} video(s) in ${PROJECT}/raw_data:"
  log "  ${export}cd $(printf '%q' "${PROJECT}") && sbatch submit_llava.sh 0 $((VIDEOS - 1))" \
    "   # or without Slurm: bash submit_llava.sh 0 $((VIDEOS - 1))"
}

main "$@"
