"""Scoring final predictions against SoccerNet-v2 action-spotting labels.

Two kinds of numbers:
- official average-mAP (tight, loose, at 1 s, at 5 s), computed by the SoccerNet package's own
  evaluator (SoccerNet.Evaluation.ActionSpotting.evaluate) on the results_spotting.json files we
  write, so the numbers are the ones the EvalAI server would give for the same games and halves;
- per class precision, recall and F1 at one tolerance (one-to-one matching, matching.match).

Careful: the evaluator's "delta" is a window WIDTH (a prediction 1 s off counts at delta >= 2 s,
as |dt| <= delta / 2), while --tolerance here is a half-width (|dt| <= tolerance).
"""
import argparse
import contextlib
import inspect
import io
import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import merge
from .cli import InputError, excerpt
from .events import confidence, normalise_label
from .jsonio import atomic_write_json, read_json
from .matching import match
from .records import read_final
from .settings import DEDUP_S, FINAL, SOCCERNET_CLASSES, name_pattern

LABELS_FILE = "Labels-v2.json"
RESULTS_FILE = "results_spotting.json"
OFFICIAL_METRICS = ("tight", "loose", "at1", "at5")  # names of evaluate()'s metric argument
OFFICIAL_FRAMERATE = 2  # the evaluator bins time in 0.5 s frames; one prediction per class per bin
VISIBILITIES = ("visible", "not shown")
INSTALL_HINT = "pip install --no-deps SoccerNet==0.2.0"


@dataclass
class Half:
    """One processed video = one half of one SoccerNet game, with its events."""
    index: int
    video: str          # path relative to raw_data/, as in videos.txt
    game: str           # <league>/<season>/<game>
    half: int
    source: Path = None
    events: list = field(default_factory=list)  # scored predictions: {time, label, confidence}
    unscored: Counter = field(default_factory=Counter)  # predicted labels outside the 17 classes


def video_half(video: str):
    """(game, half) of a manifest path <league>/<season>/<game>/<half>_<res>.mkv, or None."""
    p = PurePosixPath(video)
    m = re.match(r"([12])(?!\d)", p.name)
    if not m or len(p.parts) < 2:
        return None
    return p.parent.as_posix(), int(m[1])


def prediction_files(directory: Path, model: str) -> dict:
    """{video index: path} of final_predictions_<model>_video_<N>.json files in directory."""
    pattern = name_pattern(FINAL, model=model)
    found = {}
    if directory.is_dir():
        for p in directory.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found[int(m["video"])] = p
    return dict(sorted(found.items()))


def models_in(directory: Path) -> list[str]:
    """The models with a final_predictions_<model>_video_<N>.json in directory, sorted."""
    pattern = name_pattern(FINAL)
    return sorted({m["model"] for p in directory.iterdir() if (m := pattern.fullmatch(p.name))}) \
        if directory.is_dir() else []


def confidence_flag(text: str) -> float:
    """argparse type of a confidence flag: the events' own rule (0.6, 60 and "60%" are 0.6)."""
    c = confidence(text)
    if c is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a confidence: give one in [0, 1] or a percent in (1, 100], "
                                         "e.g. 0.6, 60 or 60%")
    return c


def read_predictions(path: Path, missing_confidence: float, dedup_s: float = DEDUP_S, score: str = "confidence",
                     repairs=None):
    """(scored events, Counter of unscored labels, events without a score) of one final predictions file
    (records.read_final; repairs: its Counter of other people's records repaired). score: what ranks them, the
    written "confidence" or the "token_prob"; it becomes each event's "confidence" (what results_spotting.json
    ranks by), missing_confidence where there is none.

    Events are de-duplicated with the merge's rule (same label within dedup_s seconds), as
    compare_counts.py does: our finals are already de-duplicated so, while the seed's per-window files
    (one record per overlapping window) would otherwise count one event two or three times.
    """
    scored, unscored = [], Counter()
    for e in read_final(path, repairs):
        label = normalise_label(e["label"])
        if label is None:
            unscored[str(e["label"])] += 1
            continue
        scored.append({"time": max(0.0, float(e["time"])), "label": label,
                       "confidence": e[score]})  # events.confidence(), probability(): exact, not rounded
    scored = merge.dedup(scored, dedup_s)  # before filling in missing confidences: None ranks lowest
    without = sum(e["confidence"] is None for e in scored)
    for e in scored:
        if e["confidence"] is None:
            e["confidence"] = missing_confidence
    return scored, unscored, without


# The official evaluator reads an annotation's half as int(gameTime[0]), its minutes as
# int(gameTime[-5:-3]) and seconds as int(gameTime[-2:]) (even when "position" is there), and
# position as int(position) ms: anything else crashes it or lands the event at the wrong time.
GAME_TIME = re.compile(r"([12]) - ([0-9]{2}):([0-5][0-9])")
POSITION = re.compile(r"[0-9]+")


def _annotation(a):
    """(half, ms, label) of one Labels-v2.json annotation, or the reason it is malformed."""
    if not isinstance(a, dict):
        return "not an object"
    # The evaluator counts every visibility but "not shown" as visible (no key too, as
    # Labels-v2.json always has one): a misspelt value would move events silently.
    if "visibility" in a and a["visibility"] not in VISIBILITIES:
        return f"visibility {json.dumps(a['visibility'])} is not one of {', '.join(map(json.dumps, VISIBILITIES))}"
    game_time = a.get("gameTime")
    m = GAME_TIME.fullmatch(game_time) if isinstance(game_time, str) else None
    if not m:
        return f"gameTime {json.dumps(game_time)} is not \"<half> - MM:SS\" with half 1 or 2, e.g. \"1 - 05:23\""
    if not isinstance(a.get("label"), str):
        return f"label {json.dumps(a.get('label'))} is not a string"
    if "position" not in a:  # the evaluator then takes the time from gameTime, to the second
        return int(m[1]), 1000 * (60 * int(m[2]) + int(m[3])), a["label"]
    position = a["position"]
    if isinstance(position, int) and not isinstance(position, bool) and position >= 0:
        return int(m[1]), position, a["label"]
    if isinstance(position, str) and POSITION.fullmatch(position):
        return int(m[1]), int(position), a["label"]
    return f"position {json.dumps(position)} is not a whole number of milliseconds >= 0, e.g. \"323000\""


def read_labels(path: Path) -> list:
    """Annotations of a Labels-v2.json as [{time, half, label, visibility, raw}], or InputError.

    Strict: an annotation the official evaluator would crash on or misread stops here with one
    line naming the file, the annotation and what is wrong.
    """
    data = read_json(path, "SoccerNet labels file", "download it again (SoccerNet's Labels-v2.json)")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise InputError(f"SoccerNet labels file {path} has no \"annotations\" list (is it a Labels-v2.json?)")
    out = []
    for k, a in enumerate(annotations):
        parsed = _annotation(a)
        if isinstance(parsed, str):
            raise InputError(f"SoccerNet labels file {path}: annotation #{k} is malformed: {parsed} "
                             f"({excerpt(a)}); each needs \"gameTime\": \"1 - 05:23\", \"label\" and "
                             "\"position\" in ms")
        half, ms, label = parsed
        out.append({"time": ms / 1000, "half": half, "label": label, "visibility": a.get("visibility", "visible"),
                    "raw": a})
    return out


def results_spotting(game: str, halves) -> tuple:
    """(results_spotting.json content, number of predictions collapsed) for one game.

    The evaluator keeps one prediction per class per 0.5 s frame (the last one it reads); we
    keep the most confident one ourselves, so the file holds exactly what gets scored.
    """
    best = {}
    for h in halves:
        for e in h.events:
            ms = round(e["time"] * 1000)
            key = (h.half, e["label"], int(OFFICIAL_FRAMERATE * ms / 1000))
            if key not in best or e["confidence"] > best[key][1]:
                best[key] = (ms, e["confidence"])
    predictions = []
    for (half, label, _), (ms, conf) in sorted(best.items(), key=lambda kv: (kv[0][0], kv[1][0], kv[0][1])):
        s = ms // 1000
        predictions.append({"gameTime": f"{half} - {s // 60:02d}:{s % 60:02d}", "label": label,
                            "position": str(ms), "half": str(half), "confidence": repr(float(conf))})
    n_events = sum(len(h.events) for h in halves)
    return {"UrlLocal": game, "predictions": predictions}, n_events - len(predictions)


def official_average_map(labels: dict, predictions_dir: Path, metrics) -> dict:
    """{metric: results} from SoccerNet's evaluate() over exactly the games in labels.

    labels = {game: [annotation dicts]}. evaluate() scores every game under the labels folder
    it is given, and both halves of each; so it gets a temporary folder holding only our games,
    their labels cut to the halves we processed.
    """
    try:
        from SoccerNet.Evaluation.ActionSpotting import evaluate
        from SoccerNet.Evaluation.utils import EVENT_DICTIONARY_V2, INVERSE_EVENT_DICTIONARY_V2
    except ImportError:
        raise InputError(f"the official SoccerNet evaluator is not installed: {INSTALL_HINT} "
                         "(or pass --metrics none)") from None
    if "EVENT_DICTIONARY" not in inspect.signature(evaluate).parameters:  # older SoccerNet releases
        raise InputError(f"the installed SoccerNet package is too old for this script: {INSTALL_HINT}")
    out = {}
    with tempfile.TemporaryDirectory(prefix="soccernet_labels_") as tmp:
        for game, annotations in labels.items():
            (Path(tmp) / game).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(tmp) / game / LABELS_FILE, {"annotations": annotations})
        for metric in metrics:
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bars
                r = evaluate(tmp, str(predictions_dir), prediction_file=RESULTS_FILE, split=None, version=2,
                             framerate=OFFICIAL_FRAMERATE, metric=metric, label_files=LABELS_FILE,
                             dataset=None, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
            res = {}
            for key in ("a_mAP", "a_mAP_visible", "a_mAP_unshown"):
                res[key] = float(r[key])
            for key in ("a_mAP_per_class", "a_mAP_per_class_visible", "a_mAP_per_class_unshown"):
                res[key] = {INVERSE_EVENT_DICTIONARY_V2[c]: float(v) for c, v in enumerate(r[key])}
            out[metric] = res
    return out


_COUNTS = ("gt", "gt_visible", "gt_not_shown", "pred", "pred_visible", "pred_not_shown",
           "tp", "tp_visible", "tp_not_shown")


def _ratio(a, b):
    return a / b if b else None


def count_matches(gt: list, preds: list, tolerance: float, counts: dict) -> None:
    """Add one half's counts per class to counts[class][...].

    A prediction's visibility is that of the ground-truth event it matched, else of the nearest
    ground-truth event of its class (as the official evaluator assigns it), else none.
    """
    pairs = match(gt, preds, tolerance)
    matched_pred = {j: i for i, j in pairs}
    for g in gt:
        c = counts[g["label"]]
        c["gt"] += 1
        c["gt_visible" if g["visibility"] == "visible" else "gt_not_shown"] += 1
    for i, _ in pairs:
        c = counts[gt[i]["label"]]
        c["tp"] += 1
        c["tp_visible" if gt[i]["visibility"] == "visible" else "tp_not_shown"] += 1
    for j, p in enumerate(preds):
        c = counts[p["label"]]
        c["pred"] += 1
        if j in matched_pred:
            visibility = gt[matched_pred[j]]["visibility"]
        else:
            same = [g for g in gt if g["label"] == p["label"]]
            visibility = min(same, key=lambda g: abs(g["time"] - p["time"]))["visibility"] if same else None
        if visibility:
            c["pred_visible" if visibility == "visible" else "pred_not_shown"] += 1


def new_counts() -> dict:
    return {name: dict.fromkeys(_COUNTS, 0) for name in SOCCERNET_CLASSES}


def class_rows(counts: dict) -> list:
    """Rows per class plus "all" (summed): counts, precision, recall, F1, same per visibility."""
    total = dict.fromkeys(_COUNTS, 0)
    for c in counts.values():
        for k in _COUNTS:
            total[k] += c[k]
    rows = []
    for name, c in list(counts.items()) + [("all", total)]:
        row = {"class": name, **c}
        for suffix in ("", "_visible", "_not_shown"):
            tp, gt, pred = c["tp" + suffix], c["gt" + suffix], c["pred" + suffix]
            row["precision" + suffix] = _ratio(tp, pred)
            row["recall" + suffix] = _ratio(tp, gt)
            row["f1" + suffix] = _ratio(2 * tp, gt + pred)  # = 2PR/(P+R), defined when either is
        rows.append(row)
    return rows
