#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, then runs them.
#   bash tests/run.sh              # everything but the GPU tests (CI runs exactly this)
#   bash tests/run.sh --fast       # the edit loop: leaves out the tests marked slow
#   bash tests/run.sh -k merge     # extra arguments go to pytest
#   bash tests/run.sh -m gpu       # on a GPU machine: the tests in tests/gpu/
#   LLAVA_TEST_CPU=FILE bash tests/run.sh   # each test's CPU seconds appended to FILE (tests/conftest.py)
# In parallel (pytest-xdist, LLAVA_TEST_WORKERS processes, default: the CPU cores: a process more only
# adds its imports and makes the subprocesses fight for the cores); the tests of one xdist_group ("serial":
# the real Slurm cluster, signals, heartbeats, --watch: tests that wait) run one after another in one of
# those processes (--dist loadgroup), never two at once, and first, the longest group first
# (tests/conftest.py): they are the longest chains. The install is tools/install_env.sh (Debian
# packages ffmpeg, Slurm, munge and the linter when missing, as root or with sudo; .venv from
# requirements.txt + tests/requirements.txt + the SoccerNet evaluator). The full run always lets
# pip check .venv; --fast skips pip when no requirements file changed since the last install.
# Offline afterwards.
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
# the cores, not one more: measured in docs/testing.md ("How 8 minutes was reached")
workers=${LLAVA_TEST_WORKERS:-$(nproc)}
[[ ${workers} =~ ^[1-9][0-9]{0,2}$ ]] || { log "LLAVA_TEST_WORKERS=${workers} must be a number from 1 to 999"; exit 2; }
log "running tests (-m '${markers}', ${workers} processes)"
# a -m among the extra arguments comes later, so it wins
exec "${venv}/bin/python" -m pytest tests -q -rs -n "${workers}" --dist loadgroup -m "${markers}" "$@"
