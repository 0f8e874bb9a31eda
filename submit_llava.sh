#!/usr/bin/env bash
#
# submit_llava.sh - run LLaVA-v1.6-Mistral-7B over soccer videos START..END, one worker per GPU.
#
#   sbatch submit_llava.sh 0 39             # videos 0..39, one after the other, in one job
#   sbatch --array=0-39 --output=llava_%A_%a.log submit_llava.sh   # one task per video (many nodes at once),
#                                                                   # its log llava_<array>_<video>.log
#   bash submit_llava.sh 0 1                # no Slurm: this machine's GPUs, or one CPU worker
#   bash submit_llava.sh --check 0 39       # before sbatch: checks every setting, shows the videos, workers,
#                                           # GPUs and model it would use; runs and writes nothing
#
# The model (LLAVA_MODEL) names its files by its family's tag, once at the start: llava for LLaVA (the
# names below), qwen2.5vl for Qwen2.5-VL (final_predictions_qwen2.5vl_video_I.json, ...), so two models'
# runs sit side by side in one project. For each video it first takes the video's lock of that model,
# .lock_llava_video_I.json in the project: a video that another job (or run) of the same model is
# processing is skipped, so submitting twice or overlapping ranges never runs one video twice
# (llava_soccer/claims.py says when a lock is stale and taken over); a job of another model runs
# beside it. Then it skips the video if final_predictions_llava_video_I.json is complete, starts one
# llava_split_worker.py per GPU (each worker sees exactly one GPU and takes one time slice),
# waits for all of them, merges their partial files with merge_results_llava.py, removes the
# lock and moves on. A video whose worker or merge fails is reported as failed (its partial
# files are kept: a rerun resumes it and retries failed windows) and the next video starts. A
# video with windows whose frames cannot be decoded (a truncated file) gets a final marked
# incomplete: reruns skip it until its file changes. The last lines of the log list the done /
# skipped / incomplete / failed videos.
#
# Preemption and time limits: on SIGUSR1 (sent by --signal below 120 s before the time limit)
# the workers finish their current batch, save, and the job requeues itself; the requeued
# job resumes the unfinished video from its partial files. On SIGTERM (scancel, preemption)
# the workers save and stop; the same sbatch command later resumes.
#
# WHAT USERS EDIT: the #SBATCH lines below (partition, time, GPUs, CPUs, memory); options
# given to sbatch override them (sbatch -p gpu --time=2:00:00 submit_llava.sh 0 9).
# Everything else is set with environment variables, exported before sbatch:
#   SOCCER_PROJECT       project directory: raw_data/, videos.txt, results (unset: the submit directory
#                        if it holds raw_data/ or videos.txt, else ~/soccer_project)
#   LLAVA_MODEL          hub id or local checkpoint dir (llava-hf/llava-v1.6-mistral-7b-hf)
#                        or Qwen/Qwen2.5-VL-7B-Instruct (python -m llava_soccer.families tag MODEL: its files' tag)
#   LLAVA_QUANT          nf4 | bf16 | fp16 | fp32 | fp8 (nf4; fp8 only on compute capability 8.9+)
#   LLAVA_NUM_WORKERS    workers (slices) per video, 1..64 (one per GPU of the job; 1 without GPUs)
#   LLAVA_BATCH_SIZE, LLAVA_MAX_NEW_TOKENS   and the other LLAVA_* worker settings (README, docs/gpus.md), read by the worker
#   LLAVA_HOME           where llava_split_worker.py and merge_results_llava.py are
#                        (default: this script's directory, the submit directory, or SOCCER_PROJECT)
#   LLAVA_PYTHON         python to run them ($SOCCER_PROJECT/venv/bin/python if present, else python3)
#   LLAVA_LOCK_HEARTBEAT_S  seconds between touches of the lock of the running video (30)
#   LLAVA_LOCK_STALE_S   a lock untouched this long is another job's to take: its node died (600)
#   HF_TOKEN             Hugging Face token, if the model is not cached yet
#
# START, END, the array index and the numbers above are plain decimal digits (08 is 8, never octal),
# at most 9 of them: each is checked once, before anything starts (one ERROR line naming it, exit 2),
# and the workers are given the number the script uses. The worker's LLAVA_* settings are checked
# once too, by the worker's own rules (python -m llava_soccer.preflight env), before the first video,
# finished ones included; the model's source once, before the first video that needs it: a bad one
# stops the job there (exit 2, the rest not started). sbatch queues the job before any of this runs:
# run `bash submit_llava.sh --check START END` first to see the errors at once. START..END past the end of videos.txt:
# the videos that exist are processed and one line says which do not; a range none of whose
# videos exists is refused (exit 2); an array task past the end says so and exits 0.
#
# Exit status: 0 every video done or skipped; 1 some video failed or is incomplete; 2 bad usage or setup;
# 75 interrupted (rerun the same command to resume).
#
#SBATCH --job-name=llava
#SBATCH --output=llava_%j.log        # in the submit directory: tail -f llava_*.log
#SBATCH --open-mode=append           # a requeued job appends to the same log
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:4                 # EDIT: GPUs per job = workers per video; a type: gpu:TitanRTX:4
#SBATCH --cpus-per-task=16           # EDIT: CPU cores (frame decoding; ~4 per GPU)
#SBATCH --mem=64G                    # EDIT: host memory (~12 GB per worker with nf4)
#SBATCH --time=06:00:00              # EDIT: wall-clock limit (per 50-min video on 4 GPUs: ~7 min H100, ~50 min Titan RTX; docs/performance.md)
##SBATCH --partition=gpu             # EDIT: delete one '#' and name your GPU partition
#SBATCH --signal=B:USR1@120          # 120 s before the limit: save and requeue
#SBATCH --requeue                    # allow the job to be requeued (the signal, preemption)

set -euo pipefail

readonly EX_USAGE=2
readonly EX_INTERRUPTED=75   # EX_TEMPFAIL, as the worker: rerun to resume
readonly EX_INCOMPLETE=3     # worker and merge: finished, but windows had no decodable frames
readonly EX_LOST_LOCK=4      # worker and merge: another run took the video's lock over (llava_soccer/claims.py)

log() { printf '[%(%Y-%m-%d %H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit "${EX_USAGE}"; }

# --- numbers ------------------------------------------------------------------------------

readonly MAX_INDEX=999999999   # START, END, SLURM_ARRAY_TASK_ID (Slurm's array indices stay below 4000001)
readonly MAX_WORKERS=64        # LLAVA_NUM_WORKERS: each worker loads the model

# decimal VAR WHAT VALUE MIN MAX FIX: sets VAR to VALUE as a decimal number, or exits 2 with one
# line naming WHAT (the argument or variable) and FIX. Every number this script takes from its
# arguments, the environment or python goes through here once, before anything starts, and only
# the result reaches $(( )) or a worker: bash's arithmetic reads 010 as octal 8 (python, told
# --num-workers 010, reads 10), calls 08 an error and wraps numbers past 2^63. Accepted: decimal
# digits only, leading zeros dropped (08 is 8, as python reads it), at most 9 significant digits
# (far below 2^63), MIN..MAX. The locals are _-named so that printf -v reaches the caller's VAR.
decimal() {
  local _var=$1 _what=$2 _value=$3 _min=$4 _max=$5 _fix=$6 _shown=$3
  # [0123456789], not [0-9]: a locale's range may hold other digits, which 10# refuses
  if [[ ${_value} =~ ^0*([0123456789]{1,9})$ ]] &&
    ((10#${BASH_REMATCH[1]} >= _min && 10#${BASH_REMATCH[1]} <= _max)); then
    printf -v "${_var}" '%d' "$((10#${BASH_REMATCH[1]}))"
    return 0
  fi
  ((${#_value} <= 40)) || _shown="${_value:0:40}..."
  _shown=${_shown//[[:cntrl:]]/?}   # a line break in the value must not break the line
  die "${_what} must be a whole number from ${_min} to ${_max} in decimal digits, not '${_shown}': ${_fix}"
}

# span A B: "A" or "A..B", for the log.
span() {
  if (($1 == $2)); then printf '%s' "$1"; else printf '%s..%s' "$1" "$2"; fi
}

# --- Slurm specifics: everything this script asks of Slurm is in this section ---------------

in_slurm() { [[ -n ${SLURM_JOB_ID:-} ]]; }

# What is left of a failed video: its partials (a rerun resumes) or nothing.
partials_note() {
  if compgen -G "${PROJECT}/partial_results_${TAG}_vid$1_gpu*.json" >/dev/null; then
    echo "partial results kept"
  else
    echo "no partial results were written"
  fi
}

# "job 123 on node7" or "local run on host"
where() {
  if in_slurm; then
    printf 'job %s%s on %s (restart %s)' "${SLURM_JOB_ID}" \
      "${SLURM_ARRAY_TASK_ID:+ (array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})}" \
      "${SLURMD_NODENAME:-$(hostname)}" "${SLURM_RESTART_COUNT:-0}"
  else
    printf 'local run on %s (no Slurm)' "$(hostname)"
  fi
}

# The GPUs this run may use, one id per line: Slurm's CUDA_VISIBLE_DEVICES (set from --gres),
# a CUDA_VISIBLE_DEVICES the user set, else every GPU nvidia-smi lists; none means CPU.
gpu_ids() {
  local id
  local -a ids
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    IFS=',' read -r -a ids <<<"${CUDA_VISIBLE_DEVICES}"
    for id in "${ids[@]}"; do
      [[ -n ${id} && ${id} != NoDevFiles && ${id} != -1 ]] && printf '%s\n' "${id}"
    done
  elif ! in_slurm && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true
  fi
  return 0
}

# CPU cores this run may use: the job's cores under Slurm, else the machine's.
cpu_count() {
  local cpus
  cpus=$(nproc 2>/dev/null || echo 1)
  if [[ -n ${CPUS_PER_TASK} ]] && ((CPUS_PER_TASK < cpus)); then
    cpus=${CPUS_PER_TASK}
  fi
  printf '%s\n' "${cpus}"
}

# Put the job back in the queue; the next run skips finished videos and resumes the rest.
requeue_job() {
  in_slurm || return 1
  command -v scontrol >/dev/null 2>&1 || return 1
  scontrol requeue "${SLURM_JOB_ID}"
}

# --- configuration ------------------------------------------------------------------------

# The directory holding llava_split_worker.py. Under sbatch, $0 is slurmd's copy of this
# script, so its directory is only a candidate when run with bash.
find_home() {
  local dir
  local -a candidates=()
  if [[ -n ${LLAVA_HOME:-} ]]; then
    candidates=("${LLAVA_HOME}")
  else
    candidates+=("$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)")
    [[ -n ${SLURM_SUBMIT_DIR:-} ]] && candidates+=("${SLURM_SUBMIT_DIR}")
    candidates+=("${PROJECT}")
  fi
  for dir in "${candidates[@]}"; do
    if [[ -f ${dir}/llava_split_worker.py && -f ${dir}/merge_results_llava.py ]]; then
      printf '%s\n' "${dir}"
      return 0
    fi
  done
  die "llava_split_worker.py and merge_results_llava.py not found in: ${candidates[*]}." \
    "Run 'bash setup_llava.sh' (copies them to SOCCER_PROJECT) or set LLAVA_HOME"
}

find_python() {
  if [[ -n ${LLAVA_PYTHON:-} ]]; then
    printf '%s\n' "${LLAVA_PYTHON}"
  elif [[ -x ${PROJECT}/venv/bin/python ]]; then
    printf '%s\n' "${PROJECT}/venv/bin/python"
  else
    printf '%s\n' python3
  fi
}

usage() {
  cat >&2 <<EOF
usage: sbatch submit_llava.sh START [END]     videos START..END (indices in videos.txt)
       sbatch --array=0-39 submit_llava.sh    one video per array task
       bash submit_llava.sh START [END]       without Slurm
       bash submit_llava.sh --check START [END]   check the settings, show what would run; runs nothing
EOF
  exit "${EX_USAGE}"
}

# The package's modules (python -m llava_soccer.X) from LLAVA_HOME.
run_python() {
  PYTHONPATH="${LLAVA_HOME}${PYTHONPATH:+:${PYTHONPATH}}" "${PYTHON}" "$@"
}

# --- one job per video: the lock -----------------------------------------------------------

CLAIM_VIDEO="" CLAIM_TOKEN="" HEARTBEAT_PID=""

# python -m llava_soccer.claims: standard library only, so a take or release is quick. The lock is the
# model's (TAG): a job of another model on the same video holds its own.
claims() {
  run_python -m llava_soccer.claims "$@" --model-tag "${TAG}"
}

# In the background: touch video I's lock every HEARTBEAT_S seconds (its mtime is the heartbeat that
# keeps other jobs out) while this script lives; a killed script's lock must go stale, not live on.
# `claims beat` touches it only while it holds our token: a lock taken over while this job was
# suspended (SIGSTOP) is the other run's, and its heartbeat is not ours to give. Then it stops; the
# workers and the merge find the lock lost at their next write and stop (exit 4).
heartbeat() {
  local video=$1 sleeper="" status
  trap 'kill "${sleeper}" 2>/dev/null; exit 0' TERM INT HUP
  while true; do
    sleep "${HEARTBEAT_S}" &
    sleeper=$!
    wait "${sleeper}" || true
    kill -0 "$$" 2>/dev/null || exit 0
    status=0
    claims beat "${PROJECT}" "${video}" "${CLAIM_TOKEN}" >/dev/null 2>&1 || status=$?
    ((status != 3)) || exit 0   # lost (exit 2, e.g. a full disk: try again at the next beat)
  done
}

# claim_video I: 0 when this run now holds video I's lock; 1 after adding I to SKIPPED (another
# job holds it) or to FAILED (no lock could be made).
claim_video() {
  local video=$1 out status=0
  out=$(claims take "${PROJECT}" "${video}" "$$") || status=$?
  if ((status == 3)); then
    log "${out}, skipped"
    SKIPPED+=("${video}")
    return 1
  elif ((status != 0)); then
    log "video ${video}: FAILED, its lock could not be taken (see the line above)"
    FAILED+=("${video}")
    return 1
  fi
  CLAIM_VIDEO=${video} CLAIM_TOKEN=${out%%$'\n'*}
  [[ ${out} != *$'\n'* ]] || log "${out#*$'\n'}"   # a stale lock taken over: whose, and why
  export LLAVA_CLAIM=${CLAIM_TOKEN}   # the workers and the merge check it is still this run's
  heartbeat "${video}" &
  HEARTBEAT_PID=$!
}

# Stop the heartbeat and remove the lock if it is still ours. Also the EXIT trap.
release_claim() {
  local out=""
  if [[ -n ${HEARTBEAT_PID} ]]; then
    kill "${HEARTBEAT_PID}" 2>/dev/null || true
    wait "${HEARTBEAT_PID}" 2>/dev/null || true
    HEARTBEAT_PID=""
  fi
  [[ -n ${CLAIM_TOKEN} ]] || return 0
  out=$(claims release "${PROJECT}" "${CLAIM_VIDEO}" "${CLAIM_TOKEN}") ||
    log "video ${CLAIM_VIDEO}: its lock was not removed (see the line above)"
  [[ -z ${out} ]] || log "${out}"
  CLAIM_VIDEO="" CLAIM_TOKEN=""
  unset LLAVA_CLAIM
}

# --- running one video --------------------------------------------------------------------

declare -a WORKER_PIDS=()
STOP_SIGNAL=""     # first of USR1/TERM/INT received: the workers finish their current batch and stop
SIGNALS_SEEN=0
WAIT_STATUS=0

on_signal() {
  local sig=$1 forward=$1
  [[ ${sig} == INT ]] && forward=TERM
  SIGNALS_SEEN=$((SIGNALS_SEEN + 1))
  [[ -n ${STOP_SIGNAL} ]] || STOP_SIGNAL=${sig}
  log "received SIG${sig}: workers finish their current batch, save and stop"
  if ((${#WORKER_PIDS[@]})); then
    kill -s "${forward}" "${WORKER_PIDS[@]}" 2>/dev/null || true
  fi
}

# wait_for PID: wait until the process PID has exited (a trap interrupts `wait`: wait
# again); its exit status goes to WAIT_STATUS.
wait_for() {
  local pid=$1 seen status previous=""
  while true; do
    seen=${SIGNALS_SEEN}
    status=0
    wait "${pid}" || status=$?
    # bash < 5.1 forgets a status once waited for: then the previous one was real
    if [[ -n ${previous} ]] && ((status == 127)); then
      status=${previous}
      break
    fi
    ((SIGNALS_SEEN == seen)) && break
    previous=${status}
  done
  WAIT_STATUS=${status}
}

start_worker() {
  local video=$1 slice=$2 device=$3
  local -a cmd=("${PYTHON}" "${LLAVA_HOME}/llava_split_worker.py"
    --gpu-id "${slice}" --num-workers "${NUM_WORKERS}" --video-index "${video}" --project "${PROJECT}")
  # LLAVA_MODEL, LLAVA_QUANT, LLAVA_BATCH_SIZE, ... reach the worker through the environment.
  CUDA_VISIBLE_DEVICES=${device} "${cmd[@]}" &
  WORKER_PIDS+=("$!")
  log "video ${video}: worker ${slice}/${NUM_WORKERS} pid $! on GPU ${device:-none (CPU)} (CUDA_VISIBLE_DEVICES=${device})"
}

# process_video I: runs video I while holding its lock (another job holding it: skipped).
process_video() {
  claim_video "$1" || return 0
  if [[ -n ${STOP_SIGNAL} ]]; then   # the signal came while the lock was being taken
    NOT_STARTED+=("$1")
  else
    run_video "$1"
  fi
  release_claim
}

# lost_lock I WHAT: another run took video I's lock over while this one was stopped or cut off (WHAT said
# so above, with whose it is now): that run owns the video and its files; I is added to SKIPPED.
lost_lock() {
  log "video $1: its lock was taken over by another run (see the $2 line above): that run owns it now, skipped"
  SKIPPED+=("$1")
}

# run_video I: appends I to DONE, SKIPPED, FAILED or INTERRUPTED.
run_video() {
  local video=$1 slice merge_status
  # File names and defaults are llava_soccer/settings.py's; tests/test_names.py checks these copies.
  local final="${PROJECT}/final_predictions_${TAG}_video_${video}.json"
  local -a statuses=() bad=()
  local state line name
  # done (a complete final), incomplete (undecodable windows, file unchanged: a rerun cannot fill them),
  # redo (an incomplete final whose video file changed) or todo; llava_soccer/videos.py final_state()
  line=$(run_python -m llava_soccer.videos state "${PROJECT}" "${video}" --model-tag "${TAG}" 2>&1) || {
    log "video ${video}: FAILED (${line#submit_llava.sh: error: })"
    FAILED+=("${video}")
    return 0
  }
  state=${line%%$'\t'*} line=${line#*$'\t'}
  name=${line##*$'\t'} line=${line%$'\t'*}
  # which game: every SoccerNet half is 1_224p.mkv or 2_224p.mkv
  log "video ${video} [$((video - FIRST + 1))/$((LAST - FIRST + 1)) in this job]: ${name}"
  case ${state} in
    done) log "${line}"; SKIPPED+=("${video}"); return 0 ;;
    incomplete) log "${line}"; INCOMPLETE+=("${video}"); return 0 ;;
    redo) log "${line}" ;;
  esac
  if ! check_model; then
    NOT_STARTED+=("${video}")
    return 0
  fi
  log "video ${video}: starting ${NUM_WORKERS} worker(s)"
  WORKER_PIDS=()
  for ((slice = 0; slice < NUM_WORKERS; slice++)); do
    if ((${#GPUS[@]})); then
      start_worker "${video}" "${slice}" "${GPUS[slice % ${#GPUS[@]}]}"
    else
      start_worker "${video}" "${slice}" ""
    fi
  done
  for ((slice = 0; slice < NUM_WORKERS; slice++)); do
    wait_for "${WORKER_PIDS[slice]}"
    statuses+=("${WAIT_STATUS}")
    # 3: the slice is finished but has undecodable windows; the merge writes an incomplete final
    ((WAIT_STATUS == 0 || WAIT_STATUS == EX_INCOMPLETE)) || bad+=("worker ${slice} exit ${WAIT_STATUS}")
  done
  WORKER_PIDS=()
  if [[ " ${statuses[*]} " == *" ${EX_LOST_LOCK} "* ]]; then
    lost_lock "${video}" worker
    return 0
  fi
  if [[ -n ${STOP_SIGNAL} ]] || [[ " ${statuses[*]} " == *" ${EX_INTERRUPTED} "* ]]; then
    log "video ${video}: interrupted (exit codes ${statuses[*]}); partial results saved, a rerun resumes it"
    INTERRUPTED+=("${video}")
    [[ -n ${STOP_SIGNAL} ]] || STOP_SIGNAL=worker
    return 0
  fi
  if ((${#bad[@]})); then
    log "video ${video}: FAILED (${bad[*]}); $(partials_note "${video}"), see the worker lines above"
    FAILED+=("${video}")
    return 0
  fi
  log "video ${video}: all ${NUM_WORKERS} worker(s) done, merging"
  merge_status=0
  "${PYTHON}" "${LLAVA_HOME}/merge_results_llava.py" --video-index "${video}" --project "${PROJECT}" ||
    merge_status=$?
  if ((merge_status == EX_LOST_LOCK)); then
    lost_lock "${video}" merge
    return 0
  fi
  if ((merge_status == EX_INCOMPLETE)) && [[ -f ${final} ]]; then
    log "video ${video}: INCOMPLETE -> ${final} (windows without decodable frames, see the merge's lines above);" \
      "reruns skip it until its video file changes"
    INCOMPLETE+=("${video}")
    return 0
  fi
  if ((merge_status != 0)) || [[ ! -f ${final} ]]; then
    log "video ${video}: FAILED (merge exit ${merge_status}); $(partials_note "${video}")"
    FAILED+=("${video}")
    return 0
  fi
  log "video ${video}: done -> ${final}"
  DONE+=("${video}")
}

summary() {
  log "summary: ${#DONE[@]} done, ${#SKIPPED[@]} skipped, ${#INCOMPLETE[@]} incomplete, ${#FAILED[@]} failed," \
    "${#INTERRUPTED[@]} interrupted, ${#NOT_STARTED[@]} not started"
  log "  done:        ${DONE[*]:--}"
  log "  skipped:     ${SKIPPED[*]:--}"
  log "  incomplete:  ${INCOMPLETE[*]:--}"
  log "  failed:      ${FAILED[*]:--}"
  log "  interrupted: ${INTERRUPTED[*]:--}"
  log "  not started: ${NOT_STARTED[*]:--}"
  [[ -z ${ABSENT} ]] || log "  not in videos.txt: ${ABSENT} (asked, no such video)"
}

# read_numbers [START [END]]: sets FIRST, LAST, ARRAY_TASK (1 in an array task), WORKERS_ASKED (empty:
# one per GPU), HEARTBEAT_S, STALE_S and CPUS_PER_TASK (empty: not set), each through decimal(). An
# empty environment value is unset, as the worker reads it (llava_soccer/settings.py env()).
# OMP_NUM_THREADS is passed on as it is: OpenMP reads it (it may be a list, 8,2), this script does
# no arithmetic with it.
read_numbers() {
  local index="a video index, its line in videos.txt counted from 0 (sbatch submit_llava.sh 0 9)"
  ARRAY_TASK=""
  if in_slurm && [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    (($# == 0)) || die "in a job array give no START END: each task processes video SLURM_ARRAY_TASK_ID" \
      "(sbatch --array=0-39 submit_llava.sh)"
    decimal FIRST SLURM_ARRAY_TASK_ID "${SLURM_ARRAY_TASK_ID}" 0 "${MAX_INDEX}" \
      "array indices are video indices (sbatch --array=0-39 submit_llava.sh)"
    LAST=${FIRST} ARRAY_TASK=1
  else
    (($# == 1 || $# == 2)) || usage
    decimal FIRST START "$1" 0 "${MAX_INDEX}" "${index}"
    decimal LAST END "${2:-$1}" 0 "${MAX_INDEX}" "${index}"
  fi
  ((FIRST <= LAST)) || die "START (${FIRST}) is after END (${LAST})"
  WORKERS_ASKED=""
  [[ -z ${LLAVA_NUM_WORKERS:-} ]] || decimal WORKERS_ASKED LLAVA_NUM_WORKERS "${LLAVA_NUM_WORKERS}" 1 \
    "${MAX_WORKERS}" "workers per video; unset it for one per GPU of the job"
  decimal HEARTBEAT_S LLAVA_LOCK_HEARTBEAT_S "${LLAVA_LOCK_HEARTBEAT_S:-30}" 1 999999999 \
    "seconds between touches of the running video's lock; unset it for 30"
  decimal STALE_S LLAVA_LOCK_STALE_S "${LLAVA_LOCK_STALE_S:-600}" 1 999999999 \
    "seconds after which an untouched lock is another job's to take; unset it for 600"
  # a lock touched less often than it goes stale would be taken from a live job
  ((HEARTBEAT_S < STALE_S)) ||
    die "LLAVA_LOCK_HEARTBEAT_S (${HEARTBEAT_S}) must be below LLAVA_LOCK_STALE_S (${STALE_S}): unset both for 30 and 600"
  CPUS_PER_TASK=""
  [[ -z ${SLURM_CPUS_PER_TASK:-} ]] || decimal CPUS_PER_TASK SLURM_CPUS_PER_TASK "${SLURM_CPUS_PER_TASK}" 1 \
    999999999 "CPU cores of the job, which Slurm sets from --cpus-per-task; unset it outside a job"
}

# check_range: what of FIRST..LAST videos.txt has, in one line, before anything starts; LAST is cut
# to the last video and ABSENT names the rest. The count is python's (llava_soccer/videos.py, the
# list the workers read): it also writes videos.txt, refuses an edited one and checks the finals
# of the range (a final made from another video would be skipped below as done: the wrong game).
# With --check, python -m llava_soccer.preflight videos counts without writing and first prints each
# video's state: VIDEO_LINES.
check_range() {
  local out count listed asked plural=s absent="do not exist"
  local -a lister=(-m llava_soccer.videos)
  [[ -z ${CHECK} ]] || lister=(-m llava_soccer.preflight videos)
  out=$(run_python "${lister[@]}" "${PROJECT}" "${FIRST}" "${LAST}" 2>&1) ||
    die "${out#submit_llava.sh: error: } (nothing started)"
  VIDEO_LINES=""
  [[ -z ${CHECK} || ${out} != *$'\n'* ]] || VIDEO_LINES=${out%$'\n'*}
  decimal count "the video count printed by python -m llava_soccer.videos" "${out##*$'\n'}" 0 "${MAX_INDEX}" \
    "is ${LLAVA_HOME}/llava_soccer as new as this script? (bash setup_llava.sh copies both)"
  ((count > 0)) ||
    die "no videos: ${PROJECT}/videos.txt lists none; put the match videos (.mkv/.mp4) under" \
      "${PROJECT}/raw_data (nothing started)"
  ((count > 1)) || plural=""
  listed="videos.txt lists ${count} video${plural} ($(span 0 $((count - 1))))"
  ABSENT=""
  ((LAST >= count)) || return 0
  if ((FIRST >= count)); then
    # an array over more indices than videos: the tasks past the end are its part that does not
    # exist, a note as for a range, not a failure (exit 2 would mark each one FAILED in sacct)
    if [[ -n ${ARRAY_TASK} ]]; then
      log "array task ${FIRST}: video ${FIRST} does not exist, ${listed}; nothing to do"
      exit 0
    fi
    asked="videos $(span "${FIRST}" "${LAST}")"
    ((FIRST < LAST)) || asked="video ${FIRST}"
    die "${asked} asked, but ${listed}: put more videos under ${PROJECT}/raw_data (they get the next" \
      "indices) or ask for $(span 0 $((count - 1))) (nothing started)"
  fi
  ABSENT=$(span "${count}" "${LAST}")
  ((count < LAST)) || absent="does not exist"
  log "videos ${FIRST}..${LAST} asked, ${listed}: processing $(span "${FIRST}" $((count - 1))); ${ABSENT} ${absent}"
  LAST=$((count - 1))
}

# check_model: once, before the first video that starts workers (a job of finished videos needs no model):
# 0 when LLAVA_MODEL can be loaded from here; else its line is logged and SETUP_ERROR set, so the videos
# left are not started (each worker would fail alike, video after video).
MODEL_CHECKED=""
check_model() {
  local out
  [[ -z ${MODEL_CHECKED} ]] || return 0
  out=$(run_python -m llava_soccer.preflight model 2>&1) || {
    log "ERROR: ${out}"
    SETUP_ERROR=model
    return 1
  }
  MODEL_CHECKED=1
}

# --check: what a run would do, on stdout; nothing is started, locked or written.
show_check() {
  local out status=0
  printf 'project %s (scripts %s, python %s)\n' "${PROJECT}" "${LLAVA_HOME}" "${PYTHON}"
  printf 'videos %s:\n%s\n' "$(span "${FIRST}" "${LAST}")" "${VIDEO_LINES}"
  [[ -z ${ABSENT} ]] || printf '  %s: not in videos.txt, skipped\n' "${ABSENT}"
  printf '%s worker(s) per video, GPUs: %s%s, %s CPU thread(s) per worker\n' "${NUM_WORKERS}" \
    "${GPUS[*]:-none (CPU)}" "$(in_slurm || echo ' here (a job: those of its --gres, one worker each)')" \
    "${OMP_NUM_THREADS}"
  out=$(run_python -m llava_soccer.preflight model 2>&1) || status=$?
  printf '%s (files and locks tagged %s)\n' "${out}" "${TAG}"
  printf 'plan: per GPU, chosen by the worker at start; on a GPU node: %q %q --print-plan\n' "${PYTHON}" \
    "${LLAVA_HOME}/llava_split_worker.py"
  ((status == 0)) || die "the model cannot be loaded from here (the line above); fix it before sbatch"
  printf 'OK, nothing was run. Submit with: sbatch %q %s (without Slurm: bash %q %s)\n' "${BASH_SOURCE[0]}" \
    "$1" "${BASH_SOURCE[0]}" "$1"
}

# The command that makes PROJECT, runnable as printed: setup_llava.sh beside this script (the repository or
# a project; not sbatch's spool copy), quoted.
setup_command() {
  local setup
  setup=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup_llava.sh
  [[ -f ${setup} ]] || setup=setup_llava.sh
  printf 'SOCCER_PROJECT=%q bash %q' "${PROJECT}" "${setup}"
}

main() {
  local video out
  CHECK=""
  if [[ ${1:-} == --check ]]; then
    CHECK=1
    shift
  fi
  read_numbers "$@"   # every number, before anything else

  PROJECT=${SOCCER_PROJECT:-}
  if [[ -z ${PROJECT} ]]; then
    # the directory sbatch (or bash) ran in, when it is a project (raw_data/ or videos.txt: settings.is_project)
    local here=${SLURM_SUBMIT_DIR:-${PWD}}
    if [[ -d ${here}/raw_data || -f ${here}/videos.txt ]]; then
      PROJECT=${here}
      log "project ${here}: the submit directory (SOCCER_PROJECT is not set and it has raw_data/ or videos.txt)"
    else
      PROJECT=${HOME}/soccer_project
    fi
  fi
  [[ -d ${PROJECT} ]] || die "project directory ${PROJECT} does not exist: set SOCCER_PROJECT, or create it with" \
    "$(setup_command)"
  PROJECT=$(cd "${PROJECT}" && pwd)
  export SOCCER_PROJECT=${PROJECT}
  LLAVA_HOME=$(find_home)
  PYTHON=$(find_python)
  command -v "${PYTHON}" >/dev/null 2>&1 || die "python '${PYTHON}' not found: run 'bash setup_llava.sh' or set LLAVA_PYTHON"
  # the worker's settings (LLAVA_QUANT, LLAVA_BATCH_SIZE, ...) by the worker's rules, once for all videos
  out=$(run_python -m llava_soccer.preflight env 2>&1) || die "${out} (nothing started)"
  # the model's family tag names its files and locks (llava_soccer/settings.py): read once, for all videos
  out=$(run_python -m llava_soccer.families tag 2>&1) || die "${out} (nothing started)"
  TAG=${out##*$'\n'}
  [[ ${TAG} =~ ^[A-Za-z0-9._+-]+$ ]] ||
    die "python -m llava_soccer.families tag printed '${TAG//[[:cntrl:]]/?}', no model tag: is" \
      "${LLAVA_HOME}/llava_soccer as new as this script? (bash setup_llava.sh copies both)"
  mapfile -t GPUS < <(gpu_ids)
  NUM_WORKERS=${WORKERS_ASKED:-${#GPUS[@]}}
  ((NUM_WORKERS > 0)) || NUM_WORKERS=1
  # the workers and python's lock checks read these too: the same numbers as here, not 04 or 0600
  [[ -z ${WORKERS_ASKED} ]] || export LLAVA_NUM_WORKERS=${NUM_WORKERS}
  [[ -z ${LLAVA_LOCK_STALE_S:-} ]] || export LLAVA_LOCK_STALE_S=${STALE_S}
  export PYTHONUNBUFFERED=1   # worker lines reach the log as they happen
  # Share the CPU cores between the workers (torch would give each one thread per core).
  local threads=$(($(cpu_count) / NUM_WORKERS))
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((threads > 0 ? threads : 1))}
  # Workers sharing a GPU each plan for their share of its memory (llava_soccer/gpus.py), capped at
  # it: planned for the whole card, each would size its weights and batches from the same memory.
  if ((${#GPUS[@]} && NUM_WORKERS > ${#GPUS[@]})); then
    export LLAVA_GPU_SHARE=$(((NUM_WORKERS + ${#GPUS[@]} - 1) / ${#GPUS[@]}))
    log "${NUM_WORKERS} workers share ${#GPUS[@]} GPU(s): each plans for 1/${LLAVA_GPU_SHARE} of its GPU's memory;" \
      "LLAVA_NUM_WORKERS=${#GPUS[@]} (one worker per GPU, batching in all its memory) is faster"
  fi

  if [[ -n ${CHECK} ]]; then
    local asked="${FIRST} ${LAST}"
    check_range
    show_check "${asked}"
    exit 0
  fi

  DONE=() SKIPPED=() INCOMPLETE=() FAILED=() INTERRUPTED=() NOT_STARTED=() SETUP_ERROR=""
  trap 'on_signal USR1' USR1
  trap 'on_signal TERM' TERM
  trap 'on_signal INT' INT
  trap release_claim EXIT   # set -e or a kill: the lock of the video running goes with us

  check_range

  log "LLaVA soccer: videos ${FIRST}..${LAST}, $(where)"
  log "project ${PROJECT}; scripts ${LLAVA_HOME}; python ${PYTHON}"
  log "model ${LLAVA_MODEL:-(worker default)} (files and locks tagged ${TAG}), quantization" \
    "${LLAVA_QUANT:-(worker default)}," \
    "${NUM_WORKERS} worker(s) per video, GPUs: ${GPUS[*]:-none (CPU)}, ${OMP_NUM_THREADS} CPU thread(s) per worker"

  for ((video = FIRST; video <= LAST; video++)); do
    if [[ -n ${STOP_SIGNAL} || -n ${SETUP_ERROR} ]]; then
      NOT_STARTED+=("${video}")
      continue
    fi
    process_video "${video}"
  done
  summary
  [[ -z ${SETUP_ERROR} ]] || die "the job stopped before video ${NOT_STARTED[0]}: fix the ${SETUP_ERROR} (the" \
    "ERROR line above) and rerun the same command; finished videos are skipped"

  if [[ -n ${STOP_SIGNAL} ]]; then
    if [[ ${STOP_SIGNAL} == USR1 ]] && in_slurm; then
      log "requeueing ${SLURM_JOB_ID}: the next run skips finished videos and resumes the rest"
      if requeue_job; then
        exit 0
      fi
      log "could not requeue (was the job submitted with --no-requeue?): resubmit the same command to resume"
    else
      log "stopped by ${STOP_SIGNAL}: rerun the same command to resume"
    fi
    exit "${EX_INTERRUPTED}"
  fi
  ((${#FAILED[@]} + ${#INCOMPLETE[@]} == 0)) || exit 1
}

main "$@"
