"""One lock per video (llava_soccer/claims.py) and temp files that name their writer (jsonio).

Real processes throughout: holders that are killed with SIGKILL, several takers racing for one
stale lock, the command line submit_llava.sh runs, and submit_llava.sh itself without Slurm.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from conftest import ROOT, make_project
from llava_soccer import claims, jsonio, settings, synthetic

HOST = socket.gethostname()
SUBMIT = ROOT / "submit_llava.sh"


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    """Each test as a local run, whatever job runs pytest."""
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME",
                 "SLURM_RESTART_COUNT", "LLAVA_CLAIM", "LLAVA_LOCK_STALE_S"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "project").mkdir()
    return tmp_path / "project"


def lock_of(project, video=0):
    return settings.lock_path(project, video)


def plant(project, age_s=0.0, video=0, **fields):
    """A lock another holder wrote (default: job 19 on node7), last touched age_s seconds ago."""
    info = {"video": video, "token": "f" * 32, "job": "19", "array_task": None, "host": "node7", "pid": 4242,
            "pid_start": 1, "since": datetime.now().isoformat(timespec="seconds"), **fields}
    path = lock_of(project, video)
    path.write_text(json.dumps(info))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return info


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llava_soccer.claims", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


# --- take, check, release -----------------------------------------------------------------

def test_take_check_release(project, monkeypatch):
    token, line = claims.take(project, 3, os.getpid())
    assert re.fullmatch(r"[0-9a-f]{32}", token) and line is None
    info = json.loads(lock_of(project, 3).read_text())
    assert info["token"] == token and info["pid"] == os.getpid() and info["host"] == HOST
    assert info["job"] is None and info["array_task"] is None
    assert info["pid_start"] == jsonio.process_start(os.getpid())

    now = datetime.now().strftime("%H:%M")
    assert claims.take(project, 3, os.getpid()) == (
        None, f"video 3: being processed by local run pid {os.getpid()} on {HOST} since {now}")
    with pytest.raises(jsonio.InputError, match=rf"^video 3: being processed by local run pid {os.getpid()} on "):
        claims.check(project, 3)  # a worker of another run
    monkeypatch.setenv("LLAVA_CLAIM", token)
    claims.check(project, 3)  # the run holding it: its workers and merge go on
    with pytest.raises(claims.LostLock, match="^video 4: lock lost \\(its lock file is gone or being rewritten\\): "
                                              "stopping, nothing written$"):
        claims.check(project, 4)  # a worker of a run whose lock is gone
    monkeypatch.delenv("LLAVA_CLAIM")
    claims.check(project, 4)  # a run by hand on a video nobody holds

    assert claims.release(project, 3, "0" * 32).startswith("video 3: being processed by")  # not ours: kept
    assert lock_of(project, 3).exists()
    assert claims.release(project, 3, token) is None and not lock_of(project, 3).exists()
    assert claims.release(project, 3, token) is None  # released twice: nothing to do


def test_a_live_holder_on_another_host_is_not_taken(project, monkeypatch):
    plant(project, age_s=590, array_task="18_2", job="21")  # 10 s before stale
    token, line = claims.take(project, 0, os.getpid())
    assert token is None
    assert line == f"video 0: being processed by job 21 (array task 18_2) on node7 since {datetime.now():%H:%M}"
    monkeypatch.setenv("SLURM_JOB_ID", "20")  # another job
    assert claims.take(project, 0, os.getpid())[0] is None
    plant(project, since="2026-01-02T03:04:05")
    assert claims.take(project, 0, os.getpid())[1].endswith("job 19 on node7 since 2026-01-02 03:04")


@pytest.mark.xdist_group("serial")
def test_stale_a_holder_killed_on_this_host(project):
    holder = subprocess.Popen(["sleep", "60"])
    token, _ = claims.take(project, 0, holder.pid)
    assert claims.take(project, 0, os.getpid())[0] is None  # alive: held
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    notes = []
    new, _ = claims.take(project, 0, os.getpid(), report=notes.append)
    assert new and new != token and json.loads(lock_of(project).read_text())["token"] == new
    assert notes == [f"video 0: taking over the stale lock of local run pid {holder.pid} on {HOST} "
                     f"since {datetime.now():%H:%M} (its process {holder.pid} is gone)"]
    # the pid alive again but another process (its start time differs): a reused pid
    plant(project, host=HOST, job=None, pid=os.getpid(), pid_start=jsonio.process_start(os.getpid()) - 1)
    assert claims.take(project, 0, os.getpid())[0]


def test_stale_b_an_earlier_run_of_this_job_requeued(project, monkeypatch):
    """Job id, cluster and a lower restart count: on any node (a requeued job lands where Slurm puts it)."""
    plant(project, cluster="c1", restart=0)  # job 19 on node7, heartbeat fresh
    monkeypatch.setenv("SLURM_JOB_ID", "19")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "c1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    notes = []
    token, _ = claims.take(project, 0, os.getpid(), report=notes.append)
    assert token and notes[0].endswith("(an earlier run of this job, requeued)")
    info = json.loads(lock_of(project).read_text())
    assert (info["job"], info["cluster"], info["restart"]) == ("19", "c1", 1)


@pytest.mark.parametrize("held,ours", [
    ({"cluster": "c2", "restart": 0}, {"SLURM_RESTART_COUNT": "1"}),  # job 19 of another cluster sharing the project
    ({"cluster": "c1", "restart": 0}, {}),  # a job 19 after a controller reset: its first run, as the holder's
    ({"cluster": "c1", "restart": 2}, {"SLURM_RESTART_COUNT": "1"}),  # a later run than ours
    ({"cluster": None, "restart": None}, {"SLURM_RESTART_COUNT": "1"}),  # a lock of an older version: unknown
])
def test_a_job_id_alone_is_not_an_earlier_run_of_this_job(project, monkeypatch, held, ours):
    plant(project, **held)
    for name, value in {"SLURM_JOB_ID": "19", "SLURM_CLUSTER_NAME": "c1", **ours}.items():
        monkeypatch.setenv(name, value)
    assert claims.take(project, 0, os.getpid())[1].startswith("video 0: being processed by job 19 on node7")


@pytest.mark.xdist_group("serial")
def test_a_stopped_holder_on_this_host_is_never_stale(project, monkeypatch):
    """SIGSTOP (kill -STOP, a suspended job): alive on this host with its start time, however old its beat."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        claims.take(project, 0, holder.pid)
        holder.send_signal(signal.SIGSTOP)
        old = time.time() - 700
        os.utime(lock_of(project), (old, old))
        assert claims.take(project, 0, os.getpid())[1].startswith(f"video 0: being processed by local run pid "
                                                                  f"{holder.pid} on {HOST}")
        assert claims.peek(project, 0)[1] is None
    finally:
        holder.kill()
        holder.wait()


def test_a_future_heartbeat_goes_stale_after_stale_s_of_our_own_clock(project, monkeypatch):
    """A node that died with its clock an hour ahead: its lock is taken STALE_S after we first saw it."""
    monkeypatch.setenv("LLAVA_LOCK_STALE_S", "2")
    plant(project)
    ahead = time.time() + 3600
    os.utime(lock_of(project), (ahead, ahead))
    assert claims.peek(project, 0)[1:] == (None, 0.0)  # a look never writes
    assert lock_of(project).stat().st_mtime == ahead
    assert claims.take(project, 0, os.getpid())[0] is None  # live now, and set back to our now
    assert abs(lock_of(project).stat().st_mtime - time.time()) < 2
    time.sleep(2.2)
    notes = []
    assert claims.take(project, 0, os.getpid(), report=notes.append)[0]
    assert re.search(r"\(no heartbeat for 2 s\)$", notes[0])


def test_stale_c_no_heartbeat_from_a_node_that_died(project, monkeypatch):
    plant(project, age_s=700)
    monkeypatch.setenv("LLAVA_LOCK_STALE_S", "1000")
    assert claims.take(project, 0, os.getpid())[0] is None
    with pytest.raises(jsonio.InputError):
        claims.check(project, 0)
    monkeypatch.setenv("LLAVA_LOCK_STALE_S", "600")
    claims.check(project, 0)  # stale: a worker run by hand goes on
    notes = []
    assert claims.take(project, 0, os.getpid(), report=notes.append)[0]
    assert re.search(r"\(no heartbeat for 70\d s\)$", notes[0])


def test_a_lock_never_written_is_live_for_a_minute(project):
    lock_of(project).write_bytes(b"\xff{")  # its taker died while writing it, or is writing it now
    assert claims.take(project, 0, os.getpid()) == (
        None, "video 0: being claimed by another run (its lock is being written)")
    os.utime(lock_of(project), (time.time() - 61, time.time() - 61))
    assert claims.take(project, 0, os.getpid())[0]


@pytest.mark.parametrize("fields", [{"token": ["f"]}, {"job": {"id": 19}}, {"pid": [4242], "host": HOST},
                                    {"restart": True}, {"since": 5}])
def test_a_lock_with_fields_of_the_wrong_type_is_no_live_holder(project, fields):
    """A lock file this pipeline did not write (a list or an object where a string or number belongs) is never a
    live holder, whatever its host or pid say: it is taken over a minute after its last change, as a lock never
    written, and until then says what it is instead of naming a holder."""
    plant(project, **fields)
    token, held = claims.take(project, 0, os.getpid(), wait_s=0.2)
    assert token is None and held == ("video 0: held by a lock file that is no lock of this pipeline (fields of the "
                                      "wrong type), taken over 60 s after its last change; remove it if no job runs")
    os.utime(lock_of(project), (time.time() - 61, time.time() - 61))
    assert claims.take(project, 0, os.getpid())[0]


def test_an_abandoned_break_mutex_is_cleared_after_a_minute(project):
    plant(project, age_s=700)
    mutex = lock_of(project).with_name(lock_of(project).name + ".break")
    mutex.touch()  # a taker killed while breaking the lock
    assert claims.take(project, 0, os.getpid(), wait_s=0.2)[0] is None
    os.utime(mutex, (time.time() - 61, time.time() - 61))
    assert claims.take(project, 0, os.getpid())[0] and not mutex.exists()


def test_a_stale_lock_replaced_meanwhile_is_not_broken(project, monkeypatch):
    """A taker that read the stale lock, then waited for the .break mutex while another taker
    replaced it, re-reads it under the mutex and leaves the new holder alone."""
    plant(project, age_s=700)
    mutex = claims._break_mutex

    def another_taker_first(lock):
        plant(project, token="e" * 32, job="20", host="node8")  # the winner's fresh lock
        return mutex(lock)

    monkeypatch.setattr(claims, "_break_mutex", another_taker_first)
    assert claims.take(project, 0, os.getpid()) == (
        None, f"video 0: being processed by job 20 on node8 since {datetime.now():%H:%M}")
    assert json.loads(lock_of(project).read_text())["token"] == "e" * 32


RACER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from llava_soccer import claims
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
token, line = claims.take(sys.argv[2], 0, os.getpid())
print(token or line, os.getpid(), flush=True)
sys.stdin.read()  # a holder that exits leaves a stale lock: live until the test has every answer
"""


@pytest.mark.xdist_group("serial")
def test_racing_takers_of_a_stale_lock_exactly_one_wins(project, tmp_path):
    plant(project, age_s=700)  # round 1: no heartbeat (c); later rounds: the last winner has exited (a)
    for n in range(3):
        go = tmp_path / f"go{n}"
        racers = [subprocess.Popen([sys.executable, "-c", RACER, str(ROOT), str(project), str(go)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(8)]
        assert all(r.stdout.readline() == "ready\n" for r in racers)
        time.sleep(0.3)  # all of them in their wait loop
        go.touch()
        outs = [r.stdout.readline().split() for r in racers]
        for r in racers:
            r.communicate(timeout=60)
        winners = [(out[0], int(out[-1])) for out in outs if re.fullmatch(r"[0-9a-f]{32}", out[0])]
        assert len(winners) == 1, outs
        (token, pid), = winners
        assert json.loads(lock_of(project).read_text())["token"] == token
        losers = [" ".join(out[:-1]) for out in outs if out[0] != token]
        assert all(line.startswith(f"video 0: being processed by local run pid {pid} on {HOST}") for line in losers)
        assert sorted(p.name for p in project.iterdir()) == [lock_of(project).name]  # no .break left


# --- the command line submit_llava.sh runs -----------------------------------------------------

def test_cli_exit_codes_and_lines(project):
    r = cli("take", project, 5, os.getpid())
    assert r.returncode == 0 and r.stderr == ""
    token = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    r = cli("take", project, 5, os.getpid())
    assert r.returncode == 3 and r.stdout.startswith(f"video 5: being processed by local run pid {os.getpid()}")
    r = cli("release", project, 5, "0" * 32)
    assert r.returncode == 0 and "our lock was taken over as stale, left to it" in r.stdout
    assert lock_of(project, 5).exists()
    r = cli("release", project, 5, token)
    assert r.returncode == 0 and r.stdout == "" and not lock_of(project, 5).exists()

    plant(project, video=5, host=HOST, job=None, pid=4242, pid_start=-1)  # a dead holder of this host
    r = cli("take", project, 5, os.getpid())
    token, note = r.stdout.splitlines()  # the token, then what submit_llava.sh logs
    assert r.returncode == 0 and note.startswith("video 5: taking over the stale lock of local run pid 4242")


@pytest.mark.parametrize("args,env,message", [
    (["take", "{p}", "x", "1"], {}, "VIDEO must be a number, not 'x'"),
    (["take", "{p}/nowhere", "0", "1"], {}, "project directory {p}/nowhere does not exist"),
    (["take", "{p}", "0", "999999999"], {}, "PID 999999999 is not a running process"),
    (["take", "{p}", "0", "{pid}"], {"LLAVA_LOCK_STALE_S": "soon"},
     "LLAVA_LOCK_STALE_S='soon' must be a number of seconds above 0 (default 600)"),
    (["hold", "{p}", "0"], {}, "usage: python -m llava_soccer.claims take PROJECT VIDEO PID"),
])
def test_cli_errors_are_one_line_exit_2(project, args, env, message):
    plant(project, age_s=10, job=None)  # held: the stale time is read
    r = cli(*[a.format(p=project, pid=os.getpid()) for a in args], env=env)
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("claims: error: ") and message.format(p=project) in line


def test_cli_a_lock_it_cannot_use_is_one_line_exit_2(project):
    lock_of(project).mkdir()  # not a file (as a read-only project, which root would not see)
    r = cli("take", project, 0, os.getpid())
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"claims: error: the lock {lock_of(project)} is a directory, not a file: remove the "
                        f"directory {lock_of(project)} (no job can hold a lock there)\n")  # not: make it writable


# --- temp files of atomic writes ---------------------------------------------------------------

def test_temps_name_their_writer_and_only_dead_writers_temps_go(project):
    path = project / "partial_results_llava_vid0_gpu0.json"
    seen = []
    jsonio._atomic_write(path, lambda f: seen.extend(p.name for p in project.glob(".*.tmp")))
    assert re.fullmatch(rf"\.{re.escape(path.name)}\.{re.escape(HOST)}\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", seen[0])

    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 700
    temps = {  # name: (age, kept?)
        f"{HOST}.{os.getpid()}.aa": (0, True),  # a live writer here (even when old)
        f"{HOST}.{os.getpid()}.ab": (old, True),
        f"{HOST}.{dead.pid}.ac": (0, False),  # its writer is gone
        f"node7.cluster.org.{os.getpid()}.ad": (0, True),  # another host's: only by age
        "node7.cluster.org.17.ae": (old, False),
        "x1y2": (0, True),  # an older name that says no writer: only by age
        "x1y3": (old, False),
    }
    for middle, (age, _) in temps.items():
        tmp = project / f".{path.name}.{middle}.tmp"
        tmp.write_text("[")
        if age:
            os.utime(tmp, (age, age))
    jsonio.remove_stale_temps(path)
    kept = {p.name for p in project.glob(".*.tmp")}
    assert kept == {f".{path.name}.{m}.tmp" for m, (_, keep) in temps.items() if keep}


# --- submit_llava.sh without Slurm ---------------------------------------------------------------

@pytest.fixture
def site(odd_root, goal_checkpoint, request):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))}
    env.update(LLAVA_MODEL=str(goal_checkpoint), LLAVA_QUANT="fp32", LLAVA_PYTHON=sys.executable,
               LLAVA_HOME=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", CUDA_VISIBLE_DEVICES="",
               LLAVA_LOCK_HEARTBEAT_S="1")
    return odd_root / request.node.name, env


def test_submit_skips_a_video_another_run_holds(site, tmp_path):
    root, env = site
    project = make_project(root, {"a.mkv": synthetic.make_video(tmp_path / "a.mkv", 4)})
    token, _ = claims.take(project, 0, os.getpid())
    r = subprocess.run(["bash", str(SUBMIT), "0"], capture_output=True, text=True, timeout=120,
                       env={**env, "SOCCER_PROJECT": str(project)})
    assert r.returncode == 0, r.stderr
    assert re.search(rf"\] video 0: being processed by local run pid {os.getpid()} on {re.escape(HOST)} "
                     rf"since \d\d:\d\d, skipped$", r.stderr, re.M)
    assert "  skipped:     0\n" in r.stderr and "starting" not in r.stderr
    assert json.loads(lock_of(project).read_text())["token"] == token  # not ours to remove


@pytest.mark.parametrize("settings_env,message", [
    ({"LLAVA_LOCK_HEARTBEAT_S": "0.5"}, "LLAVA_LOCK_HEARTBEAT_S must be a whole number from 1 to 999999999 in "
                                        "decimal digits, not '0.5': seconds between touches of the running video's "
                                        "lock; unset it for 30"),
    ({"LLAVA_LOCK_STALE_S": "soon"}, "LLAVA_LOCK_STALE_S must be a whole number from 1 to 999999999 in decimal "
                                     "digits, not 'soon': seconds after which an untouched lock is another job's to "
                                     "take; unset it for 600"),
    ({"LLAVA_LOCK_HEARTBEAT_S": "600"}, "LLAVA_LOCK_HEARTBEAT_S (600) must be below LLAVA_LOCK_STALE_S (600): "
                                        "unset both for 30 and 600"),
])
def test_submit_refuses_bad_lock_settings(site, tmp_path, settings_env, message):
    root, env = site
    project = make_project(root, {})
    project.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["bash", str(SUBMIT), "0"], capture_output=True, text=True, timeout=120,
                       env={**env, "SOCCER_PROJECT": str(project), **settings_env})
    assert r.returncode == 2
    (line,) = r.stderr.splitlines()
    assert line.endswith(f"ERROR: {message}")


def session_procs(sid):
    """(pid, args) of the live processes of a session."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    return [(int(pid), args) for pid, s, stat, args in (line.split(None, 3) for line in out.splitlines())
            if int(s) == sid and not stat.startswith("Z")]


@pytest.mark.xdist_group("serial")
@pytest.mark.slow
def test_submit_killed_with_sigkill_then_a_new_run_takes_over(site, tmp_path):
    """kill -9 of the script: its heartbeat stops (an orphan never keeps the lock alive); kill -9 of
    everything (a node that died): the next run takes the video over without any cleanup by hand,
    finishes it and removes the lock."""
    root, env = site
    project = make_project(root, {"long.mkv": synthetic.make_video(tmp_path / "long.mkv", 30)})
    env["SOCCER_PROJECT"] = str(project)
    log = tmp_path / "run1.log"
    with open(log, "w") as f:
        run1 = subprocess.Popen(["bash", str(SUBMIT), "0"], stderr=f, env=env, start_new_session=True)
    lock, partial = lock_of(project), settings.partial_path(project, 0, 0)
    deadline = time.monotonic() + 300
    while not partial.exists():  # a worker is mid-video
        assert run1.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    info = json.loads(lock.read_text())
    assert info["pid"] == run1.pid and info["host"] == HOST
    beat = lock.stat().st_mtime
    while lock.stat().st_mtime == beat:  # the heartbeat (every 1 s here)
        assert time.monotonic() < deadline
        time.sleep(0.1)

    run1.send_signal(signal.SIGKILL)  # the script alone: its heartbeat notices and stops
    run1.wait()
    while any("submit_llava.sh" in args for _, args in session_procs(run1.pid)):
        assert time.monotonic() < deadline, session_procs(run1.pid)
        time.sleep(0.1)
    for pid, _ in session_procs(run1.pid):  # the orphaned worker (it stops by itself too): as if the node died
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert lock.exists() and "done" not in log.read_text()

    run2 = subprocess.run(["bash", str(SUBMIT), "0"], capture_output=True, text=True, env=env, timeout=600)
    assert run2.returncode == 0, run2.stderr
    assert re.search(rf"\] video 0: taking over the stale lock of local run pid {run1.pid} on {re.escape(HOST)} "
                     rf"since \d\d:\d\d \(its process {run1.pid} is gone\)$", run2.stderr, re.M)
    assert "  done:        0\n" in run2.stderr and settings.final_path(project, 0).exists()
    assert not lock.exists() and "Traceback" not in run2.stderr
    assert not [p for p in project.iterdir() if p.name.startswith(".") and p.name != ".videos_given.txt"]


def test_a_worker_or_merge_run_by_hand_leaves_a_held_video_alone(tmp_path, video_25fps, goal_checkpoint):
    """A live job holds video 0: a worker or merge started by hand (or by another job) stops with one line
    and touches neither the partials nor the temp file that job is writing."""
    project = make_project(tmp_path, {"a.mkv": video_25fps})
    plant(project, since="2026-01-02T03:04:05")  # job 19 on node7, heartbeat fresh
    partial = settings.partial_path(project, 0, 0)
    partial.write_text('{"made_by": null, "windows": []}')
    writing = partial.with_name(f".{partial.name}.node7.4242.ab12.tmp")  # job 19's write in flight
    writing.write_text("[")
    for script, args in (("llava_split_worker.py", ["--gpu-id", "0", "--num-workers", "1", "--model",
                                                    str(goal_checkpoint), "--quantization", "fp32"]),
                         ("merge_results_llava.py", [])):
        r = subprocess.run([sys.executable, str(ROOT / script), "--video-index", "0", "--project", str(project),
                            *args], capture_output=True, text=True, timeout=300)
        (line,) = [line for line in r.stderr.splitlines() if "error:" in line]
        assert r.returncode == 1, r.stderr
        assert line.endswith("error: video 0: being processed by job 19 on node7 since 2026-01-02 03:04: its files "
                             "are that run's; wait until it ends (or scancel it), then run again")
        assert partial.read_text() == '{"made_by": null, "windows": []}' and writing.exists()


# --- one lock per model (issue 32) -------------------------------------------------------------

def test_two_models_jobs_on_one_video_hold_their_own_locks_and_one_models_exclude_each_other(project):
    """claims take/beat/release as submit_llava.sh runs them, --model-tag its model's family tag: a live Qwen
    holder does not keep LLaVA out of the video, a second Qwen taker is kept out, and each release and beat
    touches its own model's lock only."""
    qwen = cli("take", project, 0, os.getpid(), "--model-tag", "qwen2.5vl")
    assert qwen.returncode == 0 and (project / ".lock_qwen2.5vl_video_0.json").exists(), qwen.stderr
    llava = cli("take", project, 0, os.getpid())  # LLaVA's: the tag by default, the name of every earlier run
    assert llava.returncode == 0 and lock_of(project).exists(), llava.stderr
    again = cli("take", project, 0, os.getpid(), "--model-tag", "qwen2.5vl")
    assert again.returncode == claims.EXIT_HELD
    assert again.stdout.startswith(f"video 0: being processed by local run pid {os.getpid()} on ")
    qwen_token, llava_token = qwen.stdout.split()[0], llava.stdout.split()[0]
    assert cli("beat", project, 0, llava_token, "--model-tag", "qwen2.5vl").returncode == claims.EXIT_HELD
    assert cli("beat", project, 0, qwen_token, "--model-tag", "qwen2.5vl").returncode == 0
    assert claims.Fence(project, 0, qwen_token, model="qwen2.5vl")()["token"] == qwen_token  # the worker's fence
    with pytest.raises(claims.LostLock):  # LLaVA's lock is another run's
        claims.Fence(project, 0, qwen_token)()
    assert cli("release", project, 0, qwen_token, "--model-tag", "qwen2.5vl").returncode == 0
    assert not (project / ".lock_qwen2.5vl_video_0.json").exists() and lock_of(project).exists()
    bad = cli("take", project, 0, os.getpid(), "--model-tag", "../x")
    assert bad.returncode == claims.EXIT_ERROR and bad.stdout == ""
    assert bad.stderr == ("claims: error: --model-tag '../x' is no model family's tag (one of llava, qwen2.5vl: "
                          "python -m llava_soccer.families tag MODEL says a model's)\n")
