"""Turn a model's free text into event dicts, without ever evaluating it as code.

Models answer with JSON, Python dicts in single quotes, ```json fences, several dicts,
prose around them, or None. parse_raw() finds every {...} object in the text and reads it
with a small parser of its own (no eval(), no ast, no json module): one pass of a regular
tokenizer and an explicit stack, so any text at all - any length, any unicode, lone
surrogates, numbers like 1e999 or 5000 digits, nesting 100,000 deep - gives events or a
parse failure in time linear in its length, and never raises. What it reads:

- JSON and Python literals alike: "..." and '...' strings (an apostrophe followed by a
  letter, as in 'the player's header', stays inside the string), true/false/null and
  True/False/None, NaN/Infinity, tuples as lists, trailing commas, // comments, bare keys.
- An object cut off at max_new_tokens: the containers still open are closed, the last
  pair, if incomplete (a string or a number the cut may have shortened), is dropped.
- Any other broken object: its complete "key": value pairs (strings, numbers,
  true/false/null), the first of each key, so the label and confidence survive.
- More than 64 nested containers is a broken object (read as above).

Each event records where its label lies in the answer ("label_span": the characters of the label
value the parser read, wherever it found it), so its token probability is read from those tokens.

Every value parse_raw/window_events/final_events return is strict JSON: no NaN or
Infinity (see _confidence and _frame), and no lone surrogate in a string (each becomes
U+FFFD), so json.dumps(x, allow_nan=False) and UTF-8 encoding never fail.

On the 19,216 real Qwen windows (shared/data/seed_predictions/qwen7b) this reads all but
4 answers; those 4 are prose ("A player from the away team kicks the ball.").
"""
import math
import re
import unicodedata

from .settings import FPS, FRAMES_PER_WINDOW, SOCCERNET_CLASSES


def _simplify(label: str) -> str:
    # "Yellow->red", "yellow -> red", "yellow→red"; (?<!-) keeps a long run of "-" linear
    label = re.sub(r"(?<!-)-++>|→|>", " to ", label.lower())
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

# A dict whose label says "nothing happened" is a no-event answer, not an event. Compared
# after _words(), which keeps letters of every script: "进球" is a label, not "nothing".
_NO_EVENT_LABELS = {"", "none", "null", "no event", "nothing", "n a", "na", "no action"}


def normalise_label(label) -> str | None:
    """The SoccerNet class a label means ("Shot on target" -> "Shots on target"), else None."""
    if not isinstance(label, str):
        return None
    return _CANONICAL.get(_singular(_simplify(label)))


def _words(label: str) -> str:
    """label lowercased, runs of anything but letters and digits (of any script) as one space."""
    return " ".join(re.sub(r"[\W_]+", " ", label.casefold()).split())


# ---------------------------------------------------------------------------- strict JSON values

_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 64  # containers nested deeper make an object "broken"; also bounds every recursion here


def _clean_str(s: str) -> str:
    """s with surrogate pairs joined and lone surrogates (not encodable as UTF-8) as U+FFFD; a plain str (never
    a _Located: what leaves the parser carries no span)."""
    if s.isascii() or not _SURROGATE.search(s):
        return str(s)
    return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _jsonable(x, depth=0):
    """x as strict JSON: non-finite floats -> None, strings cleaned, keys strings, depth bounded."""
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, str):
        return _clean_str(x)
    if isinstance(x, int):
        return x if x.bit_length() < 10_000 else None  # json.dumps refuses more than 4300 digits
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if depth >= _MAX_DEPTH:
        return None
    if isinstance(x, dict):
        return {_clean_str(k) if isinstance(k, str) else _clean_str(str(_jsonable(k))): _jsonable(v, depth + 1)
                for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in x]
    return None


# ---------------------------------------------------------------------------- tokenizer

# One token after optional whitespace and // comments. Every quantifier is possessive (++, *+):
# nothing backtracks, so each match costs the length it consumes. Strings run to the end of
# the text when not closed. A ' opens a string only after a non-word character ("player's"
# in prose does not), and inside one a ' followed by a letter is an apostrophe, not its end.
_TOKEN = re.compile(r"""
    (?:\s++|//[^\n]*+)*+
    (?:
      (?P<dq>"(?:[^"\\]++|\\.?)*+(?P<dqend>")?)
    | (?P<sq>(?<!\w)'(?:[^'\\]++|\\.?|'(?=\w))*+(?P<sqend>')?)
    | (?P<lb>\{++)
    | (?P<rb>\}++)
    | (?P<comma>,++)
    | (?P<colon>:++)
    | (?P<lk>\[++)
    | (?P<rk>\]++)
    | (?P<nf>[-+]?+(?:Infinity|NaN)(?!\w))
    | (?P<num>[-+]?+(?:\d[\d_]*+(?:\.[\d_]*+)?+|\.\d[\d_]*+)(?:[eE][-+]?+\d++)?+(?!\w))
    | (?P<word>\w++)
    | (?P<lp>\(++)
    | (?P<rp>\)++)
    | (?P<eof>\Z)
    | (?P<other>[^\s\w"'{}\[\]():,/]++|.)
    )""", re.S | re.X)
_match = _TOKEN.match
_CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_NONFINITE = {"NaN": math.nan, "+NaN": math.nan, "-NaN": math.nan,
              "Infinity": math.inf, "+Infinity": math.inf, "-Infinity": -math.inf}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[0-7]{1,3}|N\{[^}\\]{1,80}\}|.?)", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "a": "\a",
                   "\\": "\\", "/": "/", '"': '"', "'": "'", "\n": ""}


def _unescape_one(m) -> str:
    e = m[1]
    if e in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[e]
    c = e[:1]
    if len(e) > 2 and c in "uUx":
        n = int(e[1:], 16)
        return chr(n) if n <= 0x10FFFF else "\ufffd"
    if c and c in "01234567":
        return chr(int(e, 8))
    if len(e) > 3 and c == "N":
        try:
            return unicodedata.lookup(e[2:-1])
        except (KeyError, ValueError):  # unknown name; a surrogate in it (UnicodeEncodeError)
            pass
    return "\\" + e  # unknown escape: kept, as Python does


class _Located(str):
    """A string value of the answer and where it lies there: text[span[0]:span[1]] is what the model wrote
    between its quotes (escapes undecoded). clean_event reads a label's span off it."""
    span = None


def _string(m, group: str) -> _Located:
    """The value of a dq/sq string token (closed or not), escapes decoded, with its span in the text."""
    start, end = m.start(group) + 1, m.end(group) - (1 if m.group(group + "end") else 0)
    body = m.string[start:end]
    value = _Located(_clean_str(_ESCAPE.sub(_unescape_one, body)) if "\\" in body else _clean_str(body))
    value.span = (start, end)
    return value


def _number(tok: str):
    """int or float of a number token; too large -> inf; malformed (1__0) -> nan."""
    try:
        if len(tok) < 19 and tok.lstrip("+-").isdigit():
            return int(tok)
        return float(tok)  # 1e999 and 5000-digit integers -> inf, never a huge int
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------------- object reader

_KEY, _COLON, _VALUE, _AFTER, _ITEM = range(5)  # what the parser expects next
_CLOSER = {"lb": "rb", "lk": "rk", "lp": "rp"}
_INCOMPLETE = object()  # a value the cut at the end of the text may have shortened
_WORD = object()        # a bare word (not true/false/null): a key, never a value
_NOT_SCALAR = object()  # punctuation


def _scalar(m, kind):
    """The value of a scalar token (string, number, true/false/null, NaN/Infinity), _WORD for
    another bare word, _INCOMPLETE when the text ends inside or right after it, else _NOT_SCALAR."""
    if kind == "dq" or kind == "sq":
        return _string(m, kind) if m.group(kind + "end") else _INCOMPLETE
    if kind == "num" or kind == "word" or kind == "nf":
        if m.end() == len(m.string):
            return _INCOMPLETE  # "confidence": 0 may have been 0.95
        tok = m[kind]
        if kind == "num":
            return _number(tok)
        if kind == "nf":
            return _NONFINITE[tok]
        return _CONSTANTS.get(tok, _WORD)
    return _NOT_SCALAR


def _read_strict(text: str, pos: int):
    """(value, end) of the object starting at text[pos] == "{", or (None, -1) when it is broken.

    An object the text ends inside is closed there (see the module docstring). (Over 60 lines: one state
    machine over the tokens, each kind of token a few lines; split, its state would travel between functions.)
    """
    stack = []  # [container, closer kind, key in parent]
    state, key, match = _VALUE, None, _match
    while True:
        m = match(text, pos)
        kind = m.lastgroup
        pos = m.end()
        if kind in _CLOSER:  # { [ (
            opened = m.end(kind) - m.start(kind)
            if state not in (_VALUE, _ITEM) or len(stack) + opened > _MAX_DEPTH or (kind == "lb" and opened > 1):
                return None, -1
            for _ in range(opened):
                stack.append(({} if kind == "lb" else [], _CLOSER[kind], key))
                key = None
            state = _KEY if kind == "lb" else _ITEM
            continue
        if kind in ("rb", "rk", "rp"):
            for i in range(m.end(kind) - m.start(kind)):
                container, closer, parent_key = stack[-1]
                if closer != kind or state not in (_AFTER, _KEY, _ITEM):
                    return None, -1
                stack.pop()
                if not stack:
                    return container, m.start(kind) + i + 1
                key = parent_key
                _attach(stack[-1][0], key, container)
                state = _AFTER
            continue
        if kind == "comma":
            if state != _AFTER or pos - m.start(kind) > 1:
                return None, -1
            state = _KEY if isinstance(stack[-1][0], dict) else _ITEM
            key = None
            continue
        if kind == "colon":
            if state != _COLON or pos - m.start(kind) > 1:
                return None, -1
            state = _VALUE
            continue
        if kind == "eof":
            break
        value = _scalar(m, kind)
        if value is _NOT_SCALAR:
            return None, -1
        if value is _INCOMPLETE:
            continue  # the next token is the end
        if state == _KEY:
            key = m[kind] if value is _WORD else value
            if isinstance(key, float) and key != key:
                return None, -1
            state = _COLON
        elif state in (_VALUE, _ITEM) and value is not _WORD:
            _attach(stack[-1][0], key, value)
            state = _AFTER
        else:
            return None, -1
    return _close_all(stack), len(text)


def _attach(container, key, value):
    """value into its container: a dict's key, or a list's next item."""
    if isinstance(container, dict):
        container[key] = value
    else:
        container.append(value)


def _close_all(stack):
    """The outermost container of a text cut off inside it: what is open closed, innermost first; a
    pending key without its value is dropped."""
    child, _, child_key = stack.pop()
    while stack:
        parent, _, parent_key = stack.pop()
        _attach(parent, child_key, child)
        child, child_key = parent, parent_key
    return child


def _read_pairs(text: str, pos: int):
    """(pairs, end) of the broken object starting at text[pos] == "{": its complete
    "key": scalar pairs at any depth, the first of each key; end after its matching "}"
    (braces inside strings do not count), or the end of the text."""
    pairs, depth, key, colon = {}, 0, None, False
    while True:
        m = _match(text, pos)
        kind = m.lastgroup
        pos = m.end()
        if kind == "lb":
            depth += pos - m.start(kind)
        elif kind == "rb":
            closed = pos - m.start(kind)
            if closed >= depth:
                return pairs, m.start(kind) + depth
            depth -= closed
        elif kind == "eof":
            return pairs, len(text)
        elif kind == "colon":
            colon = key is not None and not colon and pos - m.start(kind) == 1
            if colon:
                continue
        else:
            value = _scalar(m, kind)
            if colon:
                if value is not _NOT_SCALAR and value is not _INCOMPLETE and value is not _WORD:
                    pairs.setdefault(key, value)
            elif value is not _NOT_SCALAR and value is not _INCOMPLETE:
                key = m[kind] if value is _WORD else value
                if isinstance(key, str):
                    colon = False
                    continue
        key, colon = None, False


_LABEL_KEYS = ("label", "event", "type")


def _objects(text: str):
    """The value of every top-level {...} in text, in order: a dict, or None for an object
    that is broken and has no label among its pairs. An object the text ends inside is read
    up to the end."""
    pos = text.find("{")
    while pos >= 0:
        value, end = _read_strict(text, pos)
        if end < 0:
            value, end = _read_pairs(text, pos)
            if not any(isinstance(value.get(k), str) for k in _LABEL_KEYS):
                value = None
        yield value
        pos = text.find("{", end)


def _event_dicts(value, depth=0):
    """The event dicts in a parsed object: itself, or those listed under e.g. "events"."""
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, dict):
        if "label" in value or "event" in value or "type" in value:  # _LABEL_KEYS
            return [value]
        value = [v for v in value.values() if isinstance(v, (list, dict))]
    if isinstance(value, list):
        return [d for v in value for d in _event_dicts(v, depth + 1)]
    return []


# ---------------------------------------------------------------------------- events

def confidence(value):
    """A confidence in [0, 1], or None (missing): the one rule for model answers, final files and flags.

    A number, or a string holding one ("0.85", "95%"): 0 <= c <= 1 is kept; 1 < c <= 100 is a
    percentage and becomes c / 100 (95 -> 0.95); "c%" is always c / 100 (0 <= c <= 100).
    Negative, above 100, NaN, infinite, true/false or not a number at all: None.
    """
    if isinstance(value, bool):
        return None
    percent = False
    if isinstance(value, str):
        value = value.strip()
        percent = value.endswith("%")
        value = value[:-1] if percent else value
    elif not isinstance(value, (int, float)):
        return None
    try:
        c = float(value)
    except (ValueError, OverflowError):
        return None
    if not 0 <= c <= 100:  # also NaN
        return None
    return (c / 100 if percent or c > 1 else c) + 0.0  # + 0.0: no -0.0


def _frame(value):
    """The frame number as an int: a finite number, or a string of digits ("8"); else None (true/false too)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 10:
        return int(value.strip())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return None


def clean_event(d: dict, offset=0) -> dict:
    """One parsed dict -> {label, label_raw, team, confidence, details, frame, label_span}, strict JSON.

    label is the SoccerNet class (normalise_label), else the model's own label as it wrote
    it, in whatever script ("Free-kick", "进球"); None when there is none. label_span: [start, end] of the
    label as written in the answer (its characters between the quotes; offset: where the parsed text starts
    in the answer), where scores.label_probs reads its tokens; None when the label is not a string.
    """
    written = d.get("label", d.get("event", d.get("type")))
    span = getattr(written, "span", None)
    raw_label = _jsonable(written)
    team = _clean_str(str(_jsonable(d.get("team")) or "").strip().lower())
    return {
        "label": normalise_label(raw_label) or (_clean_str(str(raw_label).strip()) if raw_label else None),
        "label_raw": raw_label,
        "team": team if team in ("home", "away") else ("unknown" if not team else team),
        "confidence": confidence(d.get("confidence")),
        "details": _jsonable(d.get("details")),
        "frame": _frame(d.get("frame")),
        "label_span": [span[0] + offset, span[1] + offset] if span else None,
    }


def _is_no_event(event) -> bool:
    """The label says "nothing happened": None, "none", "N/A", "-", "..." (punctuation only).

    A label of symbols ("⚽", or U+FFFD for a lone surrogate) is a label, not "nothing".
    """
    label = event["label"]
    if label is None:
        return True
    words = _words(str(label))
    if words:
        return words in _NO_EVENT_LABELS
    return not any(unicodedata.category(c)[0] == "S" for c in set(label))


_NON_WORD_RUN = re.compile(r"\W*+")
_NONE_WORDS = re.compile(r"(?:none|null)\Z|no events?\b|nothing\b", re.I)


def _is_none_answer(text: str) -> bool:
    """The whole answer says "no event": None, null, "No events detected.", [], ...

    (The old single regex ^\\W*(none|...|\\[\\s*\\])\\W*$ backtracked quadratically on long
    runs of punctuation; this strips the punctuation at both ends in linear time instead.)
    """
    start = _NON_WORD_RUN.match(text).end()
    if start == len(text):
        return re.search(r"\[\s*+\]", text) is not None
    end = len(text) - _NON_WORD_RUN.match(text[::-1]).end()
    return _NONE_WORDS.match(text, start, end) is not None


def parse_raw(text):
    """(events, ok): events found in text (clean_event's, each with its label's span in text); ok is False when
    the text is neither events nor None.

    Total: any str (or anything else) gives an answer, never an exception, in linear time.
    """
    if not isinstance(text, str):
        return [], False
    offset = len(text) - len(text.lstrip())  # label spans count in the answer as given, not the stripped text
    text = text.strip()
    if not text or _is_none_answer(text):
        return [], True
    events, found_object, said_none = [], False, False  # ``` fences lie outside objects: skipped
    for value in _objects(text):
        found_object = True
        for d in _event_dicts(value) if value else ():
            event = clean_event(d, offset)
            if _is_no_event(event):
                said_none = True
            else:
                events.append(event)
    if events or said_none:
        return events, True
    # "None" after some prose, or an empty JSON list, is a valid "no event" answer.
    if not found_object and re.search(r"\bNone\b|^\s*\[\s*\]\s*$", re.sub(r"```[a-zA-Z]*", "", text)):
        return [], True
    return [], False


def window_events(start: float, raw, times=None):
    """(events, ok) of one window's answer, each event with its own "time" in seconds.

    times: the seconds of the frames the model was shown, in order (the window record's "frames": a
    video's last windows, or one cut short by undecodable frames, have fewer than 15); default a full
    window from start. The prompt numbers them 1..n: an event's time is its frame's time, or the
    middle of the frames shown when the model gave no usable frame number.
    """
    times = times or full_window_times(start)
    events, ok = parse_raw(raw)
    for e in events:
        e["time"] = frame_time(times, e["frame"])
    return events, ok


def full_window_times(start) -> list:
    """The seconds of a full window's frames from start: records older than "frames" were full windows."""
    return [start + i / FPS for i in range(FRAMES_PER_WINDOW)]


def frame_time(times, frame=None) -> float:
    """The second a window's answer names: its frame number's (1..n of the frames shown, times), else the
    middle of the frames shown (no usable frame number, or frame None: the window's middle)."""
    t = times[frame - 1] if frame is not None and 1 <= frame <= len(times) else (times[0] + times[-1]) / 2
    return round(t, 3)


def probability(value) -> float | None:
    """A probability the decoder computed (token_prob, none_prob, a class score): a number in [0, 1], else None.
    No percent rule, unlike confidence(): these are computed, never written by the model."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    p = float(value)
    return p + 0.0 if 0 <= p <= 1 else None  # also NaN


def class_scores(value) -> dict | None:
    """A window's scores of the 17 SoccerNet classes ({class: probability}), or None when any is missing or
    not a probability (older files, a damaged record): a ranking by them needs every class."""
    if not isinstance(value, dict):
        return None
    scores = {c: probability(value.get(c)) for c in SOCCERNET_CLASSES}
    return None if None in scores.values() else scores


def _time(value) -> float:
    if isinstance(value, (bool, str)):  # float() would take true as 1 s and "12" as 12 s
        raise TypeError(f"time {value!r} is not a number")
    try:
        t = float(value)
    except OverflowError:  # an integer of 400 digits
        t = math.inf
    if not math.isfinite(t):
        raise ValueError(f"time {value!r} is not a finite number")
    return t


def final_events(records):
    """The events of a final predictions file as [{time, label, team, confidence, details, window, raw,
    token_prob, class_scores}] (the last two None where the file has no such scores: the seed's, older ones).

    Reads ours (one record per event, with "event_time") and the seed's older files
    (one {"time": window start, "raw": text} record per window, e.g. the Qwen runs).
    Labels are normalised again, so a better label map also applies to older files.
    A record without a finite time raises KeyError, TypeError or ValueError; every value
    returned is strict JSON.
    """
    out = []
    for r in records:
        window = _time(r["time"])
        raw = _jsonable(r.get("raw"))
        if "label" in r:
            label = normalise_label(r.get("label_raw")) or normalise_label(r["label"]) or _jsonable(r["label"])
            out.append({"time": _time(r.get("event_time", window)), "label": label,
                        "team": _jsonable(r.get("team")), "confidence": confidence(r.get("confidence")),
                        "details": _jsonable(r.get("details")), "window": window, "raw": raw,
                        "token_prob": probability(r.get("token_prob")),
                        "class_scores": class_scores(r.get("class_scores"))})
        else:  # the seed's per-window files: written confidences only
            for e in window_events(window, r.get("raw"))[0]:
                out.append({"time": e["time"], "label": e["label"], "team": e["team"],
                            "confidence": e["confidence"], "details": e["details"], "window": window, "raw": raw,
                            "token_prob": None, "class_scores": None})
    return out
