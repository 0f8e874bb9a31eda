"""One GPU's slice of one video through LLaVA-v1.6-Mistral-7B: windows in, partial JSON out.

    python llava_split_worker.py --gpu_id 0 --num_workers 4 --video_index 5
    python llava_split_worker.py --gpu_id 0 --num_workers 1 --video_index 5 --quantization bf16 --batch-size 4

Video I is line I of $SOCCER_PROJECT/videos.txt (made from raw_data/ the first time). The video
is cut into 3 s windows (15 frames at 5 FPS) every 2 s; this worker takes the windows that start
in the gpu_id-th of num_workers equal time slices, asks the model for events in each, and
rewrites $SOCCER_PROJECT/partial_results_llava_vid{I}_gpu{G}.json after every batch.

Rerun the same command to resume (finished windows are kept); delete the partial file to start
over. On SIGUSR1/SIGTERM it finishes the current batch, saves and exits with code 75.
Exit codes: 0 slice complete, 1 error (one line says why), 2 bad flags, 75 interrupted.
"""
import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time

from llava_soccer import model as llava
from llava_soccer import settings, videos
from llava_soccer.events import window_events
from llava_soccer.jsonio import InputError, atomic_write_json, read_json, remove_stale_temps

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: rerun to resume
MAX_ERRORS_IN_A_ROW = 5
log = logging.getLogger("llava_worker")


def parse_args(argv):
    env = settings.env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu_id", type=int, required=True, help="which slice this worker takes (0-based)")
    p.add_argument("--num_workers", type=int, default=int(env("LLAVA_NUM_WORKERS", 4)),
                   help="slices the video is split into (env LLAVA_NUM_WORKERS, default 4)")
    p.add_argument("--video_index", type=int, required=True, help="line of videos.txt (0-based)")
    p.add_argument("--project", default=None, help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    p.add_argument("--model", default=env("LLAVA_MODEL", settings.DEFAULT_MODEL),
                   help="hub id or local checkpoint directory (env LLAVA_MODEL)")
    p.add_argument("--quantization", choices=settings.QUANTIZATIONS, default=env("LLAVA_QUANT", "nf4"),
                   help="weights: 4-bit NF4 (~11 GB) or plain bf16/fp16/fp32 (env LLAVA_QUANT, default nf4)")
    p.add_argument("--batch-size", default=env("LLAVA_BATCH_SIZE", "auto"),
                   help="windows decoded together, or 'auto' (default): measure the first window's memory and fill "
                        "the GPU's free memory up to --max-batch-size; halved on OOM (env LLAVA_BATCH_SIZE)")
    p.add_argument("--max-batch-size", type=int, default=int(env("LLAVA_MAX_BATCH_SIZE", 16)),
                   help="upper bound for --batch-size auto (default 16: each window is prefilled alone, so a batch "
                        "adds ~3.3 GiB of KV cache per 224p window) (env LLAVA_MAX_BATCH_SIZE)")
    p.add_argument("--max-new-tokens", type=int, default=int(env("LLAVA_MAX_NEW_TOKENS", 256)),
                   help="answer length limit (env LLAVA_MAX_NEW_TOKENS, default 256)")
    p.add_argument("--temperature", type=float, default=float(env("LLAVA_TEMPERATURE", 0.0)),
                   help="0 = greedy (default, reproducible); > 0 samples, e.g. 0.7 (env LLAVA_TEMPERATURE)")
    p.add_argument("--top-p", type=float, default=float(env("LLAVA_TOP_P", 0.9)),
                   help="nucleus sampling when temperature > 0 (env LLAVA_TOP_P)")
    p.add_argument("--decoder", choices=["fast", "transformers"], default=env("LLAVA_DECODER", "fast"),
                   help="fast: each window prefilled alone, then one CUDA-graph step per new token for the batch "
                        "(default; greedy, same answers); transformers: its generate() (always used when "
                        "--temperature > 0) (env LLAVA_DECODER)")
    p.add_argument("--fused-kernels", choices=["yes", "no"], default=env("LLAVA_FUSED_KERNELS", "yes"),
                   help="yes: torch.compile Mistral's RMSNorm/rotary/SiLU-gate arithmetic into fused GPU kernels for "
                        "a ~10%% faster prefill (compiles in the first windows; ignored on CPU) "
                        "(env LLAVA_FUSED_KERNELS)")
    p.add_argument("--attention", choices=["auto", "cudnn"], default=env("LLAVA_ATTENTION", "auto"),
                   help="SDPA kernel order: PyTorch's (auto) or cuDNN first (env LLAVA_ATTENTION)")
    p.add_argument("--visual-tokens", choices=["full", "reduced"], default=env("LLAVA_VISUAL_TOKENS", "full"),
                   help="full: LLaVA-NeXT's tiling, 1,608 tokens per 224p frame (default, as the seed); "
                        "reduced: fast mode, base view + one tile, 926 tokens (env LLAVA_VISUAL_TOKENS)")
    p.add_argument("--retry-skipped", action="store_true",
                   help="reprocess windows recorded as skipped (OOM or error) in the partial file")
    p.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines when the log is a file (default 30)")
    args = p.parse_args(argv)
    if not 0 <= args.gpu_id < args.num_workers:
        p.error(f"--gpu_id {args.gpu_id} must be between 0 and --num_workers - 1 ({args.num_workers - 1})")
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) >= 1):
        p.error(f"--batch-size must be a whole number >= 1 or 'auto', not {args.batch_size!r}")
    if args.max_new_tokens < 1 or args.max_batch_size < 1:
        p.error("--max-new-tokens and --max-batch-size must be at least 1")
    return args


class Progress:
    """tqdm's bar on a terminal; in a log file, one tqdm-formatted line every few seconds."""

    def __init__(self, total, desc, every):
        from tqdm import tqdm
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="win", disable=not self.tty, dynamic_ncols=True)
        self.format, self.total, self.desc, self.every = tqdm.format_meter, total, desc, every
        self.n, self.t0, self.last = 0, time.monotonic(), 0.0

    def update(self, n):
        self.bar.update(n)
        self.n += n
        now = time.monotonic()
        if not self.tty and (now - self.last >= self.every or self.n == self.total):
            self.last = now
            log.info(self.format(self.n, self.total, now - self.t0, prefix=self.desc, unit="win", ncols=80))

    def write(self, line):
        self.bar.write(line) if self.tty else log.info(line)

    def close(self):
        self.bar.close()


def prefetched(items, depth=2):
    """Run the items generator in a thread, so decoding and preprocessing overlap generation.
    When the consumer stops early (error, signal), the thread is stopped and joined: a thread
    killed in the middle of image processing at exit aborts Python ("terminate called ...")."""
    q, done, stop = queue.Queue(depth), object(), threading.Event()

    def fill():
        try:
            for item in items:
                if stop.is_set():
                    break
                q.put(item)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # keep taking, so a put() of the thread cannot block forever
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def load_partial(path, slice_starts, retry_skipped):
    """Records already in the partial file, checked to belong to this slice."""
    if not path.exists():
        return []
    records = read_json(path, "partial file")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "time" in r for r in records):
        raise InputError(f"partial file {path} is not a list of window records; delete it to start over")
    foreign = sorted({r["time"] for r in records} - slice_starts)
    if foreign:
        raise InputError(f"partial file {path} has windows outside this slice (e.g. {foreign[0]} s): it was "
                         f"written with another --num_workers or video; delete it to start over")
    if retry_skipped:
        records = [r for r in records if r.get("status") != "skipped"]
    return records


class Abort(Exception):
    """Too many failures to go on: main() prints it as one line and exits 1."""


def skipped(start, end, error):
    return {"time": start, "end": end, "status": "skipped", "error": error, "raw": None, "events": []}


class Worker:
    def __init__(self, args, model, processor, info):
        self.args, self.model, self.processor, self.info = args, model, processor, info
        self.errors_in_a_row = 0

    def answer(self, batch):
        """Records for a batch of (Window, processor inputs or None when it has no frames), in order."""
        records = {w.start: skipped(w.start, w.start, "no frames decoded (video shorter than its header says)")
                   for w, _ in batch if not w.frames}
        ready = [(w, inputs) for w, inputs in batch if w.frames]
        if ready:
            records.update((r["time"], r) for r in self._answer(ready))
        return [records[w.start] for w, _ in batch]

    def _answer(self, ready):
        """OOM halves the batch; a lone window that still fails is recorded as skipped."""
        import torch
        try:
            texts = llava.generate(self.model, self.processor, [inputs for _, inputs in ready],
                                   self.args.max_new_tokens, self.args.temperature, self.args.top_p,
                                   self.args.decoder, self.args.attention)
        except torch.OutOfMemoryError:
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(ready) > 1:
                half = len(ready) // 2
                return self._answer(ready[:half]) + self._answer(ready[half:])
            w = ready[0][0]
            log.warning(f"⚠️ OOM at {w.start}s: window skipped (try --batch-size 1 or --quantization nf4)")
            return [skipped(w.start, w.times[-1], "OOM")]
        except Exception as e:  # one bad window must not end a 12-minute slice
            if len(ready) > 1:
                return [r for item in ready for r in self._answer([item])]
            self.errors_in_a_row += 1
            w = ready[0][0]
            log.warning(f"⚠️ error at {w.start}s, window skipped: {type(e).__name__}: {e}")
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                raise Abort(f"{MAX_ERRORS_IN_A_ROW} windows in a row failed, last at {w.start}s "
                            f"({type(e).__name__}: {e}); fix the cause and rerun with --retry-skipped") from e
            return [skipped(w.start, w.times[-1], f"{type(e).__name__}: {e}")]
        self.errors_in_a_row = 0
        records = []
        for (w, _), text in zip(ready, texts):
            events, ok = window_events(w.start, text, len(w.times))
            records.append({"time": w.start, "end": w.times[-1], "status": "ok", "raw": text, "parsed": ok,
                            "events": events})
        return records


class BatchSize:
    """--batch-size: a number, or "auto": the first window alone, then as many windows as its
    measured peak memory says fit in the GPU's free memory (up to --max-batch-size)."""

    def __init__(self, value, cap, device):
        self.size, self.cap, self.device = 1 if value == "auto" else int(value), cap, device
        self.measuring = value == "auto" and device.startswith("cuda")
        if value == "auto" and not self.measuring:
            log.info("--batch-size auto: no GPU, using batches of 1")
        if self.measuring:
            import torch
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)

    def __call__(self):
        return self.size

    def measured(self):
        """Called after each batch; sizes the batches once, after the first."""
        if not self.measuring:
            return
        import torch
        self.measuring = False
        window = torch.cuda.max_memory_allocated(self.device) - self.base
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)  # PyTorch's cache
        self.size = max(1, min(self.cap, int(0.9 * free // max(window, 1))))
        log.info(f"--batch-size auto: one window took {window / 2**30:.1f} GiB at peak; using batches of {self.size}")


def batches(info, todo, batch_size, processor):
    """Lists of (Window, its processor inputs, or None when it has no frames), in time order;
    decoding and preprocessing happen here. batch_size() is asked before each batch, so
    --batch-size auto can change it on the way."""
    batch = []
    for w in videos.iter_windows(info, todo):
        batch.append((w, llava.prepare(processor, [(w.times, w.frames)])[0] if w.frames else None))
        if len(batch) >= batch_size():
            yield batch
            batch = []
    if batch:
        yield batch


def run(args, loaded=None):
    """Process the slice; loaded=(model, processor) skips loading (benchmarks/bench_worker.py)."""
    project = settings.project_dir(args.project)
    video = videos.resolve_video(project, args.video_index)
    info = videos.probe(video)
    slice_windows = info.slice_windows(args.gpu_id, args.num_workers)
    starts = {info.window_start(k): k for k in slice_windows}
    out = settings.partial_path(project, args.video_index, args.gpu_id)
    remove_stale_temps(out)
    records = load_partial(out, set(starts), args.retry_skipped)
    done = {r["time"] for r in records}
    todo = [k for k in slice_windows if info.window_start(k) not in done]
    span = (f"{info.window_start(slice_windows[0])}-{info.window_start(slice_windows[-1])}s"
            if slice_windows else "empty")
    log.info(f"video {args.video_index}: {video} ({info.duration:.1f} s, {info.fps:.3f} fps, {info.n_windows} windows); "
             f"slice {args.gpu_id + 1}/{args.num_workers}: {len(slice_windows)} windows {span}, "
             f"{len(done)} already in {out.name}")
    if not todo:
        log.info("slice already complete: nothing to do")
        return 0
    device = llava.pick_device(args.gpu_id)
    log.info(f"settings: model={args.model} quantization={args.quantization} device={device} "
             f"batch_size={args.batch_size} decoder={args.decoder} fused_kernels={args.fused_kernels} "
             f"attention={args.attention} "
             f"visual_tokens={args.visual_tokens} max_new_tokens={args.max_new_tokens} "
             f"temperature={args.temperature} top_p={args.top_p} "
             f"HF_TOKEN={'set' if os.environ.get('HF_TOKEN') else 'not set'}")
    t0 = time.monotonic()
    try:
        model, processor = loaded or llava.load(args.model, args.quantization, device, args.visual_tokens)
    except Exception as e:  # hub errors are long; the first line says what is missing
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot load model {args.model!r} ({args.quantization}): {first}. Check --model/LLAVA_MODEL, "
                         f"HF_TOKEN and network, or pre-download the model (README: Troubleshooting)") from None
    log.info(f"model loaded in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    if llava.fuse_elementwise(model, args.fused_kernels == "yes" and device.startswith("cuda")):
        log.info(f"fused kernels compiled in {time.monotonic() - t0:.1f} s (more compile on the first window)")

    stop = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stop.append(signal.Signals(signum).name))
    worker = Worker(args, model, processor, info)
    progress = Progress(len(todo), f"vid{args.video_index} gpu{args.gpu_id}", args.progress_every)
    n_events = n_skipped = 0
    batch_size = BatchSize(args.batch_size, args.max_batch_size, device)
    t0 = time.monotonic()
    try:
        for batch in prefetched(batches(info, todo, batch_size, processor)):
            new = worker.answer(batch)
            batch_size.measured()
            records = sorted(records + new, key=lambda r: r["time"])
            atomic_write_json(out, records)
            for r in new:
                n_skipped += r["status"] == "skipped"
                for e in r["events"]:
                    n_events += 1
                    conf = f"{e['confidence']:.2f}" if e["confidence"] is not None else "?"
                    progress.write(f"⚽ {llava.clock(e['time'])} ({e['time']} s) {e['label']} "
                                   f"[{e['team']}, {conf}] {e['details'] or ''}".rstrip())
            progress.update(len(batch))
            if stop:
                log.warning(f"{stop[0]} received: saved {len(records)} windows to {out.name}; "
                            f"rerun the same command to resume")
                return EXIT_INTERRUPTED
    finally:
        progress.close()
    elapsed = time.monotonic() - t0
    memory = ""
    if device.startswith("cuda"):
        import torch
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    log.info(f"slice complete: {len(todo)} windows in {elapsed:.1f} s ({elapsed / len(todo):.2f} s/window){memory}, "
             f"{n_events} events, {n_skipped} skipped -> {out}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [vid{args.video_index} gpu{args.gpu_id}] %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run(args)
    except (InputError, Abort) as e:
        log.error(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
