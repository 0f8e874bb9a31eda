"""Shared fixtures: real tiny LLaVA-NeXT checkpoints, real H.264 videos, a project directory.

Everything runs under a path with spaces and quotes, as users' home directories sometimes have.
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llava_soccer import synthetic  # noqa: E402

# A parrot checkpoint answers every window with this text (see synthetic.py).
GOAL_ANSWER = "{'label': 'Goal', 'team': 'home', 'confidence': 0.9, 'frame': 8, 'details': 'ball in the net'}"

# The real Qwen/Phi outputs beside the checkout. Tests that read them skip on a machine without
# them, but CI always has them: there a missing folder is an error, not a silent skip.
SEED_PREDICTIONS = ROOT.parent / "shared" / "data" / "seed_predictions"
if os.environ.get("CI") and not (SEED_PREDICTIONS / "qwen7b").is_dir():
    raise RuntimeError(f"CI run without the real seed predictions at {SEED_PREDICTIONS}")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Tests over ~3 s in files whose tests carry no `@pytest.mark.slow` of their own yet: marked slow
# here (`bash tests/run.sh --fast` leaves them out). When a file gets its own marker lines, delete
# its entry. A name here that its file no longer has is an error, so the list cannot rot silently.
@pytest.fixture(scope="session")
def odd_root(tmp_path_factory):
    """A base directory whose name has spaces and quotes."""
    d = tmp_path_factory.mktemp("runs") / "my \"soccer\" project's dir"
    d.mkdir()
    return d


@pytest.fixture
def world_dir():
    """A directory every user can reach, for tests that run a command as user nobody: under /tmp itself,
    not pytest's base directory, which is 0700 and which any concurrent pytest run sets back to 0700."""
    d = Path(tempfile.mkdtemp(prefix="llava_world_"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)  # what the test made read-only, so it can be removed
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def goal_checkpoint(tmp_path_factory):
    """Tiny checkpoint that answers every window with GOAL_ANSWER."""
    return synthetic.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "goal", "tiny", answer=GOAL_ANSWER)


@pytest.fixture(scope="session")
def none_checkpoint(tmp_path_factory):
    """Tiny checkpoint that answers every window with "None"."""
    return synthetic.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "none", "tiny", answer="None")


@pytest.fixture(scope="session")
def video_25fps(tmp_path_factory):
    """60 s of barcoded 398x224 H.264 at 25 fps (.mkv, as SoccerNet's 224p halves)."""
    return synthetic.make_video(tmp_path_factory.mktemp("vid") / "1_224p.mkv", 60, "25")


@pytest.fixture(scope="session")
def video_2997fps(tmp_path_factory):
    """31 s of barcoded H.264 at 29.97 fps (.mp4)."""
    return synthetic.make_video(tmp_path_factory.mktemp("vid") / "clip.mp4", 31, "30000/1001")


def make_project(root: Path, videos: dict) -> Path:
    """$SOCCER_PROJECT with raw_data/<relative path> linked to the given video files."""
    project = root / "soccer_project"
    for rel, src in videos.items():
        dst = project / "raw_data" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(src, dst)
    return project


def load(path):
    with open(path) as f:
        return json.load(f)
