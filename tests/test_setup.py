"""setup_llava.sh: copies the pipeline into $SOCCER_PROJECT, makes/keeps its venv, checks, idempotent."""
import filecmp
import os
import shutil
import site
import subprocess
import sys

import pytest

from conftest import ROOT, make_project
from llava_soccer import synthetic

SETUP = ROOT / "setup_llava.sh"
INSTALLED = ["llava_split_worker.py", "merge_results_llava.py", "submit_llava.sh", "requirements.txt",
             "llava_soccer/__init__.py", "llava_soccer/videos.py", "llava_soccer/model.py"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "LLAVA_")) and k not in ("HF_TOKEN", "CUDA_VISIBLE_DEVICES")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return {**env, **{k: str(v) for k, v in extra.items()}}


def setup(project, **env):
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900,
                       env=clean_env(SOCCER_PROJECT=project, **env))
    return r.returncode, r.stderr


def test_setup_copies_checks_and_is_idempotent(odd_root, goal_checkpoint, tmp_path):
    project = odd_root / "setup" / "soccer_project"  # as make_project names it
    rc, out = setup(project, LLAVA_PYTHON=sys.executable)
    assert rc == 0, out
    for name in INSTALLED:
        assert filecmp.cmp(ROOT / name, project / name, shallow=False), name
        assert f"copied  {name}" in out
    assert (project / "raw_data").is_dir()
    assert "WARNING: HF_TOKEN is not set and llava-hf/llava-v1.6-mistral-7b-hf is not cached" in out
    assert "WARNING: no .mkv/.mp4 under" in out
    assert "ok:      torch " in out and "OpenCV can decode videos" in out
    assert "setup done" in out

    # again, after a video arrived and one installed file went stale: only that file is copied
    make_project(project.parent, {"half1.mkv": synthetic.make_video(tmp_path / "half1.mkv", 10)})
    (project / "merge_results_llava.py").write_text("# old version\n")
    rc, out = setup(project, LLAVA_PYTHON=sys.executable, LLAVA_MODEL=goal_checkpoint, HF_TOKEN="hf_secret123")
    assert rc == 0, out
    assert out.count("copied ") == 1 and "copied  merge_results_llava.py" in out
    assert filecmp.cmp(ROOT / "merge_results_llava.py", project / "merge_results_llava.py", shallow=False)
    assert f"model: local checkpoint {goal_checkpoint}" in out
    assert "1 video(s) under" in out and "hf_secret123" not in out

    # the installed copy runs on its own: submit_llava.sh finds its scripts beside it
    r = subprocess.run(["bash", "submit_llava.sh", "0", "0"], cwd=project, capture_output=True, text=True,
                       timeout=900, env=clean_env(SOCCER_PROJECT=project, LLAVA_PYTHON=sys.executable,
                                                  LLAVA_MODEL=goal_checkpoint, LLAVA_QUANT="fp32",
                                                  LLAVA_NUM_WORKERS=2))
    assert r.returncode == 0, r.stderr
    assert f"scripts {project};" in r.stderr
    assert (project / "final_predictions_llava_video_0.json").exists()


def test_venv_is_made_once_and_reused(tmp_path):
    """A missing venv is created and requirements.txt installed; the next run leaves it alone.

    Stand-in for a real `python3 -m venv` + 3 GB of downloads: a venv without pip whose
    site-packages points (.pth) at the test environment's, where every requirement is met,
    so pip installs nothing and needs no network."""
    project = tmp_path / "proj"
    venv = project / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    v = sys.version_info
    (venv / "lib" / f"python{v.major}.{v.minor}" / "site-packages" / "host.pth").write_text(
        site.getsitepackages()[0] + "\n")
    rc, out = setup(project)
    assert rc == 0, out
    assert "installing requirements.txt into" in out and f"ok:      python {venv}/bin/python" in out
    assert filecmp.cmp(venv / "llava-requirements.txt", ROOT / "requirements.txt", shallow=False)
    rc, out = setup(project)
    assert rc == 0, out
    assert "is up to date with requirements.txt" in out and "installing" not in out


def test_missing_packages_are_an_error(tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import torch, transformers"],
                                        capture_output=True).returncode == 0:
        pytest.skip("needs a python3 without torch/transformers")
    rc, out = setup(tmp_path / "proj", LLAVA_PYTHON=python)
    assert rc == 1
    assert "ERROR:   package missing: No module named" in out and "setup incomplete: 1 error(s)" in out
