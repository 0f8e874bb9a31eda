"""Lint: ruff with pyproject.toml's rules on all the Python, shellcheck on every shell script."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def shell_scripts():
    """The repository's shell scripts: every *.sh, and files without a suffix that start with a
    bash/sh shebang (.ci/run); tracked ones and new ones git does not ignore (no .venv, no demo runs)."""
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"not a git checkout: {r.stderr.strip()}")
    scripts = set()
    for name in r.stdout.split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        if path.suffix == ".sh":
            scripts.add(name)
        elif not path.suffix:
            with open(path, "rb") as f:
                first = f.readline()
            if re.match(rb"#!\S*(/| )(ba)?sh\b", first):  # #!/bin/sh, #!/bin/bash -e, #!/usr/bin/env bash
                scripts.add(name)
    return sorted(scripts)


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True)
    assert "No module named ruff" not in r.stderr, "no ruff: bash tests/run.sh installs it (tests/requirements.txt)"
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_is_clean():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            raise AssertionError("shellcheck is not installed (bash tests/run.sh installs it)")
        pytest.skip("shellcheck not installed (bash tests/run.sh installs it)")
    scripts = shell_scripts()
    assert {"demo.sh", "tests/run.sh", "tools/install_env.sh", ".ci/run"} <= set(scripts)
    r = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
