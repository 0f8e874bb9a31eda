"""Turn a model's free text into event dicts, without ever evaluating it as code.

Models answer with JSON, Python dicts in single quotes, ```json fences, several dicts,
prose around them, or None. parse_raw() finds every {...} object in the text and reads it
with json.loads, then ast.literal_eval (a parser of literals only, never eval()). An object
that neither can read (cut off at max_new_tokens, an apostrophe inside a single-quoted
string) still gives its complete "key": value pairs, so the label and confidence survive.

On the 19,216 real Qwen windows (shared/data/seed_predictions/qwen7b) this reads all but
4 answers; those 4 are prose ("A player from the away team kicks the ball.").
"""
import ast
import json
import re

from .settings import FPS, FRAMES_PER_WINDOW, SOCCERNET_CLASSES


def _simplify(label: str) -> str:
    label = re.sub(r"-+>|→|>", " to ", label.lower())  # "Yellow->red", "yellow -> red", "yellow→red"
    return " ".join(re.sub(r"[^a-z0-9]+", " ", label).split())


def _singular(key: str) -> str:
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in key.split())


# Names models use for the SoccerNet classes. "Free-kick" (direct or indirect?), "Shot"
# (on or off target?) and "Goal kick" (no SoccerNet class) are left unmapped on purpose:
# guessing would invent events the model did not report.
_ALIASES = {
    "shot on goal": "Shots on target", "on target": "Shots on target", "saved shot": "Shots on target",
    "shot saved": "Shots on target",
    "shot wide": "Shots off target", "missed shot": "Shots off target", "off target": "Shots off target",
    "shot missed": "Shots off target",
    "corner kick": "Corner", "kickoff": "Kick-off", "throwin": "Throw-in",
    "out of play": "Ball out of play", "ball out": "Ball out of play", "out of bound": "Ball out of play",
    "penalty kick": "Penalty", "penalties": "Penalty", "throw ins": "Throw-in",
    "sub": "Substitution", "substitute": "Substitution", "player substitution": "Substitution",
    "booking": "Yellow card",
    "second yellow": "Yellow->red card", "second yellow card": "Yellow->red card",
    "yellow red card": "Yellow->red card", "direct free kick": "Direct free-kick",
    "indirect free kick": "Indirect free-kick", "indirect kick": "Indirect free-kick",
}
_CANONICAL = {}
for _name in SOCCERNET_CLASSES:
    _CANONICAL[_singular(_simplify(_name))] = _name
for _alias, _name in _ALIASES.items():
    _CANONICAL[_singular(_simplify(_alias))] = _name

# A dict whose label says "nothing happened" is a no-event answer, not an event.
_NO_EVENT_LABELS = {"", "none", "null", "no event", "nothing", "n a", "na", "no action"}


def normalise_label(label) -> str | None:
    """The SoccerNet class a label means ("Shot on target" -> "Shots on target"), else None."""
    if not isinstance(label, str):
        return None
    return _CANONICAL.get(_singular(_simplify(label)))


_NONE_ANSWER = re.compile(r"^\W*(none|null|no events?\b.*|nothing\b.*|\[\s*\])\W*$", re.I | re.S)
_JSON_WORDS = re.compile(r"\b(true|false|null)\b")
_LABEL_KEYS = ("label", "event", "type")
# One complete "key": value pair, for objects no parser accepts.
_PAIR = re.compile(r"""["']?(\w+)["']?\s*:\s*("(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[-+]?\d+(?:\.\d+)?|null|None|true|false)""")


def _objects(text: str):
    """Every top-level {...} span in text, braces inside quoted strings ignored.

    A last object left open at the end of the text (the model ran out of tokens) is
    yielded too, up to the end.
    """
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
    if depth:
        yield text[start:]


def _load(obj_text: str):
    try:
        return json.loads(obj_text)
    except ValueError:
        pass
    py = _JSON_WORDS.sub(lambda m: {"true": "True", "false": "False", "null": "None"}[m[1]], obj_text)
    try:
        return ast.literal_eval(py)  # literals only: https://docs.python.org/3/library/ast.html#ast.literal_eval
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _salvage(obj_text)


def _salvage(obj_text: str):
    """The complete key/value pairs of a broken object, or None when it has no label."""
    d = {}
    for key, value in _PAIR.findall(obj_text):
        if key in d:
            continue  # keep the outer object's first value, not a nested one's
        if value[:1] in "\"'":
            try:
                d[key] = json.loads(value) if value[0] == '"' else value[1:-1]
            except ValueError:
                d[key] = value[1:-1]
        else:
            d[key] = {"null": None, "None": None, "true": True, "false": False}.get(value, value)
            if isinstance(d[key], str):
                d[key] = float(value) if "." in value else int(value)
    return d if any(isinstance(d.get(k), str) for k in _LABEL_KEYS) else None


def _event_dicts(value):
    """The event dicts in a parsed object: itself, or those listed under e.g. "events"."""
    if isinstance(value, dict):
        if any(k in value for k in _LABEL_KEYS):
            return [value]
        value = [v for v in value.values() if isinstance(v, (list, dict))]
    if isinstance(value, list):
        return [d for v in value for d in _event_dicts(v)]
    return []


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


def _is_no_event(event) -> bool:
    return event["label"] is None or _simplify(str(event["label"])) in _NO_EVENT_LABELS


def parse_raw(text):
    """(events, ok): events found in text; ok is False when the text is neither events nor None."""
    if text is None:
        return [], False
    text = str(text).strip()
    if not text or _NONE_ANSWER.match(text):
        return [], True
    text = re.sub(r"```[a-zA-Z]*", "", text)
    events, found_object, said_none = [], False, False
    for span in _objects(text):
        found_object = True
        for d in _event_dicts(_load(span)):
            event = clean_event(d)
            if _is_no_event(event):
                said_none = True
            else:
                events.append(event)
    if events or said_none:
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
    """The events of a final predictions file as [{time, label, team, confidence, details, window, raw}].

    Reads ours (one record per event, with "event_time") and the seed's older files
    (one {"time": window start, "raw": text} record per window, e.g. the Qwen runs).
    Labels are normalised again, so a better label map also applies to older files.
    """
    out = []
    for r in records:
        if "label" in r:
            label = normalise_label(r.get("label_raw")) or normalise_label(r["label"]) or r["label"]
            out.append({"time": float(r.get("event_time", r["time"])), "label": label,
                        "team": r.get("team"), "confidence": r.get("confidence"), "details": r.get("details"),
                        "window": float(r["time"]), "raw": r.get("raw")})
        else:
            for e in window_events(float(r["time"]), r.get("raw"))[0]:
                out.append({"time": e["time"], "label": e["label"], "team": e["team"],
                            "confidence": e["confidence"], "details": e["details"],
                            "window": float(r["time"]), "raw": r.get("raw")})
    return out
