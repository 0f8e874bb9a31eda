"""Parsing model text and normalising labels, on the real Qwen outputs and the shapes LLaVA writes."""
import glob
import json
from collections import Counter

import pytest

from conftest import ROOT
from llava_soccer.events import final_events, normalise_label, parse_raw, window_events

QWEN = sorted(glob.glob(str(ROOT.parent / "shared/data/seed_predictions/qwen7b/*.json")))
needs_qwen = pytest.mark.skipif(len(QWEN) != 21, reason="the real Qwen files (shared/data/seed_predictions) are absent")


@pytest.fixture(scope="module")
def qwen_records():
    return [r for path in QWEN for r in json.load(open(path))]


@needs_qwen
def test_real_qwen_answers_parse(qwen_records):
    parsed = [parse_raw(r["raw"]) for r in qwen_records]
    failures = [r["raw"] for r, (_, ok) in zip(qwen_records, parsed) if not ok]
    assert len(qwen_records) == 19216
    # Read by hand: the only answers without events are 4 prose sentences.
    assert sorted(failures) == ["A player from the away team kicks the ball.",
                                "A player from the away team kicks the ball.",
                                "A player from the red team passes the ball to a teammate",
                                "A player from white dribbles the ball."]
    assert sum(len(events) for events, _ in parsed) == 19246
    assert sum(len(events) == 2 for events, _ in parsed) == 34  # lists of two dicts: both kept


@needs_qwen
def test_real_qwen_labels_map_to_soccernet(qwen_records):
    pairs = Counter((e["label_raw"], e["label"]) for r in qwen_records for e in parse_raw(r["raw"])[0])
    # Every label the Qwen run used, checked by hand against the 17 SoccerNet classes.
    assert pairs == {
        ("Foul", "Foul"): 8257, ("Shot off target", "Shots off target"): 6713, ("Other", "Other"): 1420,
        ("Goal", "Goal"): 1040, ("Ball out of play", "Ball out of play"): 389, ("Free-kick", "Free-kick"): 355,
        ("Shot on target", "Shots on target"): 338, ("Substitution", "Substitution"): 188,
        ("Set Pieces", "Set Pieces"): 183, ("Yellow card", "Yellow card"): 125, ("Kick-off", "Kick-off"): 123,
        ("Throw-in", "Throw-in"): 52, ("Corner", "Corner"): 35, ("Clearance", "Clearance"): 11,
        ("Offside", "Offside"): 5, ("Premier League", "Premier League"): 3,
        ("Premier League logo", "Premier League logo"): 3, ("Goal kick", "Goal kick"): 3,
        ("Barclays Premier League", "Barclays Premier League"): 1, ("Corners", "Corner"): 1,
        ("Red card", "Red card"): 1,
    }


@needs_qwen
def test_answer_cut_off_at_max_tokens_keeps_its_event():
    records = json.load(open(ROOT.parent / "shared/data/seed_predictions/qwen7b/final_predictions_qwen7b_video_17.json"))
    raw = records[493]["raw"]
    assert raw.startswith('```json\n[\n\t{"label": "Foul", "team": "away", "confidence": 0.9, "details": "Player 2000')
    assert not raw.rstrip().endswith("}")
    events, ok = parse_raw(raw)
    assert ok and [(e["label"], e["team"], e["confidence"]) for e in events] == [("Foul", "away", 0.9)]


@pytest.mark.parametrize("label, expected", [
    ("Shot on target", "Shots on target"), ("shots_on_target", "Shots on target"), ("Shot off target", "Shots off target"),
    ("Corners", "Corner"), ("corner kick", "Corner"), ("Kick off", "Kick-off"), ("KICKOFF", "Kick-off"),
    ("Throw in", "Throw-in"), ("Throw-ins", "Throw-in"), ("Yellow->red card", "Yellow->red card"),
    ("yellow -> red card", "Yellow->red card"), ("Second yellow card", "Yellow->red card"),
    ("Direct free kick", "Direct free-kick"), ("Indirect Free-Kick", "Indirect free-kick"),
    ("Penalties", "Penalty"), ("Out of bounds", "Ball out of play"), ("Substitute", "Substitution"),
    ("Yellow Card", "Yellow card"), ("Red card", "Red card"),
    # Ambiguous or not SoccerNet classes: left unmapped rather than guessed.
    ("Free-kick", None), ("Shot", None), ("Goal kick", None), ("Other", None), ("Set Pieces", None),
    ("Card", None), (None, None), (3, None),
])
def test_normalise_label(label, expected):
    assert normalise_label(label) == expected


@pytest.mark.parametrize("text, labels, ok", [
    ("{'label': 'Goal', 'team': 'home', 'confidence': 0.9}", ["Goal"], True),
    ('```json\n{"label": "Goal", "team": "away", "confidence": 0.8}\n```', ["Goal"], True),
    ("{'label': 'Goal'}\n{'label': 'Offside'}", ["Goal", "Offside"], True),
    ('[{"label": "Foul"}, {"label": "Corner"}]', ["Foul", "Corner"], True),
    ('Events: {"events": [{"label": "Foul"}, {"label": "Corner"}]} hope this helps', ["Foul", "Corner"], True),
    ("I can see {'label': 'Goal', 'details': 'the player's header', 'confidence': 0.7} here", ["Goal"], True),
    ('{"label": "Goal", "details": "a {curly} note", "frame": 3}', ["Goal"], True),
    ('{"label": "Goal", "confidence": 0.9, "is_replay": false, "team": null}', ["Goal"], True),
    ("None", [], True), ("none.", [], True), ("No events detected.", [], True), ("[]", [], True),
    ("```json\n[]\n```", [], True), ('{"label": "None"}', [], True), ("{'label': None}", [], True),
    ("The frames show no clear action. None", [], True),
    (None, [], False), ("", [], True), ("A player dribbles.", [], False), ('{"foo": 1}', [], False),
])
def test_parse_raw_shapes(text, labels, ok):
    events, parsed = parse_raw(text)
    assert ([e["label"] for e in events], parsed) == (labels, ok)


def test_parse_never_runs_code(tmp_path):
    target = tmp_path / "pwned"
    text = f"{{'label': __import__('pathlib').Path({str(target)!r}).touch(), 'confidence': 0.9}}"
    parse_raw(text)
    parse_raw(f"__import__('pathlib').Path({str(target)!r}).touch()")
    assert not target.exists()


def test_event_fields_and_time():
    text = "{'label': 'Goal', 'team': 'Home', 'confidence': '0.85', 'frame': 8, 'details': 'header'}"
    (e,), ok = window_events(246.0, text)
    assert ok and e == {"label": "Goal", "label_raw": "Goal", "team": "home", "confidence": 0.85,
                        "details": "header", "frame": 8, "time": 247.4}
    # No frame, or one outside 1..15: the window's middle.
    assert window_events(246.0, "{'label': 'Goal'}")[0][0]["time"] == 247.4
    assert window_events(246.0, "{'label': 'Goal', 'frame': 40}")[0][0]["time"] == 247.4
    assert window_events(246.0, "{'label': 'Goal', 'frame': 1}")[0][0]["time"] == 246.0


def test_final_events_reads_seed_and_merged_files():
    seed = [{"time": 10.0, "raw": '```json\n{"label": "Shot on target", "confidence": 0.9}\n```'},
            {"time": 12.0, "raw": "A player dribbles."}]
    ours = [{"time": 10.0, "raw": "...", "label": "Shot on target", "label_raw": "Shot on target", "team": "away",
             "confidence": 0.8, "details": None, "event_time": 11.0, "frame": 6}]
    assert [(e["label"], e["time"], e["window"]) for e in final_events(seed)] == [("Shots on target", 11.4, 10.0)]
    (e,) = final_events(ours)
    assert (e["label"], e["time"], e["team"], e["confidence"], e["window"]) == ("Shots on target", 11.0, "away", 0.8, 10.0)
