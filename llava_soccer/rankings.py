"""The three scores that rank predictions for SoccerNet's average-mAP, and the per-class thresholds of best F1.

The official average-mAP ranks predictions by their confidence, but not by their order alone: it sweeps 200 fixed
thresholds in [0, 1] (np.linspace(0, 1, 200)), so scores crowded near 0 (products of probabilities) or near 1
(greedy token probabilities) share a few thresholds and lose resolution. Each ranking's score is therefore mapped
through one fixed monotone transform (SCORE_TRANSFORMS, the same for every game, recorded in summary.json and
thresholds.json) before it is written, tuned and compared. Three scores:
- confidence: the confidence the model wrote in its answer (the seed's Qwen files have only this one; it sits on
  a few round values, so the precision/recall curve has few points);
- token: the probability the model gave its label's tokens (each final event's "token_prob");
- class: dense candidates from the class scores of every answered window (the raw-answers archive's
  "class_scores", P(not None) x P(class | the answer's prefix)): per video and class, the series of that class's
  score over the windows, each timed at the frame the answer named when it named that class, else the window's
  middle; the peaks after non-maximum suppression (NMS) are the predictions, their score the confidence.

NMS_WINDOW_S: the width of the NMS window, as the SoccerNet-v2 devkit's baselines (NetVLAD++, Giancola & Ghanem,
CVSports 2021: --NMS_window 30, a peak suppresses its class within +-15 s). Windows come every 2 s and an event
is seen by two or three of them, so a narrower window keeps near-duplicates that cost precision at loose
tolerances; for the tight metric (1-5 s) a narrower one (e.g. 10) keeps close events of one class apart.
"""
import difflib
import json
import math
from dataclasses import replace

from . import merge
from .cli import InputError
from .events import class_scores, frame_time, full_window_times, window_events
from .jsonio import read_json
from .matching import match
from .records import record_time, window_status
from .settings import RAW_ANSWERS, SOCCERNET_CLASSES

RANKINGS = {"confidence": "the confidence written in the answer",
            "token": "the probability the model gave its label's tokens",
            "class": "the class scores of every window, peaks after NMS"}
NMS_WINDOW_S = 30.0

# The score transform of each ranking (docs/evaluation.md has a worked example). Tempered odds,
# 1 / (1 + ((1 - s) / s) ** (1 / k)), is sigmoid(logit(s) / k): strictly increasing on [0, 1] with 0 -> 0, 0.5 ->
# 0.5, 1 -> 1, never clipping; k = 4 spreads the logits of 8-significant-digit probabilities (+-18.4) over
# 0.01-0.99: 1e-6 -> 0.03, 1e-3 -> 0.15, 0.9 -> 0.63, 0.999 -> 0.85, 0.9999999 -> 0.98. The written confidence is
# left as it is: a few round values already a threshold or more apart (0.8, 0.9, 0.95), and the seed's files
# and EvalAI submissions ranked by it stay comparable.
TEMPERED_K = 4.0
TEMPERED = {"name": "tempered odds", "k": TEMPERED_K, "formula": "1 / (1 + ((1 - s) / s) ** (1 / k))"}
SCORE_TRANSFORMS = {"confidence": {"name": "identity"}, "token": TEMPERED, "class": TEMPERED}


def mapped(score, ranking) -> float:
    """A ranking's score in [0, 1] through its SCORE_TRANSFORMS entry."""
    if SCORE_TRANSFORMS[ranking]["name"] == "identity" or score <= 0 or score >= 1:
        return min(max(float(score), 0.0), 1.0)
    return 1 / (1 + ((1 - score) / score) ** (1 / TEMPERED_K))


def _mapped_halves(halves, ranking) -> list:
    """The halves with each event's "confidence" mapped (mapped())."""
    return [replace(h, events=[{**e, "confidence": mapped(e["confidence"], ranking)} for e in h.events])
            for h in halves]
ARCHIVE_FIX = "move it out (the final keeps the events), or rerun the video"


def token_halves(halves, missing_confidence, dedup_s) -> tuple:
    """(the halves ranked by token probability, or None; the one line that says why not or what lacks one).
    None when a half's final has events but no token probability: files made before they were recorded."""
    from .soccernet import read_predictions
    out, without, total = [], 0, 0
    for h in halves:
        events, _, n = read_predictions(h.source, 0.0, dedup_s, score="token_prob")
        if events and n == len(events):
            return None, (f"n/a: video #{h.index}'s final has no token probabilities (the seed's files and finals "
                          f"older than them have none)")
        out.append(replace(h, events=events))
        without, total = without + n, total + len(events)
    note = f"{without} of {total} events have no token probability: ranked last (score 0)" if without else None
    return _mapped_halves(out, "token"), note


def archive_path(h, model):
    """The raw-answers archive beside a half's final file (merge_results_llava.py writes both)."""
    return h.source.with_name(RAW_ANSWERS.format(model=model, video=h.index))


def class_halves(halves, model, nms_window) -> tuple:
    """(the halves ranked by class scores: dense candidates, or None; the one line that says why not or what lacks
    scores). None when a half has no raw-answers archive or no window of it has class scores."""
    out, without, answered = [], 0, 0
    for h in halves:
        path = archive_path(h, model)
        if not path.is_file():
            return None, f"n/a: video #{h.index} has no {path.name} beside its final, where class scores are kept"
        events, n_without, n_answered, off = class_candidates(path, nms_window)
        if n_answered and n_without == n_answered:
            why = ("its run had them switched off (--class-scores no)" if off
                   else "an archive older than them")
            return None, f"n/a: {path.name} has no class scores ({why})"
        out.append(replace(h, events=events))
        without, answered = without + n_without, answered + n_answered
    note = f"{without} of {answered} answered windows have no class scores: no candidates there" if without else None
    return _mapped_halves(out, "class"), note


def class_candidates(path, nms_window) -> tuple:
    """(peaks of each class's score over one video's windows after NMS, as {time, label, confidence};
    answered windows without class scores; answered windows; whether its made_by says class scores were off)
    of a raw-answers archive."""
    data = read_json(path, "raw answers file", ARCHIVE_FIX)
    windows = data.get("windows") if isinstance(data, dict) else None
    if not isinstance(windows, list) or not all(isinstance(w, dict) for w in windows):
        raise InputError(f"raw answers file {path} has no \"windows\" list of objects: {ARCHIVE_FIX}")
    series, without, answered = [], 0, 0
    for w in windows:
        start = record_time(w.get("time"))
        if window_status(w) != "ok" or start is None:
            continue
        answered += 1
        scores = class_scores(w.get("class_scores"))
        if scores is None:
            without += 1
            continue
        series += window_candidates(start, w, scores)
    made_by = data.get("made_by")
    off = isinstance(made_by, dict) and made_by.get("class_scores") is False
    return merge.dedup(series, nms_window / 2), without, answered, off  # NMS: the merge's rule over +-window/2


def window_candidates(start, window, scores) -> list:
    """One candidate per class of one answered window: its score, at the frame the answer named for that class
    (its first event of the class), else at the window's middle."""
    frames = window.get("frames")
    times = frames if isinstance(frames, list) and frames and all(record_time(t) is not None for t in frames) \
        else full_window_times(start)  # archives older than "frames"
    named = {}
    for e in window_events(start, window.get("raw"), times)[0]:
        named.setdefault(e["label"], e["time"])
    middle = frame_time(times)
    return [{"time": named.get(c, middle), "label": c, "confidence": scores[c]} for c in SOCCERNET_CLASSES]


def ground_truth(halves, labels) -> dict:
    """{half index: [its annotations of the 17 classes]} of the scored halves."""
    return {h.index: [a for a in labels[h.game] if a["half"] == h.half and a["label"] in SOCCERNET_CLASSES]
            for h in halves}


def sweep(gt, preds, tolerance) -> list:
    """The precision/recall curve of predictions ranked by their "confidence": [(threshold, tp, predicted)],
    one point per distinct score, highest first. gt, preds: {key: [events]}; pairs are one-to-one within
    tolerance and of one label (matching.match, as the precision/recall table); a key is re-matched only when
    a prediction of it joins, so give one key per half and class."""
    order = sorted(((p["confidence"], key, p) for key, ps in preds.items() for p in ps), key=lambda x: -x[0])
    active, tp_of, tp, points, i = {}, {}, 0, [], 0
    while i < len(order):
        score, touched = order[i][0], set()
        while i < len(order) and order[i][0] == score:
            active.setdefault(order[i][1], []).append(order[i][2])
            touched.add(order[i][1])
            i += 1
        for key in touched:
            n = len(match(gt.get(key, []), active[key], tolerance))
            tp, tp_of[key] = tp + n - tp_of.get(key, 0), n
        points.append((score, tp, i))
    return points


def by_class(halves, gt) -> tuple:
    """(gt, preds) keyed by (half index, class): what sweep() re-matches one at a time."""
    g, p = {}, {}
    for h in halves:
        for a in gt[h.index]:
            g.setdefault((h.index, a["label"]), []).append(a)
        for e in h.events:
            p.setdefault((h.index, e["label"]), []).append(e)
    return g, p


def class_curves(halves, gt, tolerance) -> dict:
    """{class: (sweep() of its predictions on these halves, its ground-truth count)}: the one matching pass that
    best_thresholds() and pooled() read."""
    g, p = by_class(halves, gt)
    return {c: (sweep({k: v for k, v in g.items() if k[1] == c}, {k: v for k, v in p.items() if k[1] == c},
                      tolerance), sum(len(v) for k, v in g.items() if k[1] == c)) for c in SOCCERNET_CLASSES}


def pooled(curves) -> list:
    """sweep() of all classes together (one threshold for all) from class_curves(): at each distinct score, the
    sums of every class's last point at or above it (pairs never cross classes, so nothing is matched again)."""
    points = sorted(((score, c, tp, n) for c, (curve, _) in curves.items() for score, tp, n in curve),
                    key=lambda x: -x[0])
    last, tp, n, out = {}, 0, 0, []
    for i, (score, c, tp_c, n_c) in enumerate(points):
        was_tp, was_n = last.get(c, (0, 0))
        tp, n, last[c] = tp + tp_c - was_tp, n + n_c - was_n, (tp_c, n_c)
        if i + 1 == len(points) or points[i + 1][0] != score:
            out.append((score, tp, n))
    return out


def best_thresholds(curves) -> dict:
    """{class: the threshold of best F1 (class_curves()), with its F1, precision, recall, tp, gt, pred}: the
    highest threshold reaching it; threshold None where the class has no ground truth (not tuned) or no
    prediction."""
    out = {}
    for c, (points, n_gt) in curves.items():
        best = max(points, key=lambda x: (2 * x[1] / (n_gt + x[2]), x[0]), default=None) if n_gt else None
        t, tp, n = best if best else (None, 0, 0)
        out[c] = {"threshold": t, "f1": 2 * tp / (n_gt + n) if n_gt else None,
                  "precision": tp / n if n else None, "recall": tp / n_gt if n_gt else None,
                  "tp": tp, "gt": n_gt, "pred": n}
    return out


def total_f1(rows) -> float | None:
    """The F1 of all classes together, each at its own threshold (rows: best_thresholds())."""
    tp, n = sum(r["tp"] for r in rows.values()), sum(r["gt"] + r["pred"] for r in rows.values())
    return 2 * tp / n if n else None


SETTINGS = ("tolerance", "dedup_s", "nms_window")  # evaluate_soccernet.py's flags that change what is tuned


THRESHOLDS_KEYS = ("note", *SETTINGS, "games", "made_by", "models", "score_transforms")  # what a thresholds.json holds
ROW_FORM = '{"threshold": a number in [0, 1] or null} (e.g. {"Goal": {"threshold": 0.5}})'


def read_thresholds(path) -> dict:
    """{"models": {model: {ranking: {class: threshold or None}}}, "games": [...], "made_by": {model: [its run
    descriptions]}, "settings": {SETTINGS: value}} of a thresholds.json, or InputError: check_thresholds.
    Thresholds are on the scale of SCORE_TRANSFORMS (on_this_scale)."""
    data = read_json(path, "thresholds file", THRESHOLDS_FIX)
    check_thresholds(data, path)
    out = {model: {ranking: on_this_scale(path, data.get("score_transforms"), ranking,
                                          {c: (rows.get(c) or {}).get("threshold") for c in SOCCERNET_CLASSES},
                                          THRESHOLDS_FIX)
                   for ranking, rows in ranked.items() if rows is not None}
           for model, ranked in data["models"].items()}
    return {"models": out, "games": data.get("games", []), "made_by": data.get("made_by", {}),
            "settings": {k: data[k] for k in SETTINGS if k in data}}


THRESHOLDS_FIX = "pass a thresholds.json that evaluate_soccernet.py wrote for other games, or correct it"


def check_thresholds(data, path) -> None:
    """InputError (one line: the file, the place in it as models.llava.confidence.Goal, the form expected) at the
    first value of the wrong type, and at a name that is no key of the format, ranking or class (with the
    closest one): a hand-written or edited file is never half read. A class left out is not tuned (all kept)."""
    def wrong(where, value, form):
        raise InputError(f"thresholds file {path}: {where} is {json.dumps(value)[:60]}, not {form}: {THRESHOLDS_FIX}")

    def known(where, name, names, noun):
        if name not in names:
            close = difflib.get_close_matches(name, names, 1, 0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(names)}"
            raise InputError(f"thresholds file {path}: {where} has {name!r}, which is no {noun}: {hint}")

    if not isinstance(data, dict):
        wrong("the file", data, 'an object {"models": {model: {ranking: {class: ...}}}, ...}')
    for key in data:
        known("the file", key, THRESHOLDS_KEYS, "key of a thresholds.json")
    if not isinstance(data.get("models"), dict):
        wrong("models", data.get("models"), '{model: {ranking: {class: {"threshold": ...}}}}')
    for model, ranked in data["models"].items():
        if not isinstance(ranked, dict):
            wrong(f"models.{model}", ranked, f'{{ranking: {{class: {{"threshold": ...}}}}}} (rankings: '
                                             f'{", ".join(RANKINGS)})')
        for ranking, rows in ranked.items():
            known(f"models.{model}", ranking, tuple(RANKINGS), "ranking")
            if rows is None:
                continue  # a ranking the files lacked (n/a)
            if not isinstance(rows, dict):
                wrong(f"models.{model}.{ranking}", rows, '{class: {"threshold": ...}} or null')
            for c, row in rows.items():
                known(f"models.{model}.{ranking}", c, SOCCERNET_CLASSES, "SoccerNet class")
                if not isinstance(row, dict) or "threshold" not in row:
                    wrong(f"models.{model}.{ranking}.{c}", row, ROW_FORM)
                t = row["threshold"]
                if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1):
                    wrong(f"models.{model}.{ranking}.{c}.threshold", t, "a number in [0, 1] or null")
    games = data.get("games", [])
    if not isinstance(games, list) or not all(isinstance(g, str) for g in games):
        wrong("games", games, 'a list of game folders ["<league>/<season>/<game>", ...]')
    made_by = data.get("made_by", {})
    for model, runs in (made_by.items() if isinstance(made_by, dict) else [(None, made_by)]):
        if model is None or not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
            wrong("made_by" if model is None else f"made_by.{model}", runs,
                  "{model: [run descriptions]}" if model is None else "a list of run descriptions (strings)")
    for key in SETTINGS:
        v = data.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            wrong(key, v, "a number of seconds, 0 or more")


def on_this_scale(path, theirs, ranking, thresholds, fix) -> dict:
    """A thresholds file's {class: threshold} of one ranking on the scale this version tunes on (mapped()): a
    file older than score transforms (theirs None) holds thresholds on the raw scores, mapped here (monotone:
    the same predictions are kept); one tuned through another transform is refused (InputError)."""
    if theirs is None:
        return {c: None if t is None else mapped(t, ranking) for c, t in thresholds.items()}
    mine = SCORE_TRANSFORMS[ranking]
    if not isinstance(theirs, dict) or theirs.get(ranking) != mine:
        was = theirs.get(ranking) if isinstance(theirs, dict) else theirs
        raise InputError(f"thresholds file {path}: its {ranking} thresholds are on scores mapped by {was!r}, "
                         f"this version maps them by {mine['name']}: {fix}, with this version")
    return thresholds


def at_thresholds(halves, gt, tolerance, thresholds) -> dict:
    """{class: {tp, gt, pred, f1}} with each class's predictions below its saved threshold dropped (None:
    all kept): a score equal to it is kept (>=, as best_thresholds tuned it and the official evaluator sweeps;
    written confidences sit on round values, so ties at a threshold are common); pairs as in sweep()."""
    g, p = by_class(halves, gt)
    out = {}
    for c in SOCCERNET_CLASSES:
        t = thresholds.get(c)
        kept = {k: [e for e in v if t is None or e["confidence"] >= t] for k, v in p.items() if k[1] == c}
        tp = sum(len(match(g.get(k, []), v, tolerance)) for k, v in kept.items())
        n_gt, n = sum(len(v) for k, v in g.items() if k[1] == c), sum(len(v) for v in kept.values())
        out[c] = {"threshold": t, "tp": tp, "gt": n_gt, "pred": n, "f1": 2 * tp / (n_gt + n) if n_gt + n else None}
    return out
