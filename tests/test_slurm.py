"""submit_llava.sh on a real one-node Slurm cluster (tests/slurm_cluster.py) with 4 fake GPUs.

Real sbatch / scancel / scontrol / sacct, the tiny parrot checkpoint on CPU and short barcoded
H.264 videos, everything under a path with spaces and quotes. Jobs are submitted as users
type them (`sbatch submit_llava.sh 0 1`, the #SBATCH header as shipped) from a submit
directory; what is checked is what a user sees: files, the log's summary, exit codes,
processes left behind.
"""
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import ROOT, make_project
from llava_soccer import synthetic

# The tests on the real Slurm cluster run one after another, in the one process that holds the cluster (the "serial"
# group: tests/run.sh, tests/conftest.py). The runs without Slurm below need no cluster, so any process takes them.
SLURM = pytest.mark.xdist_group("serial")

SUBMIT = ROOT / "submit_llava.sh"
# One GPU and 2 CPUs: one worker per video (each worker process costs seconds of CPU to start), and two jobs fit on
# the node at once. Where several workers per video are the point (one GPU each, a partial file each, each resuming
# its own slice), two: TWO_GPUS.
ONE_GPU = ("--gres=gpu:1", "--cpus-per-task=2")
TWO_GPUS = ("--gres=gpu:2", "--cpus-per-task=4")


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    return slurm_cluster  # (conftest.py: one per session, shared with tests/test_status.py)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Short videos (10 s = 5 windows); the tests that interrupt a run take conftest.py's video_100s (50 windows)."""
    d = tmp_path_factory.mktemp("slurm_videos")
    corrupt = d / "corrupt.mkv"
    corrupt.write_bytes(b"\x1a\x45\xdf\xa3 this is not a video " * 500)
    return {"a": synthetic.make_video(d / "a.mkv", 10), "b": synthetic.make_video(d / "b.mkv", 10),
            "c": synthetic.make_video(d / "c.mkv", 10), "corrupt": corrupt}


@pytest.fixture(scope="module")
def base_env(goal_checkpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(LLAVA_MODEL=str(goal_checkpoint), LLAVA_QUANT="fp32", LLAVA_PYTHON=sys.executable,
               LLAVA_HOME=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return env


class Site:
    """A project and a submit directory, both under odd_root."""

    def __init__(self, root, name, videos, env, cluster=None):
        self.project = make_project(root / name, videos)
        self.project.mkdir(parents=True, exist_ok=True)
        self.submit_dir = root / name / "submit dir"
        self.submit_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "SOCCER_PROJECT": str(self.project)}
        self.cluster = cluster

    def sbatch(self, *args):
        return self.cluster.sbatch(*args, cwd=self.submit_dir, env=self.env)

    def log(self, job_id):
        return (self.submit_dir / f"llava_{job_id}.log").read_text()

    def final(self, i):
        return self.project / f"final_predictions_llava_video_{i}.json"

    def partials(self, i):
        return sorted(self.project.glob(f"partial_results_llava_vid{i}_gpu*.json"))

    def records(self, i):
        """Window records saved so far in video i's partial files (written atomically)."""
        return [r for p in self.partials(i) for r in json.loads(p.read_text())["windows"]]

    def workers_alive(self):
        """Worker processes (any state but zombie) working on this project."""
        out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
        return [line for line in out.splitlines()
                if "llava_split_worker.py" in line and str(self.project) in line and not line.startswith("Z")]


def summary(log):
    """The log's summary lines as {'done': [...], 'skipped': [...], ...}."""
    found = {}
    for key in ("done", "skipped", "incomplete", "failed", "interrupted", "not started"):
        lines = re.findall(rf"\]   {key}: +(.*)$", log, re.M)
        assert lines, f"no '{key}:' summary line in the log:\n{log}"
        found[key] = [int(v) for v in lines[-1].split() if v != "-"]
    return found


def worker_gpus(log, video):
    """{slice: CUDA_VISIBLE_DEVICES} from the launcher's lines for one video (the last run)."""
    lines = re.findall(rf"video {video}: worker (\d+)/(\d+) pid (\d+) on GPU .*\(CUDA_VISIBLE_DEVICES=(.*)\)$",
                       log, re.M)
    return {int(s): gpu for s, _, _, gpu in lines}


def wait_for_records(site, video, n, job_id, timeout=400):
    def enough():
        state = site.cluster.job_state(job_id)
        assert state in ("PENDING", "RUNNING"), f"job {job_id} {state} before {n} windows:\n{site.log(job_id)}"
        return len(site.records(video)) >= n
    site.cluster.wait_until(enough, timeout, f"{n} windows of video {video} saved")


@pytest.fixture(scope="module")
def main_site(odd_root, cluster, clips, base_env):
    return Site(odd_root, "main", {"a.mkv": clips["a"], "b.mkv": clips["b"]}, base_env, cluster)


@pytest.fixture(scope="module")
def first_run(main_site):
    """`sbatch --gres=gpu:2 --cpus-per-task=4 submit_llava.sh 0 1` on two fresh videos, typed in a directory holding
    the script (its own #SBATCH lines, 4 GPUs, are taken by test_second_sbatch_skips_finished_videos's job)."""
    shutil.copy(SUBMIT, main_site.submit_dir / "submit_llava.sh")
    job = main_site.sbatch(*TWO_GPUS, "submit_llava.sh", "0", "1")
    state = main_site.cluster.wait_job(job, timeout=600)
    return job, state, main_site.log(job)


# --- tests ----------------------------------------------------------------------------------

@SLURM
@pytest.mark.slow
def test_sbatch_processes_both_videos_with_one_gpu_per_worker(main_site, first_run):
    job, state, log = first_run
    assert state == "COMPLETED", log
    assert main_site.cluster.finished_runs(job) == [("COMPLETED", "0:0")]
    for i in (0, 1):
        final = json.loads(main_site.final(i).read_text())
        assert final and all(e["label"] == "Goal" for e in final)
        assert main_site.partials(i) == []  # merged, then cleaned
        # two workers, each pinned to a different one of the job's two GPUs
        assert worker_gpus(log, i) == {0: "0", 1: "1"}
        assert f"video {i}: done -> {main_site.final(i)}" in log
    assert "GPUs: 0 1" in log and f"job {job} on llavanode" in log
    # which video each is, and where in the job: "video 1 [2/2 in this job]: b.mkv"
    assert re.search(r"\] video 0 \[1/2 in this job\]: a\.mkv$", log, re.M)
    assert re.search(r"\] video 1 \[2/2 in this job\]: b\.mkv$", log, re.M)
    assert summary(log) == {"done": [0, 1], "skipped": [], "incomplete": [], "failed": [], "interrupted": [],
                            "not started": []}
    assert not main_site.workers_alive()


@SLURM
@pytest.mark.slow
def test_second_sbatch_skips_finished_videos(main_site, first_run):
    before = {i: main_site.final(i).stat().st_mtime_ns for i in (0, 1)}
    job = main_site.sbatch(SUBMIT, "0", "1")
    assert main_site.cluster.wait_job(job) == "COMPLETED"
    log = main_site.log(job)
    assert summary(log)["skipped"] == [0, 1] and summary(log)["done"] == []
    assert "starting" not in log  # no worker started
    assert {i: main_site.final(i).stat().st_mtime_ns for i in (0, 1)} == before


@SLURM
@pytest.mark.slow
def test_rerun_of_a_deleted_video_and_a_corrupt_video_failing_alone(main_site, first_run, clips):
    # the README's "reprocess a video": delete its final (and partials); add a corrupt video (index 2)
    # and a good one after it (index 3): the failure must not stop the loop.
    main_site.final(1).unlink()
    kept = main_site.final(0).stat().st_mtime_ns
    os.symlink(clips["corrupt"], main_site.project / "raw_data" / "corrupt.mkv")
    job = main_site.sbatch(*ONE_GPU, SUBMIT, "0", "2")  # index 2 = corrupt.mkv (videos.txt appends new files)
    assert main_site.cluster.wait_job(job) == "FAILED"
    log = main_site.log(job)
    assert summary(log) == {"done": [1], "skipped": [0], "incomplete": [], "failed": [2], "interrupted": [],
                            "not started": []}
    assert main_site.cluster.finished_runs(job) == [("FAILED", "1:0")]  # "some videos failed"
    assert main_site.final(1).exists() and main_site.final(0).stat().st_mtime_ns == kept
    assert not main_site.final(2).exists()
    assert "cannot read video" in log  # the worker's one-line reason is in the job log
    assert re.search(r"video 2: FAILED \(worker 0 exit 1", log)

    # the loop goes on after a failed video
    os.symlink(clips["c"], main_site.project / "raw_data" / "zz_next.mkv")  # index 3
    job = main_site.sbatch(*ONE_GPU, SUBMIT, "2", "3")
    assert main_site.cluster.wait_job(job) == "FAILED"
    log = main_site.log(job)
    assert summary(log)["failed"] == [2] and summary(log)["done"] == [3]
    assert main_site.final(3).exists()


@SLURM
@pytest.mark.slow
def test_scancel_then_resume_then_usr1_requeue(odd_root, cluster, video_100s, base_env):
    """scancel mid-video: workers save and exit, none is left behind; a new sbatch resumes
    without redoing windows; USR1 (what --signal=B:USR1@120 sends before the time limit)
    makes the job save and requeue itself, and the requeued run finishes the video."""
    site = Site(odd_root, "interrupt", {"long.mkv": video_100s}, base_env, cluster)

    # 1. scancel while both workers are mid-slice
    job1 = site.sbatch(*TWO_GPUS, SUBMIT, "0", "0")
    wait_for_records(site, 0, 4, job1)
    log = site.log(job1)
    pids = {int(p) for p in re.findall(r"video 0: worker \d/2 pid (\d+) on GPU", log)}
    assert len(pids) == 2
    seen = {}
    for pid in pids:  # what each worker process really has in its environment
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        seen[pid] = [v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"CUDA_VISIBLE_DEVICES=")]
    assert sorted(v for vs in seen.values() for v in vs) == ["0", "1"], seen
    cluster.run("scancel", job1)
    assert cluster.wait_job(job1) == "CANCELLED"
    assert not site.workers_alive(), "scancel left workers behind"
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    saved = {(r["time"], r["raw"]) for r in site.records(0)}
    assert len(saved) >= 4 and not site.final(0).exists()
    log = site.log(job1)
    assert "received SIGTERM" in log and summary(log)["interrupted"] == [0]

    # 2. a new sbatch resumes: each worker starts after its saved windows
    job2 = site.sbatch(*TWO_GPUS, SUBMIT, "0", "0")
    wait_for_records(site, 0, len(saved) + 4, job2)
    log = site.log(job2)
    already = [int(n) for n in re.findall(r"(\d+) already in partial_results_llava_vid0_gpu\d\.json", log)]
    assert sum(already) == len(saved), log
    assert saved <= {(r["time"], r["raw"]) for r in site.records(0)}  # earlier windows kept, not redone

    # 3. USR1 to the batch shell, as Slurm sends it 120 s before the time limit
    cluster.run("scancel", "--batch", "--signal=USR1", job2)
    cluster.wait_until(lambda: cluster.job_info(job2).get("Restarts") == "1", 240, f"job {job2} requeued")
    log = site.log(job2)
    assert "received SIGUSR1" in log and f"requeueing {job2}" in log
    assert summary(log)["interrupted"] == [0] and not site.final(0).exists()
    at_requeue = len(site.records(0))
    # Slurm holds a requeued job (BeginTime) for cred_expire: 120 s by default, 10 s on the test cluster.
    # Starting it before the node has forgotten the old run's credential fails now and then with
    # "Job credential revoked", so wait out the hold, then ask for the start the scheduler would
    # otherwise make only at its next periodic pass (up to a minute later).
    def hold_over():
        eligible = cluster.job_info(job2).get("EligibleTime", "")  # the held job's begin time
        return eligible[:1].isdigit() and datetime.now() >= datetime.fromisoformat(eligible)

    cluster.wait_until(hold_over, 120, f"end of job {job2}'s requeue hold")
    cluster.run("scontrol", "update", f"JobId={job2}", "StartTime=now")
    assert cluster.wait_job(job2, timeout=600) == "COMPLETED"
    log = site.log(job2)  # both runs append to the same log
    assert "(restart 1)" in log
    resumed = [int(n) for n in re.findall(r"(\d+) already in partial_results_llava_vid0_gpu\d\.json", log)][-2:]
    assert sum(resumed) == at_requeue
    assert summary(log)["done"] == [0]
    assert site.final(0).exists() and site.partials(0) == []
    assert len(json.loads(site.final(0).read_text())) > 0
    assert not site.workers_alive()
    assert ("COMPLETED", "0:0") in cluster.finished_runs(job2)


@SLURM
@pytest.mark.slow
def test_job_array_one_video_per_task(odd_root, cluster, clips, base_env):
    site = Site(odd_root, "array", {"a.mkv": clips["a"], "b.mkv": clips["b"]}, base_env, cluster)
    # one GPU and 2 CPUs per task, so both tasks fit on the node at once ("many nodes")
    # the README's command: each task's log named by the array and the task (= the video)
    job = site.sbatch("--array=0-1", "--output=llava_%A_%a.log", "--gres=gpu:1", "--cpus-per-task=2", SUBMIT)
    states = cluster.wait_job(job, timeout=600)
    assert set(states.values()) == {"COMPLETED"}, states
    assert site.final(0).exists() and site.final(1).exists()
    assert sorted(p.name for p in site.submit_dir.glob("llava_*.log")) == [f"llava_{job}_0.log", f"llava_{job}_1.log"]
    for video in (0, 1):
        log = (site.submit_dir / f"llava_{job}_{video}.log").read_text()
        assert summary(log)["done"] == [video] and "1 worker(s) per video" in log
        assert f"(array task {job}_{video})" in log


@SLURM
@pytest.mark.slow
def test_two_jobs_at_once_never_run_one_video_twice(odd_root, cluster, clips, video_100s, base_env):
    """The same range submitted twice while the first job runs: each video's lock keeps the
    second job off the video the first is processing (and the reverse), no worker or merge of
    one job touches the other's files, both jobs complete and every video is done once."""
    site = Site(odd_root, "twice", {"a_long.mkv": video_100s, "b.mkv": clips["b"]}, base_env, cluster)
    job_a = site.sbatch(*ONE_GPU, SUBMIT, "0", "1")
    lock = site.project / ".lock_llava_video_0.json"

    def a_works_on_video_0():
        assert site.cluster.job_state(job_a) in ("PENDING", "RUNNING"), site.log(job_a)
        return lock.exists() and "video 0: worker 0/1 pid" in site.log(job_a)
    cluster.wait_until(a_works_on_video_0, 300, f"job {job_a} working on video 0")
    assert json.loads(lock.read_text())["job"] == job_a
    job_b = site.sbatch(*ONE_GPU, SUBMIT, "0", "1")
    assert cluster.wait_job(job_a) == "COMPLETED" and cluster.wait_job(job_b) == "COMPLETED"

    log_a, log_b = site.log(job_a), site.log(job_b)
    started = [set(map(int, re.findall(r"\] video (\d+): starting", log))) for log in (log_a, log_b)]
    assert started[0] == {0} and started[1] == {1}, (log_a, log_b)  # each video's workers ran in one job
    assert re.search(rf"\] video 0: being processed by job {job_a} on \S+ since \d\d:\d\d, skipped$", log_b, re.M)
    nothing_else = {"incomplete": [], "failed": [], "interrupted": [], "not started": []}
    assert summary(log_a) == {"done": [0], "skipped": [1], **nothing_else}
    assert summary(log_b) == {"done": [1], "skipped": [0], **nothing_else}
    assert site.final(0).exists() and site.final(1).exists()
    for log in (log_a, log_b):
        assert "Traceback" not in log and "FileNotFoundError" not in log
    assert not list(site.project.glob(".lock_*")) and not list(site.project.glob(".*.tmp"))


@SLURM
@pytest.mark.slow
def test_array_task_with_a_range_is_a_usage_error(odd_root, cluster, clips, base_env):
    site = Site(odd_root, "array_usage", {"a.mkv": clips["a"]}, base_env, cluster)
    job = site.sbatch("--array=0", SUBMIT, "0", "5")
    state = cluster.wait_job(job)
    assert set(state.values() if isinstance(state, dict) else [state]) == {"FAILED"}
    log = next(site.submit_dir.glob("llava_*.log")).read_text()
    assert "in a job array give no START END" in log


@SLURM
@pytest.mark.slow
def test_array_tasks_past_the_end_complete_and_a_range_past_it_fails_with_one_line(odd_root, cluster, clips,
                                                                                   base_env):
    """One video: the array tasks past it are COMPLETED with one line each (the part of the array that does
    not exist is no failure), a range of which no video exists is FAILED, exit 2, one line; no worker starts."""
    site = Site(odd_root, "past the end", {"a.mkv": clips["a"]}, base_env, cluster)
    job = site.sbatch("--array=1-2", *ONE_GPU, SUBMIT)
    states = cluster.wait_job(job)
    assert set(states.values()) == {"COMPLETED"}, states
    logs = [p.read_text() for p in site.submit_dir.glob("llava_*.log")]
    assert sorted(re.sub(r"^\[[^]]+\] ", "", log) for log in logs) == [
        f"array task {task}: video {task} does not exist, videos.txt lists 1 video (0); nothing to do\n"
        for task in (1, 2)]  # one line each

    job = site.sbatch(*ONE_GPU, SUBMIT, "3", "9")
    assert cluster.wait_job(job) == "FAILED"
    assert cluster.finished_runs(job) == [("FAILED", "2:0")]
    (line,) = site.log(job).splitlines()
    assert line.endswith(f"ERROR: videos 3..9 asked, but videos.txt lists 1 video (0): put more videos under "
                         f"{site.project}/raw_data (they get the next indices) or ask for 0 (nothing started)")
    assert not site.final(0).exists() and not list(site.project.glob(".lock_*"))


# --- without Slurm ----------------------------------------------------------------------------

def run_local(site, *args, **env):
    return subprocess.run(["bash", str(SUBMIT), *args], capture_output=True, text=True,
                          env={**site.env, **env}, cwd=site.submit_dir, timeout=900)


@pytest.mark.slow
def test_plain_bash_without_slurm_runs_one_worker_per_visible_gpu(odd_root, clips, base_env):
    site = Site(odd_root, "local", {"a.mkv": clips["a"]}, base_env)
    r = run_local(site, "0", "0", CUDA_VISIBLE_DEVICES="3,5")
    assert r.returncode == 0, r.stderr
    assert "local run on" in r.stderr and "2 worker(s) per video" in r.stderr
    assert worker_gpus(r.stderr, 0) == {0: "3", 1: "5"}
    assert summary(r.stderr)["done"] == [0] and site.final(0).exists()
    r = run_local(site, "0")  # no GPU visible: one CPU worker; video 0 is skipped
    assert r.returncode == 0 and summary(r.stderr)["skipped"] == [0]
    if shutil.which("nvidia-smi") is None:
        assert "1 worker(s) per video, GPUs: none (CPU)" in r.stderr

    # that final copied into a new project whose video 0 is another one: refused, not skipped as done
    other = Site(odd_root, "local copy", {"b.mkv": clips["b"]}, base_env)
    copied = other.final(0)
    shutil.copy(site.final(0), copied)
    r = run_local(other, "0")
    assert r.returncode == 2 and not other.partials(0) and "worker" not in r.stderr
    (line,) = r.stderr.splitlines()
    assert line.endswith(f"ERROR: {copied} was made from 'a.mkv', but video #0 of {other.project}/videos.txt is "
                         f"'b.mkv': it belongs to another project or an older videos.txt. Move it and its "
                         f"raw_answers file out of {other.project}, then rerun video 0 (nothing started)")


@pytest.mark.slow
def test_workers_sharing_a_gpu_plan_for_their_share(odd_root, clips, base_env):
    """Two workers on one GPU: each plans for half of its memory (LLAVA_GPU_SHARE=2, gpus.py), and the log says
    so once, with the faster choice; planned for the whole card, both would fill the same memory."""
    site = Site(odd_root, "shared gpu", {"a.mkv": clips["a"]}, base_env)
    r = run_local(site, "0", "0", CUDA_VISIBLE_DEVICES="3", LLAVA_NUM_WORKERS="2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("2 workers share 1 GPU(s): each plans for 1/2 of its GPU's memory; LLAVA_NUM_WORKERS=1 "
                          "(one worker per GPU, batching in all its memory) is faster") == 1
    assert worker_gpus(r.stderr, 0) == {0: "3", 1: "3"} and r.stderr.count("gpu_share=2") == 2


@pytest.mark.parametrize("args,message", [
    ([], "usage: sbatch submit_llava.sh START [END]"),
    (["a", "b"], "START must be a whole number from 0 to 999999999 in decimal digits, not 'a'"),
    (["3", "1"], "START (3) is after END (1)"),
])
def test_usage_errors_exit_2(odd_root, base_env, args, message):
    site = Site(odd_root, "usage", {}, base_env)
    r = run_local(site, *args)
    assert r.returncode == 2 and message in r.stderr


def test_missing_scripts_or_project_are_clear_errors(odd_root, base_env, tmp_path):
    site = Site(odd_root, "usage", {}, base_env)
    r = run_local(site, "0", SOCCER_PROJECT=str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "project directory" in r.stderr and "does not exist" in r.stderr
    r = run_local(site, "0", LLAVA_HOME=str(tmp_path))
    assert r.returncode == 2 and "llava_split_worker.py and merge_results_llava.py not found" in r.stderr


@SLURM
@pytest.mark.slow
def test_a_truncated_video_ends_incomplete_is_skipped_while_unchanged_and_redone_once_replaced(
        odd_root, cluster, video_25fps, base_env, tmp_path):
    """A download cut short: the job says INCOMPLETE (not done) and exits 1; the next job skips it (a rerun
    cannot fill undecodable windows) and still says incomplete; once the full file is in place it is redone."""
    full = video_25fps  # 60 s, 30 windows
    cut = tmp_path / "long.mkv"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 5])
    site = Site(odd_root, "truncated", {"long.mkv": cut}, base_env, cluster)
    job = site.sbatch(*ONE_GPU, SUBMIT, "0", "0")
    assert cluster.wait_job(job) == "FAILED"
    log = site.log(job)
    assert summary(log)["incomplete"] == [0] and summary(log)["done"] == []
    assert re.search(r"⚠️ video 0 is INCOMPLETE: \d+ of 30 windows undecodable from \d+\.0 s on: ", log), log
    assert f"video 0: INCOMPLETE -> {site.final(0)}" in log
    assert cluster.finished_runs(job) == [("FAILED", "1:0")]
    assert site.final(0).exists() and site.partials(0) == []

    job = site.sbatch(*ONE_GPU, SUBMIT, "0", "0")  # the same file: nothing a rerun can do
    assert cluster.wait_job(job) == "FAILED"
    log = site.log(job)
    assert "starting" not in log and summary(log)["incomplete"] == [0]
    assert re.search(r"video 0: skipped, final_predictions_llava_video_0.json is INCOMPLETE \(\d+ of 30 windows "
                     r"undecodable from \d+\.0 s on\) and its video file is unchanged, so a rerun cannot fill it", log)

    (site.project / "raw_data" / "long.mkv").unlink()  # the full download arrives under the same name
    os.symlink(full, site.project / "raw_data" / "long.mkv")
    job = site.sbatch(*ONE_GPU, SUBMIT, "0", "0")
    assert cluster.wait_job(job) == "COMPLETED", site.log(job)
    log = site.log(job)
    assert "has changed since: processing it again" in log and summary(log)["done"] == [0]
    final = json.loads(site.final(0).read_text())
    assert final and {e["made_by"]["video_file"]["size"] for e in final} == {full.stat().st_size}


@pytest.mark.slow
def test_a_slice_of_another_model_is_refused_then_replaced_on_request(odd_root, clips, base_env, none_checkpoint):
    """Slice 0 made with model A, then the job with model B: no final mixing A and B. (One worker per video: each
    worker process costs seconds of CPU; the check is the partial's, whatever the slice.)"""
    site = Site(odd_root, "two models", {"a.mkv": clips["a"]}, base_env)
    worker_a = [sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu-id", "0", "--num-workers", "1",
                "--video-index", "0", "--project", str(site.project), "--model", str(none_checkpoint),
                "--quantization", "fp32"]
    subprocess.run(worker_a, check=True, capture_output=True, env=site.env)
    r = run_local(site, "0", "0", LLAVA_NUM_WORKERS="1", CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 1 and summary(r.stderr)["failed"] == [0] and not site.final(0).exists()
    assert re.search(r"error: partial file .*partial_results_llava_vid0_gpu0.json was made by another run "
                     r"\(model .*none -> .*goal; model_revision dir sha256:\w+ -> dir sha256:\w+\)", r.stderr), r.stderr
    r = run_local(site, "0", "0", LLAVA_NUM_WORKERS="1", CUDA_VISIBLE_DEVICES="", LLAVA_REPLACE_MISMATCHED="1")
    assert r.returncode == 0, r.stderr
    final = json.loads(site.final(0).read_text())
    assert final and {e["label"] for e in final} == {"Goal"}
    assert {e["made_by"]["model"] for e in final} == {base_env["LLAVA_MODEL"]}


@SLURM
@pytest.mark.slow
def test_sbatch_in_the_project_directory_needs_no_soccer_project(odd_root, cluster, clips, base_env):
    """`cd /elsewhere/soccer_project && sbatch submit_llava.sh 0 0` after a setup outside the default, in a
    new shell where SOCCER_PROJECT is not exported: the submit directory is the project (it has raw_data/)."""
    site = Site(odd_root, "project here", {"a.mkv": clips["a"]}, base_env, cluster)
    env = {k: v for k, v in site.env.items() if k != "SOCCER_PROJECT"}
    job = cluster.sbatch(*ONE_GPU, SUBMIT, "0", "0", cwd=site.project, env=env)
    assert cluster.wait_job(job) == "COMPLETED"
    log = (site.project / f"llava_{job}.log").read_text()
    assert (f"project {site.project}: the submit directory (SOCCER_PROJECT is not set and it has raw_data/ or "
            "videos.txt)") in log
    assert summary(log)["done"] == [0] and site.final(0).exists()


@SLURM
@pytest.mark.slow
def test_lock_of_a_suspended_job_taken_over_the_resumed_job_writes_nothing(odd_root, cluster, video_25fps,
                                                                           base_env):
    """`scontrol suspend` (suspend-mode preemption, gang scheduling) of job 1 on another node: its lock
    goes stale, job 2 takes the video over; `scontrol resume` of job 1: its worker stops at its next write
    with one line, writing nothing (the partial only grows), job 1 lists the video as skipped, job 2 merges
    every window. One machine cannot be two nodes: the lock is rewritten to say job 1 runs on node7."""
    site = Site(odd_root, "suspend", {"long.mkv": video_25fps}, base_env, cluster)  # 30 windows, one worker
    site.env.update(LLAVA_LOCK_STALE_S="4", LLAVA_LOCK_HEARTBEAT_S="1", LLAVA_BATCH_SIZE="1")
    lock = site.project / ".lock_llava_video_0.json"
    job1 = site.sbatch(*ONE_GPU, SUBMIT, "0", "0")
    wait_for_records(site, 0, 4, job1)
    cluster.run("scontrol", "suspend", job1)
    cluster.wait_until(lambda: cluster.job_state(job1) == "SUSPENDED", 30, f"job {job1} suspended")
    at_suspend = len(site.records(0))
    info = json.loads(lock.read_text())
    assert info["job"] == job1 and info["cluster"] == "llavatest" and info["restart"] == 0
    lock.write_text(json.dumps({**info, "host": "node7"}))
    os.utime(lock, (time.time() - 10, time.time() - 10))  # past LLAVA_LOCK_STALE_S: job 1 no longer beats

    job2 = site.sbatch(*ONE_GPU, SUBMIT, "0", "0")
    cluster.wait_until(lambda: len(site.records(0)) > at_suspend, 300, f"job {job2} saving windows")
    cluster.run("scontrol", "resume", job1)
    seen = []
    while cluster.job_state(job2) in ("PENDING", "RUNNING"):
        try:
            if site.partials(0):  # (until job 2's merge deletes them)
                seen.append(len(site.records(0)))
        except FileNotFoundError:  # deleted by the merge between the listing and the read
            pass
        time.sleep(0.05)
    assert seen == sorted(seen), f"the partial shrank: {seen}"  # job 1 rewrote it from memory (issue 29)
    assert cluster.wait_job(job2) == "COMPLETED" and cluster.wait_job(job1) == "COMPLETED"
    log1, log2 = site.log(job1), site.log(job2)
    assert f"taking over the stale lock of job {job1} on node7" in log2 and summary(log2)["done"] == [0]
    assert re.search(rf"\] video 0: lock lost to job {job2} on \S+ since \d\d:\d\d \(ours was taken over as "
                     rf"stale\): stopping, nothing written$", log1, re.M), log1
    assert summary(log1)["skipped"] == [0] and "Traceback" not in log1 + log2
    archive = json.loads(gzip.decompress((site.project / "raw_answers_llava_video_0.json.gz").read_bytes()))
    assert len(archive["windows"]) == archive["windows_total"] == 30
    assert not lock.exists() and not site.workers_alive()
