#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, then runs them.
#   bash tests/run.sh            # everything
#   bash tests/run.sh -k merge   # extra arguments go to pytest
# Installs Debian packages (ffmpeg, Slurm, munge, shellcheck) when missing and a virtual
# environment in .venv from requirements.txt + tests/requirements.txt. Needs root or sudo
# for apt on a fresh machine; offline afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

apt_packages=(ffmpeg slurmctld slurmd slurm-client munge shellcheck)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "${pkg}" >/dev/null 2>&1 || missing+=("${pkg}")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv=${LLAVA_TEST_VENV:-.venv}
if [[ ! -x "${venv}/bin/python" ]]; then
  log "creating ${venv}"
  python3 -m venv "${venv}"
fi
log "installing Python requirements into ${venv}"
# (the grep only hides this machine's noisy pip-index warnings; pip's own exit status counts)
"${venv}/bin/pip" install -q --disable-pip-version-check -r requirements.txt -r tests/requirements.txt \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# The official SoccerNet evaluator (evaluate_soccernet.py). --no-deps: its evaluation module needs
# only numpy and tqdm; the package's declared dependencies (boto3, pycocoevalcap, ...) are not used.
"${venv}/bin/pip" install -q --disable-pip-version-check --no-deps SoccerNet==0.2.0 \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

log "running tests"
exec "${venv}/bin/python" -m pytest tests -q -rs "$@"
