"""submit_llava.sh's numbers and range (issue 21, items 1 and 2), run with plain bash as users do.

Every number the script takes (START, END, SLURM_ARRAY_TASK_ID, LLAVA_NUM_WORKERS, the lock seconds,
SLURM_CPUS_PER_TASK) is read as decimal or refused with one line and exit 2 before anything starts;
a range past the end of videos.txt processes what exists and says so in one line. Most tests use a
stand-in worker and merge (LLAVA_HOME) that record what they were asked, so they need no model and
check what the launcher started; the real worker runs the README's `0 39` once (slow).
"""
import json
import os
import re
import subprocess
import sys
import time
import types

import pytest

from conftest import ROOT, make_project
from llava_soccer import synthetic

SUBMIT = ROOT / "submit_llava.sh"

# Records its arguments and the LLAVA_NUM_WORKERS it sees, one JSON line per worker.
FAKE_WORKER = """\
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(os.path.join(args["--project"], "started.jsonl"), "a") as f:
    f.write(json.dumps({"video": int(args["--video-index"]), "slice": int(args["--gpu-id"]),
                        "told": args["--num-workers"], "env": os.environ.get("LLAVA_NUM_WORKERS"),
                        "stale": os.environ.get("LLAVA_LOCK_STALE_S")}) + "\\n")
"""
FAKE_MERGE = """\
import os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(os.path.join(args["--project"], f"final_predictions_llava_video_{args['--video-index']}.json"), "w") as f:
    f.write("[]")
"""
SUMMARY_KEYS = ("done", "skipped", "incomplete", "failed", "interrupted", "not started")


@pytest.fixture
def scripts(tmp_path):
    d = tmp_path / "stand-in scripts"
    d.mkdir()
    (d / "llava_split_worker.py").write_text(FAKE_WORKER)
    (d / "merge_results_llava.py").write_text(FAKE_MERGE)
    (d / "llava_soccer").symlink_to(ROOT / "llava_soccer")  # the range check and the locks are the real ones
    (d / "config.json").write_text('{"model_type": "llava_next"}')  # LLAVA_MODEL below: a LLaVA, by its files' tag
    return d


def project_with(root, n):
    """A project whose raw_data/ holds n video files v00.mkv ... (indices 0..n-1; the stand-in reads none)."""
    project = root / "my project"
    (project / "raw_data").mkdir(parents=True)
    for i in range(n):
        (project / "raw_data" / f"v{i:02d}.mkv").write_bytes(b"")
    return project


def submit(project, scripts, *args, timeout=120, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))}
    base.update(SOCCER_PROJECT=str(project), LLAVA_HOME=str(scripts), LLAVA_PYTHON=sys.executable,
                CUDA_VISIBLE_DEVICES="", LLAVA_MODEL=str(scripts))  # the stand-in loads no model: any directory
    started = time.monotonic()
    r = subprocess.run(["bash", str(SUBMIT), *args], capture_output=True, text=True, timeout=timeout,
                       cwd=project.parent, env={**base, **env})
    r.seconds = time.monotonic() - started
    return r


def started(project):
    """The workers the stand-in saw start, in order."""
    f = project / "started.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def summary(log):
    found = {}
    for key in SUMMARY_KEYS:
        (line,) = re.findall(rf"\]   {key}: +(.*)$", log, re.M)
        found[key] = [int(v) for v in line.split() if v != "-"]
    return found


def done(*videos):
    return {"done": list(videos), "skipped": [], "incomplete": [], "failed": [], "interrupted": [],
            "not started": []}


def assert_refused(r, project, starts):
    """One ERROR line, exit 2, and nothing started: no worker, no lock, not even videos.txt."""
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ERROR: ", line) and starts in line, line
    assert not re.search(r"\] video \d+: (starting|worker)", r.stderr) and started(project) == []
    assert not list(project.glob(".lock_*")) and not list(project.glob("final_*"))


# --- item 1: numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("args,videos", [
    (["08", "09"], [8, 9]),     # bash: "value too great for base"
    (["007"], [7]),
    (["010", "011"], [10, 11]),  # bash: octal 8 and 9, other videos than python checked
    (["0000000000000011"], [11]),  # leading zeros do not count towards the 9 digits
])
def test_leading_zeros_are_decimal(tmp_path, scripts, args, videos):
    project = project_with(tmp_path, 12)
    r = submit(project, scripts, *args)
    assert r.returncode == 0, r.stderr
    assert [w["video"] for w in started(project)] == videos
    assert summary(r.stderr) == done(*videos)
    assert f"LLaVA soccer: videos {videos[0]}..{videos[-1]}," in r.stderr


INDEX = "must be a whole number from 0 to 999999999 in decimal digits, not"


@pytest.mark.parametrize("args,env,starts", [
    (["9223372036854775808"], {}, f"START {INDEX} '9223372036854775808': a video index"),  # 2^63: wrapped to < 0
    (["18446744073709551616"], {}, f"START {INDEX} '18446744073709551616'"),              # 2^64: wrapped to 0
    (["0", "99999999999999999999"], {}, f"END {INDEX} '99999999999999999999'"),
    (["0", "1" * 200], {}, f"END {INDEX} '{'1' * 40}...': a video index"),  # shown cut, still one line
    (["1000000000"], {}, f"START {INDEX} '1000000000'"),
    (["0x4"], {}, f"START {INDEX} '0x4'"),
    (["-1"], {}, f"START {INDEX} '-1'"),
    (["+1"], {}, f"START {INDEX} '+1'"),
    (["1e3"], {}, f"START {INDEX} '1e3'"),
    ([" 1"], {}, f"START {INDEX} ' 1'"),
    ([""], {}, f"START {INDEX} ''"),
    (["0", "\u0663"], {}, f"END {INDEX} '\u0663'"),  # an Arabic-Indic 3: a digit to some locales
    (["0", "1\n2"], {}, f"END {INDEX} '1?2'"),  # control characters shown as ?: still one line
    (["3", "1"], {}, "START (3) is after END (1)"),
    (["010", "9"], {}, "START (10) is after END (9)"),  # bash alone would see 8 <= 9
    (["0"], {"LLAVA_NUM_WORKERS": "0x4"}, "LLAVA_NUM_WORKERS must be a whole number from 1 to 64 in decimal "
                                          "digits, not '0x4': workers per video; unset it for one per GPU of the job"),
    (["0"], {"LLAVA_NUM_WORKERS": "-1"}, "LLAVA_NUM_WORKERS must be a whole number from 1 to 64"),
    (["0"], {"LLAVA_NUM_WORKERS": "0"}, "LLAVA_NUM_WORKERS must be a whole number from 1 to 64"),
    (["0"], {"LLAVA_NUM_WORKERS": "65"}, "LLAVA_NUM_WORKERS must be a whole number from 1 to 64"),
    (["0"], {"LLAVA_NUM_WORKERS": "4 "}, "LLAVA_NUM_WORKERS must be a whole number from 1 to 64"),
    (["0"], {"LLAVA_NUM_WORKERS": "99999999999999999999"}, "LLAVA_NUM_WORKERS must be a whole number from 1 to 64"),
    (["0"], {"LLAVA_LOCK_HEARTBEAT_S": "1.5"}, "LLAVA_LOCK_HEARTBEAT_S must be a whole number from 1 to 999999999"),
    (["0"], {"LLAVA_LOCK_STALE_S": "1e3"}, "LLAVA_LOCK_STALE_S must be a whole number from 1 to 999999999"),
    (["0"], {"LLAVA_LOCK_STALE_S": "0"}, "LLAVA_LOCK_STALE_S must be a whole number from 1 to 999999999"),
    (["0"], {"LLAVA_LOCK_HEARTBEAT_S": "0700"}, "LLAVA_LOCK_HEARTBEAT_S (700) must be below LLAVA_LOCK_STALE_S (600)"),
    (["0"], {"SLURM_CPUS_PER_TASK": "0x10"}, "SLURM_CPUS_PER_TASK must be a whole number from 1 to 999999999 in "
                                             "decimal digits, not '0x10': CPU cores of the job"),
])
def test_a_bad_number_is_one_line_and_exit_2_before_anything_starts(tmp_path, scripts, args, env, starts):
    project = project_with(tmp_path, 12)
    r = submit(project, scripts, *args, **env)
    assert_refused(r, project, starts)
    assert not (project / "videos.txt").exists()  # refused before python was asked anything
    assert "Traceback" not in r.stderr and "syntax error" not in r.stderr and "base" not in r.stderr


@pytest.mark.parametrize("value,workers", [("04", 4), ("010", 10), ("0000000002", 2), ("", 1)])
def test_llava_num_workers_starts_as_many_workers_as_they_are_told(tmp_path, scripts, value, workers):
    """010 used to start 8 workers (bash's octal) told --num-workers 010 (python: 10): the merge never completed.
    Empty is unset, as the worker reads it: one worker without GPUs."""
    project = project_with(tmp_path, 1)
    r = submit(project, scripts, "0", LLAVA_NUM_WORKERS=value)
    assert r.returncode == 0, r.stderr
    seen = started(project)
    assert sorted(w["slice"] for w in seen) == list(range(workers))
    assert {w["told"] for w in seen} == {str(workers)}
    assert {w["env"] for w in seen} == {str(workers) if value else ""}  # what the worker reads (empty: unset)
    assert f"{workers} worker(s) per video" in r.stderr and summary(r.stderr) == done(0)


def test_numbers_from_slurm_and_the_lock_settings_are_read_as_decimal(tmp_path, scripts):
    project = project_with(tmp_path, 1)
    r = submit(project, scripts, "0", SLURM_CPUS_PER_TASK="010", LLAVA_LOCK_HEARTBEAT_S="09",
               LLAVA_LOCK_STALE_S="0600", LLAVA_NUM_WORKERS="2", OMP_NUM_THREADS="")
    assert r.returncode == 0, r.stderr
    cpus = min(len(os.sched_getaffinity(0)), 10)  # 010 cores is 10 (octal: 8)
    assert f"{max(cpus // 2, 1)} CPU thread(s) per worker" in r.stderr, r.stderr
    assert {w["stale"] for w in started(project)} == {"600"}  # python's lock checks read what bash read


def test_a_huge_end_answers_within_seconds(tmp_path, scripts):
    """END 999999999 used to mean a glob per index before anything started (hours); now python checks the
    videos that exist only."""
    project = project_with(tmp_path, 2)
    r = submit(project, scripts, "0", "999999999", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.seconds < 20, r.seconds
    assert "videos 0..999999999 asked, videos.txt lists 2 videos (0..1): processing 0..1; 2..999999999 do not exist" \
        in r.stderr
    assert [w["video"] for w in started(project)] == [0, 1]
    r = submit(project, scripts, "5", "999999999", timeout=60)
    assert r.returncode == 2 and r.seconds < 20


# --- item 2: a range past the end of videos.txt -------------------------------------------------

def test_a_range_past_the_end_processes_the_videos_that_exist_and_says_so(tmp_path, scripts):
    project = project_with(tmp_path, 2)
    r = submit(project, scripts, "0", "39")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "39" in line]
    assert lines[0].endswith("] videos 0..39 asked, videos.txt lists 2 videos (0..1): processing 0..1; "
                             "2..39 do not exist")
    assert "LLaVA soccer: videos 0..1," in r.stderr
    assert [w["video"] for w in started(project)] == [0, 1]
    assert summary(r.stderr) == done(0, 1)  # the missing ones are neither failed nor not started
    assert lines[-1].endswith("]   not in videos.txt: 2..39 (asked, no such video)")
    assert "FAILED" not in r.stderr and "ERROR" not in r.stderr

    r = submit(project, scripts, "1", "2")  # one missing video
    assert r.returncode == 0, r.stderr
    assert "] videos 1..2 asked, videos.txt lists 2 videos (0..1): processing 1; 2 does not exist\n" in r.stderr
    assert summary(r.stderr)["skipped"] == [1]


@pytest.mark.parametrize("videos,args,says", [
    (2, ["2", "39"], "videos 2..39 asked, but videos.txt lists 2 videos (0..1): put more videos under {raw} (they "
                     "get the next indices) or ask for 0..1 (nothing started)"),
    (1, ["5"], "video 5 asked, but videos.txt lists 1 video (0): put more videos under {raw}"),
    (0, ["0", "39"], "no videos: {project}/videos.txt lists none; put the match videos (.mkv/.mp4) under {raw} "
                     "(nothing started)"),
])
def test_a_range_none_of_whose_videos_exists_is_refused(tmp_path, scripts, videos, args, says):
    project = project_with(tmp_path, videos)
    r = submit(project, scripts, *args)
    assert_refused(r, project, says.format(project=project, raw=project / "raw_data"))


# --- SLURM_ARRAY_TASK_ID (a job's environment, given here without Slurm) ---------------------------

def array_env(task):
    return {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": task}


@pytest.mark.parametrize("task,video", [("1", 1), ("01", 1), ("00", 0)])
def test_an_array_task_processes_its_video(tmp_path, scripts, task, video):
    project = project_with(tmp_path, 2)
    r = submit(project, scripts, **array_env(task))
    assert r.returncode == 0, r.stderr
    assert [w["video"] for w in started(project)] == [video] and summary(r.stderr) == done(video)


@pytest.mark.parametrize("task", ["2", "39", "000039", "999999999"])
def test_an_array_task_past_the_end_says_so_and_exits_0(tmp_path, scripts, task):
    """sbatch --array=0-39 with 2 videos: tasks 2..39 are the part of the array that does not exist, not
    failures (exit 2 would mark each one FAILED in sacct)."""
    project = project_with(tmp_path, 2)
    r = submit(project, scripts, **array_env(task))
    assert r.returncode == 0, r.stderr
    (line,) = r.stderr.splitlines()
    n = int(task)
    assert line.endswith(f"] array task {n}: video {n} does not exist, videos.txt lists 2 videos (0..1); nothing to do")
    assert started(project) == [] and not list(project.glob(".lock_*"))


@pytest.mark.parametrize("task", ["x", "-1", "0x1", "1 ", "99999999999999999999", "1-3"])
def test_an_odd_array_task_id_is_refused(tmp_path, scripts, task):
    project = project_with(tmp_path, 2)
    r = submit(project, scripts, **array_env(task))
    assert_refused(r, project, f"SLURM_ARRAY_TASK_ID {INDEX} '{task}': array indices are video indices")


# --- the real worker --------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_readmes_0_39_with_two_videos_runs_both(tmp_path, goal_checkpoint):
    """The README's first command on a project with 2 videos: both processed by the real worker and merge,
    one line saying what exists, exit 0, nothing FAILED (it used to start workers for 38 missing videos)."""
    project = make_project(tmp_path, {"a.mkv": synthetic.make_video(tmp_path / "a.mkv", 4),
                                      "b.mkv": synthetic.make_video(tmp_path / "b.mkv", 4)})
    r = submit(project, ROOT, "0", "39", timeout=600, LLAVA_MODEL=str(goal_checkpoint), LLAVA_QUANT="fp32",
               LLAVA_NUM_WORKERS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    assert r.returncode == 0, r.stderr
    assert "] videos 0..39 asked, videos.txt lists 2 videos (0..1): processing 0..1; 2..39 do not exist\n" in r.stderr
    assert summary(r.stderr) == done(0, 1)
    assert (project / "final_predictions_llava_video_0.json").exists()
    assert (project / "final_predictions_llava_video_1.json").exists()
    assert "FAILED" not in r.stderr and "error" not in r.stderr.lower()
    assert len(re.findall(r"\] video \d+: worker 0/1 pid", r.stderr)) == 2  # one worker per existing video


# --- issue 33, item 2: every worker setting checked once, before anything runs; --check --------------

def finished(project, *videos):
    """Finals for videos (the stand-in merge's kind): submit skips them as done."""
    for video in videos:
        (project / f"final_predictions_llava_video_{video}.json").write_text("[]")


def files_of(project):
    return sorted((str(p.relative_to(project)), p.stat().st_mtime_ns) for p in project.rglob("*"))


@pytest.mark.parametrize("env,starts", [
    ({"LLAVA_QUANT": "4bit"}, "LLAVA_QUANT=4bit: choose from nf4, bf16, fp16, fp32, fp8, not '4bit' (--quantization); "
                              "unset it for the default, nf4"),
    ({"LLAVA_BATCH_SIZE": "0"}, "LLAVA_BATCH_SIZE=0: must be a whole number >= 1 or 'auto'"),
    ({"LLAVA_MAX_NEW_TOKENS": "lots"}, "LLAVA_MAX_NEW_TOKENS=lots: must be a whole number (--max-new-tokens)"),
    ({"LLAVA_CLASS_SCORES": "maybe"}, "LLAVA_CLASS_SCORES=maybe: 'maybe': use yes or no"),
    ({"LLAVA_ASSUME_GPU": "7"}, "LLAVA_ASSUME_GPU=7: '7' is not CC[,GIB]"),
    ({"LLAVA_DECODER": "slow"}, "LLAVA_DECODER=slow: choose from fast, transformers"),
])
@pytest.mark.parametrize("finals", [(), (0, 1)], ids=["to do", "finished"])
def test_a_bad_worker_setting_is_one_line_and_exit_2_before_anything_starts(tmp_path, scripts, env, starts, finals):
    """LLAVA_QUANT=4bit used to print the worker's argparse usage once per worker and video, and was silently
    ignored for finished videos: now one line naming the variable, its value and the choices, exit 2."""
    project = project_with(tmp_path, 2)
    finished(project, *finals)
    r = submit(project, scripts, "0", "1", **env)
    if not finals:
        assert_refused(r, project, starts)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and starts in r.stderr, r.stderr
    assert "usage:" not in r.stderr and started(project) == [] and not (project / "videos.txt").exists()


def test_check_shows_what_a_run_would_use_and_writes_nothing(tmp_path, scripts):
    project = project_with(tmp_path, 3)
    finished(project, 1)
    before = files_of(project)
    r = submit(project, scripts, "--check", "0", "9", LLAVA_NUM_WORKERS="2", LLAVA_QUANT="bf16")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"project {project} " in out
    assert "  video 0: to do: v00.mkv" in out and "  video 1: done, skipped: v01.mkv" in out
    assert "  video 2: to do: v02.mkv" in out and "  3..9: not in videos.txt, skipped" in out
    assert "2 worker(s) per video, GPUs: none (CPU)" in out
    assert f"model {scripts} (local checkpoint directory), quantization bf16" in out
    assert "OK, nothing was run. Submit with: sbatch " in out
    assert files_of(project) == before and started(project) == []  # no videos.txt, no lock, no worker


@pytest.mark.parametrize("args,env,says", [
    (["2", "0"], {}, "START (2) is after END (0)"),
    (["0"], {"LLAVA_QUANT": "4bit"}, "LLAVA_QUANT=4bit: choose from nf4"),
    (["5", "9"], {}, "videos 5..9 asked, but videos.txt lists 2 videos (0..1)"),
])
def test_check_refuses_what_the_job_would_refuse(tmp_path, scripts, args, env, says):
    """sbatch queues the job before the script runs: --check is where a user sees these at once."""
    project = project_with(tmp_path, 2)
    before = files_of(project)
    r = submit(project, scripts, "--check", *args, **env)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert files_of(project) == before


def test_a_missing_model_stops_the_job_once(tmp_path, scripts):
    """A model directory that does not exist used to fail every worker of every video of the range: now one
    line before the first video that needs it, the rest not started, exit 2; finished videos need no model."""
    project = project_with(tmp_path, 4)
    finished(project, 0)
    missing = tmp_path / "no such llava model"  # its name says its family: LLaVA's finals are the finished ones
    r = submit(project, scripts, "0", "3", LLAVA_MODEL=str(missing))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(f"--model {missing}: no such directory") == 1, r.stderr
    assert "the job stopped before video 1: fix the model" in r.stderr
    assert summary(r.stderr) == {**done(), "skipped": [0], "not started": [1, 2, 3]}
    assert started(project) == [] and not list(project.glob(".lock_*"))
    finished(project, 1, 2, 3)
    r = submit(project, scripts, "0", "3", LLAVA_MODEL=str(missing))
    assert r.returncode == 0 and summary(r.stderr)["skipped"] == [0, 1, 2, 3], r.stderr


def test_the_command_check_prints_runs_as_printed(tmp_path, scripts):
    """Issue 33 item 4: what --check tells the user to run works as printed (here the run without Slurm)."""
    project = project_with(tmp_path, 2)
    r = submit(project, scripts, "--check", "0", "1")
    (command,) = re.findall(r"\(without Slurm: (bash .*)\)$", r.stdout, re.M)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))}
    env = {**base, "SOCCER_PROJECT": str(project), "LLAVA_HOME": str(scripts), "LLAVA_PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": "", "LLAVA_MODEL": str(scripts)}
    run = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0 and summary(run.stderr) == done(0, 1), run.stderr


def test_the_plan_command_check_prints_runs_as_printed(tmp_path):
    """--check's plan line names the real worker's --print-plan: it prints this machine's plan, loading nothing."""
    project = project_with(tmp_path, 1)
    model = tmp_path / "model"  # --check loads nothing: a directory whose config.json says its family
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava_next"}')
    r = submit(project, ROOT, "--check", "0", LLAVA_QUANT="fp32", LLAVA_MODEL=str(model))
    assert r.returncode == 0, r.stderr
    (command,) = re.findall(r"^plan: per GPU, chosen by the worker at start; on a GPU node: (.*)$", r.stdout, re.M)
    run = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LLAVA_QUANT": "fp32", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["quantization"] == "fp32"


# --- issue 33, item 11: a hub id asked once per job, at the preflight, of a real (local) HTTP hub --------

MISSPELT = "llava-hf/llava-v1.6-mistal-7b-hf"  # the README's default with one letter lost


@pytest.fixture
def hub(tmp_path):
    """A local HTTP server that answers the hub API's GET /api/models/ORG/NAME as huggingface.co does: `answers`
    maps a repo id to (status, headers, body); others get the hub's 401 RepoNotFound (no token sent). `asked`
    lists the model paths requested. Point HF_ENDPOINT at `url` (huggingface_hub reads it)."""
    import http.server
    import threading

    hub = types.SimpleNamespace(asked=[], answers={})

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if not self.path.startswith("/api/models/"):  # huggingface_hub 1.x also asks /api/agent-harnesses
                return self.send_error(404)
            hub.asked.append(self.path)
            repo = self.path.removeprefix("/api/models/").split("?")[0]
            status, headers, body = hub.answers.get(repo, (401, {"X-Error-Code": "RepoNotFound",
                                                                  "X-Error-Message": "Repository not found"}, b"{}"))
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    hub.env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf home"), "HF_HUB_OFFLINE": "", "HF_TOKEN": ""}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield hub
    server.shutdown()
    server.server_close()


def test_a_misspelt_hub_id_stops_the_job_once(tmp_path, scripts, hub):
    """On a node with network a misspelt hub id passed the model check and failed every worker of every video:
    now the hub is asked once, before the first video, and its answer is one line with the fix, exit 2."""
    project = project_with(tmp_path, 3)
    r = submit(project, scripts, "0", "2", LLAVA_MODEL=MISSPELT, **hub.env)
    assert r.returncode == 2, r.stderr
    line = (f"ERROR: LLAVA_MODEL={MISSPELT}: the Hugging Face hub has no model {MISSPELT} (or it is private and "
            f"HF_TOKEN is not set): did you mean the default, llava-hf/llava-v1.6-mistral-7b-hf? (unset LLAVA_MODEL "
            f"for it)")
    assert r.stderr.count(line) == 1 and r.stderr.count("ERROR: LLAVA_MODEL") == 1, r.stderr
    assert "the job stopped before video 0: fix the model" in r.stderr
    assert summary(r.stderr) == {**done(), "not started": [0, 1, 2]}
    assert started(project) == [] and not re.search(r"video \d: (starting|FAILED)", r.stderr)
    assert not list(project.glob(".failed_*")) and not list(project.glob(".lock_*"))
    assert hub.asked == [f"/api/models/{MISSPELT}"]  # once for the job, not once per video or worker


@pytest.mark.parametrize("answer,env,says", [
    ((403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}), {"HF_TOKEN": "hf_x"},
     "/org/gated-llava is gated: accept its terms there with your account, then export HF_TOKEN="),
    ((401, {"X-Error-Message": "Invalid credentials in Authorization header"}), {"HF_TOKEN": "hf_stale"},
     "answered HTTP 401 for model org/gated-llava: HF_TOKEN is refused: make a new read token"),
    ((404, {"X-Error-Code": "RepoNotFound"}), {"HF_TOKEN": "hf_x"},
     "the Hugging Face hub has no model org/gated-llava (or it is private and HF_TOKEN cannot see it): check the "
     "spelling"),
    ((503, {}), {}, "answered HTTP 503 for model org/gated-llava: try again later"),
], ids=["gated", "token refused", "no such repo, with a token", "hub down"])
def test_check_says_what_the_hub_answered_in_one_line(tmp_path, scripts, hub, answer, env, says):
    project = project_with(tmp_path, 1)
    hub.answers["org/gated-llava"] = (*answer, b"{}")
    r = submit(project, scripts, "--check", "0", LLAVA_MODEL="org/gated-llava", **{**hub.env, **env})
    assert r.returncode == 2 and "LLAVA_MODEL=org/gated-llava: " in r.stdout + r.stderr, r.stdout + r.stderr
    assert says in r.stdout and "hf_" not in r.stdout + r.stderr, r.stdout  # the token is never printed


def test_a_hub_id_that_exists_or_is_cached_runs(tmp_path, scripts, hub):
    """Found on the hub: --check says where; cached: the hub is not asked (from_pretrained needs no network)."""
    project = project_with(tmp_path, 1)
    hub.answers["org/real-llava"] = (200, {}, json.dumps({"id": "org/real-llava", "sha": "0" * 40}).encode())
    r = submit(project, scripts, "--check", "0", LLAVA_MODEL="org/real-llava", **hub.env)
    assert r.returncode == 0 and f"model org/real-llava (Hugging Face hub id, found on {hub.url})" in r.stdout, r.stderr
    snapshot = tmp_path / "hf home" / "hub" / "models--org--cached-llava" / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("1" * 40)
    hub.asked.clear()
    r = submit(project, scripts, "--check", "0", LLAVA_MODEL="org/cached-llava", **hub.env)
    assert r.returncode == 0 and "model org/cached-llava (Hugging Face hub id), quantization" in r.stdout, r.stderr
    assert hub.asked == []


def test_a_hub_that_cannot_be_reached_needs_the_cache(tmp_path, scripts, hub):
    """No network (our nodes): the offline rule, one line naming the cache and the download command."""
    project = project_with(tmp_path, 1)
    r = submit(project, scripts, "--check", "0", LLAVA_MODEL=MISSPELT, **{**hub.env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.returncode == 2 and "is not in the Hugging Face cache here" in r.stdout, r.stdout + r.stderr
    assert "127.0.0.1 cannot be reached (no network on this node)" in r.stdout


# --- on a real Slurm cluster (tests/slurm_cluster.py): the printed sbatch line, the hub check in a job -------

@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    return slurm_cluster  # (conftest.py: one per session, shared with tests/test_slurm.py and test_status.py)


def slurm_env(cluster, project, **extra):
    env = {k: v for k, v in cluster.env.items() if not k.startswith(("SLURM_", "LLAVA_")) and
           k not in ("CUDA_VISIBLE_DEVICES", "SOCCER_PROJECT")}
    return {**env, "SLURM_CONF": str(cluster.conf), "SOCCER_PROJECT": str(project), "LLAVA_PYTHON": sys.executable,
            "LLAVA_HOME": str(ROOT), "LLAVA_QUANT": "fp32", "LLAVA_NUM_WORKERS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", **extra}


def submit_dir(tmp_path):
    """Where users type sbatch: a folder holding submit_llava.sh (setup puts it in the project)."""
    d = tmp_path / "submit dir"
    d.mkdir()
    (d / "submit_llava.sh").write_bytes(SUBMIT.read_bytes())
    return d


@pytest.mark.slow
@pytest.mark.xdist_group("serial")
def test_the_sbatch_line_check_prints_runs_as_printed_on_slurm(tmp_path, cluster, goal_checkpoint):
    """`bash submit_llava.sh --check 0 0` ends with `Submit with: sbatch ...`: typed as printed, it is a job that
    processes the video."""
    project = make_project(tmp_path / "p", {"a.mkv": synthetic.make_video(tmp_path / "a.mkv", 4)})
    where = submit_dir(tmp_path)
    env = slurm_env(cluster, project, LLAVA_MODEL=str(goal_checkpoint))
    r = subprocess.run(["bash", "submit_llava.sh", "--check", "0", "0"], capture_output=True, text=True,
                       timeout=120, cwd=where, env=env)
    assert r.returncode == 0, r.stderr
    (command,) = re.findall(r"^OK, nothing was run\. Submit with: (sbatch .+) \(without Slurm: ", r.stdout, re.M)
    r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=where, env=env)
    assert r.returncode == 0, r.stderr
    (job,) = re.findall(r"Submitted batch job (\d+)", r.stdout)
    assert cluster.wait_job(job, timeout=600) == "COMPLETED", (where / f"llava_{job}.log").read_text()
    assert json.loads((project / "final_predictions_llava_video_0.json").read_text())


@pytest.mark.slow
@pytest.mark.xdist_group("serial")
def test_a_misspelt_hub_id_stops_the_slurm_job_once(tmp_path, cluster, hub):
    """The README's `LLAVA_MODEL=... sbatch submit_llava.sh 0 2` with a misspelt id, on a node that reaches the
    hub (here a local one): the job fails once, with one line, before any worker of its 3 videos."""
    project = project_with(tmp_path, 3)
    where = submit_dir(tmp_path)
    env = slurm_env(cluster, project, LLAVA_MODEL=MISSPELT, **hub.env)
    job = cluster.sbatch("submit_llava.sh", "0", "2", cwd=where, env=env)
    assert cluster.wait_job(job, timeout=300) == "FAILED"
    log = (where / f"llava_{job}.log").read_text()
    assert cluster.finished_runs(job) == [("FAILED", "2:0")], log
    assert log.count(f"ERROR: LLAVA_MODEL={MISSPELT}: the Hugging Face hub has no model {MISSPELT}") == 1, log
    assert summary(log) == {**done(), "not started": [0, 1, 2]}
    assert not re.search(r"video \d: (starting|worker|FAILED)", log) and not list(project.glob(".failed_*"))
    assert hub.asked == [f"/api/models/{MISSPELT}"]


@pytest.mark.slow
@pytest.mark.xdist_group("serial")
def test_the_sinfo_line_of_the_troubleshooting_runs(cluster):
    """docs/troubleshooting.md's sinfo shows what a node offers (partition, GPUs, CPUs, memory)."""
    (command,) = re.findall(r"`(sinfo [^`]+)`", (ROOT / "docs" / "troubleshooting.md").read_text())
    r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=cluster.env)
    assert r.returncode == 0 and "debug" in r.stdout and "gpu:4" in r.stdout and "131072" in r.stdout, r.stderr
