"""One video's partials -> its final events: coverage check, re-parsing, de-duplication.

The records it reads and the final records it makes are defined in records.py.

Used by merge_results_llava.py (one video) and compare_counts.py (de-duplicating the older
per-window Qwen files the same way, so both models are counted alike).
"""
import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from .cli import InputError, UnreadableFile, log_safe
from .events import class_scores, probability, window_events
from .jsonio import read_json
from .provenance import describe, differences
from .records import record_time, window_status
from .settings import (
    DEFAULT_TAG,
    PARTIAL,
    SOCCERNET_CLASSES,
    STEP_S,
    TIME_EPS,
    WINDOW_S,
    consecutive_runs,
    name_pattern,
)


def dedup(events, dedup_s):
    """Events with the same label less than or exactly dedup_s apart kept once.

    The most confident is kept, with its own time; a tie goes to the earlier event and
    confidence None ranks lowest. An event is dropped only for a *kept* event nearby, so a
    chain 0, 2, 4 s keeps 0 and 4 (2 is within 3 s of 0; 4 is not). Returns time order.
    """
    def rank(e):
        c = e["confidence"] if isinstance(e["confidence"], (int, float)) else None
        return (c is None, -(c or 0.0), e["time"])

    kept_times, kept = {}, []
    for e in sorted(events, key=rank):
        times = kept_times.setdefault(e["label"], [])
        i = bisect.bisect_left(times, e["time"])
        near = [times[j] for j in (i - 1, i) if 0 <= j < len(times)]
        if all(abs(t - e["time"]) > dedup_s + TIME_EPS for t in near):
            times.insert(i, e["time"])
            kept.append(e)
    return sorted(kept, key=lambda e: (e["time"], str(e["label"])))


def partial_files(project: Path, video_index: int, model: str = DEFAULT_TAG) -> list[Path]:
    """Every partial of the video by model (its TAG; settings.partial_path), whatever the number of workers."""
    name = name_pattern(PARTIAL, video=video_index, model=model)
    found = [p for p in project.glob(PARTIAL.format(model=model, video=video_index, gpu="*")) if name.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(name.fullmatch(p.name)["gpu"]))


@dataclass
class Windows:
    """The window records of one video, one per grid window found in the partials, and what made them."""
    n_windows: int
    records: dict = field(default_factory=dict)  # window index -> record
    overlaps: int = 0  # windows found in more than one partial
    made_by: dict | None = None  # provenance.made_by of the partials (None: unknown origin)

    def indices(self, status) -> list[int]:
        return [k for k in sorted(self.records) if window_status(self.records[k]) == status]

    @property
    def missing(self) -> list[int]:
        return [k for k in range(self.n_windows) if k not in self.records]


def read_windows(files, n_windows: int) -> Windows:
    """Collect window records from the partials, checking each lies on the video's grid and that every
    partial was made by the same run (else InputError naming what differs).

    A window found twice (stale partials of an earlier run with another number of workers)
    takes the newest file's record, unless that one failed a window the other answered.
    """
    windows = Windows(n_windows)
    last = (n_windows - 1) * STEP_S
    made = []
    for path in sorted(files, key=lambda p: (p.stat().st_mtime, p.name)):
        fix = "delete it and rerun the worker (its windows are redone)"
        doc = read_json(path, "partial", fix)
        records = doc.get("windows") if isinstance(doc, dict) else doc
        if not isinstance(records, list):
            raise UnreadableFile(f"partial {path} is not a JSON list of window records: {fix}")
        made_by = doc.get("made_by") if isinstance(doc, dict) else None
        if made_by is not None and not isinstance(made_by, dict):
            raise UnreadableFile(f"partial {path} is damaged (its \"made_by\" is not an object): {fix}")
        made.append((path, made_by))
        for n, r in enumerate(records):
            if not isinstance(r, dict):
                raise UnreadableFile(f"partial {path} is damaged: record {n} is {log_safe(repr(r), 60)}, not an "
                                     f"object: {fix}")
            t = r.get("time")
            seconds = record_time(t)
            if seconds is None and "time" in r:
                raise UnreadableFile(f"partial {path} is damaged: record {n} has time {log_safe(repr(t), 60)}, not a "
                                     f"number of seconds: {fix}")
            k = round(seconds / STEP_S) if seconds is not None else -1
            if not (0 <= k < n_windows and abs(k * STEP_S - seconds) < TIME_EPS):
                raise InputError(f"partial {path}: record {n} has time {t!r}, not a window start of this video "
                                 f"(0, {STEP_S:g}, ..., {last:g} s): is it another video's? delete it and rerun "
                                 f"the worker")
            old = windows.records.get(k)
            if old is not None:
                windows.overlaps += 1
                if window_status(r) != "ok" and window_status(old) == "ok":
                    continue
            windows.records[k] = r
    first_path, windows.made_by = made[0]
    for path, m in made[1:]:
        if m is None and windows.made_by is None:
            continue  # every partial is older than made_by: the final says "unknown origin"
        differ = (differences(windows.made_by, m) if None not in (m, windows.made_by) else
                  [f"one is of {describe(None)}"])
        if differ:
            raise InputError(f"partials of one video were made by different runs: {first_path.name} and {path.name} "
                             f"differ in {'; '.join(differ)}. Joining them would mix two runs: delete the partials "
                             f"of the run you do not want and rerun its workers")
    return windows


def missing_ranges(missing, duration: float) -> list[str]:
    """Consecutive missing windows as readable time ranges, e.g. '24.0-37.0 s (windows 12-17)'."""
    return [f"{a * STEP_S:.1f}-{min(b * STEP_S + WINDOW_S, max(duration, b * STEP_S)):.1f} s "
            f"(window{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''})" for a, b in consecutive_runs(missing)]


def describe_holes(indices, total: int, duration: float, status: str, records=None) -> str:
    """One line for windows without an answer: '284 of 300 windows undecodable from 32.0 s on',
    '2 of 30 windows failed (OOM) at 4.0-7.0 s, 20.0-23.0 s'. records: the window records, whose errors
    are named."""
    errors = sorted({log_safe(r.get("error"), 100) for r in (records or [])
                     if window_status(r) == status and r.get("error")})
    why = f" ({'; '.join(errors[:3])}{'; ...' if len(errors) > 3 else ''})" if errors and status == "failed" else ""
    runs = consecutive_runs(sorted(indices))
    head = f"{len(indices)} of {total} windows {status}{why}"
    if len(runs) == 1 and runs[0][1] * STEP_S + WINDOW_S >= duration - TIME_EPS and runs[0][0] > 0:
        return f"{head} from {runs[0][0] * STEP_S:.1f} s on"
    shown = [r.split(" (")[0] for r in missing_ranges(sorted(indices), duration)]
    return f"{head} at {', '.join(shown[:5])}{f' and {len(shown) - 5} more ranges' if len(shown) > 5 else ''}"


def frame_times(record, grid_times) -> list[float]:
    """The seconds of the frames a window's answer numbers 1..n: the record's own "frames" (what the model
    was shown), else (records written before they said) grid_times, the window's frames on the video's grid."""
    times = record.get("frames")
    ok = isinstance(times, list) and times and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times)
    return times if ok else grid_times


def window_records_to_events(windows: Windows, info):
    """(events, failures): every event of every answered window, re-parsed from its raw text and timed by its
    own frames (frame_times; info: the video's VideoInfo).

    Each event carries its window's "window" start, "raw" text and "class_scores", and the "token_prob" the
    worker recorded for it (token_probs); failures are the answered windows whose text is neither events nor None.
    """
    events, failures = [], []
    for k in sorted(windows.records):
        r = windows.records[k]
        if window_status(r) != "ok":
            continue
        found, ok = window_events(float(r["time"]), r.get("raw"), frame_times(r, info.window_times(k)))
        if not ok:
            failures.append(r)
        scores = class_scores(r.get("class_scores"))
        for e, prob in zip(found, token_probs(found, r.get("events"))):
            events.append({**e, "window": float(r["time"]), "raw": r.get("raw"), "token_prob": prob,
                           "class_scores": scores})
    return events, failures


def token_probs(found, recorded) -> list:
    """The token probability of each re-parsed event (found): that of the worker's event (recorded, the window
    record's "events") with the same label as written and frame, in order; None where none is (a parser
    change found another event, or the partial is older than token probabilities)."""
    left = [e for e in recorded if isinstance(e, dict)] if isinstance(recorded, list) else []
    out = []
    for e in found:
        same = next((r for r in left if (r.get("label_raw"), r.get("frame")) == (e["label_raw"], e["frame"])), None)
        if same is not None:
            left.remove(same)
        out.append(probability(same.get("token_prob")) if same is not None else None)
    return out


def label_counts(events) -> tuple[dict, dict]:
    """(SoccerNet class -> count, other label -> count), each most frequent first."""
    counts = {}
    for e in events:
        counts[e["label"]] = counts.get(e["label"], 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ({k: v for k, v in ordered if k in SOCCERNET_CLASSES},
            {k: v for k, v in ordered if k not in SOCCERNET_CLASSES})
