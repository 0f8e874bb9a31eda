"""Which python runs a script: each user-facing script calls ensure() first, before it imports anything beyond the
standard library, so `python compare_counts.py` works the same whichever python starts it.

When this python lacks a module the script needs, or is older than MIN_PYTHON, the script runs itself again, with
the same arguments and nothing printed, under the project's python: LLAVA_PYTHON (what submit_llava.sh runs),
else <project>/venv (setup_llava.sh makes it), else venv/ or .venv/ beside the script (a clone: tests/run.sh and
demo.sh make .venv). With no such python, or when that one lacks it too: one line naming the command, exit 2.

Standard library only, no syntax newer than Python 3.6: it runs under whatever old python a cluster calls `python`
(the scripts' own code needs 3.11: it would stop with a traceback there).
"""
import importlib.util
import os
import shlex
import sys

MIN_PYTHON = (3, 11)  # the code's own syntax and library (re's possessive quantifiers, X | None annotations)
PROJECT_DEFAULT = "~/soccer_project"
AGAIN = "LLAVA_SCRIPT_REEXECUTED"  # set for the script run again: it never runs itself a third time


def is_project(directory) -> bool:
    """A directory that holds a project: raw_data/ or videos.txt (submit_llava.sh has a copy of this rule)."""
    return os.path.isdir(os.path.join(directory, "raw_data")) or os.path.isfile(os.path.join(directory, "videos.txt"))


def _project(argv):
    """settings.project_dir's choice, without checks: --project, SOCCER_PROJECT, the current directory when it is
    a project, ~/soccer_project."""
    for k, arg in enumerate(argv):
        if arg == "--project" and k + 1 < len(argv):
            return os.path.expanduser(argv[k + 1])
        if arg.startswith("--project="):
            return os.path.expanduser(arg[len("--project="):])
    if os.environ.get("SOCCER_PROJECT"):
        return os.path.expanduser(os.environ["SOCCER_PROJECT"])
    return os.getcwd() if is_project(os.getcwd()) else os.path.expanduser(PROJECT_DEFAULT)


def _is_this(python) -> bool:
    """Whether python is the interpreter running now: the same venv (a venv's python links to its base python,
    so the paths alone cannot tell), or the same executable outside any venv."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    if os.path.isfile(os.path.join(root, "pyvenv.cfg")):
        return os.path.realpath(root) == os.path.realpath(sys.prefix)
    return os.path.realpath(python) == os.path.realpath(sys.executable or "") and sys.prefix == sys.base_prefix


def project_python(argv, script_dir):
    """(the project's python, None) as the module docstring orders them, the first that exists; or (None, the
    venv setup_llava.sh would make)."""
    venv = os.path.join(_project(argv), "venv")
    given = os.environ.get("LLAVA_PYTHON")
    candidates = [given] if given else []
    candidates += [os.path.join(d, "bin", "python") for d in
                   (venv, os.path.join(script_dir, "venv"), os.path.join(script_dir, ".venv"))]
    for python in candidates:
        if os.path.isfile(python) and os.access(python, os.X_OK):
            return python, None
    return None, venv


def ensure(needs, optional=()) -> None:
    """Return when this python has the modules needs and optional name (importable; nothing is imported) and is
    MIN_PYTHON or newer; else run the script again under project_python(), or exit 2 with one line naming the
    command to use. optional: modules the script itself explains when they are missing (evaluate_soccernet.py's
    SoccerNet): their absence moves to the project's python, but does not stop a python that is the project's."""
    again = os.environ.pop(AGAIN, None)  # popped: what this script starts may choose its own python
    missing = [m for m in list(needs) + list(optional) if importlib.util.find_spec(m) is None]
    old = sys.version_info[:2] < MIN_PYTHON
    if not missing and not old:
        return
    script = os.path.abspath(sys.argv[0])
    python, what = project_python(sys.argv[1:], os.path.dirname(script))
    if python and not again and not _is_this(python):
        os.environ[AGAIN] = "1"
        os.execv(python, [python] + sys.argv)
    lacking = [m for m in missing if m not in optional]
    if not lacking and not old:
        return
    name, here = os.path.basename(script), sys.executable or "this python"
    lacks = ", ".join([f"Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+"] * old + lacking)
    if python:  # the project's python is this one (or was run again): it lacks them itself
        fix = "install requirements.txt into it, or run bash setup_llava.sh again (it does so for its venv)"
    else:
        # quoted full paths: runnable as printed from any directory
        setup = shlex.quote(os.path.join(os.path.dirname(script), "setup_llava.sh"))
        fix = (f"there is no {what}: run SOCCER_PROJECT={shlex.quote(os.path.dirname(what))} bash {setup} (it makes "
               f"it), then {shlex.quote(os.path.join(what, 'bin', 'python'))} {shlex.quote(script)}")
    sys.stderr.write(f"{name} needs {lacks}, which {here} lacks: {fix}\n")
    sys.exit(2)
