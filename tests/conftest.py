"""Shared fixtures: real tiny LLaVA-NeXT checkpoints, real H.264 videos, a project directory.

Everything runs under a path with spaces and quotes, as users' home directories sometimes have.
"""
import json
import os
import shutil
import subprocess
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
# One CPU thread per torch process (pytest's own and every worker it starts, Slurm jobs included: sbatch passes
# the environment on). tests/run.sh runs a process per core and a Slurm job runs four workers, each of which
# would otherwise take a thread per core (submit_llava.sh: 16 claimed CPUs / 4 workers = 4): threads spinning on
# cores that other processes hold cost twice the CPU time for the same windows. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def odd_root(tmp_path_factory):
    """A base directory whose name has spaces and quotes."""
    d = tmp_path_factory.mktemp("runs") / "my \"soccer\" project's dir"
    d.mkdir()
    return d


@pytest.fixture
def open_tmp():
    """A temporary directory other users can enter, outside pytest's: pytest makes /tmp/pytest-of-USER private
    again (0700) whenever another pytest session starts on the machine, which would lock user nobody out
    mid-test."""
    d = Path(tempfile.mkdtemp(prefix="llava_test_"))
    d.chmod(0o755)
    yield d
    for path in [d, *d.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(d)


def nobody_prefix() -> list:
    """How to run a command as a user for whom chmod counts: setpriv to nobody when root (root ignores it);
    [] otherwise. Its files must be under open_tmp."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import torch, cv2"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"user nobody cannot run {sys.executable}: {probe.stderr[-200:]!r}")
    return prefix



def built_once(tmp_path_factory, name, build):
    """A session fixture's file, built once per test run, not once per test process: each costs seconds of CPU (a
    tiny checkpoint 1.8 s, the 100 s video 3.6 s). pytest-xdist's processes share their base temporary directory's
    parent; the first to come builds the file under a lock, the others wait, then take it. build(folder) -> path."""
    import fcntl
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built once"
    shared.mkdir(exist_ok=True)
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when build fails
        done = shared / f"{name}.done"
        if not done.exists():
            (shared / name).mkdir()
            done.write_text(str(build(shared / name)))  # written last: a failed build leaves no .done
        return Path(done.read_text())


@pytest.fixture(scope="session")
def goal_checkpoint(tmp_path_factory):
    """Tiny checkpoint that answers every window with GOAL_ANSWER."""
    return built_once(tmp_path_factory, "goal_checkpoint",
                      lambda d: synthetic.make_checkpoint(d / "goal", "tiny", answer=GOAL_ANSWER))


@pytest.fixture(scope="session")
def none_checkpoint(tmp_path_factory):
    """Tiny checkpoint that answers every window with "None"."""
    return built_once(tmp_path_factory, "none_checkpoint",
                      lambda d: synthetic.make_checkpoint(d / "none", "tiny", answer="None"))


@pytest.fixture(scope="session")
def video_25fps(tmp_path_factory):
    """60 s of barcoded 398x224 H.264 at 25 fps (.mkv, as SoccerNet's 224p halves)."""
    return built_once(tmp_path_factory, "video_25fps", lambda d: synthetic.make_video(d / "1_224p.mkv", 60, "25"))


@pytest.fixture(scope="session")
def video_10s(tmp_path_factory):
    """10 s of barcoded H.264 at 25 fps (5 windows): for tests where the video's length is not the point."""
    return built_once(tmp_path_factory, "video_10s", lambda d: synthetic.make_video(d / "short.mkv", 10, "25"))


@pytest.fixture(scope="session")
def video_100s(tmp_path_factory):
    """100 s of barcoded H.264 at 25 fps (50 windows): long enough to interrupt a run mid-video."""
    return built_once(tmp_path_factory, "video_100s", lambda d: synthetic.make_video(d / "long.mkv", 100, "25"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm cluster (tests/slurm_cluster.py), started once per test process: the tests that use
    it are all in the xdist_group("serial"), so one process holds it."""
    from slurm_cluster import SlurmCluster, missing_binaries
    if missing_binaries():
        pytest.skip(f"Slurm/munge binaries missing: {', '.join(missing_binaries())} (bash tests/run.sh installs them)")
    c = SlurmCluster().start()
    try:
        yield c
    finally:
        c.stop()  # by PID, also when a test failed


@pytest.fixture(scope="session")
def video_2997fps(tmp_path_factory):
    """31 s of barcoded H.264 at 29.97 fps (.mp4)."""
    return built_once(tmp_path_factory, "video_2997fps",
                      lambda d: synthetic.make_video(d / "clip.mp4", 31, "30000/1001"))


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


def cpu_plan(quantization="fp32", **flags):
    """The plan of the worker's settings (quantization and any flags) on this CPU."""
    from llava_soccer import config, gpus
    return gpus.plan(config.WorkerSettings(quantization=quantization, **flags), None)


def load_engine(checkpoint, quantization="fp32", visual_tokens="full", **flags):
    """An engine on the CPU for a checkpoint directory, as the worker makes one (Engine.load)."""
    from llava_soccer.engine import Engine
    return Engine.load(str(checkpoint), cpu_plan(quantization, **flags), "cpu", visual_tokens)


def appended(window, tokens):
    """A window's inputs (any family's) with text tokens after its prompt: its per-token inputs extended (Qwen's
    mm_token_type_ids: 0, text)."""
    import torch
    extra = torch.as_tensor(tokens, dtype=torch.long)[None]
    out = {**window, "input_ids": torch.cat([window["input_ids"], extra], 1)}
    for key in ("attention_mask", "mm_token_type_ids"):
        if key in window:
            fill = torch.full_like(extra, key == "attention_mask", dtype=window[key].dtype)
            out[key] = torch.cat([window[key], fill], 1)
    return out


@pytest.fixture
def saved_figures(monkeypatch):
    """{file name: matplotlib Figure} of every plot compare_counts.py and evaluate_soccernet.py save: what each
    panel draws (bar heights, points, titles) is read back from its artists, the PNG is written as usual."""
    import compare_counts
    from llava_soccer import evaluation  # evaluate_soccernet.py's plots are drawn there
    figures = {}
    for module in (compare_counts, evaluation):
        def spy(fig, path, dpi=100, save=module.atomic_savefig):
            figures[Path(path).name] = fig
            save(fig, path, dpi=dpi)
        monkeypatch.setattr(module, "atomic_savefig", spy)
    return figures


def bar_heights(ax) -> dict:
    """{legend label: [heights]} of each bar series of a matplotlib Axes (barh: widths)."""
    return {c.get_label(): [b.get_width() if c.orientation == "horizontal" else b.get_height() for b in c]
            for c in ax.containers}


def tick_labels(axis) -> list:
    return [t.get_text() for t in axis.get_ticklabels()]


# The xdist_groups, longest first. Each group runs one test after another in one process (`-n N --dist loadgroup`,
# tests/run.sh): "serial", the tests that wait rather than compute: on the real Slurm cluster (one per process, so
# they all share one), on signals, heartbeats and the clock (never two at once), while the other processes keep the
# cores busy; "demo" and "second_family", the tests that assert on one expensive run of their module's fixture.
GROUPS = ("serial", "demo", "second_family")


def group_rank(item) -> int:
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return len(GROUPS) + 1
    name = marker.args[0] if marker.args else marker.kwargs.get("name")
    return GROUPS.index(name) if name in GROUPS else len(GROUPS)


def pytest_collection_modifyitems(config, items):
    """The grouped tests come first, the longest groups first: xdist hands each process one group to start with
    (and more only to a process with two tests or fewer left), so the long chains start at once, in different
    processes, while the others share the independent tests."""
    items.sort(key=group_rank)  # stable within each group


# LLAVA_TEST_CPU=FILE: one line per test appended to FILE, "<self CPU s> <children CPU s> <wall s> <end, unix s>
# <xdist process> <node id>": the CPU time (user + sys) of the pytest process and of its waited-for children
# (workers, submit_llava.sh, ffmpeg) from the test's setup (its fixtures' too, the first time they are built) to its
# teardown, to rank where the CPU goes (wall times lie on a shared machine); the end times and processes show when a
# process idles. Slurm jobs' processes are slurmd's children, not ours: not counted.
CPU_LOG = os.environ.get("LLAVA_TEST_CPU")


def cpu_seconds():
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not CPU_LOG:
        yield
        return
    import time
    (own, kids), wall = cpu_seconds(), time.monotonic()
    yield
    (own2, kids2), wall2 = cpu_seconds(), time.monotonic()
    with open(CPU_LOG, "a") as f:  # one short write per line: processes appending at once do not mix lines
        f.write(f"{own2 - own:.2f} {kids2 - kids:.2f} {wall2 - wall:.2f} {time.time():.1f} "
                f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {item.nodeid}\n")
