"""One GPU's slice of one video through LLaVA-v1.6-Mistral-7B: windows in, partial JSON out.

    python llava_split_worker.py --gpu-id 0 --num-workers 4 --video-index 5
    python llava_split_worker.py --gpu-id 0 --num-workers 1 --video-index 5 --quantization bf16 --batch-size 4
    python llava_split_worker.py --print-plan                      # this GPU's plan as JSON, no model loaded
    python llava_split_worker.py --print-plan --assume-gpu 6.1,11  # ... as if on a GTX 1080 Ti

Video I is line I of $SOCCER_PROJECT/videos.txt (made from raw_data/ the first time). The video
is cut into 3 s windows (15 frames at 5 FPS) every 2 s; this worker takes the windows that start
in the gpu_id-th of num_workers equal time slices, asks the model for events in each, and
rewrites $SOCCER_PROJECT/partial_results_llava_vid{I}_gpu{G}.json after every batch.

Rerun the same command to resume: answered windows are kept, failed ones (OOM, errors) are
retried. The partial records what made it (model and commit, settings, prompt, code, the video
file): a partial made by another run is refused (delete it, or --replace-mismatched). On
SIGUSR1/SIGTERM it finishes the current batch, saves and exits with code 75.
Dtypes and kernels follow one plan per GPU (llava_soccer/gpus.py), logged at start; the flags
below marked "auto" override it.
The loop itself is llava_soccer/worker.py. --gpu_id, --num_workers and --video_index (the
spellings of the first versions) still work.
Exit codes: 0 every window answered; 3 finished, but some windows have no decodable frames (the
file is truncated or damaged: a rerun cannot fill them); 1 windows failed (a rerun retries them)
or an error (one line says why); 2 bad flags; 75 interrupted or disk full.
"""
import argparse
import logging
import os
import sys

from llava_soccer import gpus, settings, worker
from llava_soccer.jsonio import InputError, run_cli


def yes_no(text) -> bool:
    if str(text).strip().lower() in ("1", "yes", "true"):
        return True
    if str(text).strip().lower() in ("0", "no", "false"):
        return False
    raise ValueError(f"{text!r}: use yes or no")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    envs = add_flags(p)
    settings.check_env(p, envs)
    args = p.parse_args(argv)
    check(p, args, envs, sys.argv[1:] if argv is None else argv)
    return args


def add_flags(p) -> dict:
    """The worker's flags on parser p; returns {dest: environment variable giving its default}. (Over 60 lines:
    a table of flags, one call each, no logic.)"""
    envs = {}

    def opt(*flags, env, default, **kw):  # a flag whose default comes from an environment variable
        envs[p.add_argument(*flags, default=settings.env(env, default), **kw).dest] = env

    # dashes, as every other flag; the underscore spellings of the first versions stay as aliases
    p.add_argument("--gpu-id", "--gpu_id", type=int, help="which slice this worker takes (0-based)")
    opt("--num-workers", "--num_workers", env="LLAVA_NUM_WORKERS", default=4, type=int,
        help="slices the video is split into (default 4)")
    p.add_argument("--video-index", "--video_index", type=int, help="line of videos.txt (0-based)")
    p.add_argument("--project", default=None, help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    opt("--model", env="LLAVA_MODEL", default=settings.DEFAULT_MODEL, help="hub id or local checkpoint directory")
    opt("--quantization", env="LLAVA_QUANT", default="nf4", choices=settings.QUANTIZATIONS,
        help="weights: 4-bit NF4 (default; computes in the plan's dtype), plain bf16/fp16/fp32, or fp8 (opt-in, "
             "compute capability 8.9+: the language model's linear layers in FP8 e4m3; README)")
    opt("--batch-size", env="LLAVA_BATCH_SIZE", default="auto",
        help="windows decoded together, or 'auto' (default): measure the first window's memory and fill the GPU's "
             "(or the assumed GPU's) memory up to --max-batch-size; halved on OOM")
    opt("--max-batch-size", env="LLAVA_MAX_BATCH_SIZE", default=16, type=int,
        help="upper bound for --batch-size auto (default 16: each window is prefilled alone, so a batch adds "
             f"~{gpus.KV_GIB:g} GiB of KV cache per 224p window)")
    opt("--max-new-tokens", env="LLAVA_MAX_NEW_TOKENS", default=256, type=int,
        help="answer length limit (default 256)")
    opt("--temperature", env="LLAVA_TEMPERATURE", default=0.0, type=float,
        help="0 = greedy (default, reproducible); > 0 samples, e.g. 0.7")
    opt("--top-p", env="LLAVA_TOP_P", default=0.9, type=float, help="nucleus sampling when temperature > 0")
    opt("--decoder", env="LLAVA_DECODER", default="fast", choices=["fast", "transformers"],
        help="fast: each window prefilled alone, then one step per new token for the batch (default; greedy, same "
             "answers); transformers: its generate() (always used when --temperature > 0)")
    opt("--assume-gpu", env="LLAVA_ASSUME_GPU", default=None, metavar="CC[,GIB]",
        help="plan as if on a GPU of compute capability CC with GIB GiB (e.g. 7.5,24 for a Titan RTX); on a real "
             "GPU also run that plan with PyTorch's memory capped at what such a card leaves")
    opt("--attention", env="LLAVA_ATTENTION", default="auto", choices=["auto", *gpus.BACKENDS],
        help="SDPA backend tried first for the prefill; auto: the plan's (cuDNN on 8.0+, memory-efficient below)")
    opt("--prefill-chunk", env="LLAVA_PREFILL_CHUNK", default="auto",
        help="tokens per prefill chunk, 0 = the whole prompt at once; auto: the plan's (chunks of "
             f"{gpus.PREFILL_CHUNK} on GPUs under {gpus.CHUNKED_BELOW_GIB} GiB)")
    opt("--decode-attention", env="LLAVA_DECODE_ATTENTION", default="auto", choices=["auto", "triton", "sdpa"],
        help="decode-step attention: triton (split-KV kernel, 8.0+) or sdpa; auto: the plan's")
    opt("--fused-kernels", env="LLAVA_FUSED_KERNELS", default="auto", choices=["auto", "yes", "no"],
        help="yes: torch.compile Mistral's RMSNorm/rotary/SiLU-gate arithmetic into fused kernels for a ~10%% faster "
             "prefill (8.0+; compiles in the first windows); auto: the plan's")
    opt("--nf4-weights", env="LLAVA_NF4_WEIGHTS", default="auto", choices=["auto", "packed", "dequantized"],
        help="nf4 only: packed (bitsandbytes dequantizes them in every product) or dequantized to the compute dtype "
             "once at load (the same products, faster, +10 GiB); auto: the plan's (dequantized on 8.0+ GPUs of "
             f"{gpus.DEQUANTIZE_FROM_GIB}+ GiB)")
    opt("--cuda-graphs", env="LLAVA_CUDA_GRAPHS", default="auto", choices=["auto", "yes", "no"],
        help="record each batch's decode step as a CUDA graph; auto: the plan's (yes on a GPU)")
    opt("--visual-tokens", env="LLAVA_VISUAL_TOKENS", default="full", choices=["full", "reduced"],
        help="full: LLaVA-NeXT's tiling, 1,608 tokens per 224p frame (default, as the seed); "
             "reduced: fast mode, base view + one tile, 926 tokens")
    p.add_argument("--print-plan", action="store_true",
                   help="print this GPU's (or --assume-gpu's) plan as one JSON object and exit; loads no model")
    opt("--replace-mismatched", env="LLAVA_REPLACE_MISMATCHED", default=False, type=yes_no, nargs="?", const=True,
        metavar="yes|no", help="a partial file made by another model, setting or video file is replaced by this "
                               "run's (written after the first batch); default: refused with one line naming what "
                               "differs")
    p.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines when the log is a file (default 30)")
    return envs


def check(p, args, envs, given) -> None:
    """What argparse cannot check (ranges, "auto" or a number, --assume-gpu): p.error's one line, exit 2."""
    flags = {a.dest: a.option_strings for a in p._actions}

    def bad(dest, problem):  # names the environment variable when the value came from it
        env = envs.get(dest)
        typed = any(a == f or a.startswith(f + "=") for a in given for f in flags[dest])
        if env and os.environ.get(env) and not typed:
            p.error(f"{env}={os.environ[env]!r} ({flags[dest][0]}): {problem}")
        p.error(f"{flags[dest][0]}: {problem}")

    if not args.print_plan and (args.gpu_id is None or args.video_index is None):
        p.error("--gpu-id and --video-index are required (or --print-plan)")
    if args.gpu_id is not None and not 0 <= args.gpu_id < args.num_workers:
        p.error(f"--gpu-id {args.gpu_id} must be between 0 and --num-workers - 1 ({args.num_workers - 1})")
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) >= 1):
        bad("batch_size", f"must be a whole number >= 1 or 'auto', not {args.batch_size!r}")
    if args.prefill_chunk != "auto" and not args.prefill_chunk.isdigit():
        bad("prefill_chunk", f"must be a whole number of tokens (0 = no chunks) or 'auto', not {args.prefill_chunk!r}")
    for dest in ("max_new_tokens", "max_batch_size", "num_workers"):
        if getattr(args, dest) < 1:
            bad(dest, "must be at least 1")
    if args.assume_gpu:
        try:
            gpus.parse_assume(args.assume_gpu)
        except ValueError as e:
            bad("assume_gpu", str(e))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"[%(asctime)s] [vid{args.video_index} gpu{args.gpu_id}] %(message)s"
                        if not args.print_plan else "%(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")  # as submit_llava.sh's lines in the same log
    return run_cli(worker.run, args, "llava_split_worker.py",
                   report=worker.log.error, failures=(InputError, worker.Abort))


if __name__ == "__main__":
    sys.exit(main())
