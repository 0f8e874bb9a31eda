"""The seed repository's own worker, run unchanged with its generate() calls timed: the peer our numbers
are compared with (benchmarks/RESULTS.md). Its code is not copied here: fetch it yourself.

    git clone https://github.com/HaydenLundin/SoccerNetLLMVideoBenchmark seed
    python benchmarks/seed_peer.py frames VIDEO FRAMES_DIR              # where ffmpeg is (this machine)
    python benchmarks/seed_peer.py run seed/workers/qwen_split_worker.py VIDEO FRAMES_DIR CHECKPOINT \
        --max-new-tokens 64 --out timings.json                           # on the GPU machine

`frames` runs the seed's own ffmpeg command (-ss START -t 3 -vf fps=5 -q:v 2, JPEG) for every window start
its loop asks for (0, 2, 4 ... s) and for its one-frame "match context" at 15 s, into FRAMES_DIR/<start>/.
`run` puts an `ffmpeg` on PATH that copies those JPEGs where the seed asked for them (the GPU machine has no
ffmpeg; the seed's ffmpeg time, 0.04 s per window on the H100, is not what is compared), points the
seed's hard-coded hub id at CHECKPOINT (a full-size random checkpoint: python -m llava_soccer.synthetic
checkpoint DIR --family qwen2_5_vl --size full), makes every generate() write exactly --max-new-tokens
tokens (random weights never stop; the seed asks 256) and times each generate() call with CUDA synchronised
before and after. The seed's first call (the match context, one frame) is reported apart.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WINDOW_S, STEP_S, FPS = 3.0, 2.0, 5.0  # the seed worker's constants
CONTEXT_AT = 15


def _ffmpeg(video, start, duration, fps, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-ss", str(start), "-t", str(duration), "-i", str(video), "-vf",
                    f"fps={fps}", "-q:v", "2", "-y", str(out_dir / "frame_%04d.jpg")], check=True)


def frames(a):
    """Every JPEG the seed's loop would extract from the video, by window start."""
    seconds = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                    str(a.video)], capture_output=True, text=True, check=True).stdout)
    out = Path(a.frames_dir)
    _ffmpeg(a.video, CONTEXT_AT, 0.1, 1, out / "context")
    start = 0.0
    while start < seconds:
        _ffmpeg(a.video, start, WINDOW_S, FPS, out / f"{start:g}")
        start += STEP_S
    print(f"{len(list(out.iterdir()))} folders of frames in {out}")


FAKE_FFMPEG = """#!{python}
# Serves the frames `seed_peer.py frames` extracted: the seed calls ffmpeg -ss S -t D -i V -vf fps=F ... OUT
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
start, duration = float(args[args.index("-ss") + 1]), float(args[args.index("-t") + 1])
src = Path({frames!r}) / ("context" if duration < 1 else f"{{start:g}}")
dst = Path(args[-1]).parent
for f in sorted(src.glob("*.jpg")) if src.is_dir() else []:
    shutil.copy(f, dst / f.name)
"""


def run(a):
    import torch
    import transformers
    work = Path(tempfile.mkdtemp())
    (work / "bin").mkdir()
    fake = work / "bin" / "ffmpeg"
    fake.write_text(FAKE_FFMPEG.format(python=sys.executable, frames=str(Path(a.frames_dir).resolve())))
    fake.chmod(0o755)
    os.environ["PATH"] = f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}"
    home = work / "home"
    (home / "soccer_project" / "raw_data").mkdir(parents=True)
    os.symlink(Path(a.video).resolve(), home / "soccer_project" / "raw_data" / "match.mkv")
    os.environ["HOME"] = str(home)
    os.environ.pop("HF_TOKEN", None)

    checkpoint, hub_id = str(Path(a.checkpoint).resolve()), "Qwen/Qwen2.5-VL-7B-Instruct"
    for cls in (transformers.Qwen2_5_VLForConditionalGeneration, transformers.AutoProcessor):
        original = cls.from_pretrained.__func__

        def redirected(klass, name, *args, _original=original, **kwargs):
            return _original(klass, checkpoint if name == hub_id else name, *args, **kwargs)
        cls.from_pretrained = classmethod(redirected)

    calls = []
    generate = transformers.GenerationMixin.generate

    def timed(self, *args, **kwargs):
        kwargs.update(max_new_tokens=a.max_new_tokens, min_new_tokens=a.max_new_tokens)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate(self, *args, **kwargs)
        torch.cuda.synchronize()
        calls.append({"seconds": time.perf_counter() - t0, "prompt_tokens": int(kwargs["input_ids"].shape[1]),
                      "new_tokens": int(out.shape[1] - kwargs["input_ids"].shape[1])})
        return out
    transformers.GenerationMixin.generate = timed

    torch.cuda.reset_peak_memory_stats()
    sys.argv = [a.seed_worker, "--gpu_id", "0", "--num_workers", "1", "--video_index", "0"]
    t0 = time.perf_counter()
    import runpy
    runpy.run_path(a.seed_worker, run_name="__main__")
    wall = time.perf_counter() - t0
    windows = calls[1:]
    steady = windows[1:] or windows
    result = {"seed_worker": a.seed_worker, "gpu": torch.cuda.get_device_name(), "max_new_tokens": a.max_new_tokens,
              "context_call": calls[0] if calls else None, "windows": len(windows),
              "s_per_window_generate": statistics.fmean(c["seconds"] for c in windows),
              "s_per_window_generate_after_first": statistics.fmean(c["seconds"] for c in steady),
              "prompt_tokens": statistics.median(c["prompt_tokens"] for c in windows),
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "wall_s_with_load": wall}
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps({**result, "calls": calls}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("frames", help="extract the seed's JPEGs with ffmpeg")
    f.add_argument("video")
    f.add_argument("frames_dir")
    r = sub.add_parser("run", help="run the seed worker on those frames, generate() timed")
    r.add_argument("seed_worker", help="the seed's workers/qwen_split_worker.py (or llava_split_worker.py)")
    r.add_argument("video")
    r.add_argument("frames_dir")
    r.add_argument("checkpoint")
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--out", default=None)
    a = p.parse_args()
    frames(a) if a.command == "frames" else run(a)


if __name__ == "__main__":
    main()
