"""demo.sh: the README's one-command demo (no GPU, no Slurm, no download) runs the full loop."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SLOW = pytest.mark.slow  # runs the whole pipeline (the fresh clone also installs a venv)


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


@SLOW
def test_demo_runs_the_full_loop_and_shows_every_file(odd_root):
    demo_dir = odd_root / "demo dir"
    r = subprocess.run(["bash", str(ROOT / "demo.sh"), str(demo_dir)], capture_output=True, text=True,
                       timeout=1200, env=demo_env(LLAVA_PYTHON=sys.executable))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "installing" not in out  # LLAVA_PYTHON given: nothing is installed
    assert_demo_ran(out, demo_dir)
    run_next_as_printed(out, demo_dir)


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


@SLOW
def test_demo_on_a_fresh_clone_installs_what_it_needs(tmp_path):
    """`bash demo.sh` in a new clone (this checkout's last commit; uncommitted changes are not in
    it) without a .venv: the shared install step makes one, then the demo runs. pip installs from
    its configured indexes and cache, as a user's first run would (offline on the test machines)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"not a git checkout: {head.stderr.strip()}")
    clone = tmp_path / "fresh clone"
    for cmd in (["git", "init", "-q", str(clone)],
                ["git", "-C", str(clone), "fetch", "-q", "--depth=1", f"file://{ROOT}", head.stdout.strip()],
                ["git", "-C", str(clone), "checkout", "-q", "FETCH_HEAD"]):
        subprocess.run(cmd, check=True, capture_output=True)
    assert not (clone / ".venv").exists()

    r = subprocess.run(["bash", "demo.sh"], cwd=clone, capture_output=True, text=True, timeout=1800,
                       env=demo_env())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "creating the virtual environment" in out and "installing Python requirements" in out
    assert_demo_ran(out, clone / "llava_demo")
    py = clone / ".venv" / "bin" / "python"
    subprocess.run([str(py), "-c", "import torch, transformers, cv2, SoccerNet.Evaluation.ActionSpotting"],
                   check=True)

    # a second install finds everything in place and leaves pip alone
    r = subprocess.run(["bash", "tools/install_env.sh", "demo"], cwd=clone, capture_output=True, text=True,
                       timeout=120, env=demo_env())
    assert r.returncode == 0 and "already installed" in r.stderr and "installing" not in r.stderr, r.stderr


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
