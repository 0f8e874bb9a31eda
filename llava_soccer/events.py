"""Turn a model's free text into event dicts, without ever evaluating it as code.

Models answer with JSON, Python dicts in single quotes, ```json fences, several dicts,
prose around them, or None. parse_raw() finds every {...} object in the text and reads it
with json.loads, then ast.literal_eval (a parser of literals only, never eval()).
"""
import ast
import json
import re

from .settings import FPS, FRAMES_PER_WINDOW, SOCCERNET_CLASSES


def _simplify(label: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9>]+", " ", label.lower().replace("->", ">")).split())


def _singular(key: str) -> str:
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in key.split())


_ALIASES = {
    "shot on goal": "Shots on target", "on target": "Shots on target",
    "shot wide": "Shots off target", "missed shot": "Shots off target", "off target": "Shots off target",
    "corner kick": "Corner", "kickoff": "Kick-off", "throwin": "Throw-in",
    "out of play": "Ball out of play", "ball out": "Ball out of play", "out of bound": "Ball out of play",
    "penalty kick": "Penalty", "sub": "Substitution", "booking": "Yellow card",
    "second yellow": "Yellow->red card", "second yellow card": "Yellow->red card",
    "yellow to red card": "Yellow->red card", "yellow red card": "Yellow->red card",
}
_CANONICAL = {}
for _name in SOCCERNET_CLASSES:
    _CANONICAL[_singular(_simplify(_name))] = _name
for _alias, _name in _ALIASES.items():
    _CANONICAL[_singular(_simplify(_alias))] = _name


def normalise_label(label) -> str | None:
    """The SoccerNet class a label means ("Shot on target" -> "Shots on target"), else None."""
    if not isinstance(label, str):
        return None
    return _CANONICAL.get(_singular(_simplify(label)))


_NONE_ANSWER = re.compile(r"^\W*(none|null|no events?\b.*|nothing\b.*|\[\s*\])\W*$", re.I | re.S)
_JSON_WORDS = re.compile(r"\b(true|false|null)\b")


def _objects(text: str):
    """Every top-level {...} span in text, braces inside quoted strings ignored."""
    depth, start, quote, escaped = 0, None, None, False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'" and depth:
            # An apostrophe inside a word ("player's") does not open a string.
            if ch == '"' or not (i and text[i - 1].isalnum()):
                quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start:i + 1]


def _load(obj_text: str):
    try:
        return json.loads(obj_text)
    except ValueError:
        pass
    py = _JSON_WORDS.sub(lambda m: {"true": "True", "false": "False", "null": "None"}[m[1]], obj_text)
    try:
        return ast.literal_eval(py)  # literals only: https://docs.python.org/3/library/ast.html#ast.literal_eval
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _float(value):
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # drop NaN


def clean_event(d: dict) -> dict:
    """One parsed dict -> {label, label_raw, team, confidence, details, frame}."""
    raw_label = d.get("label", d.get("event", d.get("type")))
    team = str(d.get("team") or "").strip().lower()
    frame = d.get("frame")
    return {
        "label": normalise_label(raw_label) or (str(raw_label).strip() if raw_label else None),
        "label_raw": raw_label,
        "team": team if team in ("home", "away") else ("unknown" if not team else team),
        "confidence": _float(d.get("confidence")),
        "details": d.get("details"),
        "frame": int(frame) if isinstance(frame, (int, float)) and not isinstance(frame, bool) else None,
    }


def parse_raw(text):
    """(events, ok): events found in text; ok is False when the text is neither events nor None."""
    if text is None:
        return [], False
    text = str(text).strip()
    if not text or _NONE_ANSWER.match(text):
        return [], True
    text = re.sub(r"```[a-zA-Z]*", "", text)
    events, found_object = [], False
    for span in _objects(text):
        found_object = True
        value = _load(span)
        if isinstance(value, dict) and any(k in value for k in ("label", "event", "type")):
            events.append(clean_event(value))
    if events:
        return events, True
    # "None" after some prose, or an empty JSON list, is a valid "no event" answer.
    if not found_object and re.search(r"\bNone\b|^\s*\[\s*\]\s*$", text):
        return [], True
    return [], False


def window_events(start: float, raw, n_frames: int = FRAMES_PER_WINDOW):
    """(events, ok) of one window's answer, each event with its own "time" in seconds.

    The prompt numbers the frames 1..n; an event's time is its frame's timestamp, or the
    window's middle when the model gave no usable frame number.
    """
    events, ok = parse_raw(raw)
    for e in events:
        frame = e["frame"]
        offset = (frame - 1) / FPS if frame is not None and 1 <= frame <= n_frames else (n_frames - 1) / FPS / 2
        e["time"] = round(start + offset, 3)
    return events, ok


def final_events(records):
    """The events of a final predictions file as [{time, label, team, confidence, window}].

    Reads ours (one record per event, with "event_time") and the seed's older files
    (one {"time": window start, "raw": text} record per window, e.g. the Qwen runs).
    """
    out = []
    for r in records:
        if "label" in r:
            out.append({"time": float(r.get("event_time", r["time"])), "label": r["label"],
                        "team": r.get("team"), "confidence": r.get("confidence"), "window": float(r["time"])})
        else:
            for e in window_events(float(r["time"]), r.get("raw"))[0]:
                out.append({"time": e["time"], "label": e["label"], "team": e["team"],
                            "confidence": e["confidence"], "window": float(r["time"])})
    return out
