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
class scores when --class-scores has yes, answers + JSON) wall and GPU-busy seconds and kernel
seconds per kind (GEMM, NF4 dequantize, ...), and writes its timeline beside --out
(trace_QUANT_TOKENS.json.gz);
--decoder-check yes compares the fast decoder (CUDA graph and eager) with transformers' generate.
The benchmark changes nothing of the package: it makes its own engines (llava_soccer/engine.py) over one
loaded model and watches through seams (worker.run's on_batch, the decoder's on_logits and its profiler
ranges).
--assume-gpu CC,GIB runs every setting with the plan of that GPU (llava_soccer/gpus.py), PyTorch's
memory capped at what such a card leaves; --plan-check CC ... compares the first-token logits and
greedy tokens of those plans (e.g. fp16 compute on 7.x) with the real GPU's plan on real windows,
--quant-check fp8 compares fp8 with bf16 the same way. --answer-lengths 3:0.8,60:0.2 ends answers
as real ones do (random weights never stop by themselves).
Writes everything as JSON to --out (default $OUT/bench.json or ./bench.json).
"""
import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from llava_soccer import decoding, families, gpus, loading, reporting, synthetic, videos, worker  # noqa: E402
from llava_soccer.config import WorkerSettings  # noqa: E402
from llava_soccer.engine import Engine  # noqa: E402
from llava_soccer.generation import Generation  # noqa: E402
from llava_soccer.jsonio import atomic_write_json  # noqa: E402
from llava_soccer.records import ok_record  # noqa: E402
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


def time_split(engine, info, max_new_tokens):
    """Seconds of each stage for one window (the second of the video, after a warm-up)."""
    model = engine.model
    t = time.perf_counter()
    (_, _, times, frames), = videos.iter_windows(info, [1])
    decode = time.perf_counter() - t
    t = time.perf_counter()
    windows = engine.prepare([(times, frames)])
    preprocess = time.perf_counter() - t
    one = decoding.on_model(model, windows[0])
    engine.generate(windows, Generation(2))  # the engine's self-checks, outside the timing
    with torch.inference_mode(), engine.attention():
        vision, _ = timed(lambda: engine.family.embed(model, one))  # the vision tower, and the text embeddings
        prefill, _ = timed(lambda: decoding.prefill(engine.family, model, windows, max_new_tokens,
                                                    engine.plan.prefill_chunk))
    split = {"decode_video_s": decode, "preprocess_s": preprocess, "vision_s": vision, "prefill_s": prefill}
    for decoder in ("fast", "transformers"):
        full, _ = timed(lambda d=decoder: engine.generate(windows, Generation(max_new_tokens, decoder=d)))
        split[f"{decoder}_per_new_token_ms"] = 1000 * (full - prefill) / (max_new_tokens - 1)
    return {**split, "tokens": int(windows[0]["input_ids"].shape[1])}


def plan_check(ckpt, visual_tokens, info, variants, windows=(1, 2, 3), new_tokens=16):
    """Real windows under each (name, quantization, plan flags) of `variants` against the first one
    (e.g. 7.5's fp16 compute against bf16, fp8 against bf16, dequantized NF4 weights against packed):
    the first token's logits (largest difference, same argmax, inf/NaN) and how many leading greedy
    tokens agree, per window."""
    from transformers.cache_utils import DynamicCache
    device, found, reference = loading.pick_device(0), {}, None
    for name, quant, flags in variants:
        plan = gpus.plan(WorkerSettings(quantization=quant, **flags), gpus.detect(device), families.of_model(ckpt))
        engine = Engine.load(ckpt, plan, device, visual_tokens)
        model = engine.model
        inputs = engine.prepare([(w.times, w.frames) for w in videos.iter_windows(info, windows)])
        with torch.inference_mode(), engine.attention():
            embeds = (engine.family.embed(model, decoding.on_model(model, w), plan.prefill_chunk) for w in inputs)
            logits = torch.stack([decoding.last_logits(model, e, DynamicCache(), plan.prefill_chunk, p)[0].float().cpu()
                                  for e, p, _ in embeds])
            ids = engine.decoder.greedy(inputs, new_tokens, [-1], engine.processor.tokenizer.pad_token_id).cpu()
        del engine, model
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


def profile(engine, info, batch, max_new_tokens, trace=None, class_scores=True):
    """One whole batch of the worker under torch.profiler: engine.answer on `batch` windows (the
    prefill of each, the decode steps with the CUDA graph's capture, the class scores' pass unless
    class_scores is False), then the answers' parsing and the partial JSON's write. Per phase: wall
    seconds, GPU busy and idle seconds, and kernel seconds per kind (KERNEL_KINDS). The engine's
    self-checks and compiles run in a warm-up batch.
    trace: also write the profiler's timeline there (gzipped Chrome trace: chrome://tracing, Perfetto)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from llava_soccer.events import window_events
    frames = list(videos.iter_windows(info, range(batch)))
    windows = engine.prepare([(w.times, w.frames) for w in frames])
    generation = Generation(max_new_tokens, class_scores=class_scores)
    engine.answer(windows, generation)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * CUDA) as prof:
        with record_function("phase batch"):
            texts = [a.text for a in engine.answer(windows, generation)]
            sync()
            with record_function("phase answers + JSON"):
                records = [ok_record(w.start, w.times, t, ok, events) for w, t in zip(frames, texts)
                           for events, ok in [window_events(w.start, t, w.times)]]
                atomic_write_json(Path(tempfile.mkdtemp()) / "partial.json", records)
    found = {"windows": batch, "max_new_tokens": max_new_tokens, "class_scores": class_scores,
             **_phases(prof.events())}
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


def _phases(events):
    """Per phase of a profiled batch: wall seconds, GPU busy/idle seconds and kernel seconds per kind. The
    bench's own ranges ("phase ...") end after a sync, so their GPU work lies inside their CPU span (their
    GPU-side annotation covers only some of their kernels: 1.6 of a 15.9 s batch on an H100); the engine's
    ("llava prefill", "llava graph capture", "llava class scores") do not sync: on a GPU their GPU-side
    annotation (the span of their kernels) is used, on a CPU their own span."""
    from torch.autograd import DeviceType

    def span(name):
        found = {e.device_type: (e.time_range.start, e.time_range.end) for e in events if e.name == name}
        return found.get(DeviceType.CPU) if name.startswith("phase ") else (
            found.get(DeviceType.CUDA) or found.get(DeviceType.CPU))
    kernels = [(e.time_range.start, e.time_range.end, e.name) for e in events
               if e.device_type == DeviceType.CUDA and not e.name.startswith(("phase ", "llava "))]
    b0, b1 = span("phase batch")
    answers = span("phase answers + JSON")
    p1, scored = span("llava prefill")[1], span("llava class scores")
    decoded = scored[0] if scored else answers[0]
    bounds = {"prefill": (b0, p1), "decode (incl. graph capture)": (p1, decoded)} | (
        {"class scores": (decoded, answers[0])} if scored else {}) | {"answers + JSON": answers,
                                                                       "whole batch": (b0, b1)}
    capture = span("llava graph capture")  # none on CPU, nor when the graph was kept from the warm-up
    found = {"graph_capture_s": capture and (capture[1] - capture[0]) / 1e6}
    for name, (a, b) in bounds.items():
        inside = [(s, e, n) for s, e, n in kernels if a <= s < b]
        kinds = {}
        for s, e, n in inside:
            kinds[_kind(n)] = kinds.get(_kind(n), 0.0) + (e - s) / 1e6
        busy = _busy([(s, e) for s, e, _ in inside])
        found[name] = {"wall_s": (b - a) / 1e6, "gpu_busy_s": busy, "gpu_idle_s": (b - a) / 1e6 - busy,
                       "kernels_s": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}
    return found


def decoder_check(engine, info, new_tokens=24):
    """Greedy tokens of two windows from the fast decoder (CUDA graph, eager) and transformers'
    generate: are they the same? (Near-equal logits may flip under bf16 rounding; the count says how far they agree.)"""
    from transformers.cache_utils import DynamicCache
    model, processor, plan = engine.model, engine.processor, engine.plan
    windows = engine.prepare([(w.times, w.frames) for w in videos.iter_windows(info, [1, 2])])
    family, eos, pad = engine.family, [model.generation_config.eos_token_id], processor.tokenizer.pad_token_id
    with torch.inference_mode(), engine.attention():  # logits of one new token: the fast step vs the model's forward
        first, _, lengths, kv, offsets = decoding.prefill(family, model, windows[:1], 1, plan.prefill_chunk)
        ours = decoding.Step(family, model, *kv, engine.decoder.attention)(first, lengths, offsets)[0].float()
        one = decoding.on_model(model, windows[0])
        cache = DynamicCache()
        model(**one, past_key_values=cache, use_cache=True, logits_to_keep=1)
        theirs = model(input_ids=first[:, None], past_key_values=cache, use_cache=True).logits[0, -1].float()
        del cache, kv
    logits = {"max_abs_logit": theirs.abs().max().item(), "max_abs_diff_fast_vs_transformers":
              (ours - theirs).abs().max().item(), "same_argmax": bool(ours.argmax() == theirs.argmax())}
    with torch.inference_mode(), engine.attention():
        ids = {"graph": decoding.Decoder(family, model, plan).greedy(windows, new_tokens, eos, pad),
               "eager": decoding.Decoder(family, model, dataclasses.replace(plan, cuda_graphs=False)).greedy(
                   windows, new_tokens, eos, pad)}
        batch = decoding.on_model(model, family.collate(processor, windows))
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        ids["transformers"] = out[:, batch["input_ids"].shape[1]:]

    def agree(a, b):  # how many leading tokens are equal, per window
        n = min(a.shape[1], b.shape[1])
        return [int(d.nonzero()[0]) if d.any() else n for d in a[:, :n] != b[:, :n]]
    return {f"leading_tokens_equal_{k}_vs_transformers": agree(v, ids["transformers"]) for k, v in ids.items()
            if k != "transformers"} | {"graph_equals_eager": bool(torch.equal(ids["graph"], ids["eager"])),
                                       "new_tokens": new_tokens, **logits}


def scores_check(engine, info, new_tokens=8):
    """The class scores of one pass over two windows' caches (engine.answer) against the model's own forward
    over prompt + prefix + class (+ the None tokens), one forward per continuation (scores.reference: every
    label position, each name then any token that closes it): largest difference of the log-scores (in the
    model's dtype: bf16 rounding over 25k tokens), and whether the ranking of the 17 classes is the same."""
    from llava_soccer import scores
    model, tok = engine.model, engine.processor.tokenizer
    windows = engine.prepare([(w.times, w.frames) for w in videos.iter_windows(info, [1, 2])])
    answers = engine.answer(windows, Generation(new_tokens))
    worst, same_order = 0.0, []
    for window, a in zip(windows, answers):
        forward = scores.plain_forward(model, decoding.on_model(model, window), engine.attention)
        found = scores.reference(forward, tok, a.ids, a.text)
        none = math.exp(found.pop(scores.NONE))
        ref = {c: math.log(1 - none) + found[c] for c in a.class_scores}
        worst = max(worst, abs(math.log(a.none_prob) - math.log(none)),
                    *(abs(math.log(a.class_scores[c]) - ref[c]) for c in ref))
        same_order.append(sorted(ref, key=ref.get) == sorted(ref, key=a.class_scores.get))
    return {"max_abs_log_score_diff": worst, "same_class_order": same_order,
            "log_scores_range": [min(map(math.log, a.class_scores.values())) for a in answers]}


def attention_check(engine, info, new_tokens=16):
    """Is cuDNN attention's output as good as flash's on the real 25k-token prompt? Last-token
    logits of one prefill with each SDPA backend alone, their largest differences, and whether
    greedy answers of `new_tokens` tokens agree when each backend is tried first."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model, processor = engine.model, engine.processor
    (_, _, times, frames), = videos.iter_windows(info, [1])
    inputs = decoding.on_model(model, engine.prepare([(times, frames)])[0])
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


class AnswerLengths:
    """Random weights never stop: with spec "3:0.8,60:0.2", the fast decoder's rows end (emit eos)
    after 3 tokens in 80% of the batch rows and 60 in 20% (row r of each batch gets slot r of a
    fixed shuffled pattern of 10), as real answers do ("None" is two tokens + </s>). An on_logits
    seam of the decoder (inside the decode step and its CUDA graph: tensor operations only)."""

    def __init__(self, spec, eos):
        import random
        self.pattern = [int(n) for n, share in (part.split(":") for part in spec.split(","))
                        for _ in range(round(10 * float(share)))]
        random.Random(0).shuffle(self.pattern)
        self.eos, self.stop_at = eos, {}

    def __call__(self, logits, positions):
        b = len(positions)
        if b not in self.stop_at:  # a batch size's first step: positions are the prompt lengths (token 0: prefill)
            rows = torch.tensor([self.pattern[r % len(self.pattern)] for r in range(b)], device=positions.device)
            self.stop_at[b] = positions + rows - 2
        logits[:, self.eos] = torch.where(positions >= self.stop_at[b], 1e4, logits[:, self.eos])
        return logits


class Engines:
    """The bench's engines over one loaded model: one per plan (its kernels installed once: FP8 layers are
    made once, and their fused kernels are checked on the bf16 weights), each given a fresh decoder for
    every run, as the worker's own engine starts each slice."""

    def __init__(self, model, processor):
        self.model, self.processor, self.made = model, processor, {}

    def get(self, plan, on_logits=None):
        if plan not in self.made:
            self.made[plan] = Engine(self.model, self.processor, plan)
            self.made[plan].install()
        engine = self.made[plan]
        engine.reset(on_logits)
        return engine


def run_worker(engines, ckpt, video, windows, batch, decoder, max_new_tokens, quant, attention="auto",
               fused="no", assume=None, visual_tokens="full", nf4_weights="auto", on_logits=None, class_scores=True):
    """llava_soccer.worker.run over the first `windows` windows; the partial file pretends the rest are done.
    s_per_window counts the whole run; steady_s_per_window the batches after the first (a real slice
    has ~375 windows, so the first batch's wait for its windows and its self-checks weigh little)."""
    project = Path(tempfile.mkdtemp()) / "project"
    (project / "raw_data").mkdir(parents=True)
    os.symlink(video, project / "raw_data" / "match.mkv")
    info = videos.probe(video)
    rest = [ok_record(t, [t], "None", True, []) for t in map(info.window_start, range(windows, info.n_windows))]
    # every setting spelled out: the caller's LLAVA_* variables do not apply
    cfg = WorkerSettings(gpu_id=0, num_workers=1, video_index=0, project=str(project), model=str(ckpt),
                         quantization=quant, batch_size=str(batch), decoder=decoder, max_new_tokens=max_new_tokens,
                         assume_gpu=assume, attention=attention, fused_kernels=fused, nf4_weights=nf4_weights,
                         visual_tokens=visual_tokens, progress_every=1e9, class_scores=class_scores)
    plan = worker.plan_for(cfg)[1]
    made_by = worker.identity(cfg, plan, project, project / "raw_data" / "match.mkv", info)
    # named by the model's tag: under another name the worker would not see the rest as done and run them all
    atomic_write_json(partial_path(project, 0, 0, families.tag_of(str(ckpt))), worker.partial_doc(made_by, rest))
    engine = engines.get(plan, on_logits)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    sampler = UtilSampler()
    if CUDA:
        sampler.start()
    ends = []  # (seconds, windows) at the end of each batch
    seconds, code = timed(lambda: worker.run(cfg, engine, on_batch=lambda new: ends.append((time.perf_counter(),
                                                                                             len(new)))))
    util = sampler.stop()
    assert code == reporting.EXIT_DONE, f"the worker ended its slice with exit code {code}"
    ran = sum(n for _, n in ends)  # s/window divides by `windows`: the worker must have run exactly those
    assert ran == windows, f"the worker ran {ran} windows, not the first {windows}: it did not resume the partial"
    per_window = seconds / windows
    steady = (ends[-1][0] - ends[0][0]) / (windows - ends[0][1]) if len(ends) > 1 else None
    return {"quantization": quant, "batch_size": batch, "decoder": decoder, "fused_kernels": fused,
            "attention": attention, "windows": windows, "class_scores": class_scores,
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


def parse_args(argv):
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
    p.add_argument("--scores-check", choices=["yes", "no"], default="no",
                   help="class scores of one pass vs the model's own forward per class on two windows")
    p.add_argument("--class-scores", nargs="+", choices=["yes", "no"], default=["yes"],
                   help="the worker's --class-scores values to run (default: yes)")
    p.add_argument("--decoder-check", choices=["yes", "no"], default="no",
                   help="greedy tokens of the fast decoder (graph and eager) vs transformers' generate on two windows")
    p.add_argument("--profile", choices=["yes", "no"], default="no",
                   help="profile one whole batch at the largest batch size, by phase (prefill, decode, class scores "
                        "when --class-scores has yes, answers + JSON), and print the kernels that take the time")
    p.add_argument("--windows", type=int, default=16, help="windows per setting (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="fixed answer length (default 64)")
    p.add_argument("--answer-lengths", default=None, metavar="N:SHARE,...",
                   help="end answers as real ones do instead, e.g. 3:0.8,60:0.2 (80%% of the windows 3 tokens, 20%% "
                        "60; shares in tenths; the fast decoder's rows stop there, --max-new-tokens still caps)")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench.json"))
    return p.parse_args(argv)


def bench_quantization(a, quant, ckpt, video, info, results):
    """Load the model in this quantization once; warm up; time the split of one window and run the checks
    asked for with the plan's own engine; then every setting of the worker through worker.run."""
    t = time.perf_counter()
    device = loading.pick_device(0)
    plan = gpus.plan(WorkerSettings(quantization=quant, assume_gpu=a.assume_gpu, nf4_weights=a.nf4_weights),
                     gpus.detect(device), families.of_model(ckpt))
    gpus.apply_memory(plan, device)
    print(plan.line(), flush=True)
    engines = Engines(*families.load(ckpt, plan, device, a.visual_tokens))
    print(f"{quant}: loaded in {time.perf_counter() - t:.1f} s", flush=True)
    common = dict(assume=a.assume_gpu, visual_tokens=a.visual_tokens, nf4_weights=a.nf4_weights)
    for fused in a.fused_kernels:  # warm-up: CUDA kernels, allocator, fused kernels' compiles (batch 1 and 2)
        for batch in (1, 2):
            run_worker(engines, ckpt, video, 2, batch, "fast", 8, quant, fused=fused, **common)
    engine = engines.get(plan)
    results["split"][quant] = split = time_split(engine, info, a.max_new_tokens)
    print(f"{quant} split: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()), flush=True)
    run_checks(a, quant, engine, info, results)
    engine.reset()  # the checks' KV buffers: not in the settings' peaks
    if CUDA:
        torch.cuda.empty_cache()
    eos = engines.model.generation_config.eos_token_id
    for fused, decoder, attention, batch, class_scores in itertools.product(
            a.fused_kernels, a.decoders, a.attentions, a.batch_sizes, a.class_scores):
        try:
            r = run_worker(engines, ckpt, video, a.windows, batch, decoder, a.max_new_tokens, quant, attention, fused,
                           on_logits=AnswerLengths(a.answer_lengths, eos) if a.answer_lengths else None,
                           class_scores=class_scores == "yes", **common)
            r["answer_lengths"] = a.answer_lengths
        except Exception as e:  # one setting failing (e.g. OOM) must not lose the others
            r = {"quantization": quant, "batch_size": batch, "decoder": decoder, "attention": attention,
                 "fused_kernels": fused, "error": f"{type(e).__name__}: {e}"}
        results["runs"].append(r)
        print(json.dumps(r), flush=True)


def run_checks(a, quant, engine, info, results):
    """The checks asked for (--attention-check, --decoder-check, --profile), each reported, never fatal."""
    profile_batch = max((int(b) for b in a.batch_sizes if b.isdigit()), default=1)
    checks = {"attention_check": (attention_check, (a.attention_check == "yes" and CUDA,)),
              "scores_check": (scores_check, (a.scores_check == "yes",)),
              "decoder_check": (decoder_check, (a.decoder_check == "yes",)),
              "profile": (profile, (a.profile == "yes", profile_batch, a.max_new_tokens,
                                    Path(a.out).with_name(f"trace_{quant}_{a.visual_tokens}.json.gz"),
                                    "yes" in a.class_scores))}
    for name, (check, (wanted, *extra)) in checks.items():
        if not wanted:
            continue
        try:
            found = check(engine, info, *extra)
        except Exception as e:  # report, and still run the settings
            found = {"error": f"{type(e).__name__}: {e}"}
        results.setdefault(name, {})[quant] = found
        for k, v in found.items():
            print(f"{quant} {name} {k}:" + (f"\n{v}" if isinstance(v, str) and "\n" in v else f" {v}"), flush=True)


def print_table(results):
    print("\n| quant | batch | decoder+attention+fused | s/window | after the first batch | GPU util | peak GiB "
          "| 50-min half on 4 GPUs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        setting = (f"| {r['quantization']} | {r['batch_size']} | {r['decoder']}+{r['attention']}+{r['fused_kernels']}"
                   f"{'' if r.get('class_scores', True) else ' (no class scores)'} |")
        if "error" in r:
            print(f"{setting} {r['error'][:60]} |")
            continue
        util = f"{r['gpu_util_pct']:.0f}%" if r["gpu_util_pct"] is not None else "n/a"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        steady = f"{r['steady_s_per_window']:.3f}" if r["steady_s_per_window"] is not None else "n/a"
        print(f"{setting} {r['s_per_window']:.3f} | {steady} | {util} | {peak} | "
              f"{r['half_on_4_gpus_min']:.1f} min |")


def main(argv=None):
    a = parse_args(argv)
    video = os.path.abspath(a.video)
    info = videos.probe(video)
    if info.n_windows < max(a.windows, 2):  # else fewer windows run than the rates are divided by
        sys.exit(f"bench_worker.py: --windows {a.windows}: {a.video} has {info.n_windows} windows "
                 f"({info.duration:.0f} s); use a longer video (python -m llava_soccer.synthetic video V "
                 f"--seconds {2 * a.windows + 2}) or fewer --windows")
    ckpt = a.checkpoint
    if ckpt is None:
        ckpt = tempfile.mkdtemp(prefix="llava_full_")
        t = time.perf_counter()
        synthetic.make_checkpoint(ckpt, "full", dtype="bfloat16", device="cuda")
        print(f"built the full-size checkpoint in {time.perf_counter() - t:.0f} s", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = {"gpu": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__, "video": a.video,
               "max_new_tokens": a.max_new_tokens, "visual_tokens": a.visual_tokens, "split": {}, "runs": []}
    for quant in a.quantization:
        bench_quantization(a, quant, ckpt, video, info, results)
        if CUDA:
            torch.cuda.empty_cache()
        if a.plan_check:
            results.setdefault("plan_check", {})[quant] = found = plan_check(
                ckpt, a.visual_tokens, info,
                [(quant, quant, {}), *((cc, quant, {"assume_gpu": cc}) for cc in a.plan_check)])
            for k, v in found.items():
                print(f"{quant} plan_check {k}: {v}", flush=True)
    checks = {"nf4_check": [("packed", "nf4", {"nf4_weights": "packed"}),
                            ("dequantized", "nf4", {"nf4_weights": "dequantized"})] if a.nf4_check == "yes" else [],
              "quant_check": [("bf16", "bf16", {}), *((q, q, {}) for q in a.quant_check)] if a.quant_check else []}
    for name, variants in checks.items():
        if variants:
            results[name] = found = plan_check(ckpt, a.visual_tokens, info, variants)
            for k, v in found.items():
                print(f"{name} {k}: {v}", flush=True)
    atomic_write_json(a.out, results)
    print_table(results)


if __name__ == "__main__":
    main()
