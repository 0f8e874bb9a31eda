"""The pipeline's fixed numbers and names: sampling, windows, time tolerances, classes, file names, paths.

(The GPU plans' numbers are in gpus.py, the worker's settings and flags in config.py.)

The numbers match the earlier Qwen runs (see the seed README) so the models compare fairly.
"""
import argparse
import os
import re
import shlex
import string
import sys
from pathlib import Path

from .cli import InputError
from .venv import PROJECT_DEFAULT, is_project  # defined there: the scripts read them before any other import

FPS = 5.0                  # frames sampled per second of video
WINDOW_S = 3.0             # seconds per window -> 15 frames
STEP_S = 2.0               # a new window every 2 s (1 s overlap)
FRAMES_PER_WINDOW = round(FPS * WINDOW_S)
SAMPLES_PER_STEP = round(FPS * STEP_S)
DEDUP_S = 3.0              # same label within this many seconds = one event
MATCH_S = 3.0              # two events (models, or prediction and label) this close are the same moment
TIME_EPS = 1e-6            # times are sums and parses of floats: 3.0 s apart can be 3.0000000000000284

LOG_TIME = "%Y-%m-%d %H:%M:%S"  # the stamp of every job-log line: submit_llava.sh's log(), worker, merge

DEFAULT_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"
SETUP = Path(__file__).resolve().parent.parent / "setup_llava.sh"  # beside the scripts (repository or project)


def model_in_use(value=None) -> str:
    """--model (value), else LLAVA_MODEL, else DEFAULT_MODEL: the model the worker runs (config.py's --model), for
    the tools that name its files (families.tag_of of it)."""
    return value or os.environ.get("LLAVA_MODEL") or DEFAULT_MODEL

QUANTIZATIONS = ("nf4", "bf16", "fp16", "fp32", "fp8")
VIDEO_SUFFIXES = (".mkv", ".mp4")

# The 17 SoccerNet-v2 action classes, exact strings as in Labels-v2.json.
SOCCERNET_CLASSES = (
    "Penalty", "Kick-off", "Goal", "Substitution", "Offside", "Shots on target",
    "Shots off target", "Clearance", "Ball out of play", "Throw-in", "Foul",
    "Indirect free-kick", "Direct free-kick", "Corner", "Yellow card", "Red card",
    "Yellow->red card",
)


def env(name, default):
    """An environment variable's value, or default when unset or empty."""
    return os.environ.get(name) or default


def count(n: int, noun: str) -> str:
    """'1 window', '2 windows': log lines say what a person would."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


class VideoRanges:
    """What --videos names, kept as ranges: "0-999999999" costs two numbers, not a billion, until a tool bounds
    it by what exists (below(n), among(found)). Iterating yields every index (ascending): bound it first."""

    def __init__(self, ranges):
        self.ranges = sorted(ranges)

    def __contains__(self, index) -> bool:
        return any(a <= index <= b for a, b in self.ranges)

    def __iter__(self):
        return iter(sorted({i for a, b in self.ranges for i in range(a, b + 1)}))

    def below(self, n: int) -> list[int]:
        """The indices named that are < n (videos.txt's length), ascending."""
        return sorted({i for a, b in self.ranges for i in range(a, min(b, n - 1) + 1)})

    def among(self, found) -> list[int]:
        """The indices of found (e.g. the finals there are) that are named, ascending."""
        return sorted(i for i in found if i in self)

    def from_(self, n: int) -> str:
        """The ranges named at or past n, as written ("9-12, 40"): what videos.txt does not list."""
        return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in
                         ((max(a, n), b) for a, b in self.ranges if b >= n))


def consecutive_runs(indices) -> list[list[int]]:
    """[first, last] of each run of consecutive integers in ascending indices: 1,2,3,7 -> [1,3],[7,7]."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def runs_text(indices) -> str:
    """Ascending indices written as --videos takes them: 1,2,3,7 -> "1-3, 7"."""
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in consecutive_runs(indices))


def video_list(text: str):
    """argparse type of --videos, the one way every tool picks videos: "0-9,12" -> VideoRanges([(0, 9),
    (12, 12)]); "all" -> None (every video that has results)."""
    if text.strip() == "all":
        return None
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r}: use indices and ranges like 0-9,12 (or all)")
        if int(m[2] or m[1]) < int(m[1]):
            raise argparse.ArgumentTypeError(f"{text!r}: START ({int(m[1])}) is after END ({int(m[2])}): write the "
                                             f"range {int(m[2])}-{int(m[1])}")
        out.append((int(m[1]), int(m[2] or m[1])))
    return VideoRanges(out)


def check_env(parser, envs: dict) -> None:
    """Flags whose default comes from an environment variable ({dest: NAME}): "(env NAME)" goes
    into their help, and a set variable is checked as the flag's value would be, so a bad value
    is one line naming the variable (parser.error: exit 2) before anything loads."""
    for action in parser._actions:
        name = envs.get(action.dest)
        if not name:
            continue
        action.help = f"{action.help or ''} (env {name})"
        raw = os.environ.get(name)
        if not raw:
            continue
        try:
            value = action.type(raw) if action.type else raw
        except (ValueError, TypeError):
            parser.error(f"{name}={raw!r} is not a valid {action.option_strings[0]} value")
        if action.choices and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            parser.error(f"{name}={raw!r}: choose from {choices} ({action.option_strings[0]})")


# Where things are. These are the only definitions; the shell scripts hold copies of the project
# default and the file names (tests/test_names.py checks that they match). {model} is the model family's TAG
# (families.tag_of: "llava", "qwen2.5vl"), so two models' runs sit side by side in one project, each with its
# own files and locks; the seed's Qwen files are "qwen7b". LLaVA's names are those of every earlier run.
PARTIAL = "partial_results_{model}_vid{video}_gpu{gpu}.json"  # one per worker, deleted by the merge
FINAL = "final_predictions_{model}_video_{video}.json"       # one per video and model
RAW_ANSWERS = "raw_answers_{model}_video_{video}.json.gz"    # every window's answer, beside the final
LOCK = ".lock_{model}_video_{video}.json"                    # who is processing a video now (claims.py)
FAILED_NOTE = ".failed_{model}_video_{video}.json"           # why its workers stopped before saving a window
DEFAULT_TAG = "llava"  # the TAG of DEFAULT_MODEL (families/llava_next.py): the path helpers' default model
_FIELDS = {"video": r"\d+", "gpu": r"\d+", "model": r"[\w.+-]+?"}


def name_pattern(template: str, **fixed) -> re.Pattern:
    """A regex matching the names template makes: the fields given are literal, the others are
    captured by name, e.g. name_pattern(FINAL, model="llava").fullmatch(name)["video"]."""
    regex = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        regex += re.escape(literal)
        if field:
            regex += re.escape(str(fixed[field])) if field in fixed else f"(?P<{field}>{_FIELDS[field]})"
    return re.compile(regex)


def project_dir(value=None, must_exist=True) -> Path:
    """--project (value), else $SOCCER_PROJECT, else the current directory when it is a project (is_project:
    `cd ~/soccer_project && python compare_counts.py` after a setup elsewhere than the default; one line on
    stderr says so), else ~/soccer_project: videos under raw_data/, results beside.

    InputError, one line naming where the directory came from and the fix, when HOME is unset for a path
    starting with ~ (submit_llava.sh's default is $HOME/soccer_project: no other guess), and (must_exist) when
    it does not exist, is not a directory or cannot be read."""
    if not value and not os.environ.get("SOCCER_PROJECT") and is_project(Path.cwd()):
        print(f"project: {Path.cwd()} (the current directory: SOCCER_PROJECT is not set and it has raw_data/ or "
              f"videos.txt)", file=sys.stderr)
        return Path.cwd()
    raw = value or env("SOCCER_PROJECT", PROJECT_DEFAULT)
    origin = "--project" if value else "SOCCER_PROJECT" if os.environ.get("SOCCER_PROJECT") else \
        "the default, SOCCER_PROJECT is not set"
    fix = "set SOCCER_PROJECT=/path/to/soccer_project or pass --project DIR"
    problem = "HOME is not set" if (raw == "~" or raw.startswith("~/")) and not os.environ.get("HOME") else None
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # ~user of no such user
        problem = f"there is no user {raw[1:].split('/')[0]!r}"
    if problem:
        raise InputError(f"project directory {raw} ({origin}) names no directory: {problem}; {fix}")
    if not must_exist:
        return path
    if path.exists() and not path.is_dir():
        raise InputError(f"project directory {path} ({origin}) is a file, not a directory: {fix}")
    if not path.is_dir():
        raise InputError(f"project directory {path} ({origin}) does not exist: {fix}, or create it with "
                         f"SOCCER_PROJECT={shlex.quote(str(path))} bash {shlex.quote(str(SETUP))}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"cannot read the project directory {path} ({origin}): permission denied; {fix}, or ask "
                         f"its owner for access (chmod u+rx)")
    return path


def partial_path(project: Path, video_index: int, gpu_id: int, model: str = DEFAULT_TAG) -> Path:
    return project / PARTIAL.format(model=model, video=video_index, gpu=gpu_id)


def final_path(project: Path, video_index: int, model: str = DEFAULT_TAG) -> Path:
    return project / FINAL.format(model=model, video=video_index)


def raw_answers_path(project: Path, video_index: int, model: str = DEFAULT_TAG) -> Path:
    """Every window's raw answer of a merged video (the partials are deleted after the merge)."""
    return project / RAW_ANSWERS.format(model=model, video=video_index)


def failed_note_path(project: Path, video_index: int, model: str = DEFAULT_TAG) -> Path:
    """Why a video's worker stopped before it saved any window (no partial says it): status_llava.py shows it."""
    return project / FAILED_NOTE.format(model=model, video=video_index)


def lock_path(project: Path, video_index: int, model: str = DEFAULT_TAG) -> Path:
    """The lock of a video that a job holds while it runs model over it (llava_soccer/claims.py): one per model,
    so jobs of two models run one video at once and two jobs of one model exclude each other."""
    return project / LOCK.format(model=model, video=video_index)
