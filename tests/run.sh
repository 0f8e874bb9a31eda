#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, then runs them.
#   bash tests/run.sh              # everything but the GPU tests (CI runs exactly this)
#   bash tests/run.sh --fast       # the edit loop: leaves out the tests marked slow (under a minute)
#   bash tests/run.sh -k merge     # extra arguments go to pytest
# The install is tools/install_env.sh (Debian packages ffmpeg, Slurm, munge, shellcheck when
# missing, as root or with sudo; .venv from requirements.txt + tests/requirements.txt + the
# SoccerNet evaluator). The full run always lets pip check .venv; --fast skips pip when no
# requirements file changed since the last install. Offline afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

markers="not gpu"
install=(bash tools/install_env.sh --verify tests)
if [[ ${1:-} == --fast ]]; then
  shift
  markers="not slow and not gpu"
  install=(bash tools/install_env.sh tests)
fi
"${install[@]}"

venv=${LLAVA_VENV:-.venv}
log "running tests (-m '${markers}')"
# a -m among the extra arguments comes later, so it wins
exec "${venv}/bin/python" -m pytest tests -q -rs -m "${markers}" "$@"
