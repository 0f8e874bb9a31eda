"""status_llava.py as a user runs it: hand-made project trees (finals, archives, partials, locks) in every
state, a read-only project read by user nobody, files older than made_by, and a real Slurm job running."""
import gzip
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import ROOT, make_project, nobody_prefix
from llava_soccer import provenance, settings
from llava_soccer.jsonio import process_start
from test_slurm import ONE_GPU, SUBMIT, Site, base_env, wait_for_records  # noqa: F401 (fixtures)

GAMES = [f"england_epl/2015-2016/2015-08-{29 - i} - 17-00 Home {i} - 0 Away/1_224p.mkv" for i in range(7)]
GOAL = "{'label': 'Goal', 'team': 'home', 'confidence': 0.9, 'frame': 8, 'details': 'x'}"
FPS, FRAMES = 25.0, 1500  # what the worker probed: 60 s, 30 windows


def write(path: Path, obj, mtime=None):
    path.write_bytes(gzip.compress(json.dumps(obj).encode()) if path.suffix == ".gz" else json.dumps(obj).encode())
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def made_by(project, index):
    vf = provenance.video_file(project, project / "raw_data" / GAMES[index])
    return {"model": "tiny", "quantization": "fp32", "video_file": {**vf, "fps": FPS, "frames": FRAMES}}


def records(windows, failed=()):
    return [{"time": 2.0 * k, "end": 2.0 * k + 2.8, "status": "failed" if k in failed else "ok",
             "error": "OOM" if k in failed else None, "raw": None if k in failed else "None", "events": []}
            for k in windows]


def event(project, index, label, t):
    return {"time": t, "raw": "...", "label": label, "team": "home", "confidence": 0.9, "event_time": t + 1,
            "video": GAMES[index], "made_by": made_by(project, index)}


def lock(project, index, job, host, pid, since_s_ago, heartbeat_s_ago=1.0):
    info = {"video": index, "token": secrets.token_hex(16), "job": job, "array_task": None, "host": host,
            "pid": pid, "pid_start": process_start(pid) if host == socket.gethostname() else 0,
            "since": datetime.fromtimestamp(time.time() - since_s_ago).isoformat(timespec="seconds")}
    write(settings.lock_path(project, index), info, time.time() - heartbeat_s_ago)


def build(root: Path) -> Path:
    """Videos 0-6: done, incomplete, in progress (job 4242, this host, 10 min), failed (OOM), held by a dead
    job's stale lock, not started, stopped part-way."""
    project = root / "soccer_project"
    for game in GAMES:
        (project / "raw_data" / game).parent.mkdir(parents=True, exist_ok=True)
        (project / "raw_data" / game).write_bytes(game.encode() * 100)  # provenance reads bytes, never frames
    (project / "videos.txt").write_text("".join(f"{g}\n" for g in GAMES))
    now = time.time()
    write(settings.final_path(project, 0), [event(project, 0, "Goal", 10.0), event(project, 0, "Corner", 20.0),
                                            event(project, 0, "Goal", 40.0)])
    write(settings.raw_answers_path(project, 0), {"video": GAMES[0], "made_by": made_by(project, 0),
                                                  "windows_total": 30, "incomplete": None, "windows": []})
    write(settings.final_path(project, 1), [event(project, 1, "Foul", 4.0)])
    write(settings.raw_answers_path(project, 1), {"video": GAMES[1], "made_by": made_by(project, 1),
                                                  "incomplete": "16 of 30 windows undecodable from 28.0 s on"})
    lock(project, 2, "4242", socket.gethostname(), os.getpid(), since_s_ago=600)
    write(settings.partial_path(project, 2, 0), {"made_by": made_by(project, 2), "windows": records(range(4))},
          now - 5)
    write(settings.partial_path(project, 2, 1), {"made_by": made_by(project, 2), "windows": records(range(15, 19))},
          now - 65)
    write(settings.partial_path(project, 3, 0), {"made_by": made_by(project, 3),
                                                 "windows": records(range(15), failed=(5, 6))})
    lock(project, 4, "77", "node-gone", 1, since_s_ago=3600, heartbeat_s_ago=2000)
    write(settings.partial_path(project, 4, 0), {"made_by": made_by(project, 4), "windows": records(range(4))})
    write(settings.partial_path(project, 6, 0), {"made_by": made_by(project, 6), "windows": records(range(10))})
    return project


def status(*args, prefix=(), cwd=None):
    """`python status_llava.py ARGS` as typed: (exit code, stdout lines, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOCCER_PROJECT", "SLURM_CONF")}
    r = subprocess.run([*prefix, sys.executable, str(ROOT / "status_llava.py"), *map(str, args)],
                       capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=120)
    return r.returncode, r.stdout.splitlines(), r.stderr


def line_of(lines, index):
    found = [line for line in lines if re.match(rf"\s*{index}  ", line)]
    assert len(found) == 1, "\n".join(lines)
    return found[0]


def check_every_state(lines):
    assert re.fullmatch(r"status of .*soccer_project at \S+ \S+ \(7 videos; read-only\)", lines[0])
    states = [re.match(r"\d  (.{11})  ", line)[1].strip() for line in lines[1:8]]  # one aligned column
    assert states == ["done", "incomplete", "in progress", "failed", "held", "not started", "stopped"]
    assert line_of(lines, 0).endswith("3 events: Goal 2, Corner 1  [england_epl/2015-2016/2015-08-29 - 17-00 "
                                      "Home 0 - 0 Away/1_224p.mkv]")
    assert "1 event: Foul 1; 16 of 30 windows undecodable from 28.0 s on: reruns skip it while its video file " \
           "is unchanged" in line_of(lines, 1)
    # 8 windows saved from 10 min ago to 5 s ago: 0.8 a minute, 22 left
    when = r"(\S+ )?\d\d:\d\d"
    assert re.search(rf"in progress  job 4242 on {re.escape(socket.gethostname())} since {when}: 8/30 windows "
                     rf"\(27%\), 0\.8 win/min since start, ETA 27 min \(~{when}\), saved \d+ s ago  \[",
                     line_of(lines, 2))
    assert "failed       2 of 30 windows failed (OOM) at 10.0-15.0 s; 13/30 windows saved: a rerun retries the " \
           "failed windows and does the rest" in line_of(lines, 3)
    assert re.search(rf"held         job 77 on node-gone since {when}, lock stale \(no heartbeat for 20\d\d s\): "
                     r"the next job takes it over and resumes; 4/30 windows saved", line_of(lines, 4))
    assert "not started  a run processes it" in line_of(lines, 5)
    assert "stopped      10/30 windows saved, no job holds it (interrupted, cancelled or a worker failed): a rerun " \
           "resumes it" in line_of(lines, 6)
    assert lines[8:] == [
        "total: 7 videos: 1 done, 1 in progress, 1 failed, 1 stopped, 1 incomplete, 1 held, 1 not started; "
        "4 events in the finals",
        "events by label: Goal 2, Corner 1, Foul 1",
        "left: ~115 windows in 5 videos (1 of unknown length counted at ~30 windows, the mean of the 6 videos whose "
        "length is known)"] + [lines[11]]
    assert re.fullmatch(rf"estimate: ~2 h 2\d min more \(~{when}\) at 0\.8 win/min, the rate of the 1 video in "
                        r"progress now; more jobs at once go faster", lines[11])


def test_every_state_one_aligned_line_each_and_totals(tmp_path):
    project = build(tmp_path)
    code, lines, err = status("--project", project)
    assert code == 0, err
    check_every_state(lines)
    code, lines, _ = status("--videos", "0-1,5,9-12", cwd=project)  # in the project: no SOCCER_PROJECT needed
    assert code == 0 and [line.split("  ")[1].strip() for line in lines[1:4]] == ["done", "incomplete",
                                                                                "not started"]
    assert lines[4] == "videos 9-12 are not in videos.txt (it lists 7 videos)"
    assert lines[-1] == "estimate: no rate yet (no video in progress has saved windows for 30 s); run again while " \
                        "a job runs"


@pytest.mark.parametrize("args,message", [
    (["--videos", "3-1"], "argument --videos: '3-1': START (3) is after END (1): write the range 1-3"),
    (["--videos", "2-0"], "argument --videos: '2-0': START (2) is after END (0): write the range 0-2"),
    (["--watch", "0"], "argument --watch: '0' is not a number of seconds above 0: use e.g. --watch 60"),
    (["--watch", "soon"], "argument --watch: 'soon' is not a number of seconds above 0: use e.g. --watch 60"),
    (["--since", "1h"], "unrecognized arguments: --since 1h")])
def test_bad_arguments_are_one_line_naming_the_argument_exit_2(args, message):
    code, lines, err = status(*args)
    assert (code, lines, err) == (2, [], f"status_llava.py: error: {message} (see --help)\n")


@pytest.mark.xdist_group("serial")
def test_watch_prints_again_until_interrupted(tmp_path):
    project = build(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    # Ctrl-C as in a terminal: a test run started in the background (`bash tests/run.sh &`) ignores SIGINT, and
    # its children inherit that (python then installs no KeyboardInterrupt handler)
    p = subprocess.Popen([sys.executable, str(ROOT / "status_llava.py"), "--project", str(project), "--watch",
                          "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(2.5)
    p.send_signal(2)  # Ctrl-C
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.count("status of ") >= 2 and "Traceback" not in err


def test_read_only_project_read_by_user_nobody(open_tmp):
    """chmod a-w, read by a user for whom it counts: the same lines, and not one file created or changed."""
    project = build(open_tmp)
    for path in [*project.rglob("*"), project]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = {p: p.stat().st_mtime for p in project.rglob("*")}
    code, lines, err = status("--project", project, prefix=nobody_prefix(), cwd=open_tmp)
    assert code == 0, err
    check_every_state(lines)
    assert {p: p.stat().st_mtime for p in project.rglob("*")} == before


def test_files_older_than_made_by(tmp_path, video_25fps):
    """A seed-format final (one {time, raw} record per window, no made_by) and a partial that is a plain list:
    labels counted as compare_counts.py counts them, the length read from the video itself."""
    project = make_project(tmp_path, {"a/1_224p.mkv": video_25fps, "b/1_224p.mkv": video_25fps})
    (project / "videos.txt").write_text("a/1_224p.mkv\nb/1_224p.mkv\n")
    write(settings.final_path(project, 0), [{"time": 0.0, "raw": GOAL}, {"time": 2.0, "raw": GOAL},
                                            {"time": 4.0, "raw": "None"}])
    write(settings.partial_path(project, 1, 0), [{"time": 2.0 * k, "raw": "None"} for k in range(5)])
    code, lines, err = status("--project", project)
    assert code == 0, err
    assert line_of(lines, 0) == "0  done     1 event: Goal 1  [a/1_224p.mkv]"  # two windows, one goal
    assert line_of(lines, 1).startswith("1  stopped  5/30 windows saved, no job holds it")
    shutil.rmtree(project / "raw_data")  # no videos.txt, no video: the files alone
    (project / "videos.txt").unlink()
    code, lines, err = status("--project", project)
    assert code == 0 and line_of(lines, 1).startswith("1  stopped  5/? windows saved"), err
    assert line_of(lines, 0) == "0  done     1 event: Goal 1"  # a final alone is found too
    assert lines[-1] == "left: 1 video of unknown length (no final or partial says a length yet)"


def test_lock_files_that_are_no_lock_are_that_videos_line_the_rest_shows(tmp_path):
    """A lock that is a directory and one whose fields are lists or objects: that video is "locked" with what to
    do, every other line as before; the claims CLI names the directory (not a permission) for the same lock."""
    project = build(tmp_path)
    settings.lock_path(project, 5).mkdir()
    write(settings.lock_path(project, 6), {"video": 6, "token": ["a"], "job": {"id": 1}, "since": [2024]})
    code, lines, err = status("--project", project)
    assert code == 0 and "Traceback" not in err, err
    assert line_of(lines, 5).startswith("5  locked       unreadable lock file .lock_llava_video_5.json: is a "
                                        "directory; remove it if no job runs  [")
    assert line_of(lines, 6).startswith('6  locked       lock file .lock_llava_video_6.json has token ["a"], not a '
                                        "string: remove it if no job runs  [")
    assert [line_of(lines, i).split("  ")[1].strip() for i in (0, 1, 3, 4)] == ["done", "incomplete", "failed",
                                                                                "held"]
    assert "2 locked" in next(line for line in lines if line.startswith("total: "))
    r = subprocess.run([sys.executable, "-m", "llava_soccer.claims", "take", str(project), "5", str(os.getpid())],
                       capture_output=True, text=True, cwd=ROOT)
    assert (r.returncode, r.stdout) == (2, "")
    lock = settings.lock_path(project, 5)
    assert r.stderr == (f"claims: error: the lock {lock} is a directory, not a file: remove the directory {lock} "
                        f"(no job can hold a lock there)\n")


@pytest.mark.parametrize("fps,frames", [(25.0, float("inf")), (1e-9, 1e12), (float("nan"), 1500), (25.0, -3)])
def test_numbers_from_files_are_checked_before_any_arithmetic(tmp_path, fps, frames):
    """made_by's fps and frames (Infinity, NaN, 1e12 frames at 1e-9 fps: a loop of 10+ minutes) make the length
    unknown ("?"), read in no time; the other lines are as before."""
    project = build(tmp_path)
    mb = made_by(project, 6)
    mb["video_file"].update(fps=fps, frames=frames)
    write(settings.partial_path(project, 6, 0), {"made_by": mb, "windows": records(range(10))})
    code, lines, err = status("--project", project)  # status() stops it after 120 s: it would spin for minutes
    assert code == 0, err
    assert line_of(lines, 6).startswith("6  stopped      10/? windows saved, no job holds it")


def test_ranges_are_bounded_by_what_exists_and_a_closed_pipe_is_quiet(tmp_path):
    """--videos 0-999999999 shows the 7 videos (not a billion rows, no MemoryError); `| head -3` ends it quietly
    (141, as a shell says of SIGPIPE), nothing on stderr."""
    project = build(tmp_path)
    code, lines, err = status("--project", project, "--videos", "0-999999999")
    assert code == 0, err
    assert lines[0].endswith("(7 videos; read-only)")
    assert "videos 7-999999999 are not in videos.txt (it lists 7 videos)" in lines
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} status_llava.py --project '{project}' "
                                      f"--watch 0.2 | head -3"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=60)
    assert (r.returncode, r.stderr, len(r.stdout.splitlines())) == (141, "", 3)


def test_a_renamed_video_is_counted_once(tmp_path):
    """Video 0's file renamed: the first run after lists it again as video 7. Before 7 is processed, 0 says its
    file is gone; once 7 has its final (same bytes), 0 is a duplicate and its events are not counted twice."""
    project = build(tmp_path)
    old, new = project / "raw_data" / GAMES[0], project / "raw_data" / "renamed" / "1_224p.mkv"
    final0 = [event(project, 0, "Goal", 10.0), event(project, 0, "Corner", 20.0), event(project, 0, "Goal", 40.0)]
    new.parent.mkdir()
    old.rename(new)
    with open(project / "videos.txt", "a") as f:
        f.write("renamed/1_224p.mkv\n")
    code, lines, err = status("--project", project)
    assert code == 0, err
    assert line_of(lines, 0).startswith("0  done         3 events: Goal 2, Corner 1; ⚠️ its video file raw_data/"
                                        f"{GAMES[0]} is gone (renamed or deleted?): a renamed video is listed again "
                                        "under a new index")
    assert "not started" in line_of(lines, 7) and "4 events in the finals" in lines[9]
    mb = {**final0[0]["made_by"], "video_file": {**provenance.video_file(project, new), "fps": FPS,
                                                  "frames": FRAMES}}
    write(settings.final_path(project, 7), [{**e, "video": "renamed/1_224p.mkv", "made_by": mb} for e in final0])
    code, lines, err = status("--project", project)
    assert code == 0, err
    assert line_of(lines, 0).startswith("0  duplicate    its video file is gone and video 7 is the same video (size "
                                        "and digest; renamed?), whose final counts it: delete this final and its "
                                        "raw_answers file  [")
    assert line_of(lines, 7).startswith("7  done         3 events: Goal 2, Corner 1  [renamed/1_224p.mkv]")
    assert lines[9].startswith("total: 8 videos: 1 done, ") and "1 duplicate" in lines[9]
    assert lines[9].endswith("; 4 events in the finals") and lines[10] == "events by label: Goal 2, Corner 1, Foul 1"


@pytest.mark.xdist_group("serial")  # the process that holds the Slurm cluster (tests/conftest.py)
@pytest.mark.slow
def test_a_real_slurm_job_is_in_progress_with_its_job_id(tmp_path_factory, slurm_cluster, base_env,  # noqa: F811
                                                         video_100s):
    """sbatch submit_llava.sh 0 on a 100 s video (50 windows); while it runs, status names the job."""
    cluster = slurm_cluster
    site = Site(tmp_path_factory.mktemp("status_site"), "run", {"g/1_224p.mkv": video_100s},
                {**base_env, "LLAVA_BATCH_SIZE": "1"}, cluster)
    job = site.sbatch(*ONE_GPU, SUBMIT, "0")  # one worker: what status says of a running job is the point
    try:
        wait_for_records(site, 0, 2, job)
        env = {**cluster.env, "SOCCER_PROJECT": str(site.project)}
        r = subprocess.run([sys.executable, str(ROOT / "status_llava.py"), "--videos", "0"], capture_output=True,
                           text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert re.match(rf"0  in progress  job {job} on {re.escape(socket.gethostname())} since \d\d:\d\d: "
                        r"\d+/50 windows \(\d+%\)", lines[1]), r.stdout
        assert lines[1].endswith("[g/1_224p.mkv]") and "1 in progress" in lines[2]
    finally:
        cluster.run("scancel", job, check=False)
        cluster.wait_job(job, timeout=120)


@pytest.mark.slow
def test_a_video_whose_workers_failed_before_saving_a_window_is_failed_with_the_reason(tmp_path, video_10s,
                                                                                     none_checkpoint):
    """A worker that stops before its first window (here: a model folder that is not there) leaves no partial: its
    error line goes to .failed_llava_video_0.json and status says failed with that line, not `not started`. A run
    that works and its merge replace it: done."""
    project = make_project(tmp_path, {"g/1_224p.mkv": video_10s})  # 5 windows: the states are the point
    worker = [sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu-id", "0", "--num-workers", "1",
              "--video-index", "0", "--project", str(project), "--quantization", "fp32", "--max-new-tokens", "4"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([*worker, "--model", str(tmp_path / "no model")], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "no such directory" in r.stderr
    code, lines, _ = status("--project", project)
    assert code == 0
    assert re.search(r"^\s*0  failed .*no such directory.* \(a worker stopped before saving a window\): fix that "
                     r"and rerun", line_of(lines, 0)), lines
    r = subprocess.run([*worker, "--model", str(none_checkpoint)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "merge_results_llava.py"), "--video-index", "0", "--project",
                        str(project)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not settings.failed_note_path(project, 0).exists()
    lines = status("--project", project)[1]
    assert re.match(r"\s*0  done ", line_of(lines, 0)), lines


def test_a_second_models_videos_by_its_tag_and_the_other_models_in_one_line(tmp_path):
    """Issue 32: every state of build(), with Qwen2.5-VL's files (tag qwen2.5vl) in place of LLaVA's, reads the
    same through LLAVA_MODEL=<a Qwen checkpoint>; LLaVA's view of that project has none of them and one line says
    which models have finals there."""
    project = build(tmp_path)
    for template in (settings.FINAL, settings.RAW_ANSWERS, settings.PARTIAL, settings.LOCK):
        pattern = settings.name_pattern(template, model="llava")
        for f in project.iterdir():
            if m := pattern.fullmatch(f.name):
                f.rename(project / template.format(model="qwen2.5vl", **m.groupdict()))  # keeps its mtime
    qwen = tmp_path / "Qwen2.5-VL checkpoint"
    qwen.mkdir()
    (qwen / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    code, lines, err = status("--project", project, prefix=("env", f"LLAVA_MODEL={qwen}"))
    assert code == 0, err
    check_every_state(lines)
    assert lines[0].startswith(f"status of {qwen} (qwen2.5vl) in {project} at ")
    code, lines, err = status("--project", project)  # the default model, LLaVA
    assert code == 0 and lines[0].startswith(f"status of {settings.DEFAULT_MODEL} (llava) in {project} at "), err
    assert lines[1] == ("other models' finals here: qwen2.5vl (2 videos): status_llava.py --model MODEL (or "
                        "LLAVA_MODEL) shows a model's videos")
    assert [line.split("  ")[1] for line in lines[2:9]] == ["not started"] * 7
    write(settings.final_path(project, 5), [event(project, 5, "Goal", 8.0)])
    code, lines, err = status("--project", project, "--model", qwen, "--videos", "5")
    assert code == 0 and lines[1].startswith("other models' finals here: llava (1 video): "), err
    assert line_of(lines, 5).startswith("5  not started  "), lines
    code, lines, err = status("--project", project, "--model", tmp_path / "no such model")
    assert (code, lines) == (1, []) and err.startswith(
        f"status_llava.py: error: --model {tmp_path / 'no such model'}: no such directory")


@pytest.mark.slow
def test_a_second_models_worker_failure_is_noted_as_its_own(tmp_path, video_25fps):
    """A Qwen2.5-VL worker that stops before its first window (here: a checkpoint folder with only its config.json)
    notes why in .failed_qwen2.5vl_video_0.json: status of that model says failed with the line, LLaVA's view of the
    video is untouched."""
    project = make_project(tmp_path, {"g/1_224p.mkv": video_25fps})
    qwen = tmp_path / "qwen checkpoint"
    qwen.mkdir()
    (qwen / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    r = subprocess.run([sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu-id", "0", "--num-workers", "1",
                        "--video-index", "0", "--project", str(project), "--quantization", "fp32", "--model",
                        str(qwen)], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode != 0 and settings.failed_note_path(project, 0, "qwen2.5vl").exists(), r.stderr
    assert not settings.failed_note_path(project, 0).exists()
    code, lines, _ = status("--project", project, "--model", qwen)
    assert code == 0 and re.search(r"^\s*0  failed .*\(a worker stopped before saving a window\): fix that and rerun",
                                   line_of(lines, 0)), lines
    assert re.match(r"\s*0  not started ", line_of(status("--project", project)[1], 0))
