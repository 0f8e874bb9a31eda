"""Seconds per window of the real worker on one GPU: the number to plan cluster time with.

    python benchmarks/bench_worker.py --video match_224p.mkv                       # nf4, batch 1
    python benchmarks/bench_worker.py --video match_224p.mkv --quantization nf4 bf16 \\
        --batch-sizes 1 8 --decoders fast transformers --attentions cudnn --windows 32 --max-new-tokens 64

Builds the full-size llava-v1.6-mistral-7b architecture from its config with random weights
(no download; --checkpoint DIR reuses one), loads it the way the worker does (NF4 quantizes the
saved bf16 copy at load time, as with the hub checkpoint), then for each setting runs the
worker's own loop (llava_soccer.worker.run: decode, preprocess in a prefetch thread, generate,
partial JSON) over --windows windows of the video. Random weights never stop generating, so
every window produces exactly --max-new-tokens tokens.

Prints, per setting: s/window (the whole run, and the batches after the first: a real slice's
rate), mean GPU utilisation, peak GPU memory, and the projected minutes for a 50-minute half
(1,500 windows) on 4 GPUs (the first batch, then the rest at the steady rate); and, per quantization, the
time split of one window: decode video, preprocess, vision tower, prefill, per new token.
--profile yes profiles one whole batch (the largest of --batch-sizes): per phase (prefill, decode,
answers + JSON) wall and GPU-busy seconds and kernel seconds per kind (GEMM, NF4 dequantize, ...),
and writes its timeline beside --out (trace_QUANT_TOKENS.json.gz);
--decoder-check yes compares the fast decoder (CUDA graph and eager) with transformers' generate.
--assume-gpu CC,GIB runs every setting with the plan of that GPU (llava_soccer/gpus.py), PyTorch's
memory capped at what such a card leaves; --plan-check CC ... compares the first-token logits and
greedy tokens of those plans (e.g. fp16 compute on 7.x) with the real GPU's plan on real windows,
--quant-check fp8 compares fp8 with bf16 the same way. --answer-lengths 3:0.8,60:0.2 ends answers
as real ones do (random weights never stop by themselves).
Writes everything as JSON to --out (default $OUT/bench.json or ./bench.json).
"""
import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from llava_soccer import decoding, gpus, synthetic, videos, worker  # noqa: E402
from llava_soccer import model as llava  # noqa: E402
from llava_soccer.jsonio import atomic_write_json  # noqa: E402
from llava_soccer.settings import partial_path  # noqa: E402

HALF_WINDOWS = 1500  # 50 minutes, a window every 2 s


CUDA = torch.cuda.is_available()  # on CPU (tests, with a tiny --checkpoint) GPU numbers are None


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


class UtilSampler(threading.Thread):
    """Mean GPU utilisation (nvidia-smi's number, via NVML) while running."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.running = [], True

    def run(self):
        while self.running:
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # NVML missing: report no number rather than fail the run
                return
            time.sleep(0.1)

    def stop(self):
        self.running = False
        if self.is_alive():
            self.join()
        return sum(self.samples) / len(self.samples) if self.samples else None


def time_split(model, processor, info, max_new_tokens, plan):
    """Seconds of each stage for one window (the second of the video, after a warm-up)."""
    t = time.perf_counter()
    (_, _, times, frames), = videos.iter_windows(info, [1])
    decode = time.perf_counter() - t
    t = time.perf_counter()
    windows = llava.prepare(processor, [(times, frames)])
    preprocess = time.perf_counter() - t
    pixels = windows[0]["pixel_values"].to(model.device, model.dtype)
    sizes = windows[0]["image_sizes"].to(model.device)
    llava.generate(model, processor, windows, 2, plan=plan)  # the plan's self-checks, outside the timing
    with torch.inference_mode():
        vision, _ = timed(lambda: model.model.get_image_features(pixels, sizes))
        prefill, _ = timed(lambda: decoding.prefill(model, windows, max_new_tokens, plan.prefill_chunk))
    split = {"decode_video_s": decode, "preprocess_s": preprocess, "vision_s": vision, "prefill_s": prefill}
    for decoder in ("fast", "transformers"):
        full, _ = timed(lambda d=decoder: llava.generate(model, processor, windows, max_new_tokens, decoder=d,
                                                         plan=plan))
        split[f"{decoder}_per_new_token_ms"] = 1000 * (full - prefill) / (max_new_tokens - 1)
    return {**split, "tokens": int(windows[0]["input_ids"].shape[1])}


def plan_check(ckpt, visual_tokens, info, variants, windows=(1, 2, 3), new_tokens=16):
    """Real windows under each (name, quantization, plan flags) of `variants` against the first one
    (e.g. 7.5's fp16 compute against bf16, fp8 against bf16, dequantized NF4 weights against packed):
    the first token's logits (largest difference, same argmax, inf/NaN) and how many leading greedy
    tokens agree, per window."""
    from transformers.cache_utils import DynamicCache
    device, found, reference = llava.pick_device(0), {}, None
    for name, quant, flags in variants:
        plan = gpus.for_device(device, quant, **flags)
        model, processor = llava.load(ckpt, quant, device, visual_tokens, plan)
        inputs = llava.prepare(processor, [(w.times, w.frames) for w in videos.iter_windows(info, windows)])
        with torch.inference_mode(), llava._attention(model, plan.prefill_attention):
            embeds = (decoding.embed(model, decoding.on_model(model, w), plan.prefill_chunk) for w in inputs)
            logits = torch.stack([decoding.last_logits(model, e, DynamicCache(), plan.prefill_chunk)[0].float().cpu()
                                  for e in embeds])
            ids = decoding.greedy(model, inputs, new_tokens, [-1], processor.tokenizer.pad_token_id, plan).cpu()
        del model, processor
        torch.cuda.empty_cache() if CUDA else None
        if reference is None:
            reference = logits, ids
            found["reference"] = {"plan": plan.line(), "max_abs_logit": logits.abs().max().item()}
            continue
        same = ids == reference[1]
        found[name] = {"plan": plan.line(), "finite": bool(torch.isfinite(logits).all()),
                                  "max_abs_diff": (logits - reference[0]).abs().max().item(),
                                  "same_argmax": (logits.argmax(-1) == reference[0].argmax(-1)).tolist(),
                                  f"leading_tokens_equal_of_{new_tokens}": [int(row.cumprod(0).sum()) for row in same]}
    return found


# Kernel names -> what they do, first match wins (CUDA 13 / torch 2.11 names on Hopper).
KERNEL_KINDS = [("NF4 dequantize", r"dequant|kDequant|bnb|4bit"),
                ("attention", r"cudnn|fmha|flash|attention|attn|^kernel$"),  # (^kernel$: our Triton decode)
                ("GEMM", r"gemm|nvjet|xmma|cutlass|cublas|matmul|sm90_|sm80_"),
                ("fused elementwise (Triton)", r"^triton_"),
                ("elementwise, copies, casts", r"elementwise|vectorized|copy|cast|reduce|index|cat|fill|softmax|"
                                               r"where|arange|scatter|gather|norm")]


def _kind(name):
    import re
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name, re.I)), "other")


def _busy(intervals):
    """Seconds covered by the union of (start, end) microsecond intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e6


def profile(model, processor, info, batch, plan, max_new_tokens, trace=None):
    """One whole batch of the worker under torch.profiler: llava.generate on `batch` windows (the
    prefill of each, the decode steps with the CUDA graph's capture), then the answers' parsing
    and the partial JSON's write. Per phase: wall seconds, GPU busy and idle seconds, and kernel
    seconds per kind (KERNEL_KINDS). The plan's self-checks and compiles run in a warm-up batch.
    trace: also write the profiler's timeline there (gzipped Chrome trace: chrome://tracing, Perfetto)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from llava_soccer.events import window_events
    frames = list(videos.iter_windows(info, range(batch)))
    windows = llava.prepare(processor, [(w.times, w.frames) for w in frames])
    llava.generate(model, processor, windows, max_new_tokens, plan=plan)  # warm-up
    saved = decoding.prefill, decoding.graphed

    def phase(name, fn):
        def run(*args, **kwargs):
            with record_function(f"phase {name}"):
                out = fn(*args, **kwargs)
                sync()
            return out
        return run
    decoding.prefill, decoding.graphed = phase("prefill", saved[0]), phase("graph capture", saved[1])
    try:
        with torch_profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * CUDA) as prof:
            with record_function("phase batch"):
                texts = llava.generate(model, processor, windows, max_new_tokens, plan=plan)
                sync()
                with record_function("phase answers + JSON"):
                    records = [{"time": w.start, "raw": t, "events": window_events(w.start, t, w.times)[0]}
                               for w, t in zip(frames, texts)]
                    atomic_write_json(Path(tempfile.mkdtemp()) / "partial.json", records)
    finally:
        decoding.prefill, decoding.graphed = saved
    events = prof.events()
    # CPU-side ranges (each ends after a sync, so its GPU work lies inside it); the profiler also
    # shows each range as a GPU annotation of the same name: not a kernel
    ranges = {e.name[6:]: (e.time_range.start, e.time_range.end) for e in events
              if e.name.startswith("phase ") and e.device_type == DeviceType.CPU}
    kernels = [(e.time_range.start, e.time_range.end, e.name) for e in events
               if e.device_type == DeviceType.CUDA and not e.name.startswith("phase ")]
    b0, b1 = ranges["batch"]
    p1 = ranges["prefill"][1]
    bounds = {"prefill": (b0, p1), "decode (incl. graph capture)": (p1, ranges["answers + JSON"][0]),
              "answers + JSON": ranges["answers + JSON"], "whole batch": (b0, b1)}
    capture = ranges.get("graph capture")  # none on CPU
    found = {"windows": batch, "max_new_tokens": max_new_tokens,
             "graph_capture_s": capture and (capture[1] - capture[0]) / 1e6}
    for name, (a, b) in bounds.items():
        inside = [(s, e, n) for s, e, n in kernels if a <= s < b]
        kinds = {}
        for s, e, n in inside:
            kinds[_kind(n)] = kinds.get(_kind(n), 0.0) + (e - s) / 1e6
        busy = _busy([(s, e) for s, e, _ in inside])
        found[name] = {"wall_s": (b - a) / 1e6, "gpu_busy_s": busy, "gpu_idle_s": (b - a) / 1e6 - busy,
                       "kernels_s": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}
    if trace:
        import gzip
        import shutil
        prof.export_chrome_trace(str(trace)[:-3])
        with open(str(trace)[:-3], "rb") as raw, gzip.open(trace, "wb") as packed:
            shutil.copyfileobj(raw, packed)
        os.remove(str(trace)[:-3])
        found["trace"] = str(trace)
    found["top_kernels"] = prof.key_averages().table(sort_by="cuda_time_total" if CUDA else "cpu_time_total",
                                                     row_limit=25, max_name_column_width=80)
    return found


def decoder_check(model, processor, info, plan, new_tokens=24):
    """Greedy tokens of two windows from the fast decoder (CUDA graph, eager) and transformers'
    generate: are they the same? (Near-equal logits may flip under bf16 rounding; the count says how far they agree.)"""
    from transformers.cache_utils import DynamicCache
    windows = llava.prepare(processor, [(w.times, w.frames) for w in videos.iter_windows(info, [1, 2])])
    eos, pad = [model.generation_config.eos_token_id], processor.tokenizer.pad_token_id
    with torch.inference_mode():  # logits of one new token: the fast step vs the model's own forward
        first, lengths, kv = decoding.prefill(model, windows[:1], 1, plan.prefill_chunk)
        ours = decoding.Step(model, *kv, plan.decode_attention)(first, lengths)[0].float()
        one = decoding.on_model(model, windows[0])
        cache = DynamicCache()
        model(**one, past_key_values=cache, use_cache=True, logits_to_keep=1)
        theirs = model(input_ids=first[:, None], past_key_values=cache, use_cache=True).logits[0, -1].float()
        del cache, kv
    logits = {"max_abs_logit": theirs.abs().max().item(), "max_abs_diff_fast_vs_transformers":
              (ours - theirs).abs().max().item(), "same_argmax": bool(ours.argmax() == theirs.argmax())}
    with torch.inference_mode():
        ids = {"graph": decoding.greedy(model, windows, new_tokens, eos, pad, plan),
               "eager": decoding.greedy(model, windows, new_tokens, eos, pad,
                                        dataclasses.replace(plan, cuda_graphs=False, checked=set(), kept={}))}
        batch = decoding.on_model(model, llava.collate(processor, windows))
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        ids["transformers"] = out[:, batch["input_ids"].shape[1]:]

    def agree(a, b):  # how many leading tokens are equal, per window
        n = min(a.shape[1], b.shape[1])
        return [int(d.nonzero()[0]) if d.any() else n for d in a[:, :n] != b[:, :n]]
    return {f"leading_tokens_equal_{k}_vs_transformers": agree(v, ids["transformers"]) for k, v in ids.items()
            if k != "transformers"} | {"graph_equals_eager": bool(torch.equal(ids["graph"], ids["eager"])),
                                       "new_tokens": new_tokens, **logits}


def attention_check(model, processor, info, new_tokens=16):
    """Is cuDNN attention's output as good as flash's on the real 25k-token prompt? Last-token
    logits of one prefill with each SDPA backend alone, their largest differences, and whether
    greedy answers of `new_tokens` tokens agree when each backend is tried first."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    (_, _, times, frames), = videos.iter_windows(info, [1])
    inputs = decoding.on_model(model, llava.prepare(processor, [(times, frames)])[0])
    # (the memory-efficient kernel has no grouped-query attention, so it cannot run this prefill alone)
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    logits, answers = {}, {}
    for name, backend in backends.items():
        with torch.inference_mode(), sdpa_kernel([backend]):
            logits[name] = model(**inputs, logits_to_keep=1).logits[0, -1].float()
        order = [backend, *(b for b in backends.values() if b != backend), SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
        with torch.inference_mode(), sdpa_kernel(order, set_priority=True):
            out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        answers[name] = out[0, inputs["input_ids"].shape[1]:].tolist()
    scale = logits["flash"].abs().max().item()
    return {"max_abs_logit": scale, "max_abs_diff_cudnn_flash": (logits["cudnn"] - logits["flash"]).abs().max().item(),
            "same_argmax": {k: int(logits[k].argmax()) == int(logits["flash"].argmax()) for k in logits},
            f"same_{new_tokens}_greedy_tokens_as_flash": {k: answers[k] == answers["flash"] for k in answers}}


@contextlib.contextmanager
def answer_lengths(spec, eos):
    """Random weights never stop: with spec "3:0.8,60:0.2", the fast decoder's rows end (emit eos)
    after 3 tokens in 80% of the batch rows and 60 in 20% (row r of each batch gets slot r of a
    fixed shuffled pattern of 10), as real answers do ("None" is two tokens + </s>)."""
    if not spec:
        yield
        return
    import random
    pattern = [int(n) for n, share in (part.split(":") for part in spec.split(","))
               for _ in range(round(10 * float(share)))]
    random.Random(0).shuffle(pattern)
    real = decoding.Step.__call__

    def call(self, tokens, positions):
        logits = real(self, tokens, positions)
        if not hasattr(self, "stop_at"):  # first call: positions are the prompt lengths; token 0 came from prefill
            rows = torch.tensor([pattern[r % len(pattern)] for r in range(len(positions))], device=positions.device)
            self.stop_at = positions + rows - 2
        logits[:, eos] = torch.where(positions >= self.stop_at, 1e4, logits[:, eos])  # graph-safe: tensor ops
        return logits
    decoding.Step.__call__ = call
    try:
        yield
    finally:
        decoding.Step.__call__ = real


@contextlib.contextmanager
def batch_ends():
    """[(seconds, windows)] at the end of each batch the worker answers inside the block."""
    ends, real = [], worker.Worker.answer

    def answer(self, batch):
        records = real(self, batch)
        ends.append((time.perf_counter(), len(batch)))
        return records
    worker.Worker.answer = answer
    try:
        yield ends
    finally:
        worker.Worker.answer = real


def run_worker(model, processor, ckpt, video, windows, batch, decoder, max_new_tokens, quant, attention="auto",
               fused="no", assume=None, visual_tokens="full", nf4_weights="auto"):
    """llava_soccer.worker.run over the first `windows` windows; the partial file pretends the rest are done.
    s_per_window counts the whole run; steady_s_per_window the batches after the first (a real slice
    has ~375 windows, so the first batch's wait for its windows and its self-checks weigh little)."""
    project = Path(tempfile.mkdtemp()) / "project"
    (project / "raw_data").mkdir(parents=True)
    os.symlink(video, project / "raw_data" / "match.mkv")
    info = videos.probe(video)
    rest = [{"time": info.window_start(k), "raw": "None", "status": "ok", "events": []}
            for k in range(windows, info.n_windows)]
    # every setting of llava_split_worker.py's flags, spelled out: the caller's LLAVA_* variables do not apply
    args = argparse.Namespace(gpu_id=0, num_workers=1, video_index=0, project=str(project), model=str(ckpt),
                              quantization=quant, batch_size=str(batch), max_batch_size=16, decoder=decoder,
                              max_new_tokens=max_new_tokens, temperature=0.0, top_p=0.9, assume_gpu=assume,
                              attention=attention, prefill_chunk="auto", decode_attention="auto", fused_kernels=fused,
                              nf4_weights=nf4_weights, cuda_graphs="auto", visual_tokens=visual_tokens,
                              print_plan=False, replace_mismatched=False,
                              progress_every=1e9)
    made_by = worker.identity(args, worker.plan_for(args)[1], project, project / "raw_data" / "match.mkv", info)
    atomic_write_json(partial_path(project, 0, 0), worker.partial_doc(made_by, rest))
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    sampler = UtilSampler()
    if CUDA:
        sampler.start()
    with batch_ends() as ends:
        seconds, code = timed(lambda: worker.run(args, loaded=(model, processor)))
    util = sampler.stop()
    assert code == worker.EXIT_DONE, f"the worker ended its slice with exit code {code}"
    per_window = seconds / windows
    steady = (ends[-1][0] - ends[0][0]) / (windows - ends[0][1]) if len(ends) > 1 else None
    return {"quantization": quant, "batch_size": batch, "decoder": decoder, "fused_kernels": fused,
            "attention": attention, "windows": windows,
            "s_per_window": per_window, "steady_s_per_window": steady, "windows_per_s": 1 / per_window,
            "gpu_util_pct": util,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if CUDA else None,
            "half_on_4_gpus_min": half_on_4_gpus(seconds, windows, ends[0][1], steady) / 60}


def half_on_4_gpus(seconds, windows, first, steady):
    """Seconds for one GPU's quarter of a 50-minute half: this run's first batch (its wait for windows,
    self-checks), then the rest at the steady rate (the whole run's rate when there was one batch)."""
    if steady is None:
        return seconds / windows * HALF_WINDOWS / 4
    return seconds - (windows - first) * steady + (HALF_WINDOWS / 4 - first) * steady


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="a 224p H.264 video of at least --windows * 2 s")
    p.add_argument("--checkpoint", default=None, help="reuse a full-size checkpoint directory (default: build one)")
    p.add_argument("--quantization", nargs="+", choices=["nf4", "bf16", "fp8", "fp32"], default=["nf4"])
    p.add_argument("--batch-sizes", nargs="+", default=["1"],
                   help="whole numbers, or auto (the worker's --batch-size auto)")
    p.add_argument("--decoders", nargs="+", choices=["fast", "transformers"], default=["fast"],
                   help="the worker's --decoder values to run (default: fast)")
    p.add_argument("--visual-tokens", choices=["full", "reduced"], default="full",
                   help="reduced = the worker's opt-in fast mode (926 instead of 1,608 tokens per 224p frame)")
    p.add_argument("--fused-kernels", nargs="+", choices=["auto", "yes", "no"], default=["auto"],
                   help="the worker's --fused-kernels values to run (default: auto, the plan's)")
    p.add_argument("--attentions", nargs="+", choices=["auto", *gpus.BACKENDS], default=["auto"])
    p.add_argument("--assume-gpu", default=None, metavar="CC,GIB",
                   help="run with the plan of that GPU, memory capped (the worker's --assume-gpu)")
    p.add_argument("--plan-check", nargs="*", default=[], metavar="CC,GIB",
                   help="compare first-token logits and 16 greedy tokens of these plans with this GPU's own on 3 "
                        "real windows")
    p.add_argument("--quant-check", nargs="*", default=[], choices=["nf4", "fp8", "fp16"],
                   help="the same for these quantizations against bf16 (e.g. fp8: its agreement with bf16)")
    p.add_argument("--nf4-check", choices=["yes", "no"], default="no",
                   help="the same for NF4 weights dequantized once (--nf4-weights dequantized) against packed")
    p.add_argument("--nf4-weights", choices=["auto", "packed", "dequantized"], default="auto",
                   help="the worker's --nf4-weights for the nf4 settings (default auto: the plan's)")
    p.add_argument("--attention-check", choices=["yes", "no"], default="no",
                   help="compare cuDNN and flash attention outputs (logits, greedy tokens) on one real window")
    p.add_argument("--decoder-check", choices=["yes", "no"], default="no",
                   help="greedy tokens of the fast decoder (graph and eager) vs transformers' generate on two windows")
    p.add_argument("--profile", choices=["yes", "no"], default="no",
                   help="print the kernels that take the time in one prefill and in decode steps at the largest batch")
    p.add_argument("--windows", type=int, default=16, help="windows per setting (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="fixed answer length (default 64)")
    p.add_argument("--answer-lengths", default=None, metavar="N:SHARE,...",
                   help="end answers as real ones do instead, e.g. 3:0.8,60:0.2 (80%% of the windows 3 tokens, 20%% "
                        "60; shares in tenths; the fast decoder's rows stop there, --max-new-tokens still caps)")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench.json"))
    a = p.parse_args(argv)
    video = os.path.abspath(a.video)
    info = videos.probe(video)
    ckpt = a.checkpoint
    if ckpt is None:
        ckpt = tempfile.mkdtemp(prefix="llava_full_")
        t = time.perf_counter()
        synthetic.make_checkpoint(ckpt, "full", dtype="bfloat16", device="cuda")
        print(f"built the full-size checkpoint in {time.perf_counter() - t:.0f} s", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    profile_batch = max((int(b) for b in a.batch_sizes if b.isdigit()), default=1)
    results = {"gpu": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__, "video": a.video,
               "max_new_tokens": a.max_new_tokens, "visual_tokens": a.visual_tokens, "split": {}, "runs": []}
    for quant in a.quantization:
        t = time.perf_counter()
        device = llava.pick_device(0)
        plan = gpus.for_device(device, quant, assume_gpu=a.assume_gpu, nf4_weights=a.nf4_weights)
        gpus.apply_memory(plan, device)
        print(plan.line(), flush=True)
        model, processor = llava.load(ckpt, quant, device, a.visual_tokens, plan)
        print(f"{quant}: loaded in {time.perf_counter() - t:.1f} s", flush=True)
        for fused in a.fused_kernels:  # warm-up: CUDA kernels, allocator, fused kernels' compiles (batch 1 and 2)
            for batch in (1, 2):
                run_worker(model, processor, ckpt, video, 2, batch, "fast", 8, quant, fused=fused, assume=a.assume_gpu,
                           visual_tokens=a.visual_tokens, nf4_weights=a.nf4_weights)
        results["split"][quant] = split = time_split(model, processor, info, a.max_new_tokens, plan)
        print(f"{quant} split: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()), flush=True)
        checks = {"attention_check": (attention_check, (a.attention_check == "yes" and CUDA,)),
                  "decoder_check": (decoder_check, (a.decoder_check == "yes", plan)),
                  "profile": (profile, (a.profile == "yes", profile_batch, plan, a.max_new_tokens,
                                       Path(a.out).with_name(f"trace_{quant}_{a.visual_tokens}.json.gz")))}
        for name, (check, (wanted, *extra)) in checks.items():
            if not wanted:
                continue
            try:
                found = check(model, processor, info, *extra)
            except Exception as e:  # report, and still run the settings
                found = {"error": f"{type(e).__name__}: {e}"}
            results.setdefault(name, {})[quant] = found
            for k, v in found.items():
                print(f"{quant} {name} {k}:" + (f"\n{v}" if isinstance(v, str) and "\n" in v else f" {v}"), flush=True)
        plan.kept.clear()  # the checks' KV buffers: not in the settings' peaks
        if CUDA:
            torch.cuda.empty_cache()
        for fused, decoder, attention, batch in itertools.product(a.fused_kernels, a.decoders, a.attentions,
                                                                  a.batch_sizes):
            try:
                with answer_lengths(a.answer_lengths, model.generation_config.eos_token_id):
                    r = run_worker(model, processor, ckpt, video, a.windows, batch, decoder, a.max_new_tokens, quant,
                                   attention, fused, a.assume_gpu, a.visual_tokens, a.nf4_weights)
                r["answer_lengths"] = a.answer_lengths
            except Exception as e:  # one setting failing (e.g. OOM) must not lose the others
                r = {"quantization": quant, "batch_size": batch, "decoder": decoder, "attention": attention,
                     "fused_kernels": fused, "error": f"{type(e).__name__}: {e}"}
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
        del model, processor
        if CUDA:
            torch.cuda.empty_cache()
        if a.plan_check:
            results.setdefault("plan_check", {})[quant] = found = plan_check(
                ckpt, a.visual_tokens, info,
                [(quant, quant, {}), *((cc, quant, {"assume_gpu": cc}) for cc in a.plan_check)])
            for k, v in found.items():
                print(f"{quant} plan_check {k}: {v}", flush=True)
    if a.nf4_check == "yes":
        results["nf4_check"] = found = plan_check(ckpt, a.visual_tokens, info, [
            ("packed", "nf4", {"nf4_weights": "packed"}), ("dequantized", "nf4", {"nf4_weights": "dequantized"})])
        for k, v in found.items():
            print(f"nf4_check {k}: {v}", flush=True)
    if a.quant_check:
        results["quant_check"] = found = plan_check(ckpt, a.visual_tokens, info,
                                                    [("bf16", "bf16", {}), *((q, q, {}) for q in a.quant_check)])
        for k, v in found.items():
            print(f"quant_check {k}: {v}", flush=True)
    atomic_write_json(a.out, results)
    print("\n| quant | batch | decoder+attention+fused | s/window | after the first batch | GPU util | peak GiB "
          "| 50-min half on 4 GPUs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        setting = f"| {r['quantization']} | {r['batch_size']} | {r['decoder']}+{r['attention']}+{r['fused_kernels']} |"
        if "error" in r:
            print(f"{setting} {r['error'][:60]} |")
            continue
        util = f"{r['gpu_util_pct']:.0f}%" if r["gpu_util_pct"] is not None else "n/a"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        steady = f"{r['steady_s_per_window']:.3f}" if r["steady_s_per_window"] is not None else "n/a"
        print(f"{setting} {r['s_per_window']:.3f} | {steady} | {util} | {peak} | "
              f"{r['half_on_4_gpus_min']:.1f} min |")


if __name__ == "__main__":
    main()
