"""The user-facing scripts started by the system python (no numpy, no matplotlib): they run themselves again under
the project's venv and answer exactly as that venv's python does, or say in one line which command to use."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from llava_soccer import settings
from test_compare import LLAVA, QWEN
from test_evaluate import GAME, ann, make_case, pred

SYSTEM = "/usr/bin/python3"
VENV = Path(sys.prefix)  # the venv running the tests: the project's venv links to it, as setup_llava.sh's would be


def lacks_matplotlib(python) -> bool:
    return Path(python).is_file() and subprocess.run([python, "-c", "import matplotlib"],
                                                     capture_output=True).returncode != 0


pytestmark = pytest.mark.skipif(not lacks_matplotlib(SYSTEM) or sys.prefix == sys.base_prefix,
                                reason=f"needs {SYSTEM} without matplotlib, and the tests run in a venv")


def set_up(root: Path, venv=True) -> Path:
    """A project as setup_llava.sh leaves it: the scripts and llava_soccer/ copied in, venv/ beside them."""
    project = root / "soccer_project"
    (project / "raw_data").mkdir(parents=True)
    for name in ("compare_counts.py", "evaluate_soccernet.py", "status_llava.py"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "llava_soccer", project / "llava_soccer", ignore=shutil.ignore_patterns("__pycache__"))
    if venv:
        (project / "venv").symlink_to(VENV)
    return project


def run(python, script, *args, cwd, **env):
    """(exit code, stdout, stderr) of `python script args` run in cwd, with no SOCCER_PROJECT and a HOME without
    ~/soccer_project."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd.parent / "home"), **env}
    done = subprocess.run([python, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("script,args", [
    ("compare_counts.py", ["--plot", "counts.png", "--csv", "counts.csv"]),
    ("status_llava.py", []),
])
def test_the_system_python_answers_as_the_venv_does_in_a_set_up_project(tmp_path, script, args):
    project = set_up(tmp_path)
    (project / "videos.txt").write_text("a.mkv\nb.mkv\n")
    for video in (0, 1):
        settings.final_path(project, video, "qwen7b").write_text(json.dumps(QWEN))
        settings.final_path(project, video, "llava").write_text(json.dumps(LLAVA))
    by_venv = run(project / "venv/bin/python", script, *args, cwd=project)
    (project / "counts.png").unlink(missing_ok=True)
    by_system = run(SYSTEM, script, *args, cwd=project)
    by_system, by_venv = (tuple(re.sub(r" at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", " at TIME ", str(x)) for x in r)
                          for r in (by_system, by_venv))  # status's header says when: the two runs may cross a second
    assert by_system == by_venv and by_venv[0] == "0", by_system
    if script == "compare_counts.py":  # the plot is drawn (matplotlib), not a traceback after the table
        assert (project / "counts.png").stat().st_size > 0 and "wrote counts.png" in by_system[1]


@pytest.mark.skipif(not (ROOT / ".venv/bin/python").exists(), reason="no .venv in the repository")
def test_evaluate_from_the_repository_with_the_system_python(odd_root):
    """A clone: the project has no venv, the repository's .venv has SoccerNet (not the pip install line)."""
    project, sn = make_case(odd_root, "any_python", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal")]}})
    args = ("--metrics", "at1", "--soccernet", str(sn), "--plot")
    by_venv = run(sys.executable, ROOT / "evaluate_soccernet.py", *args, cwd=project)
    by_system = run(SYSTEM, ROOT / "evaluate_soccernet.py", *args, cwd=project)
    assert by_system == by_venv and by_venv[0] == 0, by_system
    assert "@1s 0.0588" in by_system[1] and "pip install" not in by_system[1] + by_system[2]


def test_without_a_venv_one_line_names_the_command(tmp_path):
    project = set_up(tmp_path, venv=False)
    rc, out, err = run(SYSTEM, "compare_counts.py", cwd=project)
    assert (rc, out) == (2, "") and len(err.splitlines()) == 1, err
    assert err.startswith("compare_counts.py needs ") and "matplotlib" in err
    q = shlex.quote  # the command runs as printed from any directory (issue 33 item 4)
    assert err.endswith(f"which {SYSTEM} lacks: there is no {project}/venv: run SOCCER_PROJECT={q(str(project))} bash "
                        f"{q(str(project / 'setup_llava.sh'))} (it makes it), then "
                        f"{q(str(project / 'venv/bin/python'))} {q(str(project / 'compare_counts.py'))}\n"), err
    # LLAVA_PYTHON names the python to use: one that lacks them too is named, and not run again and again
    rc, out, err = run(SYSTEM, "compare_counts.py", cwd=project, LLAVA_PYTHON=SYSTEM)
    assert (rc, out) == (2, "") and err.endswith(f"which {SYSTEM} lacks: install requirements.txt into it, or run "
                                                 f"bash setup_llava.sh again (it does so for its venv)\n"), err
