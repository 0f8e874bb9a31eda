"""The worker's loop: one GPU's slice of one video, windows in, partial JSON out.

    code = worker.run(cfg)   # cfg: config.WorkerSettings (llava_split_worker.py parses its flags into one)

llava_split_worker.py is its command line; benchmarks/bench_worker.py runs the same loop with an
engine it has made (engine.py) and watches it through on_batch. run() reads the video in a prefetch
thread, answers batches (OOM halves a batch; a window that still fails is recorded as failed, and a
rerun retries it), rewrites the partial file after every batch and stops after the current batch on
SIGUSR1/SIGTERM.

A rerun resumes from the partial file (resume.py); what the worker tells, its summary and its exit
code are reporting.py's.
"""
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

from . import claims, families, gpus, loading, provenance, reporting, scores, settings, videos
from .cli import InputError, first_line, log_safe
from .events import window_events
from .generation import Generation
from .jsonio import atomic_write_json, check_writable, remove_stale_temps
from .records import hole_record, ok_record
from .reporting import Progress, event_line, finished, report
from .resume import check_revision, partial_doc, resume

PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAX_ERRORS_IN_A_ROW = 5
# --batch-size auto fills this share of the memory it may use: the rest is for the allocator's
# fragmentation and what PyTorch cannot see (a 12 GB plan at 94% showed 12.0 GB in nvidia-smi on the
# device; benchmarks/RESULTS.md, session 4).
AUTO_HEADROOM = 0.85
log = logging.getLogger("llava_worker")


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


class Abort(Exception):
    """Too many failures to go on: llava_split_worker.py prints it as one line and exits 1."""


def oom_hint(cfg, plan):
    """What can still lower the memory of one window, given the settings in use."""
    hints = [h for h, useful in (
        ("--quantization nf4", cfg.quantization != "nf4"),
        ("--prefill-chunk 2048", not plan.prefill_chunk or plan.prefill_chunk > 2048),
        ("--visual-tokens reduced (fewer tokens per frame: changes answers)", cfg.visual_tokens == "full"),
        ("one worker per GPU (LLAVA_NUM_WORKERS)", True)) if useful]
    return f"is another process using this GPU (nvidia-smi)? else try {', '.join(hints)}, or a GPU with more memory"


class Worker:
    """Answers batches of windows with an engine: records in, OOM and errors handled one window at a time."""

    def __init__(self, cfg, engine):
        self.cfg, self.engine = cfg, engine
        self.generation = Generation.from_settings(cfg, engine.family)
        self.failed_in_a_row = 0
        if self.generation.class_scores:  # before the first window: else every window fails on it, one by one
            try:
                scores.check_spelling(engine.processor.tokenizer)
            except ValueError as e:
                raise InputError(f"--model {cfg.model}: {e}") from None

    def answer(self, batch):
        """Records for a batch of (Window, processor inputs or None when it has no frames), in order."""
        records = {w.start: hole_record(w.start, w.start, "undecodable", f"no frames in the file at "
                                        f"{w.missing[0]:.1f}-{w.missing[-1]:.1f} s") for w, _ in batch if not w.frames}
        ready = [(w, inputs) for w, inputs in batch if w.frames]
        if ready:
            records.update((r["time"], r) for r in self._answer(ready))
        return [records[w.start] for w, _ in batch]

    def _failed(self, w, error, why, hint):
        """A lone window that failed: recorded as failed (a rerun retries it); MAX_ERRORS_IN_A_ROW failures in a
        row, whatever the cause, stop the worker (a full GPU or a broken install fails every window)."""
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= MAX_ERRORS_IN_A_ROW:
            raise Abort(f"{MAX_ERRORS_IN_A_ROW} windows in a row failed, last at {w.start}s ({why}): {hint}; the "
                        f"windows done are saved and a rerun retries the failed ones")
        log.warning(log_safe(f"⚠️ {why} at {w.start}s: window failed ({hint}; a rerun retries it)", 1000))
        return [hole_record(w.start, w.times[-1], "failed", error)]

    def _answer(self, ready):
        """OOM halves the batch; a lone window that still fails is recorded as failed."""
        import torch
        try:
            answers = self.engine.answer([inputs for _, inputs in ready], self.generation)
        except torch.OutOfMemoryError:
            if self.engine.model.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(ready) > 1:
                half = len(ready) // 2
                return self._answer(ready[:half]) + self._answer(ready[half:])
            return self._failed(ready[0][0], "OOM", "out of GPU memory (OOM)", oom_hint(self.cfg, self.engine.plan))
        except Exception as e:  # one bad window must not end a 12-minute slice
            if len(ready) > 1:
                return [r for item in ready for r in self._answer([item])]
            error = f"{type(e).__name__}: {first_line(e)}"
            return self._failed(ready[0][0], error, error, "fix the cause")
        self.failed_in_a_row = 0
        records = []
        tokenizer = self.engine.processor.tokenizer
        for (w, _), a in zip(ready, answers):
            events, ok = window_events(w.start, a.text, w.times)
            for e, p in zip(events, a.label_probs(tokenizer, [e["label_span"] for e in events])):
                e["token_prob"] = p
            records.append(ok_record(w.start, w.times, a.text, ok, events, a.none_prob, a.class_scores))
        return records


class BatchSize:
    """--batch-size: a number, or "auto": the first window alone, then as many windows as fit in the
    GPU's memory (the plan's cap for an assumed GPU), up to --max-batch-size. The fast decoder
    (per_row_is_kv: Generation.fast) prefills one window at a time, so a batch adds only each window's KV
    cache to the first window's peak; transformers' generate() prefills the whole batch, so it adds the
    whole peak."""

    def __init__(self, value, cap, device, plan, per_row_is_kv=True):
        self.size, self.cap, self.device, self.plan = 1 if value == "auto" else int(value), cap, device, plan
        self.measuring = value == "auto" and device.startswith("cuda")
        self.per_row_is_kv = per_row_is_kv
        if value == "auto" and not self.measuring:
            log.info("--batch-size auto: no GPU, using batches of 1")
        if self.measuring:
            import torch
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)

    def __call__(self):
        return self.size

    def measured(self, kv_bytes):
        """Called after each batch with the KV cache bytes of its first window; sizes the batches once."""
        if not self.measuring:
            return
        import torch
        self.measuring = False
        peak = torch.cuda.max_memory_allocated(self.device)
        if self.plan.memory_cap_gib is not None:
            capacity = self.plan.memory_cap_gib * 2**30
        else:
            free, _ = torch.cuda.mem_get_info(self.device)
            capacity = free + torch.cuda.memory_reserved(self.device)  # PyTorch's own cache is free to us too
        window = peak - self.base
        row = kv_bytes if self.per_row_is_kv and kv_bytes else window
        self.size = max(1, min(self.cap, 1 + int((AUTO_HEADROOM * capacity - peak) // max(row, 1))))
        log.info(f"--batch-size auto: one window took {window / 2**30:.1f} GiB at peak "
                 f"({row / 2**30:.1f} GiB per extra window); using batches of {self.size}")


def batches(info, todo, batch_size, engine):
    """Lists of (Window, its model inputs (engine.prepare), or None when it has no frames), in time order;
    decoding and preprocessing happen here (pixels in the model's dtype, pinned for a GPU).
    batch_size() is asked before each batch, so --batch-size auto can change it on the way."""
    batch = []
    gpu = engine.model.device.type == "cuda"
    for w in videos.iter_windows(info, todo):
        batch.append((w, engine.prepare([(w.times, w.frames)], gpu)[0] if w.frames else None))
        if len(batch) >= batch_size():
            yield batch
            batch = []
    if batch:
        yield batch


def plan_for(cfg, family=None):
    """(device, plan) for this worker and its model's family (None: families.of_model, the checkpoint's
    config.json); InputError if its torch has no kernels for the GPU, or the GPU cannot run the quantization
    asked for (fp8)."""
    device = loading.pick_device(cfg.gpu_id or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if device == "cpu" and visible not in ("", "-1"):  # submit_llava.sh logged "on GPU <visible>" for it
        log.warning(f"⚠️ no GPU visible to this worker (CUDA_VISIBLE_DEVICES={visible}, torch.cuda.is_available() "
                    f"False): running on the CPU, very slowly; check the node's driver and the torch build "
                    f"(setup's checks)")
    problem = gpus.check_torch_build(device)
    if problem:
        raise InputError(problem)
    return device, gpus.plan(cfg, gpus.detect(device), family or families.of_model(cfg.model))


def model_family(cfg):
    """(family, tag, problem) of cfg.model from one read of its config.json (families.of_model), which the run
    hands on: its family and the TAG its files carry. Where it cannot be read (no such directory, a hub model not
    downloaded whose name says no family) the default model's family, families.tag_or_default's tag and problem,
    the InputError saying why: a run raises it before loading the model (only a finished slice needs no model),
    --print-plan warns with it."""
    try:
        family = families.of_model(cfg.model)
        return family, family.TAG, None
    except InputError as e:
        return families.of_model(settings.DEFAULT_MODEL), families.tag_or_default(cfg.model), e


def identity(cfg, plan, project, video, info, family=None) -> dict:
    """What made this worker's results (provenance.made_by): the prompt is that of a sample window, in the
    model family's format (family None: the model's, families.of_model)."""
    family = family or families.of_model(cfg.model)
    return provenance.made_by(cfg, plan, family.build_prompt([0.0, 1 / settings.FPS]),
                              provenance.video_file(project, video, info), project, family)


def die_with_parent(fence, held) -> None:
    """A worker of submit_llava.sh (it holds the lock, held) gets SIGTERM when that script dies (kill -9 of the
    script alone): it saves its batch, fenced, and stops, instead of working on unwatched while another run
    takes the video over. Linux only (prctl). Raises LostLock when the script was gone before this was set."""
    if fence.token is None or not sys.platform.startswith("linux"):
        return  # a run by hand: nohup must keep it alive when its shell goes
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if held.get("host") == socket.gethostname() and os.getppid() != held.get("pid"):
        raise claims.LostLock(f"video {fence.video}: submit_llava.sh (pid {held.get('pid')}), which started this "
                              f"worker, is gone: stopping, nothing written")


def run(cfg, engine=None, on_batch=None) -> int:
    """Process the slice (or print the plan); returns reporting.EXIT_DONE (every window answered),
    cli.EXIT_INCOMPLETE (done, with undecodable windows), reporting.EXIT_FAILED (windows failed: a rerun retries
    them), reporting.EXIT_INTERRUPTED (a signal stopped it after saving: rerun to resume) or claims.EXIT_LOST_LOCK
    (another run took the video's lock over: nothing more written). engine: one made for this plan (else loaded
    here); on_batch(records): called after each batch is saved (benchmarks/bench_worker.py's timing)."""
    if cfg.print_plan:
        family, _, problem = model_family(cfg)
        if problem:
            log.warning(f"⚠️ {problem}; planned for a {family.NAME} model")
        print(plan_for(cfg, family)[1].to_json())
        return reporting.EXIT_DONE
    return claims.stops_on_lost_lock(_run, log.error)(cfg, engine, on_batch)


def _run(cfg, engine, on_batch) -> int:
    project = settings.project_dir(cfg.project)
    family, tag, problem = model_family(cfg)  # tag: the model's name in its files (settings.PARTIAL, LOCK)
    # every write of the partial is fenced: another job's video, or one taken over from us, is not ours to touch
    fence = claims.Fence(project, cfg.video_index, model=tag)
    die_with_parent(fence, fence())
    video = videos.resolve_video(project, cfg.video_index)
    info = videos.probe(video)
    slice_windows = info.slice_windows(cfg.gpu_id, cfg.num_workers)
    out = settings.partial_path(project, cfg.video_index, cfg.gpu_id, tag)
    remove_stale_temps(out)
    device, plan = plan_for(cfg, family)
    made_by = identity(cfg, plan, project, video, info, family)
    records, todo = resume(out, info, slice_windows, made_by, cfg.replace_mismatched)
    span = (f"{info.window_start(slice_windows[0])}-{info.window_start(slice_windows[-1])}s"
            if slice_windows else "empty")
    log.info(f"video {cfg.video_index}: {video} ({info.duration:.1f} s, {info.fps:.3f} fps, "
             f"{settings.count(info.n_windows, 'window')}); slice {cfg.gpu_id + 1}/{cfg.num_workers}: "
             f"{settings.count(len(slice_windows), 'window')} {span}, "
             f"{len(slice_windows) - len(todo)} already in {out.name}")
    if not todo:
        log.info("slice already complete: nothing to do")
        return report(records, len(slice_windows), info)
    check_writable(project)
    loading.check_model_source(cfg.model)
    if problem:
        raise problem
    log.info(f"settings: model={cfg.model} quantization={cfg.quantization} device={device} "
             f"batch_size={cfg.batch_size} gpu_share={cfg.gpu_share} decoder={cfg.decoder} "
             f"visual_tokens={cfg.visual_tokens} "
             f"max_new_tokens={cfg.max_new_tokens} temperature={cfg.temperature} top_p={cfg.top_p} "
             f"HF_TOKEN={'set' if os.environ.get('HF_TOKEN') else 'not set'}")
    log.info(plan.line(cfg.batch_size))
    for warning in plan.warnings:
        log.warning(f"⚠️ {warning}")
    if engine is not None and (engine.plan != plan or engine.family.NAME != made_by["family"]):
        raise InputError("the engine given was made for another plan or model family than these settings' "
                         "(a benchmark's bug)")
    engine = engine or load_engine(cfg, device, plan, family)
    revision = getattr(engine.model.config, "_commit_hash", None)  # the hub commit from_pretrained really used
    check_revision(made_by, revision, records, out, cfg.model)
    slice_ = Slice(cfg, out, made_by, records, todo, info, fence)
    if not slice_.process(Worker(cfg, engine), device, on_batch):
        return reporting.EXIT_INTERRUPTED
    return report(slice_.records, len(slice_windows), info)


def load_engine(cfg, device, plan, family):
    """The engine of cfg.model, loaded by family (model_family's): InputError when the model loaded is of another
    family (its config.json changed since it was read)."""
    from .engine import Engine  # here, where it is made: it loads torch, which --print-plan needs not
    gpus.apply_memory(plan, device)
    t0 = time.monotonic()
    try:
        engine = Engine.load(cfg.model, plan, device, cfg.visual_tokens, family=family)
    except Exception as e:  # hub errors are long; the first line says what is missing
        raise InputError(f"cannot load model {cfg.model!r} ({cfg.quantization}): "
                         f"{first_line(e, None) or type(e).__name__}. Check --model/LLAVA_MODEL, HF_TOKEN and network, "
                         f"or pre-download the model (README: Troubleshooting)") from None
    if engine.family is not family:
        raise InputError(f"--model {cfg.model}: its family changed while this worker started; run it again")
    log.info(f"model loaded in {time.monotonic() - t0:.1f} s")
    return engine


class Slice:
    """The batches of one worker's slice: answers, the partial file rewritten after each batch, signals."""

    def __init__(self, cfg, out, made_by, records, todo, info, fence=None):
        self.cfg, self.out, self.made_by, self.records, self.todo, self.info = cfg, out, made_by, records, todo, info
        self.fence = fence  # claims.Fence: raises LostLock, before the rename, once another run holds the video

    def process(self, worker, device, on_batch=None) -> bool:
        """True when every window of todo has a record, False when a signal stopped it (after saving);
        on_batch(new records) after each batch is saved."""
        cfg, engine = self.cfg, worker.engine
        model = engine.model
        stop = []
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, lambda signum, _: stop.append(signal.Signals(signum).name))
        progress = Progress(len(self.todo), f"vid{cfg.video_index} gpu{cfg.gpu_id}", cfg.progress_every)
        n_events = 0
        from .decoding import kv_bytes  # (imports torch: not needed for --help or a finished slice)
        batch_size = BatchSize(cfg.batch_size, cfg.max_batch_size, device, engine.plan, worker.generation.fast)
        t0 = time.monotonic()
        try:
            for batch in prefetched(batches(self.info, self.todo, batch_size, engine)):
                new = worker.answer(batch)
                first = next((inputs for _, inputs in batch if inputs is not None), None)
                batch_size.measured(first and kv_bytes(model, first["input_ids"].shape[1], cfg.max_new_tokens))
                self.records = sorted(self.records + new, key=lambda r: r["time"])
                # a full disk: one line, exit 75 (run_cli), batches before kept
                atomic_write_json(self.out, partial_doc(self.made_by, self.records), fence=self.fence)
                if on_batch:
                    on_batch(new)
                for e in (e for r in new for e in r["events"]):
                    n_events += 1
                    progress.write(event_line(e))
                progress.update(len(batch))
                if stop:
                    log.warning(f"{stop[0]} received: saved {settings.count(len(self.records), 'window')} to "
                                f"{self.out.name}; rerun the same command to resume")
                    return False
        finally:
            progress.close()
        finished(len(self.todo), self.records, time.monotonic() - t0, device, n_events, self.out, engine.paths())
        return True
