"""llava_soccer.doctor, setup_llava.sh's checks, on this machine's CPU torch: GPUs, drivers, torch's
CUDA version and kernel list, OpenCV's build and the Hugging Face cache are injected."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from llava_soccer import doctor

ROOT = Path(doctor.__file__).resolve().parents[1]
DRIVERS = doctor.parse_drivers(doctor.CUDA_DRIVERS)
PYPI_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]   # torch 2.13 from PyPI (CUDA 13.0)
CU126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]  # from the cu126 index
TITAN_V = ("TITAN V", "535.104.05", "7.0")
TITAN_RTX = ("TITAN RTX", "580.65.06", "7.5")
MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"
SECRET = "hf_doctorTestSecret123"
SRUN = "srun -p GPU --gres=gpu:1 bash setup_llava.sh"
LINE = re.compile(r"(ok|warn|error)\|\S.*")


def suits(gpus, cuda, archs, fix="pip install the right torch"):
    return doctor.torch_finding(gpus, "2.13.0", cuda, archs, fix, DRIVERS)


# --- the interpreter ------------------------------------------------------------------------------

def test_python_older_than_3_10_is_an_error():
    assert doctor.interpreter_finding((3, 9, 18, "final", 0), "/usr/bin/python3") == (
        "error", "Python 3.9 (/usr/bin/python3) is too old: 3.10 or newer is needed")
    assert doctor.interpreter_finding((3, 11, 7), "/venv/bin/python") == ("ok", "python /venv/bin/python (3.11)")


def test_old_pythons_can_read_the_module_up_to_the_version_check():
    """A cluster's python 3.7 must get as far as saying it is too old, not stop at a SyntaxError."""
    ast.parse((ROOT / "llava_soccer" / "doctor.py").read_text(), feature_version=(3, 7))


# --- torch against the GPUs and driver nvidia-smi lists ------------------------------------------

def test_pypi_torch_on_a_titan_v_with_driver_535_names_both_problems_and_the_fix():
    level, message = suits([TITAN_V], "13.0", PYPI_ARCHS, fix="  install the CUDA 12.6 build ")
    assert level == "error"
    assert message == ("torch 2.13.0 is built for CUDA 13.0, which needs NVIDIA driver >= 580; this node has "
                       "535.104.05; TITAN V: torch 2.13.0 (CUDA 13.0) has no kernels for compute capability 7.0 "
                       "(built for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120). Fix: install the CUDA 12.6 build")


def test_cu126_torch_suits_the_titan_v():
    assert suits([TITAN_V], "12.6", CU126_ARCHS) == (
        "ok", "torch 2.13.0 (CUDA 12.6) suits this node: 1x TITAN V (7.0), driver 535.104.05")


def test_mixed_gpus_are_counted_per_kind_and_the_lowest_driver_counts():
    gpus = [TITAN_RTX, TITAN_RTX, ("TITAN V", "580.65.06", "7.0")]
    assert suits(gpus, "12.6", CU126_ARCHS) == (
        "ok", "torch 2.13.0 (CUDA 12.6) suits this node: 2x TITAN RTX (7.5), 1x TITAN V (7.0), driver 580.65.06")
    level, message = suits(gpus, "13.0", PYPI_ARCHS)  # driver 580 is fine for CUDA 13; the Titan V is not
    assert level == "error"
    assert message.startswith("TITAN V: torch 2.13.0 (CUDA 13.0) has no kernels for compute capability 7.0 ")
    assert "TITAN RTX" not in message and "driver" not in message.partition(". Fix:")[0]
    # the lowest driver is compared, numerically (575.9 < 580.65.06 < 580.100)
    level, message = suits([TITAN_RTX, ("TITAN RTX", "575.9", "7.5"), ("TITAN RTX", "580.100", "7.5")],
                           "13.0", PYPI_ARCHS)
    assert level == "error" and "needs NVIDIA driver >= 580; this node has 575.9." in message


def test_cpu_torch_where_nvidia_smi_lists_gpus_is_an_error():
    level, message = suits([TITAN_RTX], None, [])
    assert level == "error"
    assert message == ("torch 2.13.0 is a CPU-only build, but nvidia-smi lists GPUs here: 1x TITAN RTX (7.5). "
                       "Fix: pip install the right torch")


def test_ptx_covers_newer_gpus_and_an_unknown_capability_is_not_checked():
    h200 = ("NVIDIA H200", "580.65.06", "9.0")
    assert suits([h200], "12.6", ["sm_80", "compute_80"])[0] == "ok"  # the driver compiles PTX for 9.0
    assert suits([h200], "12.6", ["sm_80", "sm_86"])[0] == "error"    # cubins run only within their major
    assert suits([("Old GPU", "580.65.06", "?")], "13.0", PYPI_ARCHS) == (
        "ok", "torch 2.13.0 (CUDA 13.0) suits this node: 1x Old GPU (?), driver 580.65.06")


def test_cuda_newer_than_the_table_needs_at_least_the_newest_driver_known():
    level, message = suits([("B200", "575.51.03", "10.0")], "14.1", ["sm_100"])
    assert level == "error" and "built for CUDA 14.1, which needs NVIDIA driver >= 580" in message
    assert suits([("B200", "590.1", "10.0")], "14.1", ["sm_100"])[0] == "ok"
    assert suits([("Old", "455.23", "7.5")], "11.8", ["sm_75"])[0] == "ok"  # CUDA 11 needs 450.80.02
    assert suits([("Old", "440.33", "7.5")], "11.8", ["sm_75"])[0] == "error"


# --- what torch sees --------------------------------------------------------------------------

def test_visible_gpus():
    assert doctor.visibility_finding(2, "NVIDIA H100 80GB HBM3", 2, True, False, "0,1") == (
        "ok", "CUDA: 2 GPU(s) visible here: NVIDIA H100 80GB HBM3")
    assert doctor.visibility_finding(0, "", 1, True, False, None) == (
        "warn", ("torch sees no GPU although nvidia-smi lists 1: check CUDA_VISIBLE_DEVICES (not set) "
                 "and that this node's driver works"))
    assert "CUDA_VISIBLE_DEVICES (-1)" in doctor.visibility_finding(0, "", 4, True, False, "-1")[1]
    # the torch check failed, or did not run (driver too old): its error explains it already
    assert doctor.visibility_finding(0, "", 1, False, False, None) is None


def test_login_node_warning_names_the_command_for_a_gpu_node():
    level, message = doctor.visibility_finding(0, "", 0, False, False, None)
    assert level == "warn" and "normal on a login node" in message and SRUN in message
    assert not message.endswith("CPU build")
    assert doctor.visibility_finding(0, "", 0, False, True, None)[1].endswith(" - and this torch is a CPU build")


# --- OpenCV -----------------------------------------------------------------------------------

def test_opencv_needs_its_ffmpeg_backend():
    with_ffmpeg = "  Video I/O:\n    DC1394:                      NO\n    FFMPEG:                      YES\n"
    assert doctor.opencv_finding(with_ffmpeg) == ("ok", "OpenCV can decode videos (FFMPEG backend)")
    level, message = doctor.opencv_finding(with_ffmpeg.replace("YES", "NO"))
    assert level == "warn" and message.startswith("OpenCV has no FFMPEG backend")
    import cv2
    assert doctor.opencv_finding(cv2.getBuildInformation())[0] == "ok"  # the test environment's OpenCV


# --- the model --------------------------------------------------------------------------------

@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF_HOME (its name has a space). huggingface_hub read HF_HOME when it was first
    imported in this process, so its cache path is pointed there too."""
    home = tmp_path / "hf home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def cache_model(hf_home, repo_id):
    """What a download leaves in HF_HOME's cache (config.json only)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


def test_cached_model(hf_home):
    cache_model(hf_home, "other/model")
    assert doctor.model_finding(MODEL, token_set=False)[0] == "warn"  # another model's cache is no help
    cache_model(hf_home, MODEL)
    assert doctor.model_finding(MODEL, token_set=False) == ("ok", f"model {MODEL} is in the Hugging Face cache")


def test_uncached_model_needs_hf_token(hf_home):
    assert doctor.model_finding(MODEL, token_set=False) == (
        "warn", (f"HF_TOKEN is not set and {MODEL} is not cached: export HF_TOKEN=hf_... "
                 "or pre-download the model (README: Troubleshooting)"))
    level, message = doctor.model_finding(MODEL, token_set=True)
    assert level == "ok" and message.startswith(f"HF_TOKEN is set: {MODEL} (~15 GB) downloads on first use")


def test_local_checkpoint_directory(tmp_path):
    ckpt = tmp_path / "my ckpt"
    ckpt.mkdir()
    assert doctor.model_finding(str(ckpt), token_set=False) == (
        "error", f"LLAVA_MODEL={ckpt} is a directory without config.json")
    (ckpt / "config.json").write_text("{}")
    assert doctor.model_finding(str(ckpt), token_set=False) == ("ok", f"model: local checkpoint {ckpt}")


def test_missing_directory_is_neither_a_checkpoint_nor_a_hub_id(tmp_path):
    level, message = doctor.model_finding(str(tmp_path / "typo"), token_set=True)
    assert level == "error" and message.startswith(f"LLAVA_MODEL={tmp_path / 'typo'} is neither a directory "
                                                   "nor a Hugging Face model id")


# --- main(): the lines setup_llava.sh reads, and the exit status ---------------------------------

def run_main(capsys, *argv):
    rc = doctor.main(list(argv))
    out = capsys.readouterr().out.splitlines()
    assert out and all(LINE.fullmatch(line) for line in out), out
    return rc, out


def levels(lines):
    return [line.partition("|")[0] for line in lines]


def test_main_on_a_login_node_with_the_model_cached(hf_home, capsys, monkeypatch):
    cache_model(hf_home, MODEL)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    rc, out = run_main(capsys, MODEL)
    assert rc == 0
    v = sys.version_info
    assert out[0] == f"ok|python {sys.executable} ({v.major}.{v.minor})"
    assert out[1].startswith(f"ok|torch {torch.__version__}, transformers ")
    assert out[2].startswith(("ok|bitsandbytes ", "warn|bitsandbytes missing"))
    assert out[3].startswith("warn|no GPU visible here: normal on a login node") and SRUN in out[3]
    assert out[4:] == ["ok|OpenCV can decode videos (FFMPEG backend)", f"ok|model {MODEL} is in the Hugging Face cache"]


def test_main_never_prints_hf_token(hf_home, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    rc, out = run_main(capsys, MODEL)
    assert rc == 0 and out[-1].startswith(f"ok|HF_TOKEN is set: {MODEL}")
    assert SECRET not in "\n".join(out)


def test_main_with_a_gpu_listed_and_this_cpu_torch_is_an_error(hf_home, capsys):
    rc, out = run_main(capsys, "--gpu", "TITAN V|535.104.05|7.0", "--fix", "pip install X ", "--", MODEL)
    assert rc == 1
    assert [line for line in out if line.startswith("error|")] == [
        (f"error|torch {torch.__version__} is a CPU-only build, but nvidia-smi lists GPUs here: 1x TITAN V (7.0). "
         "Fix: pip install X")]
    assert not any("GPU visible" in line or "torch sees no GPU" in line for line in out)
    assert out[-1].startswith("warn|HF_TOKEN is not set")  # the checks after it still ran


def test_main_with_a_cuda_build_injected(hf_home, capsys, monkeypatch):
    """This torch made to look like the cu126 build on a Titan V node: it suits, but sees no GPU."""
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CU126_ARCHS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc, out = run_main(capsys, "--gpu=TITAN V|535.104.05|7.0", "--gpu=TITAN V|535.104.05|7.0", MODEL)
    assert rc == 0, out
    assert f"ok|torch {torch.__version__} (CUDA 12.6) suits this node: 2x TITAN V (7.0), driver 535.104.05" in out
    assert ("warn|torch sees no GPU although nvidia-smi lists 2: check CUDA_VISIBLE_DEVICES () "
            "and that this node's driver works") in out
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: PYPI_ARCHS)  # PyPI's kernels: none for 7.0
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    rc, out = run_main(capsys, "--gpu=TITAN V|535.104.05|7.0", "--fix=FIX", MODEL)
    assert rc == 1 and levels(out).count("error") == 1 and not any("torch sees no GPU" in line for line in out)
    # a driver too old for any torch: setup says so itself, and asks for no torch check
    rc, out = run_main(capsys, "--gpu=TITAN V|470.182.03|?", "--skip-torch-check", MODEL)
    assert rc == 0 and "error" not in levels(out)
    assert not any("suits" in line or "GPU visible" in line or "torch sees no GPU" in line for line in out)


def test_main_stops_at_a_python_too_old(capsys, monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 9, 18, "final", 0))
    rc, out = run_main(capsys, MODEL)
    assert (rc, out) == (1, [f"error|Python 3.9 ({sys.executable}) is too old: 3.10 or newer is needed"])


def test_main_stops_at_a_missing_package(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    rc, out = run_main(capsys, MODEL)
    assert rc == 1 and levels(out) == ["ok", "error"]
    assert out[1].startswith("error|package missing: ") and "transformers" in out[1]
    assert out[1].endswith("(rerun setup, or pip install -r requirements.txt)")


def test_main_prints_one_line_per_finding(capsys, monkeypatch):
    monkeypatch.setattr(doctor, "findings", lambda *args: iter([("ok", "fine"), ("error", "first\nsecond")]))
    assert doctor.main([MODEL]) == 1
    assert capsys.readouterr().out == "ok|fine\nerror|first second\n"


def test_main_reports_a_check_that_crashed(capsys, monkeypatch):
    """A check's own bug: its traceback on stderr, then an error line of ours, exit 70 (EX_SOFTWARE)."""
    def findings(*args):
        yield "ok", "fine"
        raise RuntimeError("boom\nand more")

    monkeypatch.setattr(doctor, "findings", findings)
    assert doctor.main([MODEL]) == doctor.EX_SOFTWARE == 70
    out, err = capsys.readouterr()
    assert out == "ok|fine\nerror|the checks stopped at RuntimeError: boom (traceback above)\n"
    assert "Traceback (most recent call last)" in err and "and more" in err


@pytest.mark.parametrize("argv", [["--gpu", "TITAN V 535", MODEL], ["--cuda-drivers", "12", MODEL], []])
def test_main_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        doctor.main(argv)
    assert e.value.code == 2 and "usage: python -m llava_soccer.doctor" in capsys.readouterr().err


@pytest.mark.slow  # a whole process over ~7 s: the full tier's (docs/testing.md, Tiers)
def test_run_as_a_module_with_hf_home_set(tmp_path):
    """As setup_llava.sh runs it: python -m, a fresh process that finds the cache from HF_HOME."""
    home = tmp_path / "hf home"
    cache_model(home, MODEL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLAVA_")) and k != "CUDA_VISIBLE_DEVICES"}
    env.update(HF_HOME=str(home), HF_TOKEN=SECRET, PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error")
    r = subprocess.run([sys.executable, "-m", "llava_soccer.doctor", MODEL], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert all(LINE.fullmatch(line) for line in out), out
    assert out[-1] == f"ok|model {MODEL} is in the Hugging Face cache"
    assert SECRET not in r.stdout + r.stderr


# --- issue 33 item 11: the stack of older cards, checked at setup ------------------------------------------

def test_the_kernels_check_runs_a_convolution_and_attention_and_names_the_fix_when_they_fail():
    """On a GPU node setup runs a convolution and an attention call on the GPU in the plan's dtype. Here the real
    calls run on the CPU (ok); a card whose cuDNN has no kernels (the seam: a run whose convolution raises, as
    cuDNN 9.11+ on a Titan V) is one error line naming the fix setup passes, not a failure in the first window."""
    level, message = doctor.kernels_finding("cpu", "this CPU", torch.float32)
    assert (level, message) == ("ok", "a convolution and an attention call in float32 on this CPU (cpu) ran")

    def cudnn_without_kernels(device, dtype):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED_CUDART\nmore")

    level, message = doctor.kernels_finding("cuda:0", "TITAN V", torch.float16, "pip install FIX ",
                                            run=cudnn_without_kernels)
    assert level == "error"
    assert message == ("a convolution and an attention call in float16 on TITAN V (cuda:0) failed: RuntimeError: "
                       "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED_CUDART. A torch or cuDNN build without kernels for "
                       "this card, most likely: the cu126 torch with the cuDNN it pins runs on every card of the "
                       "cluster. Fix: pip install FIX")


@pytest.mark.parametrize("cudnn,gpus,warned", [
    (91002, [TITAN_V], False),                       # torch cu126's pin: fine
    (91100, [TITAN_V], True),                        # upgraded past it: no kernels for 7.0
    (91301, [("GeForce GTX 1080 Ti", "535.104.05", "6.1"), TITAN_RTX], True),
    (91301, [TITAN_RTX], False),                     # 7.5 keeps its kernels
    (None, [TITAN_V], False),                        # a CPU build: no cuDNN
    (91301, [("GPU", "535.104.05", "?")], False),    # capability unknown: the torch check says so
])
def test_cudnn_past_torchs_pin_on_an_old_card_is_a_warning(cudnn, gpus, warned):
    found = doctor.cudnn_finding(cudnn, gpus)
    assert (found is not None) == warned, found
    if warned:
        level, message = found
        assert level == "warn" and message.startswith(f"cuDNN 9.{cudnn // 100 % 100} has no kernels for ")
        assert "(cuDNN 9.11 and later dropped compute capability below 7.5)" in message and "rerun setup" in message
