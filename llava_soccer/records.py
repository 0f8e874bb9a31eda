"""The pipeline's record formats: window records (partials, raw-answers archive), final event records, and the
one reader of final files.

A window record is what the worker writes per 3 s window into its partial; the merge reads them back
(merge.read_windows), re-parses their "raw" text and archives them. A final file
(final_predictions_<model>_video_N.json) is a JSON list of event records: ours (final_record, one per
event) or the seed's older per-window files ({"time": window start, "raw": text}, e.g. the Qwen runs);
merge, compare_counts.py and evaluate_soccernet.py read them with read_final.
"""
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

from .cli import UnreadableFile, excerpt
from .events import final_events
from .jsonio import read_json, strict

WINDOW_STATUSES = ("ok", "failed", "undecodable")
# What raw_answers_*.json.gz keeps of a window: with its class scores, the evaluator's dense candidates.
ARCHIVED = ("time", "end", "frames", "status", "raw", "error", "none_prob", "class_scores")
FINAL_FIX = "move it away, or rerun that video (merge_results_llava.py writes it)"


def ok_record(start, frames, raw, parsed, events, none_prob=None, class_scores=None) -> dict:
    """The record of an answered window: its start, the seconds of the frames the model was shown, the
    model's text, whether it parsed (events.window_events), the events found in it (each with its label's
    "token_prob"), the model's probability of answering "None" and its 17 class scores (scores.py; None
    when not computed)."""
    return {"time": start, "end": frames[-1], "frames": frames, "status": "ok", "raw": raw, "parsed": parsed,
            "events": events, "none_prob": none_prob, "class_scores": class_scores}


def hole_record(start, end, status, error) -> dict:
    """The record of a window without an answer: status "failed" (OOM or an error: a rerun retries it) or
    "undecodable" (no frames: a rerun of the same file cannot fill it), with the one-line error."""
    return {"time": start, "end": end, "status": status, "error": error, "raw": None, "events": []}


def archived_record(record) -> dict:
    """What the raw-answers archive keeps of a window record (ARCHIVED; None where the record lacks a key)."""
    return {k: record.get(k) for k in ARCHIVED}


def window_status(record) -> str:
    """ok (answered), failed (OOM or an error: a rerun retries it) or undecodable (no frames: a rerun of the
    same file cannot fill it). Older partials said "skipped" for both; the seed's have no status: answered."""
    status = record.get("status", "ok")
    if status == "skipped":
        return "undecodable" if str(record.get("error", "")).startswith("no frames") else "failed"
    return status if status in WINDOW_STATUSES else "failed"


def record_time(value) -> float | None:
    """A record's time in seconds, or None when it is not a finite number: NaN, Infinity, a list, a string,
    true/false (a damaged or hand-edited file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        t = float(value)
    except OverflowError:  # an integer of 400 digits
        return None
    return t if math.isfinite(t) else None


def final_record(e, video: str | None, made_by: dict | None) -> dict:
    """The final-file record of one event (e: an event of merge.window_records_to_events): the seed's
    {time, raw}, the parsed event, the video (its raw_data/ path) it came from, which submit, compare and
    evaluate check (videos.check_source), and what made it (provenance.made_by; None: unknown origin); with the
    probability the model gave its label's tokens and its window's 17 class scores (None: not computed)."""
    return {"time": e["window"], "raw": e["raw"], "label": e["label"], "label_raw": e.get("label_raw"),
            "team": e["team"], "confidence": e["confidence"], "details": e.get("details"),
            "event_time": e["time"], "frame": e.get("frame"), "token_prob": e.get("token_prob"),
            "class_scores": e.get("class_scores"), "video": video, "made_by": made_by}


def final_digest(records) -> str:
    """sha256 of a final's records in one canonical form (sorted keys, compact, non-finite numbers null, what
    UTF-8 cannot hold as "?" as the writer does): the same for the records the merge is about to write and for
    those read back from the file, whatever its layout. The raw-answers file holds the digest of the final it
    belongs to (videos.origin_of): one that differs is the trace of a merge interrupted between the two writes."""
    text = json.dumps(strict(records), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def ensemble_record(ea, eb, names, video, made_by) -> dict:
    """The final record of an event two models both found (ea, eb: read_final's events; compare_counts.py
    --ensemble): at their mean time, with the mean of their confidences, the mean of their token probabilities
    when both have one (else None: ranked by confidence only), each model's own view under "models" and each
    one's made_by under "models_made_by" (so no "label_raw" or "made_by" of its own)."""
    conf = [c for c in (ea["confidence"], eb["confidence"]) if c is not None]
    probs = (ea.get("token_prob"), eb.get("token_prob"))
    both = {**ea, "team": ea["team"] if ea["team"] == eb["team"] else "unknown",
            "confidence": round(sum(conf) / len(conf), 4) if conf else None,
            "token_prob": None if None in probs else (probs[0] + probs[1]) / 2,
            "class_scores": None,  # two models' windows: no one window's scores
            "time": round((ea["time"] + eb["time"]) / 2, 3), "frame": None}
    shared = {k: v for k, v in final_record(both, video, None).items() if k not in ("label_raw", "video", "made_by")}
    models = {name: {"event_time": e["time"], "confidence": e["confidence"], "token_prob": e.get("token_prob"),
                     "team": e["team"], "details": e["details"]} for name, e in zip(names, (ea, eb))}
    return {**shared, "models": models, "video": video, "models_made_by": made_by}


def read_final(path: Path, repairs=None) -> list[dict]:
    """The events of a final file as events.final_events gives them ({time, label, team, confidence, details,
    window, raw}), or UnreadableFile: one line naming the file, the record and the fix. Our files (their records
    say "video" or "made_by": the merge's and the ensemble's) are taken as they are or refused. Other people's
    (the seed's Qwen runs, ...) are repaired (repaired()), counted into repairs (a Counter) when given."""
    records = read_json(path, "predictions file", FINAL_FIX)
    if not isinstance(records, list):
        raise UnreadableFile(f"predictions file {path} is not a JSON list of {{\"time\": ..., ...}} records "
                             f"(a final_predictions_*.json?): {FINAL_FIX}")
    if not any(isinstance(r, dict) and ("video" in r or "made_by" in r) for r in records):
        records = repaired(records, Counter() if repairs is None else repairs)
    for k, r in enumerate(records):
        problem = _problem(r)
        if problem:
            raise UnreadableFile(f"predictions file {path}: record #{k} {problem} ({excerpt(r)}); times are "
                                 f"seconds from the start of the video, numbers >= 0: {FINAL_FIX}")
    return final_events(records)  # cannot raise now: every record is an object with good times


def repaired(records, repairs) -> list:
    """Other people's records as we read them: a negative "time" or "event_time" counts as 0 s (the video's
    start: the event is kept where it can be matched) and repairs["clamped"] counts them; a record that is no
    object or has no time that is a number (missing, text, NaN) says nowhere when its event was: it is left out,
    counted in repairs["dropped"]."""
    kept = []
    for r in records:
        if not isinstance(r, dict) or "time" not in r or any(
                name in r and record_time(r[name]) is None for name in ("time", "event_time")):
            repairs["dropped"] += 1
            continue
        negative = {name: 0.0 for name in ("time", "event_time") if name in r and r[name] < 0}
        repairs["clamped"] += bool(negative)
        kept.append({**r, **negative})
    return kept


def repairs_note(repairs) -> str | None:
    """What repaired() changed in one model's files, in one line, or None."""
    parts = [f"{repairs['clamped']} with a negative time counted at 0 s"] * bool(repairs["clamped"]) + \
        [f"{repairs['dropped']} without a usable time left out"] * bool(repairs["dropped"])
    return f"of its records, {' and '.join(parts)} (files not written by this pipeline's merge)" if parts else None


def _problem(record) -> str | None:
    """What makes one record of a final file unreadable, or None."""
    if not isinstance(record, dict):
        return "is not an object"
    if "time" not in record:
        return "has no \"time\""
    for name in ("time", "event_time"):
        if name in record and not _is_seconds(record[name]):
            return f"has a bad \"{name}\""
    return None


def _is_seconds(t) -> bool:
    return record_time(t) is not None and t >= 0

