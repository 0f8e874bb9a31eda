"""demo.sh: the README's one-command demo (no GPU, no Slurm, no download) runs the full loop."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def demo_env(**extra):
    """The caller's environment without the pipeline's settings or this test run's venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "LLAVA_")) and k not in ("SOCCER_PROJECT", "VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(extra)
    return env


def assert_demo_ran(out, demo_dir):
    for i in (0, 1):
        events = json.loads((demo_dir / f"final_predictions_llava_video_{i}.json").read_text())
        assert events and {e["label"] for e in events} == {"Goal"}
        # the newcomer saw the worker files appear, then the final replace them
        for g in (0, 1):
            assert f"[files] + partial_results_llava_vid{i}_gpu{g}.json" in out
            assert f"[files] - partial_results_llava_vid{i}_gpu{g}.json" in out
        assert f"[files] + final_predictions_llava_video_{i}.json" in out
    assert list(demo_dir.glob("partial_results_*")) == []
    assert "local run on" in out and "2 worker(s) per video, GPUs: none (CPU)" in out
    assert re.search(r"summary: 2 done, 0 skipped", out) and re.search(r"summary: 0 done, 2 skipped", out)
    assert "demo done" in out


@pytest.fixture(scope="module")
def fresh_demo(odd_root):
    """`bash demo.sh` as a newcomer types it, in a fresh clone without a .venv, with LLAVA_VENV naming this test run's
    installed venv: the shared install step (tools/install_env.sh demo) finds the requirements installed and leaves
    pip alone, then the demo runs. (Making a venv from nothing is the same script's other path: every CI run takes it,
    `bash tests/run.sh` on a clean clone; doing it again here cost ~90 s of CPU.) The clone holds this checkout's
    tracked files as they are now (what a commit of them would give; a file that git does not track is not in it),
    under a path with spaces and quotes.
    Returns (clone, exit status, what the demo printed). It runs once: the two tests below assert on that run (one
    xdist_group, so tests/run.sh gives both to one process)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if files.returncode != 0:
        pytest.skip(f"not a git checkout: {files.stderr.decode().strip()}")
    clone = odd_root / "fresh clone"
    for rel in filter(None, files.stdout.decode().split("\0")):
        src, dst = ROOT / rel, clone / rel
        if src.is_symlink() or src.exists():  # (a tracked file deleted in the checkout is not in its next commit)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
    assert (clone / "demo.sh").is_file() and not (clone / ".venv").exists()
    r = subprocess.run(["bash", "demo.sh"], cwd=clone, capture_output=True, text=True, timeout=1800,
                       env=demo_env(LLAVA_VENV=sys.prefix))
    return clone, r.returncode, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_demo_on_a_fresh_clone_runs_its_install_step_then_the_demo(fresh_demo):
    clone, code, out = fresh_demo
    assert code == 0, out
    # the install step ran, found the venv's requirements (a tests install covers the demo's) and left pip alone
    assert f"Python requirements already installed in {sys.prefix} (requirements.txt SoccerNet==" in out, out
    assert "installing" not in out and "creating the virtual environment" not in out, out
    assert_demo_ran(out, clone / "llava_demo")
    assert not (clone / ".venv").exists()  # LLAVA_VENV's, not the clone's


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_demo_runs_the_full_loop_and_shows_every_file(fresh_demo):
    clone, code, out = fresh_demo
    assert code == 0, out
    assert_demo_ran(out, clone / "llava_demo")
    run_next_as_printed(out, clone / "llava_demo")


def test_demo_with_llava_python_installs_nothing(tmp_path):
    """LLAVA_PYTHON given: the demo uses that python as it is and installs nothing (no venv made, pip not run);
    one that lacks the requirements is one line naming it."""
    python = tmp_path / "bare python"
    python.write_text('#!/bin/sh\nexec python3 -S "$@"\n')  # -S: no site-packages, so no torch
    python.chmod(0o755)
    venv = tmp_path / "venv"
    r = subprocess.run(["bash", str(ROOT / "demo.sh"), str(tmp_path / "demo dir")], capture_output=True,
                       text=True, timeout=120, env=demo_env(LLAVA_PYTHON=str(python), LLAVA_VENV=str(venv)))
    assert r.returncode == 1 and "installing" not in r.stderr and not venv.exists(), r.stderr
    assert r.stderr.splitlines()[-1].endswith(f"ERROR: {python} lacks torch/transformers/OpenCV: pip install -r "
                                              "requirements.txt, or unset LLAVA_PYTHON"), r.stderr


def run_next_as_printed(out, demo_dir):
    """Issue 33 item 4: the demo's 'Next' commands work as printed, typed in a new shell without the demo's
    settings (they used to run submit with python3, which has no torch)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "demo done. Next, reprocess one video" in line)
    remove, run = (re.sub(r"^\[\d\d:\d\d:\d\d\]   ", "", line) for line in lines[start + 1:start + 3])
    assert remove.startswith("rm ") and " bash submit_llava.sh 1 1" in run, (remove, run)
    r = subprocess.run(["bash", "-c", f"{remove} && {run}"], capture_output=True, text=True, timeout=600,
                       env=demo_env())
    assert r.returncode == 0, r.stderr
    assert re.search(r"summary: 1 done, 0 skipped", r.stderr), r.stderr
    assert (demo_dir / "final_predictions_llava_video_1.json").exists()

    # issue 33 item 5: the demo's match is laid out as SoccerNet's, with its Labels-v2.json, and the printed
    # evaluate command scores it as typed
    start = next(i for i, line in enumerate(lines) if "Score the predictions against the demo's SoccerNet" in line)
    evaluate = re.sub(r"^\[\d\d:\d\d:\d\d\]   ", "", lines[start + 1])
    assert " evaluate_soccernet.py --project " in evaluate, evaluate
    r = subprocess.run(["bash", "-c", evaluate], capture_output=True, text=True, timeout=600, env=demo_env())
    assert r.returncode == 0, r.stdout + r.stderr
    labels = next((demo_dir / "soccernet").glob("*/*/*/Labels-v2.json"))
    assert len(json.loads(labels.read_text())["annotations"]) == 3
    game = labels.parent.relative_to(demo_dir / "soccernet").as_posix()
    assert (demo_dir / "raw_data" / game / "1_224p.mkv").exists()  # the same <league>/<season>/<game>
    summary = (demo_dir / "soccernet_eval" / "summary.json").read_text()
    assert json.dumps(game) in summary and re.search(r'"half": *1', summary) and re.search(r'"half": *2', summary)

    # the README's "Empty results" line shows what the model said, window by window, in the project
    readme = (ROOT / "README.md").read_text()
    (show,) = [line.strip() for line in readme.splitlines() if "raw_answers_llava_video_0.json.gz" in line
               and line.strip().startswith("python -c ")]
    r = subprocess.run(["bash", "-c", show], capture_output=True, text=True, timeout=60, cwd=demo_dir, env=demo_env())
    assert r.returncode == 0 and r.stdout.startswith("[{") and "Goal" in r.stdout, r.stdout + r.stderr


def synthetic_video(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llava_soccer.synthetic", "video", *args, "--seconds", "1"],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_synthetic_video_into_a_new_folder_is_written(tmp_path):
    """Issue 33 item 11: a folder that does not exist used to end in a BrokenPipeError traceback (ffmpeg
    could not open the file and stopped reading): now it is made."""
    r = synthetic_video("NEW_DIR/deeper/x.mkv", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "wrote NEW_DIR/deeper/x.mkv\n", r.stderr
    from llava_soccer import videos
    assert videos.probe(tmp_path / "NEW_DIR" / "deeper" / "x.mkv").n_samples == 5


@pytest.mark.parametrize("path,says", [("file/x.mkv", "file/x.mkv: "), ("x.mkv/", "ffmpeg could not write x.mkv/")])
def test_synthetic_video_that_cannot_be_written_is_one_line(tmp_path, path, says):
    (tmp_path / "file").write_text("a file where a folder is asked")
    r = synthetic_video(path, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and says in r.stderr.splitlines()[-1], r.stderr
