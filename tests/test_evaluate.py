"""evaluate_soccernet.py on synthetic SoccerNet trees whose scores are known by hand.

Official numbers are checked against hand-computed values (the evaluator's delta is a window
width: a prediction d seconds off counts from delta = 2d) and against calling
SoccerNet.Evaluation.ActionSpotting.evaluate directly on files we write ourselves.
"""
import contextlib
import csv
import gzip
import io
import json
import random
import shutil
import subprocess
import sys

import pytest

import evaluate_soccernet as ev
from conftest import ROOT, SEED_PREDICTIONS, bar_heights, load, make_project, tick_labels
from llava_soccer import provenance, rankings, soccernet
from llava_soccer.settings import SOCCERNET_CLASSES

try:
    from SoccerNet.Evaluation.ActionSpotting import evaluate as official_evaluate
    from SoccerNet.Evaluation.utils import EVENT_DICTIONARY_V2
except ImportError as e:  # fail, not skip: these tests are about that evaluator
    raise ImportError(f"{e}: bash tests/run.sh installs it (pip install --no-deps SoccerNet==0.2.0)") from None

GAME = "england_epl/2015-2016/2015-08-08 - 19-30 Chelsea 2 - 2 Swansea"
GAME2 = "england_epl/2015-2016/2015-08-16 - 18-00 Man City 3 - 0 Chelsea"


def ann(half, seconds, label, visibility="visible"):
    """A Labels-v2.json annotation, as SoccerNet writes them."""
    s = int(seconds)
    return {"gameTime": f"{half} - {s // 60:02d}:{s % 60:02d}", "label": label,
            "position": str(round(seconds * 1000)), "team": "home", "visibility": visibility}


def pred(seconds, label, confidence=0.9):
    """One event of a final predictions file, as merge_results_llava.py writes them."""
    return {"time": max(0.0, seconds - 1), "event_time": seconds, "label": label, "team": "home",
            "confidence": confidence}


def make_case(root, name, labels, videos, predictions):
    """project/ (videos.txt + finals) and soccernet/ (Labels-v2.json per game) under root/name.

    labels {game: [annotations]}, videos [manifest lines], predictions {model: {index: records}}.
    """
    base = root / name
    shutil.rmtree(base, ignore_errors=True)
    project, sn = base / "soccer_project", base / "Soccer Net"
    project.mkdir(parents=True)
    (project / "videos.txt").write_text("".join(v + "\n" for v in videos))
    for game, annotations in labels.items():
        (sn / game).mkdir(parents=True)
        (sn / game / "Labels-v2.json").write_text(json.dumps({"UrlLocal": game, "annotations": annotations}))
    for model, per_video in predictions.items():
        for index, records in per_video.items():
            (project / f"final_predictions_{model}_video_{index}.json").write_text(json.dumps(records))
    return project, sn


def run(project, sn, *extra):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = ev.main(["--project", str(project), "--soccernet", str(sn), *extra])
    return rc, out.getvalue(), err.getvalue()


def summary(project, model="llava"):
    s = load(project / "soccernet_eval" / "summary.json")
    return next(m for m in s["models"] if m["model"] == model)


def rows(project, model="llava"):
    return {r["class"]: r for r in summary(project, model)["per_class"]}


def test_perfect_predictions_score_one_and_write_the_official_layout(odd_root):
    gt = [ann(1, 100, "Goal"), ann(1, 400.5, "Corner"), ann(1, 700, "Foul", "not shown"),
          ann(2, 61, "Goal"), ann(2, 2700, "Throw-in")]
    finals = {0: [pred(int(a["position"]) / 1000, a["label"]) for a in gt if a["gameTime"][0] == "1"],
              1: [pred(int(a["position"]) / 1000, a["label"], None) for a in gt if a["gameTime"][0] == "2"]}
    project, sn = make_case(odd_root, "perfect", {GAME: gt}, [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv"],
                            {"llava": finals})
    rc, out, err = run(project, sn, "--metrics", "at1,at5")  # all four: next test (loose alone takes ~4 s)
    assert rc == 0, err
    r = rows(project)
    for c in ("Goal", "Corner", "Foul", "Throw-in"):
        assert (r[c]["precision"], r[c]["recall"], r[c]["f1"]) == (1, 1, 1)
    assert (r["all"]["gt"], r["all"]["gt_visible"], r["all"]["gt_not_shown"], r["all"]["pred"]) == (5, 4, 1, 5)
    assert (r["all"]["recall_visible"], r["all"]["recall_not_shown"]) == (1, 1)
    assert r["Penalty"]["precision"] is None and r["Penalty"]["recall"] is None
    official = summary(project)["official"]
    for metric in ("at1", "at5"):
        # 4 classes perfect, the 13 classes absent from the ground truth count 0 in the official mean
        assert official[metric]["a_mAP"] == pytest.approx(4 / 17, abs=1e-12)
        assert official[metric]["a_mAP_present_classes"] == pytest.approx(1.0, abs=1e-12)
    assert "@1s 0.2353  @5s 0.2353" in out
    assert any(line.startswith("Goal") and line.split()[1:6] == ["2", "2", "0", "2", "2"] for line in out.splitlines())

    spotting = load(project / "soccernet_eval" / "llava" / GAME / "results_spotting.json")
    assert spotting["UrlLocal"] == GAME
    assert spotting["predictions"][:2] == [
        {"gameTime": "1 - 01:40", "label": "Goal", "position": "100000", "half": "1", "confidence": "0.9"},
        {"gameTime": "1 - 06:40", "label": "Corner", "position": "400500", "half": "1", "confidence": "0.9"}]
    # events without a confidence get --missing_confidence (0.5)
    assert spotting["predictions"][-1] == {"gameTime": "2 - 45:00", "label": "Throw-in", "position": "2700000",
                                           "half": "2", "confidence": "0.5"}
    with open(project / "soccernet_eval" / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["class"] for t in table] == [*SOCCERNET_CLASSES, "all"]
    assert table[-1]["a_mAP_at5"] == str(round(4 / 17, 6)) and table[2]["recall"] == "1.0"


@pytest.mark.slow  # a whole process over ~7 s: the full tier's (docs/testing.md, Tiers)
def test_shifted_predictions_score_as_computed_by_hand(odd_root):
    # One class per shift, two events each, far apart (loose tolerates up to 30 s).
    shifts = {"Goal": 0, "Corner": 1, "Foul": -2, "Throw-in": 3, "Clearance": 6}
    gt, finals = [], []
    for k, (label, shift) in enumerate(shifts.items()):
        for t in (200 + 300 * k, 1800 + 300 * k):
            gt.append(ann(1, t, label))
            finals.append(pred(t + shift, label))
    project, sn = make_case(odd_root, "shifts", {GAME: gt}, [f"{GAME}/1_720p.mkv"], {"llava": {0: finals}})
    rc, out, err = run(project, sn)
    assert rc == 0, err
    per_class = {m: r["a_mAP_per_class"] for m, r in summary(project)["official"].items()}
    # mAP per delta is 1 once delta/2 >= |shift|, else 0; average-mAP = trapezoid over the deltas.
    expected = {  # tight deltas 1..5 s, loose 5..60 s, at1 = delta 1 s (+-0.5), at5 = delta 5 s (+-2.5)
        "Goal": {"tight": 1, "loose": 1, "at1": 1, "at5": 1},
        "Corner": {"tight": 3.5 / 4, "loose": 1, "at1": 0, "at5": 1},     # counts from delta 2
        "Foul": {"tight": 1.5 / 4, "loose": 1, "at1": 0, "at5": 1},       # from delta 4
        "Throw-in": {"tight": 0, "loose": 10.5 / 11, "at1": 0, "at5": 0},  # from delta 6 -> 10
        "Clearance": {"tight": 0, "loose": 9.5 / 11, "at1": 0, "at5": 0},  # from delta 12 -> 15
    }
    for label, by_metric in expected.items():
        for metric, value in by_metric.items():
            assert per_class[metric][label] == pytest.approx(value, abs=1e-12), (label, metric)
    assert summary(project)["official"]["tight"]["a_mAP"] == pytest.approx((1 + 3.5 / 4 + 1.5 / 4) / 17, abs=1e-12)

    # precision/recall at the default +-3 s: everything up to 3 s off matches, 6 s never does
    r = rows(project)
    assert [r[c]["tp"] for c in shifts] == [2, 2, 2, 2, 0]
    assert (r["Clearance"]["precision"], r["Clearance"]["recall"], r["Clearance"]["f1"]) == (0, 0, 0)
    assert (r["all"]["tp"], r["all"]["pred"], r["all"]["gt"]) == (8, 10, 10)
    assert r["all"]["precision"] == pytest.approx(0.8)
    assert "one-to-one within +-3 s" in out

    for tolerance, tps in (("1", [2, 2, 0, 0, 0]), ("6", [2, 2, 2, 2, 2]), ("0", [2, 0, 0, 0, 0])):
        assert run(project, sn, "--tolerance", tolerance, "--metrics", "none")[0] == 0
        assert [rows(project)[c]["tp"] for c in shifts] == tps, tolerance


def test_false_positives_and_constant_confidence(odd_root):
    goals = [300, 900, 1500, 2100]
    noise = [600, 1200, 1800, 2400]  # far from any goal: false positives at every tolerance
    project, sn = make_case(odd_root, "false_positives", {GAME: [ann(1, t, "Goal") for t in goals]},
                            [f"{GAME}/1_224p.mkv"], {
                                "flat": {0: [pred(t, "Goal", 0.7) for t in goals + noise]},
                                "ranked": {0: [pred(t, "Goal", 0.9) for t in goals]
                                           + [pred(t, "Goal", 0.3) for t in noise]},
                            })
    rc, out, err = run(project, sn, "--models", "flat,ranked", "--metrics", "at5")
    assert rc == 0, err
    for model in ("flat", "ranked"):
        g = rows(project, model)["Goal"]
        assert (g["tp"], g["pred"], g["gt"], g["precision"], g["recall"]) == (4, 8, 4, 0.5, 1)
        assert g["f1"] == pytest.approx(2 / 3)
    # One confidence for all: the precision/recall curve is a single point (P 0.5, R 1) -> AP 0.5.
    # Noise ranked below the goals: a threshold between them gives P 1, R 1 -> AP 1.
    assert summary(project, "flat")["official"]["at5"]["a_mAP_per_class"]["Goal"] == pytest.approx(0.5, abs=1e-12)
    assert summary(project, "ranked")["official"]["at5"]["a_mAP_per_class"]["Goal"] == pytest.approx(1, abs=1e-12)
    assert "== flat: 1 video, 1 game ==" in out and "== ranked: 1 video, 1 game ==" in out

    # --min_confidence drops the noise from precision/recall only
    assert run(project, sn, "--models", "ranked", "--metrics", "none", "--min_confidence", "0.5")[0] == 0
    g = rows(project, "ranked")["Goal"]
    assert (g["precision"], g["recall"]) == (1, 1)
    assert summary(project, "ranked")["not_scored"]["predictions_below_min_confidence"] == 4


def test_only_processed_games_and_halves_are_scored(odd_root):
    labels = {GAME: [ann(1, 100, "Goal"), ann(2, 100, "Corner"), ann(2, 900, "Foul")],
              GAME2: [ann(1, 50, "Goal"), ann(2, 70, "Goal")],
              "italy_serie-a/2016-2017/not processed": [ann(1, 10, "Penalty")]}
    videos = [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv", f"{GAME2}/1_224p.mkv", f"{GAME2}/2_224p.mkv"]
    project, sn = make_case(odd_root, "subset", labels, videos, {"llava": {
        0: [pred(100, "Goal")], 2: [pred(50, "Goal")], 3: [pred(70, "Goal")]}})
    rc, out, err = run(project, sn, "--metrics", "at5")
    assert rc == 0, err
    s = summary(project)
    assert [v["index"] for v in s["videos"]] == [0, 2, 3] and s["games"] == 2
    # half 2 of GAME was not processed: its Corner and Foul are neither misses nor in the mean
    assert rows(project)["all"]["gt"] == 3 and rows(project)["Corner"]["gt"] == 0
    assert s["official"]["at5"]["a_mAP"] == pytest.approx(1 / 17, abs=1e-12)
    assert s["not_scored"]["ground_truth_in_unprocessed_halves"] == 2
    assert "not scored: 2 ground-truth events in halves not processed" in out
    spotting = load(project / "soccernet_eval" / "llava" / GAME / "results_spotting.json")
    assert {p["half"] for p in spotting["predictions"]} == {"1"}
    assert not (project / "soccernet_eval" / "llava" / "italy_serie-a").exists()

    # --videos picks a subset
    assert run(project, sn, "--metrics", "none", "--videos", "2-3")[0] == 0
    assert [v["index"] for v in summary(project)["videos"]] == [2, 3]


def test_labels_outside_the_classes_are_reported_not_scored(odd_root):
    gt = [ann(1, 100, "Goal"), ann(1, 300, "Drop ball"), ann(1, 500, "Drop ball")]
    finals = [pred(100, "Goal"), pred(300, "Other"), pred(310, "Free-kick"), pred(320, "Other"),
              pred(330, "shot on goal")]  # an alias: scored as "Shots on target"
    project, sn = make_case(odd_root, "outside", {GAME: gt}, [f"{GAME}/1_224p.mkv"], {"llava": {0: finals}})
    rc, out, err = run(project, sn, "--metrics", "at1")
    assert rc == 0, err
    assert "not scored, predicted labels outside the 17 classes: Other 2, Free-kick 1" in out
    assert "not scored, ground-truth labels outside the 17 classes: Drop ball 2" in out
    r = rows(project)
    assert (r["all"]["gt"], r["all"]["pred"], r["Shots on target"]["pred"]) == (1, 2, 1)
    assert summary(project)["official"]["at1"]["a_mAP_per_class"]["Goal"] == 1
    spotting = load(project / "soccernet_eval" / "llava" / GAME / "results_spotting.json")
    labels = [p["label"] for p in spotting["predictions"]]
    assert labels == ["Goal", "Shots on target"]


def test_one_prediction_per_class_per_half_second_keeps_the_most_confident(odd_root):
    project, sn = make_case(odd_root, "collapse", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100.1, "Goal", 0.2), pred(100.3, "Goal", 0.95),
                                           pred(100.4, "Goal", 0.4), pred(100.3, "Corner", 0.1),
                                           pred(101, "Goal", 95)]}})  # 95 = percent
    assert run(project, sn, "--metrics", "none", "--dedup-s", "0")[0] == 0  # de-duplication: next test
    spotting = load(project / "soccernet_eval" / "llava" / GAME / "results_spotting.json")["predictions"]
    assert [(p["label"], p["position"], p["confidence"]) for p in spotting] == [
        ("Corner", "100300", "0.1"), ("Goal", "100300", "0.95"), ("Goal", "101000", "0.95")]
    assert summary(project)["not_scored"]["predictions_sharing_a_0.5s_frame_dropped_from_results_spotting"] == 2


def test_per_window_files_are_deduplicated_as_the_merge_does(odd_root):
    # The seed's Qwen format: one record per 3 s window every 2 s; frame 8 = window start + 1.4 s.
    windows = [{"time": float(t), "raw": "```json\n{'label': 'Goal', 'confidence': " + str(c) + ", 'frame': 8}\n```"}
               for t, c in ((96, 0.6), (98, 0.9), (100, 0.7))]
    project, sn = make_case(odd_root, "dedup", {GAME: [ann(1, 99, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"qwen7b": {0: windows}})
    assert run(project, sn, "--models", "qwen7b", "--metrics", "none")[0] == 0
    spotting = load(project / "soccernet_eval" / "qwen7b" / GAME / "results_spotting.json")["predictions"]
    assert [(p["position"], p["confidence"]) for p in spotting] == [("99400", "0.9")]  # the most confident
    assert (rows(project, "qwen7b")["Goal"]["precision"], rows(project, "qwen7b")["Goal"]["recall"]) == (1, 1)
    assert run(project, sn, "--models", "qwen7b", "--metrics", "none", "--dedup-s", "0")[0] == 0
    assert rows(project, "qwen7b")["Goal"]["pred"] == 3 and rows(project, "qwen7b")["Goal"]["precision"] == 1 / 3


@pytest.mark.parametrize("seed", [1, 2])
def test_numbers_equal_the_official_evaluator_called_directly(odd_root, tmp_path, seed):
    """Random games, halves, classes, visibilities and confidences; the reference files are
    written here by hand in the official layout and scored by evaluate() without our code."""
    rng = random.Random(seed)
    games = [f"league/20{seed}/game {g}" for g in range(3)]
    labels, videos, finals, reference = {}, [], {}, {}
    for game in games:
        halves = [1, 2] if game != games[-1] else [rng.choice([1, 2])]  # one game with a single half
        labels[game] = [ann(h, rng.uniform(0, 2800), rng.choice(SOCCERNET_CLASSES),
                            rng.choice(["visible", "visible", "not shown"])) for h in (1, 2) for _ in range(40)]
        labels[game].append(ann(1, 30, "Drop ball"))
        reference[game] = []
        for h in halves:
            gt = [a for a in labels[game] if a["gameTime"][0] == str(h)]
            events, used = [], set()
            for a in gt + [None] * 30:  # near-misses of every real event, plus noise anywhere
                t = rng.uniform(0, 2800) if a is None else int(a["position"]) / 1000 + rng.gauss(0, 4)
                label = rng.choice(SOCCERNET_CLASSES) if a is None else a["label"]
                ms = round(max(t, 0) * 1000)
                if (label, ms // 500) in used:  # the evaluator keeps one per class per 0.5 s frame
                    continue
                used.add((label, ms // 500))
                conf = rng.random()  # full precision: written repr-exact, not rounded
                events.append(pred(ms / 1000, label, conf))
                reference[game].append({"gameTime": "", "label": label, "position": str(ms), "half": str(h),
                                        "confidence": repr(conf)})
            finals[len(videos)] = events
            videos.append(f"{game}/{h}_224p.mkv")
    project, sn = make_case(odd_root, f"random{seed}", labels, videos, {"llava": finals})
    metrics = ["at1", "at5"]  # one delta each; tight and loose average more (test_shifted_...)
    rc, out, err = run(project, sn, "--metrics", ",".join(metrics), "--dedup-s", "0")  # every event scored
    assert rc == 0, err
    ours = summary(project)["official"]

    # The reference: labels cut to the processed halves, predictions as written above.
    ref_labels, ref_preds = tmp_path / "labels", tmp_path / "predictions"
    for game in games:
        halves = {v.rsplit("/", 1)[1][0] for v in videos if v.startswith(game + "/")}
        (ref_labels / game).mkdir(parents=True)
        (ref_preds / game).mkdir(parents=True)
        kept = [a for a in labels[game] if a["gameTime"][0] in halves]
        (ref_labels / game / "Labels-v2.json").write_text(json.dumps({"annotations": kept}))
        (ref_preds / game / "results_spotting.json").write_text(json.dumps({"predictions": reference[game]}))
    for metric in metrics:
        with contextlib.redirect_stderr(io.StringIO()):
            ref = official_evaluate(str(ref_labels), str(ref_preds), split=None, version=2, framerate=2,
                                    metric=metric, dataset=None, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
        assert 0.01 < ref["a_mAP"] < 0.99  # a varied case, not all-or-nothing
        for key in ("a_mAP", "a_mAP_visible", "a_mAP_unshown"):
            assert ours[metric][key] == pytest.approx(float(ref[key]), abs=1e-9), (metric, key)
        for key in ("a_mAP_per_class", "a_mAP_per_class_visible", "a_mAP_per_class_unshown"):
            assert list(ours[metric][key].values()) == pytest.approx([float(v) for v in ref[key]], abs=1e-9)


def test_plot_draws_precision_recall_and_a_timeline(odd_root, saved_figures):
    gt = [ann(1, 100, "Goal"), ann(1, 400, "Corner", "not shown")]
    project, sn = make_case(odd_root, "plot", {GAME: gt}, [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv"], {
        "llava": {0: [pred(101, "Goal"), pred(300, "Goal", 0.4)], 1: [pred(50, "Foul")]},
        "qwen7b": {0: [{"time": 98.0, "raw": "```json\n{'label': 'Corner', 'confidence': 0.8, 'frame': 3}\n```"}]}})
    rc, out, err = run(project, sn, "--models", "llava,qwen7b", "--metrics", "none", "--plot")
    assert rc == 0, err
    for name in ("precision_recall.png", "timeline_video_0.png"):
        data = (project / "soccernet_eval" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert "note: the models were scored on different videos" in out
    # what is drawn: llava found the Goal once in two tries (and a Foul in half 2, which has no labels); qwen7b's
    # Corner is 5 minutes early
    panels = {ax.get_title().split(":")[0]: ax for ax in saved_figures["precision_recall.png"].axes}
    assert list(panels) == ["llava", "qwen7b"]
    for name, found in (("llava", {"Goal": (0.5, 1)}), ("qwen7b", {})):
        assert tick_labels(panels[name].xaxis) == list(SOCCERNET_CLASSES)
        assert bar_heights(panels[name]) == {"precision": [found.get(c, (0, 0))[0] for c in SOCCERNET_CLASSES],
                                             "recall": [found.get(c, (0, 0))[1] for c in SOCCERNET_CLASSES]}
    counts = {c: t.get_text() for c, t in zip(SOCCERNET_CLASSES, panels["qwen7b"].texts)}
    assert (counts["Goal"], counts["Corner"], counts["Foul"]) == ("1/0", "1/1", "0/0")  # ground truth/predicted
    # The timelines, one per video scored (default --timeline-video all), over the seconds every model processed
    # there: neither has a raw-answers archive, so from 0 to the end of its last record's window (qwen7b's at 98 s)
    ground, llava_ax, qwen_ax = [ax for ax in saved_figures["timeline_video_0.png"].axes if ax.get_title(loc="left")]
    assert ground.get_xlim() == pytest.approx((0, 98 + 2.8)) and ground.get_xlabel() == ""
    assert qwen_ax.get_xlabel() == "seconds from the start of the half"
    assert ground.get_title(loc="left") == f"video #0 ({GAME}/1_224p.mkv): ground truth, 1 outside the seconds shown"
    row = {c: i for i, c in enumerate(SOCCERNET_CLASSES)}
    visible, not_shown = (c.get_offsets().tolist() for c in ground.collections)
    assert visible == [[100, row["Goal"]]] and not_shown == [[400, row["Corner"]]]
    for ax, name, points, confidences, title in (
            (llava_ax, "llava", [[101, row["Goal"]], [300, row["Goal"]]], [0.9, 0.4], "2 events, 2 outside the "
                                                                                     "seconds shown"),
            (qwen_ax, "qwen7b", [[98.4, row["Corner"]]], [0.8], "1 event")):
        (dots,) = ax.collections
        assert ax.get_title(loc="left") == f"{name} ({title}, colour = confidence)"
        assert dots.get_offsets().tolist() == [pytest.approx(p) for p in points]
        assert dots.get_array().tolist() == confidences
    (llava_1,) = [ax for ax in saved_figures["timeline_video_1.png"].axes if ax.get_title(loc="left")][1:]
    assert llava_1.get_title(loc="left") == "llava (1 event, colour = confidence)"  # video 1: llava's only
    assert llava_1.get_xlim() == pytest.approx((0, 49 + 2.8))
    saved_figures.clear()
    assert run(project, sn, "--models", "llava,qwen7b", "--metrics", "none", "--plot", "--timeline_video", "1")[0] == 0
    assert sorted(p.name for p in (project / "soccernet_eval").glob("timeline_*")) == ["timeline_video_1.png"]
    assert "timeline_video_0.png" not in saved_figures
    rc, _, err = run(project, sn, "--models", "llava,qwen7b", "--metrics", "none", "--plot", "--timeline-video", "1-3")
    assert rc == 1 and err.strip().endswith("--timeline-video 2-3: no model has predictions scored there; choose "
                                            "among the videos scored (0-1), or all")


def test_the_timeline_spans_what_every_model_processed_not_the_longest_run(odd_root, saved_figures):
    """LLaVA's first minute (its raw-answers archive: windows 0-58 s) beside Qwen's whole half (the real seed
    file, ~45 min): the x axis is LLaVA's minute, in seconds, and Qwen's title counts its events outside it."""
    real = SEED_PREDICTIONS / "qwen7b" / "final_predictions_qwen7b_video_0.json"
    if not real.exists():
        pytest.skip(f"{real} not on this machine")
    gt = [ann(1, 20, "Kick-off"), ann(1, 45, "Foul"), ann(1, 600, "Goal"), ann(1, 2400, "Corner")]
    llava = [pred(21, "Kick-off", 0.8), pred(46, "Foul", 0.6), pred(50, "Throw-in", 0.5)]
    project, sn = make_case(odd_root, "timeline", {GAME: gt}, [f"{GAME}/1_224p.mkv"], {"llava": {0: llava}})
    write_archive(project, 0, [window(t, "None", None) for t in range(0, 60, 2)])
    shutil.copy(real, project)
    rc, out, err = run(project, sn, "--models", "llava,qwen7b", "--metrics", "none", "--plot")
    assert rc == 0, err
    ground, llava_ax, qwen_ax = [ax for ax in saved_figures["timeline_video_0.png"].axes if ax.get_title(loc="left")]
    assert ground.get_xlim() == pytest.approx((0, 58 + 2.8))  # the last window starts at 58 s, 15 frames at 5 fps
    assert qwen_ax.get_xlabel() == "seconds from the start of the half"
    assert ground.get_title(loc="left").endswith("ground truth, 2 outside the seconds shown")
    assert llava_ax.get_title(loc="left") == "llava (3 events, colour = confidence)"
    qwen_times = [x for x, _ in qwen_ax.collections[0].get_offsets().tolist()]
    inside = sum(t <= 60.8 for t in qwen_times)
    assert max(qwen_times) > 2000 and 0 < inside < 60  # its whole half is there, most of it off the axis
    assert qwen_ax.get_title(loc="left") == (f"qwen7b ({len(qwen_times)} events, {len(qwen_times) - inside} outside "
                                             f"the seconds shown, colour = confidence)")


def test_real_qwen_predictions_in_the_seed_format(odd_root):
    real = SEED_PREDICTIONS / "qwen7b" / "final_predictions_qwen7b_video_0.json"
    if not real.exists():
        pytest.skip(f"{real} not on this machine")
    project, sn = make_case(odd_root, "qwen", {GAME: [ann(1, 600, "Foul"), ann(1, 1200, "Goal")]},
                            [f"{GAME}/1_224p.mkv"], {})
    shutil.copy(real, project)
    rc, out, err = run(project, sn, "--models", "qwen7b", "--metrics", "none")
    assert rc == 0, err
    s = summary(project, "qwen7b")
    assert s["per_class"][-1]["pred"] > 500
    assert s["not_scored"]["predicted_labels_outside_classes"]["Other"] > 10


@pytest.mark.parametrize("case,expected", [
    ("no_labels", "none of the 1 games predicted has a Labels-v2.json under {sn} (e.g. {sn}/{game}/Labels-v2.json)"),
    ("bad_json", "SoccerNet labels file {sn}/{game}/Labels-v2.json is not valid JSON"),
    ("no_annotations", "SoccerNet labels file {sn}/{game}/Labels-v2.json has no \"annotations\" list"),
    ("bad_annotation", "SoccerNet labels file {sn}/{game}/Labels-v2.json: annotation #1 is malformed"),
    ("bad_predictions", "predictions file {project}/final_predictions_llava_video_0.json is not a JSON list"),
    ("no_predictions", "no final_predictions_llava_video_<N>.json in {project}"),
    ("same_half_twice", "videos #0 and #1 are both {game} half 1 (llava): choose one with --videos"),
    ("missing_video", "--videos asks for 5 but"),
    ("no_evaluator", "the official SoccerNet evaluator is not installed: pip install --no-deps SoccerNet==0.2.0"),
    ("no_soccernet", "no SoccerNet folder: pass --soccernet DIR"),
])
def test_bad_inputs_give_one_clear_line(odd_root, monkeypatch, case, expected):
    project, sn = make_case(odd_root, "errors", {GAME: [ann(1, 100, "Goal"), ann(1, 200, "Corner")]},
                            [f"{GAME}/1_224p.mkv", f"{GAME}/1_720p.mkv"], {"llava": {0: [pred(100, "Goal")]}})
    labels = sn / GAME / "Labels-v2.json"
    args = ["--metrics", "none", "--videos", "0"]
    if case == "no_labels":
        labels.unlink()
    elif case == "bad_json":
        labels.write_text('{"annotations": [')
    elif case == "no_annotations":
        labels.write_text("[]")
    elif case == "bad_annotation":
        labels.write_text(json.dumps({"annotations": [ann(1, 5, "Goal"), {"label": "Goal", "position": "1000"}]}))
    elif case == "bad_predictions":
        (project / "final_predictions_llava_video_0.json").write_text('{"time": 1}')
    elif case == "no_predictions":
        (project / "final_predictions_llava_video_0.json").unlink()
        args = ["--metrics", "none"]
    elif case == "same_half_twice":
        (project / "final_predictions_llava_video_1.json").write_text("[]")
        args = ["--metrics", "none"]
    elif case == "missing_video":
        args = ["--metrics", "none", "--videos", "0,5"]
    elif case == "no_evaluator":
        monkeypatch.setitem(sys.modules, "SoccerNet.Evaluation.ActionSpotting", None)  # import fails
        args = ["--metrics", "at1"]
    elif case == "no_soccernet":
        monkeypatch.delenv("SOCCERNET_DIR", raising=False)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert ev.main(["--project", str(project)]) == 1
        assert expected in err.getvalue()
        return
    rc, out, err = run(project, sn, *args)
    assert rc == 1
    assert err.startswith("evaluate_soccernet.py: error: ")
    assert expected.format(sn=sn, game=GAME, project=project) in err
    assert len(err.strip().splitlines()) == 1


def test_command_line(odd_root):
    project, sn = make_case(odd_root, "cli", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal")]}})
    script = str(ROOT / "evaluate_soccernet.py")
    env = {"PATH": "/usr/bin:/bin", "SOCCER_PROJECT": str(project), "SOCCERNET_DIR": str(sn)}
    done = subprocess.run([sys.executable, script, "--metrics", "at1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "official average-mAP" in done.stdout and "@1s 0.0588" in done.stdout
    assert done.stderr == ""  # the evaluator's progress bars are not shown
    bad = subprocess.run([sys.executable, script, "--metrics", "medium"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--metrics: unknown medium" in bad.stderr
    assert "pip install --no-deps SoccerNet==0.2.0" in subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True).stdout


def official_direct(tmp_path, labels, predictions, metric):
    """evaluate() on hand-written files: labels {game: annotations}, predictions {game: [prediction]}."""
    ref_labels, ref_preds = tmp_path / "ref_labels", tmp_path / "ref_predictions"
    shutil.rmtree(ref_labels, ignore_errors=True)
    shutil.rmtree(ref_preds, ignore_errors=True)
    for game in labels:
        (ref_labels / game).mkdir(parents=True)
        (ref_preds / game).mkdir(parents=True)
        (ref_labels / game / "Labels-v2.json").write_text(json.dumps({"annotations": labels[game]}))
        (ref_preds / game / "results_spotting.json").write_text(json.dumps({"predictions": predictions[game]}))
    with contextlib.redirect_stderr(io.StringIO()):
        return official_evaluate(str(ref_labels), str(ref_preds), split=None, version=2, framerate=2,
                                 metric=metric, dataset=None, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)


def test_a_prediction_between_two_events_does_not_cost_a_match(odd_root):
    # Goals at 100 and 104 s, predictions at 102.2 and 106.5 s, tolerance 3 s. Closest pair first
    # took (104, 102.2) and left both others unmatched (1 TP); the maximum matching has 2.
    project, sn = make_case(odd_root, "between", {GAME: [ann(1, 100, "Goal"), ann(1, 104, "Goal", "not shown")]},
                            [f"{GAME}/1_224p.mkv"], {"llava": {0: [pred(102.2, "Goal"), pred(106.5, "Goal")]}})
    rc, out, err = run(project, sn, "--metrics", "none", "--dedup-s", "0")
    assert rc == 0, err
    g = rows(project)["Goal"]
    assert (g["tp"], g["tp_visible"], g["tp_not_shown"], g["precision"], g["recall"]) == (2, 1, 1, 1, 1)
    assert any(line.split()[:6] == ["Goal", "2", "1", "1", "2", "2"] for line in out.splitlines())


def test_missing_confidence_in_percent_and_out_of_range(odd_root, capsys):
    finals = [pred(100, "Goal", None), pred(200, "Goal", 95), pred(300, "Goal", 250), pred(400, "Goal", -0.2),
              pred(500, "Goal", 0.25), pred(600, "Goal", "1%"), pred(700, "Goal", "high")]
    project, sn = make_case(odd_root, "missing_confidence", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: finals}})
    confidences = {}
    for flag in ("80", "0.8", "1"):
        assert run(project, sn, "--metrics", "none", "--missing_confidence", flag)[0] == 0
        spotting = load(project / "soccernet_eval" / "llava" / GAME / "results_spotting.json")["predictions"]
        confidences[flag] = [p["confidence"] for p in spotting]
        assert load(project / "soccernet_eval" / "summary.json")["settings"]["missing_confidence"] == float(flag) / (
            100 if float(flag) > 1 else 1)
    # None, 250, -0.2 and "high" are no confidence: they get --missing_confidence; 95 and "1%" are percents
    assert confidences["80"] == confidences["0.8"] == ["0.8", "0.95", "0.8", "0.8", "0.25", "0.01", "0.8"]
    assert confidences["1"] == ["1.0", "0.95", "1.0", "1.0", "0.25", "0.01", "1.0"]  # 1 is a confidence, not 1 %
    # --min_confidence follows the same rule: 25, 25% and 0.25 keep the same predictions
    kept = set()
    for flag in ("25", "25%", "0.25"):
        assert run(project, sn, "--metrics", "none", "--min_confidence", flag)[0] == 0
        assert load(project / "soccernet_eval" / "summary.json")["settings"]["min_confidence"] == 0.25
        kept.add(summary(project)["not_scored"]["predictions_below_min_confidence"])
    assert kept == {1}  # only the 1% one (25 read as 25 would drop all 7)
    for flag in ("--missing_confidence", "--min_confidence"):
        for bad in ("101", "-0.1", "nan", "high", "150%"):
            with pytest.raises(SystemExit) as e:
                ev.main(["--project", str(project), "--soccernet", str(sn), flag, bad])
            assert e.value.code == 2
            err = capsys.readouterr().err
            assert f"{bad!r} is not a confidence: give one in [0, 1] or a percent in (1, 100]" in err
    with pytest.raises(SystemExit):
        ev.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "60 = 60% = 0.6" in text


def test_confidences_are_written_exactly_so_the_official_number_is_ours(odd_root, tmp_path):
    # A true goal at 0.0050252 and a false one at 0.005025: the evaluator's second threshold
    # (1/199 = 0.0050251...) lies between them, so it ranks the true one first (AP 1). Rounded to
    # 6 decimals, as results_spotting.json used to hold them, both fell below it (AP 0.5).
    import numpy as np
    threshold = np.linspace(0, 1, 200)[1]
    assert round(0.0050252, 6) < threshold < 0.0050252
    project, sn = make_case(odd_root, "exact", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal", 0.0050252), pred(1000, "Goal", 0.005025)]}})
    rc, out, err = run(project, sn, "--metrics", "at5")
    assert rc == 0, err
    spotting = load(project / "soccernet_eval" / "llava" / GAME / "results_spotting.json")["predictions"]
    assert [p["confidence"] for p in spotting] == ["0.0050252", "0.005025"]
    ref = official_direct(tmp_path, {GAME: [ann(1, 100, "Goal")]}, {GAME: [
        {"gameTime": "1 - 01:40", "label": "Goal", "position": "100000", "half": "1", "confidence": "0.0050252"},
        {"gameTime": "1 - 16:40", "label": "Goal", "position": "1000000", "half": "1", "confidence": "0.005025"}]},
        "at5")
    ours = summary(project)["official"]["at5"]
    assert float(ref["a_mAP_per_class"][EVENT_DICTIONARY_V2["Goal"]]) == 1
    assert ours["a_mAP_per_class"]["Goal"] == 1 and ours["a_mAP"] == pytest.approx(float(ref["a_mAP"]), abs=1e-12)
    # --min_confidence sees the same numbers: 0.0050251 keeps the true goal only
    assert run(project, sn, "--metrics", "none", "--min_confidence", "0.0050251")[0] == 0
    g = rows(project)["Goal"]
    assert (g["pred"], g["tp"], g["precision"]) == (1, 1, 1)


def test_confidence_strings_parse_back_to_the_same_float():
    # what the evaluator does with our "confidence" strings: numpy float64 assignment
    import numpy as np
    rng = random.Random(3)
    values = [rng.random() for _ in range(2000)] + [1e-7, 0.1 + 0.2, 1 / 3, 0.0, 1.0]
    array = np.zeros(len(values))
    for k, v in enumerate(values):
        array[k] = repr(v)
    assert array.tolist() == values


def test_canonical_labels_are_read_as_the_official_evaluator_reads_them(odd_root, tmp_path):
    gt = [{"gameTime": "1 - 01:40", "label": "Goal", "position": "100000", "visibility": "visible"},
          {"gameTime": "1 - 06:40", "label": "Corner", "position": 400000},               # a number: accepted
          {"gameTime": "1 - 11:40", "label": "Foul", "visibility": "not shown"},           # no position: gameTime
          {"gameTime": "2 - 00:05", "label": "Goal", "position": "5000", "team": "away"}]  # half 2, not processed
    project, sn = make_case(odd_root, "canonical", {GAME: gt}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal"), pred(400, "Corner"), pred(700, "Foul")]}})
    rc, out, err = run(project, sn, "--metrics", "at1")
    assert rc == 0, err
    r = rows(project)
    assert [r[c]["tp"] for c in ("Goal", "Corner", "Foul")] == [1, 1, 1] and r["all"]["gt_not_shown"] == 1
    ours = summary(project)["official"]["at1"]
    ref = official_direct(tmp_path, {GAME: gt[:3]}, {GAME: [
        {"label": label, "position": str(ms), "half": "1", "confidence": "0.9"}
        for label, ms in (("Goal", 100000), ("Corner", 400000), ("Foul", 700000))]}, "at1")
    assert list(ours["a_mAP_per_class"].values()) == pytest.approx([float(v) for v in ref["a_mAP_per_class"]])
    assert ours["a_mAP"] == pytest.approx(3 / 17)


BAD_ANNOTATIONS = [  # (annotation #1, what the one line says, what the official evaluator does with it)
    ({"gameTime": " 1 - 01:00", "label": "Goal", "position": "60000"},
     'gameTime " 1 - 01:00" is not "<half> - MM:SS" with half 1 or 2', ValueError),
    ({"gameTime": "1 - 1:0", "label": "Goal", "position": "60000"}, 'gameTime "1 - 1:0" is not', ValueError),
    ({"gameTime": "1 - 01:00 ", "label": "Goal", "position": "60000"}, 'gameTime "1 - 01:00 " is not', ValueError),
    ({"gameTime": "3 - 01:00", "label": "Goal", "position": "60000"}, 'gameTime "3 - 01:00" is not', "ignored"),
    ({"gameTime": "1 - 01:00", "label": "Goal", "position": "-500"},
     'position "-500" is not a whole number of milliseconds >= 0', "last frame"),
    ({"gameTime": "1 - 01:00", "label": "Goal", "position": "60000.5"}, 'position "60000.5" is not', ValueError),
    ({"gameTime": "1 - 01:00", "label": "Goal", "position": None}, "position null is not", TypeError),
    ({"gameTime": "1 - 01:00", "label": ["Goal"], "position": "60000"}, 'label ["Goal"] is not a string', TypeError),
    ({"gameTime": "1 - 01:00", "label": "Goal", "position": "60000", "visibility": "Not shown"},
     'visibility "Not shown" is not one of "visible", "not shown"', "as visible"),
    ({"gameTime": "1 - 01:00", "label": "Goal", "position": "60000", "visibility": None},
     'visibility null is not one of', "as visible"),
]


@pytest.mark.parametrize("annotation,problem,official", BAD_ANNOTATIONS)
def test_labels_the_official_evaluator_cannot_read_stop_with_one_line(odd_root, annotation, problem, official):
    from SoccerNet.Evaluation.ActionSpotting import label2vector
    labels = {"annotations": [annotation]}
    if official in (ValueError, TypeError):
        with pytest.raises(official):
            label2vector(labels, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
    elif official == "as visible":  # read, but a misspelt "not shown" counts as visible (1, not -1)
        half1, _ = label2vector(labels, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
        assert half1.max() == 1 and half1.min() == 0
    else:  # read without error, but not where the annotation says
        half1, half2 = label2vector(labels, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
        assert half1.any() == (official == "last frame") and not half2.any()
        assert official != "last frame" or half1[-1].any()

    project, sn = make_case(odd_root, "bad_labels", {GAME: [ann(1, 5, "Goal"), annotation]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(5, "Goal")]}})
    rc, out, err = run(project, sn, "--metrics", "at1")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and out == ""
    assert err.startswith(f"evaluate_soccernet.py: error: SoccerNet labels file {sn}/{GAME}/Labels-v2.json: "
                          f"annotation #1 is malformed: {problem}")
    assert json.dumps(annotation) in err


@pytest.mark.parametrize("record,field", [
    ({"time": 8.0, "event_time": -1.5, "label": "Goal", "confidence": 0.9}, "event_time"),
    ({"time": 8.0, "event_time": float("inf"), "label": "Goal", "confidence": 0.9}, "event_time"),
    ({"time": "8.0", "raw": "{'label': 'Goal'}"}, "time"),
    ({"time": float("nan"), "raw": "{'label': 'Goal'}"}, "time"),
])
def test_bad_prediction_times_in_our_finals_stop_with_one_line(odd_root, record, field):
    ours = {"video": f"{GAME}/1_224p.mkv"}  # the merge writes it into every record: our files are checked strictly
    project, sn = make_case(odd_root, "bad_times", {GAME: [ann(1, 5, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [{**pred(5, "Goal"), **ours}, {**record, **ours}]}})
    rc, out, err = run(project, sn, "--metrics", "none")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    path = project / "final_predictions_llava_video_0.json"
    assert err.startswith(f"evaluate_soccernet.py: error: predictions file {path}: record #1 has a bad \"{field}\"")
    assert "numbers >= 0" in err


def test_other_peoples_files_beyond_videos_txt_or_with_bad_times_are_skipped_or_repaired_with_one_warning(odd_root):
    """Files our merge never writes (no "video", no "made_by"): finals of videos videos.txt does not list are
    skipped, negative times count as 0 s, records without a usable time are left out; one warning each, and the
    run completes. Ours beyond videos.txt are still refused: they belong to another project."""
    seed = [{"time": t, "raw": '{"label": "Goal", "team": "home", "confidence": 0.9}'} for t in (-1.5, 98.6)]
    bad = [{"time": "soon", "raw": "{}"}, {"time": float("nan"), "raw": "{}"}, {"time": 5.0, "event_time": -3.0}]
    finals = {0: seed + bad, 1: seed, 2: seed, 3: seed}
    project, sn = make_case(odd_root, "others", {GAME: [ann(1, 0, "Goal"), ann(1, 100, "Goal")]},
                            [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv"], {"qwen7b": finals})
    rc, out, err = run(project, sn, "--models", "qwen7b", "--metrics", "none")
    assert (rc, err) == (0, ""), err
    warned = [line for line in out.splitlines() if line.startswith("⚠️ qwen7b")]
    assert warned == [f"⚠️ qwen7b: 2 finals of videos {project / 'videos.txt'} does not list (#2-3; it lists 2): "
                      f"skipped; pass the project they came from (--project) to score them",
                      "⚠️ qwen7b: of its records, 3 with a negative time counted at 0 s and 2 without a usable time "
                      "left out (files not written by this pipeline's merge)"]
    assert [v["index"] for v in summary(project, "qwen7b")["videos"]] == [0, 1]
    assert rows(project, "qwen7b")["Goal"]["tp"] == 2  # the goal at 0 s is found by the window at -1.5 s
    theirs = (project / "final_predictions_qwen7b_video_3.json").read_text()
    (project / "final_predictions_qwen7b_video_3.json").write_text(theirs.replace('"raw"', '"video": "x.mkv", "raw"'))
    rc, out, err = run(project, sn, "--models", "qwen7b", "--metrics", "none")
    assert rc == 1 and err == (f"evaluate_soccernet.py: error: final_predictions_qwen7b_video_3.json is for video #3 "
                               f"but {project / 'videos.txt'} lists 2 videos: use the project the predictions came "
                               f"from (--project)\n")


def test_default_deduplication_changes_the_official_number(odd_root):
    # Goal at 100 s; predicted at 100 s (0.4) and 102.5 s (0.9). The 3 s de-duplication keeps only
    # the more confident 102.5 s, 2.5 s off: 0 at 1 s. Without it the evaluator sees both: AP 0.5.
    project, sn = make_case(odd_root, "dedup_official", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal", 0.4), pred(102.5, "Goal", 0.9)]}})
    goal = {}
    for flag in ("3", "0"):
        assert run(project, sn, "--metrics", "at1", "--dedup-s", flag)[0] == 0
        goal[flag] = summary(project)["official"]["at1"]["a_mAP_per_class"]["Goal"]
    assert goal == {"3": 0, "0": 0.5}


def test_a_final_of_another_video_is_refused(odd_root):
    """Index 0 of this project is game 1's first half; a final made from game 2's (copied from
    another project) would be scored against the wrong labels."""
    other = GAME.replace("Chelsea", "Arsenal")
    labels = {GAME: [ann(1, 5, "Goal")], other: [ann(1, 5, "Goal")]}
    records = [{**pred(5, "Goal"), "video": f"{other}/1_224p.mkv"}]
    project, sn = make_case(odd_root, "foreign", labels, [f"{GAME}/1_224p.mkv", f"{other}/1_224p.mkv"],
                            {"llava": {0: records, 1: records}})
    rc, out, err = run(project, sn, "--metrics", "none")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and not (project / "soccernet_eval").exists()
    assert err.startswith(f"evaluate_soccernet.py: error: {project / 'final_predictions_llava_video_0.json'} was "
                          f"made from '{other}/1_224p.mkv', but video #0 of {project / 'videos.txt'} is "
                          f"'{GAME}/1_224p.mkv'")
    assert run(project, sn, "--metrics", "none", "--videos", "1")[0] == 0  # its own index is fine


MADE = {"model": "llava-hf/llava-v1.6-mistral-7b-hf", "model_revision": "abc123", "quantization": "nf4",
        "compute_dtype": "float16", "nf4_weights": "packed", "visual_tokens": "full", "prompt_sha256": "p1",
        "max_new_tokens": 256, "temperature": 0.0, "top_p": None, "sampling": "5 fps", "code": "git 1"}


def test_what_made_each_models_files_is_reported_and_incomplete_videos_are_named(odd_root):
    """llava's two halves were made with different quantizations and half 2 is incomplete (its archive
    says so); qwen's files say nothing: unknown origin. Printed per model and kept in summary.json."""
    made = MADE
    labels = {GAME: [ann(1, 100, "Goal"), ann(2, 100, "Goal")]}
    videos = [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv"]
    first = [{**pred(100, "Goal"), "made_by": made}]
    second = [{**pred(100, "Goal"), "made_by": {**made, "quantization": "bf16", "compute_dtype": "bfloat16",
                                                "nf4_weights": None}}]
    project, sn = make_case(odd_root, "made by", labels, videos, {"llava": {0: first, 1: second},
                                                                  "qwen7b": {0: [pred(100, "Goal")]}})
    archive = project / "raw_answers_llava_video_1.json.gz"
    archive.write_bytes(gzip.compress(json.dumps(
        {"video": videos[1], "made_by": second[0]["made_by"], "windows_total": 50,
         "incomplete": "10 of 50 windows undecodable from 80.0 s on", "windows": []}).encode()))
    rc, out, err = run(project, sn, "--models", "llava,qwen7b", "--metrics", "none")
    assert rc == 0, err
    assert "⚠️ its files were made by 2 different runs, which do not compare alike:" in out
    assert "  videos 0: llava-hf/llava-v1.6-mistral-7b-hf @ abc123, nf4 (packed weights) computing in float16" in out
    assert "  videos 1: llava-hf/llava-v1.6-mistral-7b-hf @ abc123, bf16 computing in bfloat16" in out
    assert "⚠️ video 1 is INCOMPLETE: 10 of 50 windows undecodable from 80.0 s on (no predictions there)" in out
    assert "videos 0: unknown origin (written before results recorded what made them)" in out
    s = summary(project)
    assert [v["incomplete"] for v in s["videos"]] == [None, "10 of 50 windows undecodable from 80.0 s on"]
    assert s["made_by"][0].startswith("⚠️ its files were made by 2 different runs")


def test_games_without_labels_are_skipped_with_one_line_each_and_far_predictions_warn(odd_root):
    """Over many games, one without Labels-v2.json is left out (one line, counted in summary.json) instead
    of stopping the run; a half whose predictions lie far past the end of its video (made_by says 600 s)
    gets a warning: a final of another video under this index?"""
    made = {"model": "m", "video_file": {"path": f"{GAME2}/1_224p.mkv", "duration_s": 600.0}}
    labels = {GAME: [ann(1, 100, "Goal")], GAME2: [ann(1, 50, "Goal")]}
    videos = [f"{GAME}/1_224p.mkv", f"{GAME2}/1_224p.mkv"]
    project, sn = make_case(odd_root, "many games", labels, videos, {"llava": {
        0: [pred(100, "Goal")], 1: [{**pred(50, "Goal"), "made_by": made}, {**pred(2400, "Corner"), "made_by": made}]}})
    (sn / GAME / "Labels-v2.json").unlink()
    rc, out, err = run(project, sn, "--metrics", "at5", "--plot")
    assert rc == 0, err
    assert f"game {GAME}: no Labels-v2.json under {sn}: not scored (video #0)" in out
    assert "1 of 2 games not scored: no Labels-v2.json" in out
    assert ("⚠️ llava: video #1 (" + f"{GAME2}/1_224p.mkv) has predictions up to 2400 s, but the video is 600 s long: "
            "are they another video's (a wrong index)?") in out
    assert [v["index"] for v in summary(project)["videos"]] == [1]
    assert load(project / "soccernet_eval" / "summary.json")["games_without_labels"] == [GAME]


# --- The three rankings (issue 23): written confidence, token probability, class scores. ---

def scores(**by_class):
    """A window's 17 class scores: 0 but the classes given (Shots_on_target= for "Shots on target")."""
    given = {k.replace("_", " "): v for k, v in by_class.items()}
    return {c: given.get(c, 0.0) for c in SOCCERNET_CLASSES}


def window(start, answer, class_scores):
    """A window record of the raw-answers archive (records.ARCHIVED), 15 frames from start."""
    return {"time": start, "end": start + 2.8, "frames": [round(start + i / 5, 3) for i in range(15)],
            "status": "ok", "raw": answer, "error": None, "none_prob": 0.1, "class_scores": class_scores}


def write_archive(project, index, windows, model="llava", made_by=None):
    (project / f"raw_answers_{model}_video_{index}.json.gz").write_bytes(gzip.compress(json.dumps(
        {"video": None, "made_by": made_by, "windows_total": len(windows), "incomplete": None,
         "windows": windows}).encode()))


def tempered(s, k=4.0):
    """The token and class scores' transform, written out here (docs/evaluation.md)."""
    return 0.0 if s == 0 else 1 / (1 + ((1 - s) / s) ** (1 / k))


def spotting(label, seconds, confidence, half=1):
    """A prediction of results_spotting.json, written by hand as the official layout has it."""
    return {"label": label, "position": str(round(seconds * 1000)), "half": str(half), "confidence": repr(confidence)}


def test_three_rankings_each_give_the_official_evaluators_own_number(odd_root, tmp_path, saved_figures):
    """Goals at 100 and 400 s, a Corner at 700 s. Written confidences are tied (AP 0.5 for Goal); the token
    probabilities rank the true goals first (AP 1); the class scores put a false goal first. Each ranking's
    number is the evaluator's own on results_spotting.json files written here by hand."""
    gt = [ann(1, 100, "Goal"), ann(1, 400, "Goal"), ann(1, 700, "Corner")]
    token = {100: 0.9, 250: 0.2, 400: 0.7, 550: 0.3}
    finals = [{**pred(t, "Goal", 0.8), "token_prob": p} for t, p in token.items()]
    finals.append({**pred(700, "Corner", 0.8), "token_prob": 0.6})
    goal = "{'label': 'Goal', 'confidence': 0.8, 'frame': 11}"  # frame 11: start + 2 s
    windows = [window(98, goal, scores(Goal=0.5)), window(100, "{'label': 'Goal', 'frame': 1}", scores(Goal=0.6)),
               window(248, goal, scores(Goal=0.95)), window(398, goal, scores(Goal=0.4)),
               window(548, goal, scores(Goal=0.1)),
               window(698, "{'label': 'Corner', 'frame': 11}", scores(Goal=0.05, Corner=0.9))]
    project, sn = make_case(odd_root, "rankings", {GAME: gt}, [f"{GAME}/1_224p.mkv"], {"llava": {0: finals}})
    write_archive(project, 0, windows)
    rc, out, err = run(project, sn, "--metrics", "at5", "--plot")
    assert rc == 0, err
    # The precision/recall curves by ranking (one threshold for all classes, +-3 s): the tied written
    # confidences give one point (3 of 5 true); the token probabilities 0.9, 0.7, 0.6 (true), 0.3, 0.2 (false).
    (ax,) = saved_figures["precision_recall_by_ranking.png"].axes
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert list(drawn) == ["confidence", "token", "class"]
    assert drawn["confidence"] == ([1.0], [0.6])
    assert drawn["token"][0] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    assert drawn["token"][1] == pytest.approx([1, 1, 1, 0.75, 0.6])

    # Class scores by hand: per class, the windows' scores at the frame the answer named for that class, else
    # the window's middle (start + 1.4 s); NMS over 30 s keeps the highest within +-15 s (a tie: the earlier).
    middles = [99.4, 249.4, 399.4, 549.4, 699.4]
    # Token and class scores are written through their fixed transform (rankings.SCORE_TRANSFORMS).
    expected_class = [spotting("Goal", t, tempered(s)) for t, s in ((100, 0.6), (250, 0.95), (400, 0.4), (550, 0.1))]
    expected_class += [spotting("Goal", 699.4, tempered(0.05)), spotting("Corner", 700, tempered(0.9))]
    expected_class += [spotting(c, t, 0.0) for c in SOCCERNET_CLASSES if c != "Goal" for t in middles
                       if (c, t) != ("Corner", 699.4)]
    expected = {"confidence": [spotting(e["label"], e["event_time"], 0.8) for e in finals],
                "token": [spotting(e["label"], e["event_time"], tempered(e["token_prob"])) for e in finals],
                "class": expected_class}
    ranked = summary(project)["rankings"]
    goal_ap = {}
    for ranking, predictions in expected.items():
        ref = official_direct(tmp_path, {GAME: gt}, {GAME: predictions}, "at5")
        ours = ranked[ranking]["official"]["at5"]
        assert ours["a_mAP"] == pytest.approx(float(ref["a_mAP"]), abs=1e-12), ranking
        assert list(ours["a_mAP_per_class"].values()) == pytest.approx([float(v) for v in ref["a_mAP_per_class"]])
        goal_ap[ranking] = ours["a_mAP_per_class"]["Goal"]
        line = next(line for line in out.splitlines() if line.startswith(f"  {ranking} "))
        assert f"@5s {float(ref['a_mAP']):.4f}" in line, line
    assert goal_ap["confidence"] == pytest.approx(0.5) and goal_ap["token"] == 1
    assert len({round(v, 6) for v in goal_ap.values()}) == 3  # mixing two rankings up fails
    folders = {"token": "token_ranking/llava", "class": "class_ranking/llava"}
    for ranking, folder in folders.items():
        written = load(project / "soccernet_eval" / folder / GAME / "results_spotting.json")["predictions"]
        assert len(written) == len(expected[ranking])


def test_coinciding_ranking_curves_are_each_seen_and_a_panel_without_events_says_so(odd_root, saved_figures):
    """Token probabilities that order llava's events as its written confidences do give the same curve: both are
    drawn, told apart by line and marker, the later on top, and the legend says they are the same. qwen7b's final
    is empty: its panel says "no events" instead of standing blank."""
    gt = [ann(1, 100, "Goal"), ann(1, 400, "Goal")]
    scored = ((100, 0.9, 0.8), (250, 0.5, 0.3), (400, 0.7, 0.6))  # seconds, confidence, token probability
    finals = [{**pred(t, "Goal", c), "token_prob": p} for t, c, p in scored]
    project, sn = make_case(odd_root, "same_curves", {GAME: gt}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: finals}, "qwen7b": {0: []}})
    rc, out, err = run(project, sn, "--models", "llava,qwen7b", "--metrics", "none", "--plot")
    assert rc == 0, err
    llava_ax, qwen_ax = saved_figures["precision_recall_by_ranking.png"].axes
    assert llava_ax.get_title().startswith("llava:") and qwen_ax.get_title().startswith("qwen7b:")
    confidence, token, class_ = llava_ax.get_lines()
    assert [line.get_label() for line in (confidence, token, class_)] == ["confidence", "token (same as confidence)",
                                                                          "class: n/a"]
    assert list(token.get_xdata()) == list(confidence.get_xdata()) == pytest.approx([0.5, 1, 1])
    assert list(token.get_ydata()) == list(confidence.get_ydata()) == pytest.approx([1, 1, 2 / 3])
    assert token.get_linestyle() != confidence.get_linestyle() and token.get_marker() != confidence.get_marker()
    assert token.get_linewidth() < confidence.get_linewidth() and token.get_zorder() > confidence.get_zorder()
    assert [leg.get_text() for leg in llava_ax.get_legend().get_texts()][:2] == ["confidence",
                                                                                  "token (same as confidence)"]
    assert list(llava_ax.texts) == []
    assert [t.get_text() for t in qwen_ax.texts] == ["no events: qwen7b predicted nothing in the halves scored"]
    assert all(len(line.get_xdata()) == 0 for line in qwen_ax.get_lines())


def test_the_pooled_curve_is_the_sweep_of_all_classes_together():
    """rankings.pooled() reads the curve of one threshold for all classes off the per-class curves (one matching
    pass): the same points as sweeping every half and class at once, ties across classes included."""
    rng = random.Random(5)
    classes, halves, gt = SOCCERNET_CLASSES[:4], [], {}
    for index in range(3):
        events = [{"time": rng.uniform(0, 300), "label": rng.choice(classes),
                   "confidence": rng.choice([0.2, 0.5, 0.9, round(rng.random(), 3)])} for _ in range(60)]
        halves.append(soccernet.Half(index, "v.mkv", "g", 1, events=events))
        gt[index] = [{"time": rng.uniform(0, 300), "label": rng.choice(classes)} for _ in range(15)]
    direct = rankings.sweep(*rankings.by_class(halves, gt), 3.0)
    assert rankings.pooled(rankings.class_curves(halves, gt, 3.0)) == direct
    assert len(direct) < 180 and direct[-1][2] == 180 and direct[-1][1] > 0  # tied scores are one point; some pairs


def class_series_case(odd_root, name, goal_scores, answers=None):
    """One half whose archive has one window every 2 s from 0 s, Goal scored as goal_scores (others 0);
    answers {window start: raw text} (default "None")."""
    windows = [window(2.0 * k, (answers or {}).get(2.0 * k, "None"), scores(Goal=s)) for k, s in enumerate(goal_scores)]
    project, sn = make_case(odd_root, name, {GAME: [ann(1, 11, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [{**pred(11, "Goal"), "token_prob": 0.5}]}})
    write_archive(project, 0, windows)
    return project, sn


def class_goals(project):
    predictions = load(project / "soccernet_eval" / "class_ranking" / "llava" / GAME / "results_spotting.json")
    return [(int(p["position"]) / 1000, float(p["confidence"])) for p in predictions["predictions"]
            if p["label"] == "Goal"]


def raw_class_goals(project):
    """class_goals with the scores as the archive has them (the transform undone)."""
    return [(t, round(1 / (1 + ((1 - c) / c) ** 4), 9)) for t, c in class_goals(project)]


def test_nms_keeps_the_peaks_and_suppresses_neighbours_within_the_window(odd_root):
    # Window middles 1.4, 3.4, ..., 41.4 s. Peaks 0.9 at 11.4 and 0.8 at 31.4 s; 0.85 at 13.4 is within 5 s of
    # the first (suppressed at --nms-window 10), 0.6 at 19.4 is 8 s away (kept at 10, suppressed at 30).
    goal = [0.1] * 21
    for k, s in ((5, 0.9), (6, 0.85), (9, 0.6), (15, 0.8), (16, 0.7)):
        goal[k] = s
    project, sn = class_series_case(odd_root, "nms", goal)
    assert run(project, sn, "--metrics", "none", "--nms-window", "10")[0] == 0
    assert raw_class_goals(project) == [(1.4, 0.1), (11.4, 0.9), (19.4, 0.6), (25.4, 0.1), (31.4, 0.8), (37.4, 0.1)]
    assert run(project, sn, "--metrics", "none")[0] == 0  # default 30 s: +-15 s
    assert raw_class_goals(project) == [(11.4, 0.9), (31.4, 0.8)]
    assert load(project / "soccernet_eval" / "summary.json")["settings"]["nms_window"] == 30


def test_class_candidates_are_timed_at_the_frame_the_answer_named(odd_root):
    # Window 10 s names Goal at frame 11 (12.0 s, not its middle 11.4 s); window 30 s names a Corner only: its
    # Goal candidate stays at the middle.
    goal = [0.1] * 21
    goal[5], goal[15] = 0.9, 0.8
    answers = {10.0: "{'label': 'Goal', 'frame': 11}", 30.0: "{'label': 'Corner', 'frame': 11}"}
    project, sn = class_series_case(odd_root, "named", goal, answers)
    assert run(project, sn, "--metrics", "none")[0] == 0
    assert raw_class_goals(project) == [(12.0, 0.9), (31.4, 0.8)]


def test_thresholds_of_best_f1_per_class_and_applied_from_a_file(odd_root, tmp_path):
    # Goals at 100, 400, 700, 1000 s; by confidence: 1004 (0.95), 100 (0.9), 250 (0.8), 400 (0.7), 550 (0.6),
    # 700 (0.5), 850 (0.4). At +-3 s 1004 is false: F1 0, 1/3, 2/7, 1/2, 4/9, 3/5, 6/11 -> best 3/5 at 0.5.
    # At +-5 s it is true: 2/5, 2/3, 4/7, 3/4, 2/3, 4/5, 8/11 -> best 4/5, still at 0.5.
    gt = [ann(1, t, "Goal") for t in (100, 400, 700, 1000)] + [ann(1, 1200, "Corner"), ann(1, 1300, "Corner")]
    finals = [pred(t, "Goal", c) for t, c in ((1004, 0.95), (100, 0.9), (250, 0.8), (400, 0.7), (550, 0.6),
                                              (700, 0.5), (850, 0.4))]
    # Corners: F1 2/3 at 0.9 (1 of 1 true) and again at 0.6 (2 of 4): of equal F1, the higher threshold
    finals += [pred(t, "Corner", c) for t, c in ((1200, 0.9), (1500, 0.8), (1600, 0.7), (1300, 0.6))]
    finals = [{**p, "made_by": MADE} for p in finals]
    project, sn = make_case(odd_root, "thresholds", {GAME: gt}, [f"{GAME}/1_224p.mkv"], {"llava": {0: finals}})
    rc, out, err = run(project, sn, "--metrics", "none")
    assert rc == 0, err
    saved = load(project / "soccernet_eval" / "thresholds.json")
    best = saved["models"]["llava"]["confidence"]["Goal"]
    assert (best["threshold"], best["tp"], best["pred"], best["gt"]) == (0.5, 3, 6, 4)
    assert best["f1"] == pytest.approx(3 / 5) and best["precision"] == 0.5 and best["recall"] == 0.75
    assert saved["models"]["llava"]["confidence"]["Corner"]["threshold"] == 0.9
    assert saved["models"]["llava"]["confidence"]["Penalty"]["threshold"] is None  # no ground truth: not tuned
    assert saved["tolerance"] == 3 and saved["games"] == [GAME]
    assert saved["made_by"]["llava"] == [provenance.describe(MADE)]  # the run that made the predictions tuned on
    assert "tuned on the games scored here, which flatters them" in out
    assert run(project, sn, "--metrics", "none", "--tolerance", "5")[0] == 0
    assert summary(project)["rankings"]["confidence"]["best_f1"]["Goal"]["f1"] == pytest.approx(4 / 5)
    shutil.copy(project / "soccernet_eval" / "thresholds.json", tmp_path / "other_games.json")
    # Saved thresholds on another game: Goals at 100 and 400 s; 0.5 keeps 100 (0.9) and 250 (0.6), drops 400 (0.45)
    others = [pred(100, "Goal", 0.9), pred(250, "Goal", 0.6), pred(400, "Goal", 0.45)]
    other, sn2 = make_case(odd_root, "thresholds2", {GAME2: [ann(1, 100, "Goal"), ann(1, 400, "Goal")]},
                           [f"{GAME2}/1_224p.mkv"], {"llava": {0: [{**p, "made_by": MADE} for p in others]}})
    rc, out, err = run(other, sn2, "--metrics", "none", "--thresholds", str(tmp_path / "other_games.json"))
    assert rc == 0, err
    at = summary(other)["rankings"]["confidence"]["at_saved_thresholds"]["Goal"]
    assert (at["threshold"], at["tp"], at["pred"], at["gt"], at["f1"]) == (0.5, 1, 2, 2, 0.5)
    assert "not held out" not in out and "F1 sv" in out and "compares different runs" not in out
    # the saved file was tuned at +-5 s (its last run), these scored at +-3 s: said, and still applied
    assert f"⚠️ {tmp_path / 'other_games.json'} was tuned with --tolerance 5 (here 3): its thresholds may not" in out
    assert "--nms-window" not in out and "--dedup-s" not in out
    # predictions made by another run (bf16, not nf4): said in one line
    made_bf16 = {**MADE, "quantization": "bf16", "compute_dtype": "bfloat16", "nf4_weights": None}
    final = other / "final_predictions_llava_video_0.json"
    final.write_text(json.dumps([{**p, "made_by": made_bf16} for p in others]))
    rc, out, err = run(other, sn2, "--metrics", "none", "--tolerance", "5", "--thresholds",
                       str(tmp_path / "other_games.json"))
    assert rc == 0, err
    warned = [line for line in out.splitlines() if "compares different runs" in line]
    assert len(warned) == 1 and "nf4 (packed weights) computing in float16" in warned[0]
    assert "these were made by llava-hf/llava-v1.6-mistral-7b-hf @ abc123, bf16 computing in bfloat16" in warned[0]
    assert "was tuned with" not in out
    rc, out, err = run(project, sn, "--metrics", "none", "--thresholds", str(tmp_path / "other_games.json"))
    assert rc == 0 and "was tuned on 1 of the 1 games scored here" in out
    shutil.copy(project / "final_predictions_llava_video_0.json", project / "final_predictions_qwen7b_video_0.json")
    rc, out, err = run(project, sn, "--metrics", "none", "--models", "qwen7b",
                       "--thresholds", str(tmp_path / "other_games.json"))
    assert rc == 1 and "has no thresholds for qwen7b (it has llava)" in err and len(err.strip().splitlines()) == 1


def test_files_without_token_or_class_scores_show_n_a_with_one_line(odd_root):
    """Seed-format Qwen windows and an older llava final: written confidences only; the other two rankings
    are n/a, said in one line each, never filled in from another score."""
    qwen = [{"time": 98.0, "raw": "```json\n{'label': 'Goal', 'confidence': 0.8, 'frame': 8}\n```"}]
    project, sn = make_case(odd_root, "n_a", {GAME: [ann(1, 99.4, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"qwen7b": {0: qwen}, "llava": {0: [pred(99.4, "Goal")]}})
    rc, out, err = run(project, sn, "--models", "qwen7b,llava", "--metrics", "at5")
    assert rc == 0, err
    for model in ("qwen7b", "llava"):
        ranked = summary(project, model)["rankings"]
        assert ranked["confidence"]["official"]["at5"]["a_mAP"] == pytest.approx(1 / 17)
        assert not ranked["token"]["available"] and not ranked["class"]["available"]
        assert "official" not in ranked["token"] and "official" not in ranked["class"]
    said = [line.split() for line in out.splitlines() if "n/a:" in line]
    assert len(said) == 4 and [words[0] for words in said] == ["token", "class"] * 2
    assert out.count("n/a: video #0's final has no token probabilities (the seed's files and finals older than "
                     "them have none)") == 2
    assert "n/a: video #0 has no raw_answers_qwen7b_video_0.json.gz beside its final, where class scores" in out
    assert not (project / "soccernet_eval" / "token_ranking").exists()
    saved = load(project / "soccernet_eval" / "thresholds.json")["models"]["qwen7b"]
    assert saved["token"] is None and saved["confidence"]["Goal"]["threshold"] == 0.8


@pytest.mark.parametrize("made_by,why", [
    (None, "an archive older than them"),
    ({"class_scores": False}, "its run had them switched off (--class-scores no)")])
def test_an_archive_without_class_scores_says_why_in_its_n_a_line(odd_root, made_by, why):
    """Class scores missing from every window: n/a with the reason the archive's made_by gives (a run with
    --class-scores no is not called an older archive)."""
    project, sn = make_case(odd_root, f"why_{made_by is None}", {GAME: [ann(1, 99.4, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(99.4, "Goal")]}})
    write_archive(project, 0, [window(98.0, "{'label': 'Goal'}", None)], made_by=made_by)
    rc, out, err = run(project, sn, "--models", "llava", "--metrics", "at5")
    assert rc == 0, err
    assert f"n/a: raw_answers_llava_video_0.json.gz has no class scores ({why})" in out, out


THRESHOLD_FORMS = [  # what a hand-written or edited thresholds.json may hold -> the one line it gives
    ({"models": {"llava": {"confidence": {"Goal": 0.5}}}},
     'models.llava.confidence.Goal is 0.5, not {"threshold": a number in [0, 1] or null}'),
    ({"models": {"llava": {"confidence": [0.5]}}}, "models.llava.confidence is [0.5], not {class: "),
    ({"models": {"llava": "0.5"}}, 'models.llava is "0.5", not {ranking: '),
    ({"models": ["llava"]}, 'models is ["llava"], not {model: '),
    ({"models": {"llava": {}}, "made_by": {"llava": 5}}, "made_by.llava is 5, not a list of run descriptions"),
    ({"models": {"llava": {}}, "games": [["a"]]}, 'games is [["a"]], not a list of game folders'),
    ({"models": {"llava": {}}, "tolerance": "3"}, 'tolerance is "3", not a number of seconds, 0 or more'),
    ({"models": {"llava": {"confidence": {"Goal": {"threshold": 2}}}}},
     "models.llava.confidence.Goal.threshold is 2, not a number in [0, 1] or null"),
    ({"models": {"llava": {"confidence": {"goal": {"threshold": 0.5}}}}},
     "models.llava.confidence has 'goal', which is no SoccerNet class: did you mean 'Goal'?"),
    ({"models": {"llava": {"Confidence": {}}}}, "models.llava has 'Confidence', which is no ranking: did you mean "
                                                "'confidence'?"),
    ({"model": {"llava": {}}}, "the file has 'model', which is no key of a thresholds.json: did you mean 'models'?"),
    ({"models": {"lava": {}}}, "has no thresholds for llava (it has lava; did you mean lava?)"),
    (None, "thresholds file not found: {path}"),
]


@pytest.mark.parametrize("form,expected", THRESHOLD_FORMS)
def test_a_thresholds_file_is_checked_whole_before_anything_is_written(odd_root, tmp_path, form, expected):
    """Every wrong type or unknown name in --thresholds FILE is one line naming the file, the place in it and the
    form expected (the closest name for a misspelt one): never a traceback, never silently ignored, and nothing
    written (no --out folder)."""
    project, sn = make_case(odd_root, "bad thresholds", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal")]}})
    path = tmp_path / "thresholds.json"
    if form is not None:
        path.write_text(json.dumps(form))
    rc, out, err = run(project, sn, "--metrics", "none", "--thresholds", str(path))
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("evaluate_soccernet.py: error: thresholds file ") and str(path) in err
    assert expected.replace("{path}", str(path)) in err
    assert not (project / "soccernet_eval").exists() and not list(project.glob(".soccernet_eval*"))


def test_outputs_are_one_set_an_earlier_run_is_kept_whole_or_replaced_whole(odd_root, monkeypatch):
    """Run 1 scores videos 0 and 1 (two games). Run 2 stops part-way (the official evaluator cannot load, after
    results_spotting.json files were written): --out is still run 1's, file for file. Run 3 scores video 1 only:
    --out holds its set alone, no game of run 1 beside it. A folder of other files is refused, untouched."""
    labels = {GAME: [ann(1, 100, "Goal")], GAME2: [ann(1, 50, "Goal")]}
    project, sn = make_case(odd_root, "one set", labels, [f"{GAME}/1_224p.mkv", f"{GAME2}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal")], 1: [pred(50, "Goal")]}})
    out = project / "soccernet_eval"
    assert run(project, sn, "--metrics", "none")[0] == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len([p for p in first if p.name == "results_spotting.json"]) == 2
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "SoccerNet.Evaluation.ActionSpotting", None)  # import fails part-way
        rc, _, err = run(project, sn, "--metrics", "at1", "--videos", "1")
    assert rc == 1 and "the official SoccerNet evaluator is not installed" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".soccernet_eval")) == []
    assert run(project, sn, "--metrics", "none", "--videos", "1")[0] == 0
    spotting = sorted(str(p.relative_to(out).parent) for p in out.rglob("results_spotting.json"))
    assert spotting == [f"llava/{GAME2}"] and [v["index"] for v in summary(project)["videos"]] == [1]
    (out / "notes.txt").write_text("mine")
    rc, _, err = run(project, sn, "--metrics", "none")
    assert rc == 1 and f"--out {out} holds notes.txt, which evaluate_soccernet.py does not write" in err
    assert (out / "notes.txt").read_text() == "mine" and [v["index"] for v in summary(project)["videos"]] == [1]


def test_a_huge_range_is_bounded_by_videos_txt(odd_root):
    """--videos 0-999999999: one line naming what videos.txt lacks, at once (no MemoryError)."""
    project, sn = make_case(odd_root, "huge", {GAME: [ann(1, 100, "Goal")]}, [f"{GAME}/1_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal")]}})
    rc, out, err = run(project, sn, "--metrics", "none", "--videos", "0-999999999")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"--videos asks for 1-999999999 but {project} has no final_predictions_llava_video_<N>.json for them " \
           f"({project / 'videos.txt'} lists 1 videos)" in err
    assert run(project, sn, "--metrics", "none", "--videos", "0")[0] == 0


def test_a_final_whose_video_changed_or_is_gone_is_warned_once(odd_root):
    """The words status_llava.py uses: changed (other bytes) or gone (renamed or deleted)."""
    videos = [f"{GAME}/1_224p.mkv", f"{GAME2}/1_224p.mkv"]
    labels = {GAME: [ann(1, 30, "Goal")], GAME2: [ann(1, 30, "Goal")]}
    project, sn = make_case(odd_root, "changed", labels, videos, {})
    finals = {}
    for i, v in enumerate(videos):
        (project / "raw_data" / v).parent.mkdir(parents=True)
        (project / "raw_data" / v).write_bytes(v.encode() * 1000)
        made = {**MADE, "video_file": provenance.video_file(project, project / "raw_data" / v)}
        finals[i] = [{**pred(30, "Goal"), "video": v, "made_by": made}]  # early: no probe for its length
        (project / f"final_predictions_llava_video_{i}.json").write_text(json.dumps(finals[i]))
    rc, out, err = run(project, sn, "--metrics", "none")
    assert rc == 0 and "its video file" not in out, err
    (project / "raw_data" / videos[0]).write_bytes(b"other bytes" * 1000)
    (project / "raw_data" / videos[1]).unlink()
    rc, out, err = run(project, sn, "--metrics", "none")
    assert rc == 0, err
    warned = [line for line in out.splitlines() if "its video file" in line]
    assert warned == [f"⚠️ llava: video #0 ({videos[0]}): its video file changed since: delete the final and its "
                      f"raw_answers file to redo it",
                      f"⚠️ llava: video #1 ({videos[1]}): its video file raw_data/{videos[1]} is gone (renamed or "
                      f"deleted?): a renamed video is listed again under a new index, which a run processes again; "
                      f"delete this final and its raw_answers file once that one is done"]


def test_saved_thresholds_keep_scores_equal_to_them_on_every_scale(odd_root, tmp_path):
    """Written confidences sit on round values: six Kick-offs written at 0.9 against a saved threshold of 0.9 are
    all kept (>=), not none (>). Their token probabilities, 0.9 too, against a threshold of a file older than the
    score transform (raw 0.9, mapped on reading) and of a current file (mapped 0.9): kept as well. A file tuned
    through another transform stops with one line."""
    times = [100, 300, 500, 700, 900, 1100]
    project, sn = make_case(odd_root, "round", {GAME: [ann(1, t, "Kick-off") for t in times]},
                            [f"{GAME}/1_224p.mkv"], {"llava": {0: [{**pred(t, "Kick-off", 0.9), "token_prob": 0.9}
                                                                   for t in times]}})
    rows = {c: {"threshold": 0.9 if c == "Kick-off" else None} for c in SOCCERNET_CLASSES}
    saved = {"models": {"llava": {"confidence": rows, "token": rows}}}
    (tmp_path / "older.json").write_text(json.dumps(saved))
    mapped = {c: {"threshold": rankings.mapped(r["threshold"], "token") if r["threshold"] else None}
              for c, r in rows.items()}
    current = {**saved, "models": {"llava": {"confidence": rows, "token": mapped}},
               "score_transforms": rankings.SCORE_TRANSFORMS}
    (tmp_path / "current.json").write_text(json.dumps(current))
    for name in ("older.json", "current.json"):
        rc, out, err = run(project, sn, "--metrics", "none", "--thresholds", str(tmp_path / name))
        assert rc == 0, err
        for ranking in ("confidence", "token"):
            at = summary(project)["rankings"][ranking]["at_saved_thresholds"]["Kick-off"]
            assert (at["pred"], at["tp"], at["f1"]) == (6, 6, 1.0), (name, ranking)
    written = load(project / "soccernet_eval" / "thresholds.json")
    assert written["score_transforms"] == load(project / "soccernet_eval" / "summary.json")["score_transforms"]
    assert written["score_transforms"]["token"]["name"] == "tempered odds"
    other = {**current, "score_transforms": {**rankings.SCORE_TRANSFORMS, "token": {"name": "identity"}}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    rc, out, err = run(project, sn, "--metrics", "none", "--thresholds", str(tmp_path / "other.json"))
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "its token thresholds are on scores mapped by {'name': 'identity'}, this version maps them by " \
           "tempered odds" in err


@pytest.mark.slow  # a real worker run on a 31 s video (15 windows), its merge, and the official evaluator
def test_a_worker_runs_merge_gives_numbers_for_all_three_rankings(odd_root, video_2997fps, goal_checkpoint):
    """End to end: the tiny checkpoint that answers Goal (frame 8, confidence 0.9) for every window, one worker,
    the merge, then evaluate against a Labels-v2.json written here: each ranking (written confidence, token
    probability, class scores) gives an official number, none n/a. Goals every 4 s: every candidate (window
    middles, 2 s apart) is within the 5 s metric's +-2.5 s of one."""
    import llava_split_worker
    import merge_results_llava
    game = "league/season/game"
    project = make_project(odd_root / "end_to_end", {f"{game}/1_224p.mp4": video_2997fps})
    assert llava_split_worker.main(["--gpu-id", "0", "--num-workers", "1", "--video-index", "0", "--project",
                                    str(project), "--model", str(goal_checkpoint), "--quantization", "fp32"]) == 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert merge_results_llava.main(["--video_index", "0", "--project", str(project)]) == 0
    sn = odd_root / "end_to_end" / "SoccerNet"
    (sn / game).mkdir(parents=True, exist_ok=True)
    (sn / game / "Labels-v2.json").write_text(json.dumps({"annotations": [ann(1, 1.4 + 4 * k, "Goal")
                                                                                for k in range(7)]}))
    rc, out, err = run(project, sn, "--metrics", "at5")
    assert rc == 0, err
    ranked = summary(project)["rankings"]
    for ranking in ("confidence", "token", "class"):
        assert ranked[ranking]["available"], ranked[ranking].get("note")
        ap = ranked[ranking]["official"]["at5"]["a_mAP_per_class"]["Goal"]
        assert 0 < ap <= 1, ranking
        line = next(line for line in out.splitlines() if line.startswith(f"  {ranking} "))
        assert "@5s 0." in line and "n/a" not in line, line
    assert "n/a" not in out


def test_without_models_every_model_with_finals_in_the_project_is_scored(odd_root):
    """Issue 32: LLaVA's finals, our Qwen2.5-VL run's (tag qwen2.5vl) and the seed's per-window Qwen file (qwen7b)
    sit side by side in one project: evaluate without --models scores all three, and one line names them."""
    seed_window = {"time": 99.0, "raw": '```json\n{"label": "Goal", "team": "home", "confidence": 0.9}\n```'}
    project, sn = make_case(odd_root, "two_families", {GAME: [ann(1, 100, "Goal"), ann(1, 200, "Foul")]},
                            [f"{GAME}/1_224p.mkv", f"{GAME}/2_224p.mkv"],
                            {"llava": {0: [pred(100, "Goal")], 1: [pred(50, "Goal")]},
                                                     "qwen2.5vl": {0: [pred(100, "Goal"), pred(200, "Foul")]},
                                                     "qwen7b": {0: [seed_window]}})
    rc, out, err = run(project, sn, "--metrics", "none")
    assert rc == 0, err
    assert f"models: llava, qwen2.5vl, qwen7b (every model with finals in {project}; --models picks)" in out
    summary = json.loads((project / "soccernet_eval" / "summary.json").read_text())
    recall = {s["model"]: [c for c in s["per_class"] if c["class"] == "Foul"][0]["recall"] for s in summary["models"]}
    assert recall == {"llava": 0.0, "qwen2.5vl": 1.0, "qwen7b": 0.0}
    rc, out, err = run(project, sn, "--metrics", "none", "--videos", "0-1")  # only LLaVA has both: said so
    assert rc == 0, err
    assert (f"models: llava (every model with finals in {project}; qwen2.5vl, qwen7b lack some of --videos, left "
            f"out; --models picks)") in out
    rc, out, err = run(project, sn, "--metrics", "none", "--models", "qwen2.5vl")
    assert rc == 0 and "models: " not in out, err
    assert [s["model"] for s in json.loads((project / "soccernet_eval" / "summary.json").read_text())["models"]] == \
        ["qwen2.5vl"]
