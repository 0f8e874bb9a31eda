"""setup_llava.sh's checks of the python it installed: the interpreter, the packages, whether torch
suits this node's GPUs and driver, OpenCV's video backend, the model.

    python -m llava_soccer.doctor llava-hf/llava-v1.6-mistral-7b-hf
    python -m llava_soccer.doctor --gpu 'TITAN V|535.104.05|7.0' --fix 'pip install ...' -- MODEL

Prints one line per finding, LEVEL|message with LEVEL ok, warn or error, which setup_llava.sh turns
into its log lines. Exit status: 0 no error; 1 error lines printed; 70 (EX_SOFTWARE) a check failed
unexpectedly (its traceback on stderr, then an error line). --gpu: the GPUs nvidia-smi
lists, as setup_llava.sh reads them (name|driver|compute capability, "?" where unknown; none on a
login node). HF_TOKEN is only ever said to be set or not, never printed.

Kept readable by old Pythons up to the version check (no syntax newer than 3.7, heavy imports after
it), so that one says it is too old instead of failing with a SyntaxError.
"""
import argparse
import os
import sys
import traceback

MIN_PYTHON = (3, 10)
# The lowest NVIDIA driver for torch's builds of each CUDA major version (setup_llava.sh passes its own).
CUDA_DRIVERS = "11=450.80.02 12=525.60.13 13=580"
EX_SOFTWARE = 70  # sysexits.h: a check itself failed


def version(text):
    """'535.104.05' -> (535, 104, 5), for comparing driver versions."""
    return tuple(int(x) for x in text.split(".") if x.isdigit())


def parse_gpu(text):
    """'name|driver|capability' -> (name, driver, capability)."""
    parts = text.rsplit("|", 2)
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"not NAME|DRIVER|CAPABILITY: {text!r}")
    return tuple(part.strip() for part in parts)


def parse_drivers(text):
    """'11=450.80.02 12=525.60.13' -> {'11': '450.80.02', '12': '525.60.13'}."""
    try:
        return dict(item.split("=") for item in text.split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not MAJOR=DRIVER ...: {text!r}") from None


def interpreter_finding(version_info, executable):
    v = version_info
    if tuple(v[:2]) < MIN_PYTHON:
        return "error", f"Python {v[0]}.{v[1]} ({executable}) is too old: 3.10 or newer is needed"
    return "ok", f"python {executable} ({v[0]}.{v[1]})"


def bitsandbytes_finding():
    from llava_soccer.loading import quiet_bitsandbytes
    quiet_bitsandbytes()
    try:
        import bitsandbytes
    except Exception:  # noqa: BLE001 - not only ImportError: one without its CUDA libraries raises others
        return "warn", "bitsandbytes missing: LLAVA_QUANT=nf4 (the default) fails; use bf16 or pip install bitsandbytes"
    return "ok", f"bitsandbytes {bitsandbytes.__version__} (LLAVA_QUANT=nf4, 4-bit)"


def torch_finding(gpus, torch_version, cuda, arch_list, fix, cuda_drivers):
    """Does this torch (its version, CUDA version, None for a CPU build, and kernel list) suit the
    GPUs nvidia-smi lists ((name, driver, capability) each) and the lowest of their drivers? One
    finding: ok, or an error naming every problem and then `fix`."""
    from llava_soccer.gpus import torch_build_problem

    driver = min((d for _, d, _ in gpus), key=version)
    kinds = sorted({(name, cc) for name, _, cc in gpus})
    listed = ", ".join(f"{sum((g[0], g[2]) == (name, cc) for g in gpus)}x {name} ({cc})" for name, cc in kinds)
    problems = []
    if cuda is None:
        problems.append(f"torch {torch_version} is a CPU-only build, but nvidia-smi lists GPUs here: {listed}")
    else:
        major = cuda.split(".")[0]
        newest = max(cuda_drivers, key=int)  # a newer CUDA needs at least what the newest known one does
        need = cuda_drivers.get(major, cuda_drivers[newest] if int(major) > int(newest) else None)
        if need and version(driver) < version(need):
            problems.append(f"torch {torch_version} is built for CUDA {cuda}, which needs NVIDIA driver >= {need}; "
                            f"this node has {driver}")
        for name, cc in kinds:
            if cc == "?":
                continue
            problem = torch_build_problem(tuple(int(x) for x in cc.split(".")), arch_list, torch_version, cuda)
            if problem:  # its own fix ("run setup on a node with this GPU") is where we are: ours follows
                problems.append(f"{name}: {problem.partition(': run setup')[0]}")
    if problems:
        return "error", f"{'; '.join(problems)}. Fix: {fix.strip()}"
    return "ok", f"torch {torch_version} (CUDA {cuda}) suits this node: {listed}, driver {driver}"


def visibility_finding(visible, device_name, listed, torch_ok, cpu_build, cuda_visible_devices):
    """What torch sees: `visible` GPUs (the first named `device_name`) where nvidia-smi lists `listed`;
    `torch_ok`: the torch check ran and found nothing wrong. None: nothing to add."""
    if visible:
        return "ok", f"CUDA: {visible} GPU(s) visible here: {device_name}"
    if listed:
        if not torch_ok:  # the error above explains it, or the driver is the error to fix first
            return None
        shown = "not set" if cuda_visible_devices is None else cuda_visible_devices
        return "warn", (f"torch sees no GPU although nvidia-smi lists {listed}: check CUDA_VISIBLE_DEVICES "
                        f"({shown}) and that this node's driver works")
    # no nvidia-smi: a login node, where nothing tells which torch build the GPU nodes need
    return "warn", ("no GPU visible here: normal on a login node (jobs get theirs from #SBATCH --gres), but only on a "
                    "GPU node can setup check torch against its GPUs and driver (and pick the torch build they need): "
                    "srun -p GPU --gres=gpu:1 bash setup_llava.sh; on CPU the 7B model is far too slow"
                    + (" - and this torch is a CPU build" if cpu_build else ""))


def run_kernels(device, dtype):
    """One convolution (cuDNN, as the vision tower's patch embedding) and one SDPA attention call (the
    prefill's) on device in dtype, waited for."""
    import torch
    x = torch.randn(1, 3, 28, 28, device=device, dtype=dtype)
    torch.nn.Conv2d(3, 8, 14, stride=14, device=device, dtype=dtype)(x)
    q = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def kernels_finding(device, name, dtype, fix="", run=run_kernels):
    """Do the GPU's kernels run in this venv? run(device, dtype) (run_kernels; a seam for tests) raising means
    a torch/cuDNN build without kernels for this card: one error now, not a failure in the first window."""
    from llava_soccer.jsonio import first_line
    what = f"a convolution and an attention call in {str(dtype).removeprefix('torch.')} on {name} ({device})"
    try:
        run(device, dtype)
    except Exception as e:  # noqa: BLE001 - any failure of the stack is the finding
        return "error", (f"{what} failed: {type(e).__name__}: {first_line(e)}. A torch or cuDNN build without "
                         f"kernels for this card, most likely: the cu126 torch with the cuDNN it pins runs on every "
                         f"card of the cluster. Fix: {fix.strip() or 'rerun setup on this node'}")
    return "ok", f"{what} ran"


# cuDNN 9.11 dropped compute capability < 7.5 (Pascal; reportedly Volta too): torch's cu126 build pins an older one
CUDNN_OLD_CARDS_LAST = 91099  # torch.backends.cudnn.version() of the last cuDNN (9.10.x) with their kernels


def cudnn_finding(cudnn_version, gpus):
    """cuDNN (torch.backends.cudnn.version(), e.g. 91002) against nvidia-smi's GPUs: a warning when one of them
    is below 7.5 and this cuDNN is 9.11 or later (upgraded past torch's pin). None: nothing to say."""
    old = sorted({f"{name} ({cc})" for name, _, cc in gpus if cc != "?" and version(cc) < (7, 5)})
    if not cudnn_version or cudnn_version <= CUDNN_OLD_CARDS_LAST or not old:
        return None
    return "warn", (f"cuDNN {cudnn_version // 10000}.{cudnn_version // 100 % 100} has no kernels for {', '.join(old)} "
                    f"(cuDNN 9.11 and later dropped compute capability below 7.5): reinstall the cuDNN that torch "
                    f"pins (rerun setup, which keeps it)")


def opencv_finding(build_information):
    """From cv2.getBuildInformation(): can OpenCV decode the videos?"""
    if "FFMPEG:YES" in build_information.replace(" ", ""):
        return "ok", "OpenCV can decode videos (FFMPEG backend)"
    return "warn", "OpenCV has no FFMPEG backend: it may not read .mkv/.mp4 (pip install opencv-python-headless)"


def model_finding(model, token_set, cache_dir=None):
    """A local checkpoint directory, or a hub id: cached (in cache_dir, default the HF_HOME cache),
    or downloadable with HF_TOKEN (`token_set`: whether it is set; its value is never needed)."""
    if os.path.isdir(model):
        if os.path.isfile(os.path.join(model, "config.json")):
            return "ok", f"model: local checkpoint {model}"
        return "error", f"LLAVA_MODEL={model} is a directory without config.json"
    from huggingface_hub import try_to_load_from_cache

    from llava_soccer.cli import first_line

    try:
        cached = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir)
    except ValueError as e:  # HFValidationError: a path that does not exist, most likely
        return "error", (f"LLAVA_MODEL={model} is neither a directory nor a Hugging Face model id "
                         f"(namespace/name): {first_line(e)}")
    if isinstance(cached, str):
        return "ok", f"model {model} is in the Hugging Face cache"
    if token_set:
        return "ok", (f"HF_TOKEN is set: {model} (~15 GB) downloads on first use "
                      "(better: pre-download it once, README: Troubleshooting)")
    return "warn", (f"HF_TOKEN is not set and {model} is not cached: export HF_TOKEN=hf_... "
                    "or pre-download the model (README: Troubleshooting)")


def findings(model, gpus=(), torch_check=True, fix="", cuda_drivers=None):
    """Every check in turn, as (level, message); stops after an error that leaves nothing to check.
    gpus: nvidia-smi's (name, driver, capability); torch_check=False: the driver is too old for any
    torch build, which setup reports itself (the one error to fix first)."""
    cuda_drivers = cuda_drivers or parse_drivers(CUDA_DRIVERS)
    found = interpreter_finding(sys.version_info, sys.executable)
    yield found
    if found[0] == "error":
        return
    try:
        import accelerate  # noqa: F401
        import cv2
        import numpy  # noqa: F401
        import PIL  # noqa: F401
        import torch
        import tqdm  # noqa: F401
        import transformers
    except ImportError as e:
        yield "error", f"package missing: {e} (rerun setup, or pip install -r requirements.txt)"
        return
    yield "ok", f"torch {torch.__version__}, transformers {transformers.__version__}, OpenCV {cv2.__version__}"
    yield bitsandbytes_finding()
    torch_ok = False
    if gpus and torch_check:
        found = torch_finding(gpus, torch.__version__, torch.version.cuda, torch.cuda.get_arch_list(), fix,
                              cuda_drivers)
        torch_ok = found[0] == "ok"
        yield found
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = visibility_finding(visible, torch.cuda.get_device_name(0) if visible else "", len(gpus), torch_ok,
                               torch.version.cuda is None, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if found:
        yield found
    found = cudnn_finding(torch.backends.cudnn.version() if torch.version.cuda else None, gpus)
    if found:
        yield found
    if visible:
        from llava_soccer import gpus as plans
        from llava_soccer.config import WorkerSettings
        dtype = getattr(torch, plans.plan(WorkerSettings(), plans.detect("cuda:0")).compute_dtype)
        yield kernels_finding("cuda:0", torch.cuda.get_device_name(0), dtype, fix)
    yield opencv_finding(cv2.getBuildInformation())
    yield model_finding(model, bool(os.environ.get("HF_TOKEN")))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llava_soccer.doctor",
                                     description="Check the python that runs the pipeline (setup_llava.sh runs this).")
    parser.add_argument("model", help="hub id or local checkpoint directory (LLAVA_MODEL)")
    parser.add_argument("--gpu", action="append", type=parse_gpu, default=[], metavar="NAME|DRIVER|CAPABILITY",
                        help="a GPU nvidia-smi lists (once per GPU); none: a login node")
    parser.add_argument("--skip-torch-check", action="store_true",
                        help="check torch against nothing: the driver is too old for any torch build")
    parser.add_argument("--fix", default="", help="the fix an error about the torch build names")
    parser.add_argument("--cuda-drivers", type=parse_drivers, default=CUDA_DRIVERS, metavar="MAJOR=DRIVER ...",
                        help=f"the lowest driver for each CUDA major version (default: {CUDA_DRIVERS})")
    args = parser.parse_args(argv)
    errors = 0
    try:
        for level, message in findings(args.model, args.gpu, not args.skip_torch_check, args.fix, args.cuda_drivers):
            print(f"{level}|{' '.join(message.splitlines())}", flush=True)  # one line each, whatever it quotes
            errors += level == "error"
    except Exception as e:  # noqa: BLE001 - a check's own bug or a broken package: say so on a line of ours
        from llava_soccer.cli import first_line

        traceback.print_exc()
        print(f"error|the checks stopped at {type(e).__name__}: {first_line(e)} (traceback above)", flush=True)
        return EX_SOFTWARE
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
