"""Where a run stands, read from the project directory only: status_llava.py's logic.

One line per video: done (events by label), in progress (job, node, windows, rate, ETA), failed or
stopped (the reason, what a rerun does), incomplete, held by a job that is not running, not started;
then totals and an estimate for the range. It never writes: no lock, no temp file, no videos.txt
(videos.read_list, not manifest), so it runs on a project the user cannot write to, while jobs run.
"""
import functools
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import claims, merge, settings, videos
from .cli import InputError, UnreadableFile, log_safe
from .events import final_events
from .jsonio import read_json
from .settings import count

RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")  # squeue states of a job that holds its locks alive
RATE_MIN_S = 30  # a rate over less time than this is noise (the model loads first): not shown
MAX_FPS, MAX_VIDEO_S = 1000.0, 7 * 86400  # a made_by past these was not probed from a video: length unknown
CHANGED = "⚠️ its video file changed since: delete the final and its raw_answers file to redo it"


@dataclass
class Row:
    """One video's status line and the numbers the totals add up."""
    index: int
    state: str                      # STATES
    detail: str
    name: str = ""
    labels: dict = field(default_factory=dict)  # label -> events (done and incomplete videos)
    total: int | None = None        # the video's windows, when known
    left: int | None = None         # windows still to do (None: unknown)
    rate: float | None = None       # windows per second of the job processing it now
    made_from: tuple | None = None  # a final's video (size, digest of its ends), as its made_by records it
    gone: bool = False              # ... and that file is no longer in raw_data/


@dataclass
class Partials:
    """What one video's partials hold: windows answered or undecodable (done), failed, their total."""
    done: int
    failed: list
    total: int | None
    duration: float | None
    newest: float                   # the newest partial's mtime: when the last batch was saved
    records: list


def video_windows(made_by) -> tuple[int, float] | None:
    """(windows, duration in s) of the video a made_by names, from what the worker probed (fps, frames): no
    need to open the video. None when the made_by does not say (written before it recorded the video)."""
    vf = made_by.get("video_file") if isinstance(made_by, dict) else None
    fps, frames = (vf.get("fps"), vf.get("frames")) if isinstance(vf, dict) else (None, None)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in (fps, frames)) or fps > MAX_FPS or frames / fps > MAX_VIDEO_S:
        return None  # checked before any arithmetic: a file can hold Infinity, or 1e12 frames at 1e-9 fps
    info = videos.VideoInfo(Path(), float(fps), int(frames))
    return info.n_windows, info.duration


@functools.cache
def probed_windows(path: str) -> tuple[int, float] | None:
    """(windows, duration) by opening the video (OpenCV): for partials older than made_by; once per process."""
    try:
        info = videos.probe(path)
    except (InputError, ImportError, OSError):
        return None
    return info.n_windows, info.duration


def read_partials(project: Path, index: int, listed: list, files: list, model: str) -> Partials | None:
    """The video's partials (files: from the one listing of the project, report()), with merge.read_windows'
    checks; None when there are none; InputError (one line) for a damaged partial or partials of different
    runs. A partial that the merge deletes while we read (the video just finished) is looked for again."""
    for attempt in range(3):
        files = files if attempt == 0 else merge.partial_files(project, index, model)
        if not files:
            return None
        try:
            return _read_partials(project, index, listed, files)
        except (InputError, FileNotFoundError):
            if all(f.exists() for f in files):
                raise
    return None


def _read_partials(project, index, listed, files) -> Partials:
    first = read_json(files[0], "partial", "delete it and rerun the worker (its windows are redone)")
    made_by = first.get("made_by") if isinstance(first, dict) else None  # a plain list: before made_by
    known = video_windows(made_by)
    if known is None and index < len(listed):
        known = probed_windows(str(project / "raw_data" / listed[index]))
    newest = max(f.stat().st_mtime for f in files)
    windows = merge.read_windows(files, known[0] if known else 10 ** 9)  # unknown length: any grid window
    failed = windows.indices("failed")
    return Partials(len(windows.records) - len(failed), failed, known and known[0], known and known[1], newest,
                    list(windows.records.values()))


def lock_of(project: Path, index: int, jobs: dict, model: str):
    """(lock info, holder line, None when live else why not) of the video's lock by claims' rules, or None when
    there is none. Not live: stale, or squeue knows its job and it is not running (jobs caches squeue_state)."""
    held = claims.peek(project, index, model)
    if held is None:
        return None
    info, why, _ = held
    who = claims.who(info) if info.get("token") else "a job whose lock is being written"
    job = info.get("job")
    if job and job not in jobs:
        jobs[job] = squeue_state(job)
    state = jobs.get(job)
    if why:
        return info, who, f"lock stale ({why}): the next job takes it over and resumes"
    if state is not None and state not in RUNNING_STATES:
        if state == "PENDING":  # requeued: claims' rule (b) lets it take its own lock back
            return info, who, f"but job {job} is PENDING (requeued?): it resumes the video when it starts"
        ended = "has ended" if state == "gone" else f"is {state}"
        return info, who, f"but job {job} {ended}: the next job takes the lock over once it is stale"
    return info, who, None


def squeue_state(job: str) -> str | None:
    """The job's state as squeue says (RUNNING, PENDING, ...), "gone" when squeue no longer knows it, None when
    it cannot tell (no Slurm here: the lock's own rules decide)."""
    if not shutil.which("squeue"):
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode == 0:
        return r.stdout.split()[0] if r.stdout.split() else "gone"
    return "gone" if "Invalid job id" in r.stderr else None


def final_labels(final: Path) -> tuple[dict, dict | None]:
    """({label: events}, made_by) of a final: ours and the seed's per-window files alike (events.final_events),
    de-duplicated with the merge's rule as compare_counts.py counts them (a no-op on our finals)."""
    fix = "regenerate it with merge_results_llava.py, or move it away"
    records = read_json(final, "predictions file", fix)
    if not isinstance(records, list) or not all(isinstance(r, dict) and "time" in r for r in records):
        raise UnreadableFile(f"predictions file {final} is not a list of {{\"time\": ..., ...}} records: {fix}")
    try:
        events = [e for e in final_events(records) if e["label"] is not None]
    except (KeyError, TypeError, ValueError) as e:
        raise UnreadableFile(f"predictions file {final} has a record with a bad time ({log_safe(e, 100)}): "
                             f"{fix}") from None
    for e in events:
        e["label"] = e["label"] if isinstance(e["label"], str) else str(e["label"])  # a list where a label was
    classes, others = merge.label_counts(merge.dedup(events, settings.DEDUP_S))
    made_by = next((r["made_by"] for r in records if isinstance(r.get("made_by"), dict)), None)
    return {**classes, **others}, made_by


def labels_text(labels: dict) -> str:
    """'Foul 20, Corner 5, Goal 3': most frequent first."""
    return ", ".join(f"{log_safe(label, 40)} {n}" for label, n in labels.items()) or "no events"


def final_row(project: Path, index: int, listed: list, model: str) -> Row | None:
    """The row of a video with a final that a rerun skips (done, incomplete), else None (todo, or redo: an
    incomplete final whose video file changed since, which a rerun processes again)."""
    state, line = videos.final_state(project, index, listed, model)
    if state in ("todo", "redo"):
        return None
    final = settings.final_path(project, index, model)
    labels, made_by = final_labels(final)
    known = video_windows(made_by)
    events = f"{count(sum(labels.values()), 'event')}: {labels_text(labels)}" if labels else "0 events"
    row = Row(index, state, events, labels=labels, total=known and known[0], left=0)
    vf = made_by.get("video_file") if isinstance(made_by, dict) else None
    if isinstance(vf, dict) and isinstance(vf.get("size"), int) and isinstance(vf.get("sha256_ends"), str):
        row.made_from = (vf["size"], vf["sha256_ends"])
    note = video_file_note(project, made_by, same="⚠️" not in line)  # final_state's warning: changed or gone
    row.gone = bool(note) and note != CHANGED
    if state == "incomplete":
        row.detail = (f"{events}; {videos.origin_of(final).incomplete}: reruns skip it while its video file is "
                      f"unchanged")
    elif note:
        row.detail += f"; {note}"
    return row


def video_file_note(project: Path, made_by, same=None) -> str | None:
    """The warning for a final whose video file is not the one it was made from: gone from raw_data/ (renamed
    or deleted), or changed (CHANGED; same: provenance.same_file's answer when the caller has it); None when
    it is the same or made_by does not say. status and evaluate_soccernet.py say it in these words."""
    from .provenance import same_file
    vf = made_by.get("video_file") if isinstance(made_by, dict) else None
    path = vf.get("path") if isinstance(vf, dict) else None
    if not isinstance(path, str) or not path:
        return None
    if not (project / "raw_data" / path).is_file():
        return (f"⚠️ its video file raw_data/{log_safe(path, 200)} is gone (renamed or deleted?): a renamed video "
                f"is listed again under a new index, which a run processes again; delete this final and its "
                f"raw_answers file once that one is done")
    return CHANGED if (same_file(vf, project) if same is None else same) is False else None


def duplicates(rows: list) -> None:
    """A final whose video file is gone, of the same video (size and end digests) as another row's final whose
    file is there: a renamed video processed again under its new index. Its events count under that index
    only: this row becomes "duplicate", out of the totals."""
    there = {r.made_from: r.index for r in rows if r.made_from and not r.gone}
    for r in rows:
        twin = there.get(r.made_from) if r.gone else None
        if twin is not None:
            r.state, r.labels = "duplicate", {}
            r.detail = (f"its video file is gone and video {twin} is the same video (size and digest; renamed?), "
                        f"whose final counts it: delete this final and its raw_answers file")


def partial_row(index: int, p: Partials, redo: bool) -> Row:
    """A video with partials and no live job: failed windows, stopped part-way, or all saved but not merged."""
    total = p.total
    done = f"{p.done}/{total if total else '?'} windows"
    left = total - p.done if total else None
    if p.failed:
        holes = merge.describe_holes(p.failed, total or max(p.failed) + 1, p.duration or math.inf, "failed",
                                     p.records)
        return Row(index, "failed", f"{holes}; {done} saved: a rerun retries the failed windows and does the rest",
                   total=total, left=left)
    if total and p.done >= total:
        return Row(index, "stopped", f"all {total} windows saved, not merged (the merge failed or was interrupted): "
                                     f"a rerun merges it", total=total, left=0)
    why = "its final is incomplete and its video file changed since; " if redo else ""
    return Row(index, "stopped", f"{why}{done} saved, no job holds it (interrupted, cancelled or a worker "
                                 f"failed): a rerun resumes it", total=total, left=left)


def rate_of(p: Partials, info: dict, seen: dict, key) -> tuple[float | None, str]:
    """(windows per second, what it is based on) of a running video. seen remembers, across --watch refreshes,
    the first (newest partial mtime, windows) this process saw of this holder: the rate between then and the
    last save counts only windows this job made. Before that: windows saved ÷ time from the job taking the
    video (its lock's "since") to the last save, which also counts windows resumed from an earlier run."""
    first = seen.setdefault(key, (p.newest, p.done))
    if p.newest - first[0] >= RATE_MIN_S and p.done > first[1]:
        return (p.done - first[1]) / (p.newest - first[0]), f"over the last {duration(p.newest - first[0])}"
    try:
        since = datetime.fromisoformat(info.get("since")).timestamp()
    except (TypeError, ValueError):
        return None, ""
    if p.newest - since >= RATE_MIN_S and p.done:
        return p.done / (p.newest - since), "since start"
    return None, ""


def running_row(index: int, p: Partials | None, info: dict, who: str, seen: dict, now: float) -> Row:
    """A video a live job holds: its windows so far, rate and ETA."""
    if p is None:
        return Row(index, "in progress", f"{who}: starting (no window saved yet)", left=None)
    rate, basis = rate_of(p, info, seen, (index, info.get("token")))
    total = p.total
    left = total - p.done - len(p.failed) if total else None
    parts = [f"{who}: {p.done}/{total or '?'} windows" + (f" ({100 * p.done / total:.0f}%)" if total else "")]
    if p.failed:
        parts.append(f"{len(p.failed)} failed (a rerun retries them)")
    if rate:
        parts.append(f"{60 * rate:.1f} win/min {basis}")
        if left is not None:
            parts.append(f"ETA {duration(left / rate)} (~{clock(now + left / rate)})")
    parts.append(f"saved {duration(max(0.0, now - p.newest))} ago")
    return Row(index, "in progress", ", ".join(parts), total=total, left=left, rate=rate)


def video_row(project: Path, index: int, listed: list, partials: list, jobs: dict, seen: dict, now: float,
              noted: bool = False, model: str = settings.DEFAULT_TAG) -> Row:
    """One video's row for model (its TAG: its files and lock). Its lock comes first (a job may be redoing an
    incomplete video); then a final a rerun skips; then its partials (partials: their files); then the note of a
    worker that failed before saving a window (noted: .failed_<tag>_video_I.json exists); else not started. A file
    that cannot be read is that video's error row; a lock file that is none (claims.BadLock) is "locked", saying
    what to do."""
    try:
        lock = lock_of(project, index, jobs, model)
        if lock and lock[2] is None:
            p = read_partials(project, index, listed, partials, model)
            return running_row(index, p, lock[0], lock[1], seen, now)
        row = final_row(project, index, listed, model)  # also under a dead job's lock: the final is what counts
        if row:
            return row
        p = read_partials(project, index, listed, partials, model)
        if lock:
            saved = f"; {p.done}/{p.total or '?'} windows saved" if p else ""
            return Row(index, "held", f"{lock[1]}, {lock[2]}{saved}", total=p and p.total,
                       left=p.total - p.done if p and p.total else None)
        if p:
            return partial_row(index, p, settings.final_path(project, index, model).exists())
        if noted:
            note = read_json(settings.failed_note_path(project, index, model), "failure note")
            error = note.get("error") if isinstance(note, dict) else note
            return Row(index, "failed", f"{log_safe(error, 300)} (a worker stopped before saving a window): fix that "
                                        f"and rerun")
    except claims.BadLock as e:
        return Row(index, "locked", log_safe(e, 400))
    except InputError as e:
        return Row(index, "failed", log_safe(e, 400))
    return Row(index, "not started", "a run processes it")


def quiet_exit() -> int:
    """After a BrokenPipeError (| head has what it wants): stdout to /dev/null (Python flushes it again at exit,
    which would raise once more), and 141, the status a shell gives a command that SIGPIPE ended."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min', '2 d 04 h'."""
    s = round(seconds)
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min" if h < 48 else f"{h // 24} d {h % 24:02d} h"


def clock(ts: float) -> str:
    """'13:22' today, else 'Tue 13:22' within a week, else '2025-06-03 13:22'."""
    when, today = datetime.fromtimestamp(ts), datetime.now()
    days = (when.date() - today.date()).days
    return when.strftime("%H:%M" if days == 0 else "%a %H:%M" if abs(days) < 7 else "%Y-%m-%d %H:%M")


STATES = ("done", "in progress", "failed", "stopped", "incomplete", "held", "locked", "duplicate", "not started")
TEMPLATES = {"final": settings.FINAL, "partial": settings.PARTIAL, "lock": settings.LOCK,
             "note": settings.FAILED_NOTE}
ANY_FINAL = settings.name_pattern(settings.FINAL)


def listing(project: Path, model: str) -> tuple[set, dict, set, dict]:
    """(indices with a final, partial, lock or failure note of model (its TAG); {index: its partials, by worker};
    indices with a failure note; {other model: its finals}) from one listing of the project: once per report, not
    once per video (10,000 videos: a listing each made it quadratic)."""
    patterns = {kind: settings.name_pattern(template, model=model) for kind, template in TEMPLATES.items()}
    found, partials, notes, others = set(), {}, set(), {}
    for f in project.iterdir():
        for kind, pattern in patterns.items():
            if m := pattern.fullmatch(f.name):
                found.add(int(m["video"]))
                if kind == "partial":
                    partials.setdefault(int(m["video"]), []).append((int(m["gpu"]), f))
                if kind == "note":
                    notes.add(int(m["video"]))
        if (m := ANY_FINAL.fullmatch(f.name)) and m["model"] != model:
            others[m["model"]] = others.get(m["model"], 0) + 1
    return found, {i: [f for _, f in sorted(fs)] for i, fs in partials.items()}, notes, dict(sorted(others.items()))


def indices_of(listed: list, found: set, asked) -> tuple[list, str]:
    """(video indices to show, a note on those asked that videos.txt does not list). asked None (all): every
    line of videos.txt, or without one (a folder of older finals) every index that has a file (found). A range
    asked is bounded by what exists before it becomes a list: --videos 0-999999999 costs what is there."""
    if not listed:
        return sorted(found) if asked is None else asked.among(found), ""
    if asked is None:
        return list(range(len(listed))), ""
    past = asked.from_(len(listed))
    note = f"videos {past} are not in videos.txt (it lists {count(len(listed), 'video')})" if past else ""
    return asked.below(len(listed)), note


def report(project: Path, asked, seen: dict, model_id: str = settings.DEFAULT_MODEL,
           model: str = settings.DEFAULT_TAG) -> list[str]:
    """The status lines of the videos asked (None: all) for model_id, whose family TAG is model: a header, the
    model and which other models have finals here, one aligned line per video, totals."""
    now = time.time()
    listed = videos.read_list(project)  # never manifest(): that one writes videos.txt
    found, partials, notes, others = listing(project, model)
    shown, note = indices_of(listed, found, asked)
    jobs = {}
    rows = [video_row(project, i, listed, partials.get(i, []), jobs, seen, now, i in notes, model) for i in shown]
    duplicates(rows)
    for row in rows:
        row.name = videos.display_name(listed[row.index], 70) if row.index < len(listed) else ""
    when = datetime.fromtimestamp(now)
    lines = [f"status of {log_safe(model_id, 200)} ({model}) in {project} at {when:%Y-%m-%d %H:%M:%S} "
             f"({count(len(rows), 'video')}; read-only)"]
    if others:  # finals of other models sit beside: where to look for them
        lines.append("other models' finals here: " + ", ".join(f"{log_safe(m, 40)} ({count(n, 'video')})"
                                                                for m, n in others.items())
                     + ": status_llava.py --model MODEL (or LLAVA_MODEL) shows a model's videos")
    if not rows:
        lines.append("no videos yet: videos.txt is written by the first run (sbatch submit_llava.sh 0 39)")
    width = len(str(max(shown, default=0)))
    state_width = max((len(r.state) for r in rows), default=0)
    for r in rows:
        lines.append(f"{r.index:>{width}}  {r.state:<{state_width}}  {r.detail}" + (f"  [{r.name}]" if r.name else ""))
    return lines + ([note] if note else []) + totals(rows, now)


def totals(rows: list, now: float) -> list[str]:
    """The count per state, events per label over the finals, and the time the rest takes at the measured rate."""
    if not rows:
        return []
    by_state = {s: sum(r.state == s for r in rows) for s in STATES}
    labels = {}
    for r in rows:
        for label, n in r.labels.items():
            labels[label] = labels.get(label, 0) + n
    labels = dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])))
    states = ", ".join(f"{n} {s}" for s, n in by_state.items() if n)
    lines = [f"total: {count(len(rows), 'video')}: {states}; {count(sum(labels.values()), 'event')} in the finals"]
    if labels:
        lines.append(f"events by label: {labels_text(labels)}")
    return lines + estimate(rows, now)


def estimate(rows: list, now: float) -> list[str]:
    """Windows left in the range and how long they take at the rate the running jobs measure now."""
    todo = [r for r in rows if r.left != 0 and r.state not in ("done", "incomplete")]
    if not todo:
        return ["nothing left to run in this range"]
    known = [r.total for r in rows if r.total]
    guess = round(sum(known) / len(known)) if known else None
    unknown = [r for r in todo if r.left is None]
    left = sum(r.left for r in todo if r.left is not None) + len(unknown) * (guess or 0)
    if unknown and guess is None:
        return [f"left: {count(len(todo), 'video')} of unknown length (no final or partial says a length yet)"]
    how = (f" ({len(unknown)} of unknown length counted at ~{guess:,} windows, the mean of the "
           f"{count(len(known), 'video')} whose length is known)" if unknown else "")
    line = f"left: ~{left:,} windows in {count(len(todo), 'video')}{how}"
    running = [r.rate for r in rows if r.rate]
    if not running:
        return [line, "estimate: no rate yet (no video in progress has saved windows for 30 s); run again while "
                      "a job runs"]
    rate = sum(running)
    return [line, f"estimate: ~{duration(left / rate)} more (~{clock(now + left / rate)}) at {60 * rate:.1f} "
                  f"win/min, the rate of the {count(len(running), 'video')} in progress now; more jobs at once "
                  f"go faster"]
