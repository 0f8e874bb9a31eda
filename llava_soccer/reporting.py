"""What the worker tells while and after it runs: progress (tqdm's bar, or lines in a log), one line per event
found, the slice's summary, and its outcome: the holes it leaves (failed, undecodable) and the exit code."""
import logging
import os
import socket
import sys
import time

from . import prompt, settings
from .cli import EXIT_INCOMPLETE, EXIT_RETRY, InputError, log_safe
from .merge import describe_holes
from .records import window_status

EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, EXIT_RETRY  # llava_split_worker.py's codes, with EXIT_INCOMPLETE
log = logging.getLogger("llava_worker")


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


def event_line(e) -> str:
    """One event found, as the worker's log shows it."""
    conf = f"{e['confidence']:.2f}" if e["confidence"] is not None else "?"
    # label, team and details are the model's text: one line, whatever it wrote
    return (f"⚽ {prompt.clock(e['time'])} ({e['time']} s) {log_safe(e['label'], 60)} "
            f"[{log_safe(e['team'], 30)}, {conf}] {log_safe(e['details'] or '')}".rstrip())


def finished(n_todo, records, elapsed, device, n_events, out, paths) -> None:
    """The slice's summary line: windows done now and their speed, peak GPU memory, events, windows answered."""
    memory = ""
    if device.startswith("cuda"):
        import torch
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    answered = sum(window_status(r) == "ok" for r in records)
    log.info(f"slice finished: {settings.count(n_todo, 'window')} in {elapsed:.1f} s "
             f"({elapsed / n_todo:.2f} s/window){memory}, {n_events} events, "
             f"{answered} of {settings.count(len(records), 'window')} answered -> {out}; "
             f"{paths}")


def report(records, n_windows, info) -> int:
    """The slice's outcome in one line each for its holes; the exit code."""
    by_status = {}
    for r in records:
        by_status.setdefault(window_status(r), []).append(round(r["time"] / settings.STEP_S))
    failed, undecodable = by_status.get("failed", []), by_status.get("undecodable", [])
    if failed:
        log.error(f"{describe_holes(failed, n_windows, info.duration, 'failed', records)}: "
                  f"rerun the same command to retry them")
        return EXIT_FAILED
    if undecodable:
        log.warning(f"⚠️ {describe_holes(undecodable, n_windows, info.duration, 'undecodable')}: the video file "
                    f"has no frames there (truncated or damaged?); a rerun cannot fill them, replace the file to "
                    f"redo the video")
        return EXIT_INCOMPLETE
    return EXIT_DONE


def note_failure(cfg, line) -> None:
    """After an error that stopped the worker (line: what its log said), when its slice has no partial yet (a
    partial's failed windows say it otherwise): .failed_<tag>_video_I.json (the model's family TAG) holds the line,
    so status shows the video as failed with its reason, not as not started. Written only while no other run holds
    the video; the merge removes it with the partials. Best effort: the error is already in the log."""
    from . import claims
    from .families import tag_or_default
    from .jsonio import atomic_write_json
    try:
        project = settings.project_dir(cfg.project)
        tag = tag_or_default(cfg.model)  # a model no family runs: the default's, where status looks; the line names it
        if cfg.video_index is None or settings.partial_path(project, cfg.video_index, cfg.gpu_id, tag).exists():
            return
        claims.Fence(project, cfg.video_index, model=tag)()  # another run's video: its state is not ours to note
        atomic_write_json(settings.failed_note_path(project, cfg.video_index, tag), {
            "error": log_safe(line, 500), "gpu_id": cfg.gpu_id, "job": os.environ.get("SLURM_JOB_ID"),
            "host": socket.gethostname(), "time": time.time()})
    except (OSError, InputError):  # no project, another run's lock (LostLock too): nothing to note
        pass
