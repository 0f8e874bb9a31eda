"""setup_llava.sh: copies the pipeline into $SOCCER_PROJECT, makes/keeps its venv, checks, idempotent."""
import filecmp
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_project
from llava_soccer import synthetic

pytestmark = pytest.mark.slow  # each runs setup_llava.sh (a venv, pip, the checks)
SETUP = ROOT / "setup_llava.sh"
INSTALLED = ["llava_split_worker.py", "merge_results_llava.py", "submit_llava.sh", "requirements.txt",
             "llava_soccer/__init__.py", "llava_soccer/videos.py", "llava_soccer/engine.py",
             "llava_soccer/families/__init__.py"]  # a subpackage


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_"))
           and k not in ("HF_TOKEN", "CUDA_VISIBLE_DEVICES", "SOCCER_PROJECT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return {**env, **{k: str(v) for k, v in extra.items()}}


def setup(project, **env):
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900, check=False,
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
    # no videos yet: no range to suggest (never 0 39), but where they go
    assert out.splitlines()[-1].endswith(
        f"Next: put the match videos (.mkv/.mp4, sub-folders are fine) in {project}/raw_data and run "
        f"setup again: it then prints the command that processes them")
    assert "sbatch" not in out.splitlines()[-1]

    # again, after a video arrived and one installed file went stale: only that file is copied
    make_project(project.parent, {"half1.mkv": synthetic.make_video(tmp_path / "half1.mkv", 10)})
    (project / "merge_results_llava.py").write_text("# old version\n")
    rc, out = setup(project, LLAVA_PYTHON=sys.executable, LLAVA_MODEL=goal_checkpoint, HF_TOKEN="hf_secret123")
    assert rc == 0, out
    assert out.count("copied ") == 1 and "copied  merge_results_llava.py" in out
    assert filecmp.cmp(ROOT / "merge_results_llava.py", project / "merge_results_llava.py", shallow=False)
    assert f"model: local checkpoint {goal_checkpoint}" in out
    assert "1 video(s) under" in out and "hf_secret123" not in out
    # the project is not ~/soccer_project: the command setup prints last takes it along, quoted; its range
    # is the videos there (one: 0 0)
    command = next_command(out)
    assert command.startswith("export SOCCER_PROJECT=")
    assert follow(command, tmp_path) == [project.resolve(), project.resolve(), "submit_llava.sh 0 0"]

    # the installed copy runs on its own (submit_llava.sh finds its scripts beside it), by the command setup
    # printed for a run without Slurm, typed in a new shell: it carries the project and the LLAVA_PYTHON setup
    # used (issue 33 item 4: without it, submit took python3, which has no torch)
    assert f"LLAVA_PYTHON={sys.executable}" in command
    r = subprocess.run(["bash", "-c", command.replace(" && sbatch ", " && bash ")], capture_output=True, text=True,
                       check=False, timeout=900, env=clean_env(LLAVA_MODEL=goal_checkpoint, LLAVA_QUANT="fp32",
                                                               LLAVA_NUM_WORKERS=1))
    assert r.returncode == 0, r.stderr
    assert f"scripts {project};" in r.stderr
    assert (project / "final_predictions_llava_video_0.json").exists()


def test_setup_removes_what_it_copied_before_and_no_longer_ships(tmp_path):
    """Issue 33 item 12: an old deployment's llava_soccer/model.py (no longer in the repository) used to stay
    in every project. Setup removes the files an earlier setup copied (.llava_deployed.txt; a project set up
    before that list existed: the modules of the llava_soccer/ folder) that are gone; the user's files stay."""
    project = tmp_path / "proj"
    (project / "llava_soccer").mkdir(parents=True)
    (project / "llava_soccer" / "model.py").write_text("# the old loader\n")
    (project / "my_analysis.py").write_text("# the user's\n")
    (project / "raw_data").mkdir()
    (project / "raw_data" / "old_tool.py").write_text("# the user's, in raw_data\n")
    rc, out = setup(project, LLAVA_PYTHON=sys.executable)
    assert rc == 0, out
    assert "removed llava_soccer/model.py (copied by an earlier setup; the pipeline no longer ships it)" in out
    assert not (project / "llava_soccer" / "model.py").exists() and out.count("removed ") == 1
    deployed = (project / ".llava_deployed.txt").read_text().splitlines()
    assert set(INSTALLED) <= set(deployed) and "my_analysis.py" not in deployed
    assert all((project / name).is_file() for name in deployed)

    # a later version stops shipping a file it copied: only that one goes, user files stay
    (project / "old_tool.py").write_text("# copied by an earlier setup\n")
    (project / ".llava_deployed.txt").write_text("\n".join(deployed + ["old_tool.py"]) + "\n")
    rc, out = setup(project, LLAVA_PYTHON=sys.executable)
    assert rc == 0, out
    assert "removed old_tool.py" in out and out.count("removed ") == 1 and not (project / "old_tool.py").exists()
    assert (project / "my_analysis.py").exists() and (project / "raw_data" / "old_tool.py").exists()
    assert (project / ".llava_deployed.txt").read_text().splitlines() == deployed


def next_command(out):
    """The command setup's last line tells users to type next (without its comment)."""
    last = out.splitlines()[-1]
    m = re.fullmatch(r"\[\d\d:\d\d:\d\d\]   (.+ && sbatch submit_llava.sh 0 (\d+))    # or without Slurm: "
                     r"bash submit_llava.sh 0 \2", last)
    assert m, last
    return m[1]


def follow(command, tmp_path, **env):
    """Run `command` as typed in a new shell (SOCCER_PROJECT not set), with an sbatch that says
    where it was run, the SOCCER_PROJECT it got and its arguments."""
    bin_dir = tmp_path / "fake sbatch"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text('#!/bin/sh\nprintf \'%s\\n\' "$(pwd -P)" "${SOCCER_PROJECT-(not set)}" "$*"\n')
    (bin_dir / "sbatch").chmod(0o755)
    r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False,
                       env=clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env))
    assert r.returncode == 0, r.stderr
    where, project, args = r.stdout.splitlines()
    return [Path(where), project if project == "(not set)" else Path(project).resolve(), args]


def test_next_line_for_the_default_project(tmp_path):
    """SOCCER_PROJECT not set: ~/soccer_project, and the printed command needs no export."""
    home = tmp_path / "my home"
    raw = home / "soccer_project" / "raw_data"
    (raw / "second half").mkdir(parents=True)
    for name in ("1_224p.mkv", "second half/2_224p.MP4", "notes.txt"):  # setup counts the videos by name
        (raw / name).write_bytes(b"")
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900, check=False,
                       env=clean_env(HOME=home, LLAVA_PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    assert (home / "soccer_project" / "raw_data").is_dir()
    command = next_command(r.stderr)
    assert "SOCCER_PROJECT" not in command
    assert follow(command, tmp_path, HOME=home) == [(home / "soccer_project").resolve(), "(not set)",
                                                   "submit_llava.sh 0 1"]  # two videos: 0 and 1
    assert "Next: process the 2 video(s) in " in r.stderr


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
                                        capture_output=True, check=False).returncode == 0:
        pytest.skip("needs a python3 without torch/transformers")
    rc, out = setup(tmp_path / "proj", LLAVA_PYTHON=python)
    assert rc == 1
    assert "ERROR:   package missing: No module named" in out and "setup incomplete: 1 error(s)" in out


# --- the torch build for this node's GPUs (issue 11) -------------------------------------------
# Fakes: an nvidia-smi on PATH (answers like the real one; drivers before compute_cap reject that
# field), a sitecustomize.py that gives the test's CPU torch the CUDA version and kernel list of a
# CUDA build, and pip without an index (PIP_NO_INDEX), so nothing is ever downloaded.
CU126 = "https://download.pytorch.org/whl/cu126"
SRUN = "srun -p GPU --gres=gpu:1 bash setup_llava.sh"
TORCH_PIN = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)[1]
PYPI_ARCHS = "sm_75,sm_80,sm_86,sm_90,sm_100,sm_120"        # torch 2.13 from PyPI (CUDA 13.0)
CU126_ARCHS = "sm_50,sm_60,sm_70,sm_75,sm_80,sm_86,sm_90"    # torch 2.13 from the cu126 index

FAKE_TORCH = """\
import os
import re
if os.environ.get("FAKE_TORCH_CUDA"):
    import torch
    torch.version.cuda = os.environ["FAKE_TORCH_CUDA"]
    torch.cuda.get_arch_list = lambda: os.environ["FAKE_TORCH_ARCHS"].split(",")
"""


def errors(out):
    """setup's own ERROR lines (pip prints some of its own)."""
    return [line for line in out.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] ERROR:", line)]


def stray(out):
    """Log lines that are not setup's own: the checks' other output (tracebacks, packages' messages)."""
    return re.findall(r"^\[\d\d:\d\d:\d\d\]          .*", out, re.MULTILINE)


def path_without_nvidia_smi():
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if not os.path.exists(os.path.join(d, "nvidia-smi")))


def gpu_node(tmp_path, gpu, driver, cc):
    """PATH with an nvidia-smi listing one GPU; pass cc=None for a driver without compute_cap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"""#!/bin/sh
case "$*" in
  *compute_cap*) [ -n "{cc or ''}" ] || {{ echo 'Field "compute_cap" is not a valid field to query.'; exit 2; }}
                 echo "{gpu}, {driver}, {cc}" ;;
  *name,driver_version*) echo "{gpu}, {driver}" ;;
  *) exit 1 ;;
esac
""")
    smi.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{path_without_nvidia_smi()}"


def offline_venv(project, stamp=None):
    """$SOCCER_PROJECT/venv without pip or packages of its own: site-packages points (.pth) at
    the test environment's (as in test_venv_is_made_once_and_reused). `stamp`: what setup wrote
    the last time it installed it."""
    venv = project / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    v = sys.version_info
    site_packages = venv / "lib" / f"python{v.major}.{v.minor}" / "site-packages"
    (site_packages / "host.pth").write_text(site.getsitepackages()[0] + "\n")
    if stamp is not None:
        (venv / "llava-requirements.txt").write_text(stamp)
    return venv, site_packages


@pytest.fixture
def fake_torch(tmp_path):
    """PYTHONPATH whose sitecustomize.py fakes torch's CUDA build from FAKE_TORCH_CUDA/_ARCHS."""
    d = tmp_path / "fake_torch"
    d.mkdir()
    (d / "sitecustomize.py").write_text(FAKE_TORCH)
    return d


def no_index_pip():
    """pip settings that never reach a network or this machine's wheel folders."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""}


def test_titan_v_with_driver_535_installs_torch_from_the_cu126_index(tmp_path):
    """Driver 535 (CUDA 12.2) and a Titan V (7.0): PyPI's CUDA 13 torch runs on neither, so torch
    comes from PyTorch's cu126 index, before anything else. pip has no index here and fails: one
    ERROR line names the exact command; nothing else is installed and the venv is not stamped."""
    project = tmp_path / "proj"
    venv, site_packages = offline_venv(project)
    rc, out = setup(project, PATH=gpu_node(tmp_path, "TITAN V", "535.104.05", "7.0"), **no_index_pip())
    assert rc == 1, out
    assert (f"ok:      torch {TORCH_PIN} from {CU126}: driver 535 (CUDA 13 needs 580), "
            "TITAN V is compute capability 7.0") in out
    assert f"installing torch=={TORCH_PIN}+cu126 from {CU126} into {venv}" in out
    [line] = errors(out)
    assert (f"installing torch from {CU126} failed (pip's message above; nothing else was changed): run by hand "
            f"{venv}/bin/python -m pip install torch=={TORCH_PIN}+cu126 --index-url {CU126}, then rerun setup") in line
    assert f"torch=={TORCH_PIN}+cu126" in out.replace(line, "")  # pip's own message is shown too
    assert "setup incomplete: 1 error(s)" in out
    assert sorted(p.name for p in site_packages.iterdir()) == ["host.pth"]
    assert not (venv / "llava-requirements.txt").exists()


def test_driver_470_is_too_old_for_any_torch_build(tmp_path):
    """Driver 470 (no compute_cap field yet): no torch 2.13 build runs on it; one ERROR, no venv."""
    project = tmp_path / "proj"
    rc, out = setup(project, PATH=gpu_node(tmp_path, "TITAN V", "470.182.03", None), **no_index_pip())
    assert rc == 1, out
    [line] = errors(out)
    assert f"NVIDIA driver 470.182.03 on this node is too old for torch {TORCH_PIN}" in line
    assert "needs driver >= 525.60.13" in line and ">= 580" in line
    assert "installing" not in out and not (project / "venv").exists()


@pytest.mark.parametrize("index", ["", CU126], ids=["pypi", "cu126-kept"])
def test_titan_rtx_with_driver_580_keeps_the_venv(tmp_path, fake_torch, index):
    """Driver 580 and a Titan RTX (7.5) run PyPI's CUDA 13 build: a venv installed from PyPI stays
    as it is (no torch index at all), and one that got the cu126 build on a Titan V node keeps it,
    as it runs here too and the other nodes need it."""
    project = tmp_path / "proj"
    stamp = (ROOT / "requirements.txt").read_text()
    if index:
        stamp += f"\n# setup_llava.sh: torch from {index}\n"
    venv, site_packages = offline_venv(project, stamp)
    rc, out = setup(project, PATH=gpu_node(tmp_path, "TITAN RTX", "580.65.06", "7.5"), PYTHONPATH=fake_torch,
                    FAKE_TORCH_CUDA="12.6" if index else "13.0", FAKE_TORCH_ARCHS=CU126_ARCHS if index else PYPI_ARCHS,
                    **no_index_pip())
    assert rc == 0, out
    suffix = f" (torch from {index})" if index else ""
    assert f"ok:      venv {venv} is up to date with requirements.txt{suffix}\n" in out
    assert "installing" not in out
    if not index:
        assert "download.pytorch.org" not in out
    assert "suits this node: 1x TITAN RTX (7.5), driver 580.65.06" in out
    assert sorted(p.name for p in site_packages.iterdir()) == ["host.pth"]


def test_check_finds_torch_without_kernels_for_the_titan_v(tmp_path, fake_torch):
    """LLAVA_PYTHON with PyPI's CUDA 13 torch (kernels from 7.5) on a Titan V node with driver 535:
    one ERROR line says so and names the cu126 install; with the cu126 build the node is fine."""
    env = {"LLAVA_PYTHON": sys.executable, "PATH": gpu_node(tmp_path, "TITAN V", "535.104.05", "7.0"),
           "PYTHONPATH": fake_torch}
    rc, out = setup(tmp_path / "proj", FAKE_TORCH_CUDA="13.0", FAKE_TORCH_ARCHS=PYPI_ARCHS, **env)
    assert rc == 1, out
    [line] = errors(out)
    assert "which needs NVIDIA driver >= 580; this node has 535.104.05" in line
    assert ("TITAN V: torch " in line and "(CUDA 13.0) has no kernels for compute capability 7.0 "
            f"(built for {PYPI_ARCHS.replace(',', ' ')})") in line
    assert line.endswith(f"Fix: install the CUDA 12.6 build (compute capability 5.0-9.0, driver >= 525.60.13): "
                         f"{sys.executable} -m pip install torch=={TORCH_PIN}+cu126 --index-url {CU126}")
    assert stray(out) == []  # the checks finished: what packages print on import stays out of the log

    rc, out = setup(tmp_path / "proj", FAKE_TORCH_CUDA="12.6", FAKE_TORCH_ARCHS=CU126_ARCHS, **env)
    assert rc == 0, out
    assert errors(out) == []
    assert "(CUDA 12.6) suits this node: 1x TITAN V (7.0), driver 535.104.05" in out
    assert "WARNING: torch sees no GPU although nvidia-smi lists 1" in out  # the fake has no real GPU


def test_checks_that_crash_are_an_error_with_their_traceback(tmp_path, fake_torch):
    """A check that fails unexpectedly (here torch.cuda.get_arch_list() raises): one ERROR line, and
    the traceback in the log."""
    rc, out = setup(tmp_path / "proj", LLAVA_PYTHON=sys.executable, PYTHONPATH=fake_torch, FAKE_TORCH_CUDA="12.6",
                    PATH=gpu_node(tmp_path, "TITAN V", "535.104.05", "7.0"))  # and no FAKE_TORCH_ARCHS
    assert rc == 1, out
    [line] = errors(out)
    assert line.endswith("ERROR:   the checks stopped at KeyError: 'FAKE_TORCH_ARCHS' (traceback above)")
    assert any("Traceback (most recent call last)" in s for s in stray(out))
    assert "setup incomplete: 1 error(s)" in out


def test_login_node_asks_for_setup_on_a_gpu_node(tmp_path):
    """No nvidia-smi (a login node): a warning names the command that runs setup on a GPU node."""
    rc, out = setup(tmp_path / "proj", LLAVA_PYTHON=sys.executable, PATH=path_without_nvidia_smi())
    assert rc == 0, out
    [line] = [line for line in out.splitlines() if "WARNING: no GPU visible here" in line]
    assert "normal on a login node" in line and SRUN in line


# --- submit_llava.sh: what a failed video leaves (issue 12) ---------------------------------------
# Without Slurm, with the real worker and merge and the tiny checkpoint on the CPU: the log line of a failed
# video says "partial results kept" only when partial files exist.
@pytest.mark.parametrize("case,message", [
    ("corrupt video", "video 0: FAILED (worker 0 exit 1); no partial results were written, see the worker lines "
                      "above"),
    ("corrupt video, earlier partial", "video 0: FAILED (worker 0 exit 1); partial results kept, see the worker "
                                       "lines above"),
    ("garbled partial", "video 0: FAILED (merge exit 1); partial results kept"),  # the worker is fine
])
def test_failed_video_says_whether_partial_results_were_kept(tmp_path, goal_checkpoint, video_10s, case, message):
    project = tmp_path / "my project"
    (project / "raw_data").mkdir(parents=True)
    video = project / "raw_data" / "a.mkv"
    if case.startswith("corrupt video"):
        video.write_bytes(b"\x1aE\xdf\xa3 not a Matroska file, cut short")  # the worker cannot open it
    else:
        video.symlink_to(video_10s)  # 5 windows: the merge's failure is the point, not the video's length
    if case != "corrupt video":  # a partial an earlier run left; garbled: the merge cannot read it
        (project / "partial_results_llava_vid0_gpu1.json").write_text('{"made_by": null, "windows": [{"time": 0')
    r = subprocess.run(["bash", str(ROOT / "submit_llava.sh"), "0"], capture_output=True, text=True, timeout=600,
                       check=False, cwd=tmp_path,
                       env=clean_env(SOCCER_PROJECT=project, LLAVA_HOME=ROOT, LLAVA_PYTHON=sys.executable,
                                     LLAVA_MODEL=goal_checkpoint, LLAVA_QUANT="fp32", LLAVA_NUM_WORKERS=1,
                                     CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 1, r.stderr
    assert message in r.stderr
    assert bool(list(project.glob("partial_results_llava_vid0_gpu*.json"))) == (case != "corrupt video")
    if case.startswith("corrupt video"):  # the worker's own line says why, above submit's
        assert f"[vid0 gpu0] error: cannot read video {video}: OpenCV found no frames" in r.stderr
    else:  # the merge's own line names the file and the fix
        assert (f"merge_results_llava.py: error: partial {project / 'partial_results_llava_vid0_gpu1.json'} is not "
                f"valid JSON") in r.stderr


def test_setup_keeps_the_cudnn_that_torch_pins(tmp_path):
    """Issue 33 item 11: cuDNN 9.11 and later dropped compute capability < 7.5, and torch's cu126 build pins an
    older one: installing the requirements after torch must not upgrade it. The cuDNN found in the venv (here a
    stand-in distribution) is a pip constraint of that install (pip has no index here: it installs nothing)."""
    project = tmp_path / "proj"
    venv, site_packages = offline_venv(project)
    info = site_packages / "nvidia_cudnn_cu12-9.10.2.21.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cudnn-cu12\nVersion: 9.10.2.21\n")
    rc, out = setup(project, PATH=path_without_nvidia_smi(), **no_index_pip())
    assert rc == 0, out
    constraints = venv / "llava-constraints.txt"
    assert f"ok:      keeping nvidia-cudnn-cu12 9.10.2.21, the cuDNN torch pins ({constraints})" in out
    assert constraints.read_text() == "nvidia-cudnn-cu12==9.10.2.21\n"
    assert "venv " in out and " installed" in out
