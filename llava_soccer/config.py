"""The worker's settings: one frozen dataclass that llava_split_worker.py's flags are made from (names,
environment variables, defaults, help) and that checks its own values.

    s = WorkerSettings(gpu_id=0, video_index=5, quantization="bf16")   # what the library takes
    s = config.parse(["--gpu-id", "0", "--video-index", "5"], __doc__) # the command line's (exit 2 on a bad flag)
    s = dataclasses.replace(s, batch_size="4")                         # checked again

A field's metadata holds its flag spellings, its environment variable and its help; a value taken from an
environment variable is checked like the flag's, and a bad one is named by the variable.
"""
import argparse
import dataclasses
import os

from . import gpus, settings
from .families import ALL as FAMILIES

GROUPS = {"job": "which slice of which video", "model": "the model and its answers",
          "gpu": "the GPU plan (llava_soccer/gpus.py): 'auto' takes the plan's choice"}


def yes_no(text) -> bool:
    if str(text).strip().lower() in ("1", "yes", "true"):
        return True
    if str(text).strip().lower() in ("0", "no", "false"):
        return False
    raise ValueError(f"{text!r}: use yes or no")


def _flag(default, *names, group, help, env=None, **argparse_kw):
    return dataclasses.field(default=default, metadata=dict(names=names, group=group, help=help, env=env,
                                                            argparse=argparse_kw))


class SettingError(ValueError):
    """A value a setting cannot take: field is the setting's name, problem says why and what to use."""

    def __init__(self, field, problem):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    # (the underscore spellings of the first versions stay as aliases)
    gpu_id: int | None = _flag(None, "--gpu-id", "--gpu_id", type=int, group="job",
                               help="which slice this worker takes (0-based)")
    num_workers: int = _flag(4, "--num-workers", "--num_workers", env="LLAVA_NUM_WORKERS", type=int, group="job",
                             help="slices the video is split into (default 4)")
    video_index: int | None = _flag(None, "--video-index", "--video_index", type=int, group="job",
                                    help="line of videos.txt (0-based)")
    project: str | None = _flag(None, "--project", group="job",
                                help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    replace_mismatched: bool = _flag(
        False, "--replace-mismatched", env="LLAVA_REPLACE_MISMATCHED", type=yes_no, nargs="?", const=True,
        metavar="yes|no", group="job",
        help="a partial file made by another model, setting or video file is replaced by this run's (written after "
             "the first batch); default: refused with one line naming what differs")
    print_plan: bool = _flag(False, "--print-plan", action="store_true", group="job",
                             help="print this GPU's (or --assume-gpu's) plan as one JSON object and exit; loads no "
                                  "model")
    progress_every: float = _flag(30.0, "--progress-every", type=float, group="job",
                                  help="seconds between progress lines when the log is a file (default 30)")

    model: str = _flag(settings.DEFAULT_MODEL, "--model", env="LLAVA_MODEL", group="model",
                       help="hub id or local checkpoint directory")
    quantization: str = _flag(
        "nf4", "--quantization", env="LLAVA_QUANT", choices=settings.QUANTIZATIONS, group="model",
        help="weights: 4-bit NF4 (default; computes in the plan's dtype), plain bf16/fp16/fp32, or fp8 (opt-in, "
             "compute capability 8.9+: the language model's linear layers in FP8 e4m3; docs/gpus.md)")
    visual_tokens: str = _flag("full", "--visual-tokens", env="LLAVA_VISUAL_TOKENS", choices=("full", "reduced"),
                               group="model",
                               help="full: LLaVA-NeXT's tiling, 1,608 tokens per 224p frame (default, as the seed); "
                                    "reduced: fast mode, base view + one tile, 926 tokens")
    max_new_tokens: int = _flag(256, "--max-new-tokens", env="LLAVA_MAX_NEW_TOKENS", type=int, group="model",
                                help="answer length limit (default 256)")
    temperature: float = _flag(0.0, "--temperature", env="LLAVA_TEMPERATURE", type=float, group="model",
                               help="0 = greedy (default, reproducible); > 0 samples, e.g. 0.7")
    top_p: float = _flag(0.9, "--top-p", env="LLAVA_TOP_P", type=float, group="model",
                         help="nucleus sampling when temperature > 0")
    class_scores: bool = _flag(
        True, "--class-scores", env="LLAVA_CLASS_SCORES", type=yes_no, nargs="?", const=True, metavar="yes|no",
        group="model", help="score the 17 classes in every window from the model's own probabilities (one extra "
                            "pass of ~100 tokens per window; default yes): evaluate_soccernet.py ranks by them")
    decoder: str = _flag("fast", "--decoder", env="LLAVA_DECODER", choices=("fast", "transformers"), group="model",
                         help="fast: each window prefilled alone, then one step per new token for the batch "
                              "(default; greedy, same answers); transformers: its generate() (always used when "
                              "--temperature > 0)")

    batch_size: str = _flag("auto", "--batch-size", env="LLAVA_BATCH_SIZE", group="gpu",
                            help="windows decoded together, or 'auto' (default): measure the first window's memory "
                                 "and fill the GPU's (or the assumed GPU's) memory up to --max-batch-size; halved on "
                                 "OOM")
    max_batch_size: int = _flag(16, "--max-batch-size", env="LLAVA_MAX_BATCH_SIZE", type=int, group="gpu",
                                help="upper bound for --batch-size auto (default 16: each window is prefilled alone, "
                                     "so a batch adds each window's KV cache at 224p: "
                                     + ", ".join(f"~{f.KV_GIB:g} GiB ({f.NAME})" for f in FAMILIES) + ")")
    assume_gpu: str | None = _flag(
        None, "--assume-gpu", env="LLAVA_ASSUME_GPU", metavar="CC[,GIB]", group="gpu",
        help="plan as if on a GPU of compute capability CC with GIB GiB (e.g. 7.5,24 for a Titan RTX); on a real GPU "
             "also run that plan with PyTorch's memory capped at what such a card leaves")
    attention: str = _flag("auto", "--attention", env="LLAVA_ATTENTION", choices=("auto", *gpus.BACKENDS),
                           group="gpu",
                           help="SDPA backend tried first for the prefill; auto: the plan's (cuDNN on 8.0+, "
                                "memory-efficient below)")
    prefill_chunk: str = _flag("auto", "--prefill-chunk", env="LLAVA_PREFILL_CHUNK", group="gpu",
                               help="tokens per prefill chunk, 0 = the whole prompt at once; auto: the plan's (chunks "
                                    f"of {gpus.PREFILL_CHUNK} on GPUs under {gpus.CHUNKED_BELOW_GIB} GiB)")
    decode_attention: str = _flag("auto", "--decode-attention", env="LLAVA_DECODE_ATTENTION",
                                  choices=("auto", "triton", "sdpa"), group="gpu",
                                  help="decode-step attention: triton (split-KV kernel, 8.0+) or sdpa; auto: the "
                                       "plan's")
    fused_kernels: str = _flag("auto", "--fused-kernels", env="LLAVA_FUSED_KERNELS", choices=("auto", "yes", "no"),
                               group="gpu",
                               help="yes: torch.compile Mistral's RMSNorm/rotary/SiLU-gate arithmetic into fused "
                                    "kernels for a ~10%% faster prefill (8.0+; compiles in the first windows); auto: "
                                    "the plan's")
    nf4_weights: str = _flag("auto", "--nf4-weights", env="LLAVA_NF4_WEIGHTS",
                             choices=("auto", "packed", "dequantized"), group="gpu",
                             help="nf4 only: packed (bitsandbytes dequantizes them in every product) or dequantized "
                                  "to the compute dtype once at load (the same products, faster, +10 GiB); auto: the "
                                  f"plan's (dequantized on 8.0+ GPUs of {gpus.DEQUANTIZE_FROM_GIB}+ GiB)")
    gpu_share: int = _flag(1, "--gpu-share", env="LLAVA_GPU_SHARE", type=int, group="gpu",
                           help="workers sharing this GPU (submit_llava.sh sets it when a job has more workers than "
                                "GPUs): plan as for a card of 1/N of its memory, PyTorch's memory capped at that share "
                                "(default 1)")
    cuda_graphs: str = _flag("auto", "--cuda-graphs", env="LLAVA_CUDA_GRAPHS", choices=("auto", "yes", "no"),
                             group="gpu",
                             help="record each batch's decode step as a CUDA graph; auto: the plan's (yes on a GPU)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata["argparse"].get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise SettingError(f.name, f"choose from {', '.join(choices)}, not {getattr(self, f.name)!r}")
        if self.gpu_id is not None and not 0 <= self.gpu_id < self.num_workers:
            raise SettingError("gpu_id", f"{self.gpu_id} is not between 0 and --num-workers - 1 "
                                         f"({self.num_workers - 1})")
        if self.batch_size != "auto" and not (str(self.batch_size).isdigit() and int(self.batch_size) >= 1):
            raise SettingError("batch_size", f"must be a whole number >= 1 or 'auto', not {self.batch_size!r}")
        if self.prefill_chunk != "auto" and not str(self.prefill_chunk).isdigit():
            raise SettingError("prefill_chunk", "must be a whole number of tokens (0 = no chunks) or 'auto', not "
                                                f"{self.prefill_chunk!r}")
        for name in ("max_new_tokens", "max_batch_size", "num_workers", "gpu_share"):
            if getattr(self, name) < 1:
                raise SettingError(name, "must be at least 1")
        if self.assume_gpu:
            try:
                gpus.parse_assume(self.assume_gpu)
            except ValueError as e:
                raise SettingError("assume_gpu", str(e)) from None


def parser(description) -> argparse.ArgumentParser:
    """The flags of WorkerSettings, in groups, with their environment variables as defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    envs = {}
    for f in dataclasses.fields(WorkerSettings):
        meta = f.metadata
        default = settings.env(meta["env"], f.default) if meta["env"] else f.default
        groups[meta["group"]].add_argument(*meta["names"], dest=f.name, default=default, help=meta["help"],
                                           **meta["argparse"])
        if meta["env"]:
            envs[f.name] = meta["env"]
    settings.check_env(p, envs)
    return p


def parse(argv, description=None) -> WorkerSettings:
    """The settings of a command line (None: sys.argv); a bad value is argparse's one line (exit 2), naming the
    environment variable when the value came from one."""
    import sys
    p = parser(description)
    given = sys.argv[1:] if argv is None else argv
    namespace = p.parse_args(argv)
    if not namespace.print_plan and (namespace.gpu_id is None or namespace.video_index is None):
        p.error("--gpu-id and --video-index are required (or --print-plan)")
    try:
        return WorkerSettings(**vars(namespace))
    except SettingError as e:
        meta = WorkerSettings.__dataclass_fields__[e.field].metadata
        flag, env = meta["names"][0], meta["env"]
        typed = any(a == n or a.startswith(n + "=") for a in given for n in meta["names"])
        if env and os.environ.get(env) and not typed:
            p.error(f"{env}={os.environ[env]!r} ({flag}): {e.problem}")
        p.error(f"{flag}: {e.problem}")
