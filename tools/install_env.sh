#!/usr/bin/env bash
# The one install step of this repository, shared by demo.sh and tests/run.sh.
#
#   bash tools/install_env.sh demo     # ffmpeg; .venv from requirements.txt + the SoccerNet evaluator
#   bash tools/install_env.sh tests    # also Slurm, munge, shellcheck; + tests/requirements.txt
#   bash tools/install_env.sh --verify tests   # run pip even when .venv is up to date
#
# Debian packages that are missing are installed when running as root or with passwordless sudo;
# otherwise one WARNING line names the apt-get command and the install goes on (what needs the
# package then says so itself). The virtual environment is LLAVA_VENV (default: the repository's
# .venv); pip runs only when a requirements file changed since the last install into it (its
# hashes are kept in $LLAVA_VENV/.llava_installed), or always with --verify. pip's configured
# indexes and its cache are used as they are: on the test machines they are local, so this works
# offline. Logs go to stderr; exit status non-zero when the venv cannot be made.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
# The official SoccerNet evaluator (evaluate_soccernet.py), installed with --no-deps: its
# evaluation module needs only numpy and tqdm; its declared dependencies (boto3, pycocoevalcap,
# ...) are not used.
readonly SOCCERNET=SoccerNet==0.2.0

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { printf 'usage: bash tools/install_env.sh [--verify] demo|tests\n' >&2; exit 2; }

# Debian packages in $@ that are not installed, one per line.
missing_debs() {
  local pkg
  for pkg in "$@"; do
    dpkg -s "${pkg}" >/dev/null 2>&1 || printf '%s\n' "${pkg}"
  done
}

install_debs() {
  local -a wanted=("$@") missing sudo_cmd=()
  if ! command -v dpkg >/dev/null 2>&1; then
    log "not a Debian system: make sure these (Debian names) are installed: ${wanted[*]}"
    return 0
  fi
  # Debian's python3 has no ensurepip (so no `python3 -m venv`) without python3-venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || wanted+=(python3-venv)
  mapfile -t missing < <(missing_debs "${wanted[@]}")
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo_cmd=(sudo)
    else
      log "WARNING: missing Debian packages; install them with: sudo apt-get install -y ${missing[*]}"
      return 0
    fi
  fi
  log "installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
}

# pip install into the venv; the grep only hides one noisy warning of the test machines' pip
# configuration (pip's own exit status counts).
pip_install() {
  "${VENV}/bin/python" -m pip install -q --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# One line per requirement source: "<sha256> <name>".
stamp_lines() {
  local f
  for f in "$@"; do
    if [[ ${f} == "${SOCCERNET}" ]]; then
      printf '%s %s\n' "$(printf '%s' "${f}" | sha256sum | cut -d' ' -f1)" "${f}"
    else
      printf '%s %s\n' "$(sha256sum <"${REPO}/${f}" | cut -d' ' -f1)" "${f}"
    fi
  done
}

install_python() {
  local verify=$1; shift
  local -a sources=("$@") reqs=() lines
  local stamp=${VENV}/.llava_installed src
  if [[ ! -x ${VENV}/bin/python ]]; then
    log "creating the virtual environment ${VENV}"
    python3 -m venv "${VENV}" || die "python3 -m venv ${VENV} failed (Debian: apt-get install python3-venv)"
  fi
  mapfile -t lines < <(stamp_lines "${sources[@]}")
  if ((!verify)) && [[ -f ${stamp} ]] && ! grep -qvxFf "${stamp}" <(printf '%s\n' "${lines[@]}"); then
    log "Python requirements already installed in ${VENV} (${sources[*]})"
    return 0
  fi
  for src in "${sources[@]}"; do
    [[ ${src} == "${SOCCERNET}" ]] || reqs+=(-r "${REPO}/${src}")
  done
  log "installing Python requirements into ${VENV} (${sources[*]})"
  pip_install "${reqs[@]}"
  pip_install --no-deps "${SOCCERNET}"
  # keep the other sources' lines (a tests install also covers a later demo), replace ours
  { [[ ! -f ${stamp} ]] || awk 'NR == FNR { ours[$0]; next } !($2 in ours)' <(printf '%s\n' "${sources[@]}") "${stamp}"
    printf '%s\n' "${lines[@]}"; } >"${stamp}.tmp"
  mv "${stamp}.tmp" "${stamp}"
}

main() {
  local verify=0 kind=
  while (($#)); do
    case $1 in
      --verify) verify=1 ;;
      demo | tests) [[ -z ${kind} ]] || usage; kind=$1 ;;
      *) usage ;;
    esac
    shift
  done
  [[ -n ${kind} ]] || usage
  VENV=${LLAVA_VENV:-${REPO}/.venv}
  case ${kind} in
    demo)
      install_debs ffmpeg
      install_python "${verify}" requirements.txt "${SOCCERNET}"
      ;;
    tests)
      install_debs ffmpeg slurmctld slurmd slurm-client munge shellcheck
      install_python "${verify}" requirements.txt tests/requirements.txt "${SOCCERNET}"
      ;;
  esac
}

main "$@"
