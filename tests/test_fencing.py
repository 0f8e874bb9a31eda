"""Fenced writes (llava_soccer/claims.py Fence, jsonio's fence=): a run whose lock was taken over writes nothing
more and stops with one line; a worker dies with the script that started it; a file size limit is exit 75.

Real processes: submit_llava.sh without Slurm, stopped with SIGSTOP (as `scontrol suspend` does; the Slurm
case is in tests/test_slurm.py), killed with SIGKILL; the worker under `ulimit -f`.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_project
from llava_soccer import claims, jsonio, settings

# Signals and the clock: those tests run one after another, in one process (tests/run.sh); the file size limit
# below needs neither, so any process takes it.
SERIAL = pytest.mark.xdist_group("serial")

HOST = socket.gethostname()
SUBMIT = ROOT / "submit_llava.sh"


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "LLAVA_CLAIM", "LLAVA_LOCK_STALE_S"):
        monkeypatch.delenv(name, raising=False)


@SERIAL
def test_a_fenced_write_of_a_lock_taken_over_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    project = tmp_path
    token, _ = claims.take(project, 0, os.getpid())
    monkeypatch.setenv("LLAVA_CLAIM", token)
    fence = claims.Fence(project, 0)
    out = tmp_path / "partial.json"
    jsonio.atomic_write_json(out, {"windows": [1]}, fence=fence)  # ours: written
    assert json.loads(out.read_text()) == {"windows": [1]}

    # taken over as stale (our process looked gone, our node looked dead): another run's token now
    info = json.loads(settings.lock_path(project, 0).read_text())
    settings.lock_path(project, 0).write_text(json.dumps({**info, "token": "e" * 32, "job": "20", "host": "node7"}))
    with pytest.raises(claims.LostLock) as lost:
        jsonio.atomic_write_json(out, {"windows": [1, 2]}, fence=fence)
    assert re.fullmatch(r"video 0: lock lost to job 20 on node7 since \d\d:\d\d \(ours was taken over as stale\): "
                        r"stopping, nothing written", str(lost.value))
    assert json.loads(out.read_text()) == {"windows": [1]}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")) == []  # no temp left

    # a run by hand (no token): refused while a live holder has the video, as at its start
    monkeypatch.delenv("LLAVA_CLAIM")
    with pytest.raises(jsonio.InputError, match="^video 0: being processed by job 20 on node7"):
        jsonio.atomic_write_json(out, {}, fence=claims.Fence(project, 0))
    assert json.loads(out.read_text()) == {"windows": [1]}


@SERIAL
def test_the_heartbeat_touches_only_its_own_lock(tmp_path):
    token, _ = claims.take(tmp_path, 0, os.getpid())
    lock = settings.lock_path(tmp_path, 0)
    os.utime(lock, (1000, 1000))
    beat = [sys.executable, "-m", "llava_soccer.claims", "beat", str(tmp_path), "0"]
    r = subprocess.run([*beat, token], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and time.time() - lock.stat().st_mtime < 5
    os.utime(lock, (1000, 1000))
    r = subprocess.run([*beat, "0" * 32], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3 and lock.stat().st_mtime == 1000  # another run's lock: not kept alive by us
    assert r.stdout.startswith(f"video 0: being processed by local run pid {os.getpid()} on {HOST}")
    lock.unlink()
    r = subprocess.run([*beat, token], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3 and not lock.exists()  # -c: never recreated


# --- submit_llava.sh without Slurm -------------------------------------------------------------

@pytest.fixture
def site(odd_root, goal_checkpoint, video_25fps, request):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))}
    env.update(LLAVA_MODEL=str(goal_checkpoint), LLAVA_QUANT="fp32", LLAVA_PYTHON=sys.executable,
               LLAVA_HOME=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", CUDA_VISIBLE_DEVICES="",
               LLAVA_LOCK_HEARTBEAT_S="1", LLAVA_LOCK_STALE_S="4", LLAVA_BATCH_SIZE="1")
    project = make_project(odd_root / request.node.name, {"long.mkv": video_25fps})
    env["SOCCER_PROJECT"] = str(project)
    return project, env


def count(partial):
    try:
        return len(json.loads(partial.read_text())["windows"])
    except FileNotFoundError:
        return None


def wait(ok, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def alive(pid):
    """Whether process pid runs (a zombie does not: it has exited)."""
    return jsonio.process_start(pid) is not None


@SERIAL
@pytest.mark.slow
def test_a_stopped_run_loses_its_video_and_writes_nothing_when_it_resumes(site, tmp_path):
    """kill -STOP of a whole run (what `scontrol suspend` and gang scheduling do): on this host it stays
    the video's holder; seen from another node it goes stale, a second run takes the video over, and the
    first, resumed, stops at its next write with one line: the partial only ever grows, run 2 finishes."""
    project, env = site
    partial, lock = settings.partial_path(project, 0, 0), settings.lock_path(project, 0)
    with open(tmp_path / "run1.log", "w") as f:
        run1 = subprocess.Popen(["bash", str(SUBMIT), "0"], stderr=f, env=env, start_new_session=True)
    try:
        wait(lambda: (count(partial) or 0) >= 4, "run 1 saved 4 windows")
        os.killpg(run1.pid, signal.SIGSTOP)
        at_stop = count(partial)
        time.sleep(5)  # past LLAVA_LOCK_STALE_S without a heartbeat

        # on this host a stopped holder is alive: never stale
        r = subprocess.run(["bash", str(SUBMIT), "0"], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0 and "  skipped:     0\n" in r.stderr, r.stderr
        assert f"video 0: being processed by local run pid {run1.pid} on {HOST}" in r.stderr

        # as seen from another node (one machine cannot be two hosts: the lock says node7), it is stale
        info = json.loads(lock.read_text())
        lock.write_text(json.dumps({**info, "host": "node7"}))
        os.utime(lock, (time.time() - 10, time.time() - 10))
        with open(tmp_path / "run2.log", "w") as f:
            run2 = subprocess.Popen(["bash", str(SUBMIT), "0"], stderr=f, env=env, start_new_session=True)
        wait(lambda: (count(partial) or 0) > at_stop, "run 2 saved a window")
        os.killpg(run1.pid, signal.SIGCONT)
        seen = [count(partial)]
        while run2.poll() is None:  # run 1's worker rewrote the partial from memory: it shrank (issue 29)
            seen.append(count(partial))
            time.sleep(0.02)
        assert run1.wait(60) == 0
    finally:
        for run in (run1, locals().get("run2")):
            if run is not None and run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    log1, log2 = (tmp_path / "run1.log").read_text(), (tmp_path / "run2.log").read_text()
    grown = [n for n in seen if n is not None]
    assert grown == sorted(grown), f"the partial shrank: {grown}"
    assert run2.returncode == 0 and "  done:        0\n" in log2, log2
    assert f"taking over the stale lock of local run pid {run1.pid} on node7" in log2
    lines = re.findall(r"\] (video 0: lock lost to local run pid (\d+) on (\S+) since \d\d:\d\d \(ours was taken "
                       r"over as stale\): stopping, nothing written)$", log1, re.M)
    assert lines and {(int(pid), host) for _, pid, host in lines} == {(run2.pid, HOST)}, log1
    assert re.search(r"\] video 0: its lock was taken over by another run \(see the worker line above\): that run "
                     r"owns it now, skipped$", log1, re.M)
    assert "  skipped:     0\n" in log1 and "Traceback" not in log1 + log2
    archive = jsonio.read_json(settings.raw_answers_path(project, 0))
    assert len(archive["windows"]) == archive["windows_total"] == 30
    assert not lock.exists() and not list(project.glob(".*.tmp"))


@SERIAL
@pytest.mark.slow
def test_the_worker_dies_with_its_script(site, tmp_path):
    """kill -9 of submit_llava.sh alone: its worker stops within seconds (it saves its batch), no write after."""
    project, env = site
    partial = settings.partial_path(project, 0, 0)
    with open(tmp_path / "run1.log", "w") as f:
        run1 = subprocess.Popen(["bash", str(SUBMIT), "0"], stderr=f, env=env, start_new_session=True)
    try:
        wait(lambda: (count(partial) or 0) >= 2, "run 1 saved 2 windows")
        (worker,) = map(int, re.findall(r"video 0: worker 0/1 pid (\d+)", (tmp_path / "run1.log").read_text()))
        run1.send_signal(signal.SIGKILL)
        run1.wait()
        wait(lambda: not alive(worker), "the worker gone after its script", timeout=15)
        last = partial.stat().st_mtime_ns
        time.sleep(2)
        assert partial.stat().st_mtime_ns == last and count(partial) < 30
        assert "SIGTERM received: saved" in (tmp_path / "run1.log").read_text()
    finally:
        try:
            os.killpg(run1.pid, signal.SIGKILL)  # whatever is left of its session
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_worker_past_the_file_size_limit_exits_75_and_keeps_its_partial(tmp_path, goal_checkpoint, video_10s):
    """ulimit -f: the partial's rewrite would pass it. One line, exit 75 (retryable), the partial intact."""
    project = make_project(tmp_path, {"a.mkv": video_10s})
    worker = [sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu-id", "0", "--num-workers", "1",
              "--video-index", "0", "--project", str(project), "--model", str(goal_checkpoint),
              "--quantization", "fp32", "--batch-size", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert subprocess.run(worker, capture_output=True, env=env, timeout=300).returncode == 0
    partial = settings.partial_path(project, 0, 0)
    doc = json.loads(partial.read_text())
    jsonio.atomic_write_json(partial, {**doc, "windows": doc["windows"][:2]})  # 3 windows to redo
    before = partial.read_bytes()
    limit_kb = len(before) // 1024 + 1  # this much fits; a partial with one more window does not
    assert len(json.dumps({**doc, "windows": doc["windows"][:3]}, indent=1)) > limit_kb * 1024
    r = subprocess.run(["bash", "-c", f'ulimit -f {limit_kb} && exec "$@"', "-", *worker], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 75, r.stderr
    (line,) = [line for line in r.stderr.splitlines() if "error:" in line]
    assert line.endswith(f"error: cannot write {partial}: the file is larger than the file size limit (ulimit -f). "
                         f"Files written before are intact; raise the limit (ulimit -f unlimited) and rerun the same "
                         f"command")
    assert partial.read_bytes() == before and not list(project.glob(".*.tmp"))
