"""compare_counts.py on the real Qwen files and on hand-made LLaVA finals."""
import csv
import json
import random
import shutil

import pytest

import compare_counts
from conftest import SEED_PREDICTIONS, bar_heights, load, tick_labels
from llava_soccer import settings, videos
from llava_soccer.events import final_events
from llava_soccer.matching import match

SEED = SEED_PREDICTIONS
needs_seed = pytest.mark.skipif(not (SEED / "qwen7b").is_dir(), reason="shared/data/seed_predictions is absent")

# Seed-format Qwen windows ({time, raw}); events sit at the window's middle (+1.4 s).
QWEN = [
    {"time": 10.0, "raw": '```json\n{"label": "Goal", "team": "home", "confidence": 0.9}\n```'},       # 11.4
    {"time": 12.0, "raw": '```json\n{"label": "Goal", "team": "home", "confidence": 0.8}\n```'},       # 13.4: dup
    {"time": 20.0, "raw": '```json\n{"label": "Foul", "team": "away", "confidence": 0.9}\n```'},       # 21.4
    {"time": 30.0, "raw": '```json\n{"label": "Corner", "team": "away", "confidence": 0.9}\n```'},     # 31.4
    {"time": 40.0, "raw": "A player from the away team kicks the ball."},
    {"time": 50.0, "raw": '```json\n{"label": "Shot on target", "team": "home", "confidence": 0.9}\n```'},  # 51.4
]


def llava(label, t, confidence=0.7, team="home"):
    return {"time": t - t % 2, "raw": f"{{'label': '{label}'}}", "label": label, "label_raw": label, "team": team,
            "confidence": confidence, "details": "d", "event_time": t, "frame": 1}


LLAVA = [llava("Goal", 12.0, 0.5), llava("Foul", 30.0), llava("Offside", 31.0), llava("Shots on target", 55.0)]


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "my 'soccer' project"
    p.mkdir()
    for video in (0, 2):
        settings.final_path(p, video, "qwen7b").write_text(json.dumps(QWEN))
        settings.final_path(p, video, "llava").write_text(json.dumps(LLAVA))
    settings.final_path(p, 3, "qwen7b").write_text(json.dumps(QWEN))  # no LLaVA file for video 3
    return p


def rows(out):
    return [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in ("0", "2", "total")]


def test_table_counts_both_only_and_disagreements(project, capsys):
    code = compare_counts.main(["--project", str(project)])  # --videos all: every video with a final
    out = capsys.readouterr().out
    assert code == 0
    # qwen: Goal 11.4 (13.4 is its duplicate), Foul 21.4, Corner 31.4, Shots on target 51.4
    # llava: Goal 12.0 (matches), Foul 30.0, Offside 31.0 (vs Corner 31.4: a disagreement), SoT 55.0 (3.6 s: no)
    assert rows(out) == [["0", "4", "4", "1", "3", "3", "1"], ["2", "4", "4", "1", "3", "3", "1"],
                         ["total", "8", "8", "2", "6", "6", "2"]]
    assert "no final_predictions_llava_video_N.json for videos: 3 (not compared)" in out
    assert "no final_predictions_qwen7b" not in out
    assert "  Corner / Offside: 2" in out
    section = out.split("per label, 2 videos:")[1].split("most frequent")[0]
    per_label = {line.rsplit(None, 3)[0]: line.rsplit(None, 3)[1:] for line in section.splitlines()[2:] if line}
    assert per_label == {"Goal": ["2", "2", "2"], "Foul": ["2", "2", "0"], "Shots on target": ["2", "2", "0"],
                         "Corner": ["2", "0", "0"], "Offside": ["0", "2", "0"]}


def test_videos_flag_lists_the_missing_finals(project, capsys):
    assert compare_counts.main(["--project", str(project), "--videos", "0-5"]) == 0
    out = capsys.readouterr().out
    assert [r[0] for r in rows(out)] == ["0", "2", "total"]
    assert "no final_predictions_qwen7b_video_N.json for videos: 1, 4-5 (not compared)" in out
    assert "no final_predictions_llava_video_N.json for videos: 1, 3-5 (not compared)" in out


def test_tolerance_flag(project, capsys):
    compare_counts.main(["--project", str(project), "--videos", "0", "--tolerance", "4"])
    assert rows(capsys.readouterr().out)[0] == ["0", "4", "4", "2", "2", "2", "1"]  # SoT 3.6 s apart now matches


def test_ensemble_csv_and_plot(project, tmp_path, capsys, saved_figures):
    out_dir, table, png = tmp_path / "ens", tmp_path / "counts.csv", tmp_path / "counts.png"
    code = compare_counts.main(["--project", str(project), "--videos", "0-3", "--ensemble", str(out_dir),
                                "--csv", str(table), "--plot", str(png)])
    assert code == 0
    (goal,) = load(settings.final_path(out_dir, 0, "ensemble"))
    assert (goal["label"], goal["event_time"], goal["confidence"], goal["team"]) == ("Goal", 11.7, 0.7, "home")
    assert goal["models"]["qwen7b"]["event_time"] == 11.4 and goal["models"]["llava"]["confidence"] == 0.5
    assert goal["time"] == 10.0 and goal["raw"] == QWEN[0]["raw"]
    assert [e["label"] for e in final_events([goal])] == ["Goal"]  # readable like any final file
    assert goal["video"] is None  # neither file says which video it came from (see the next test)
    assert sorted(p.name for p in out_dir.iterdir()) == ["final_predictions_ensemble_video_0.json",
                                                         "final_predictions_ensemble_video_2.json"]
    with open(table) as f:
        assert list(csv.reader(f)) == [
            ["video", "qwen7b", "llava", "both", "only_qwen7b", "only_llava", "disagree"],
            ["0", "4", "4", "1", "3", "3", "1"], ["2", "4", "4", "1", "3", "3", "1"],
            ["total", "8", "8", "2", "6", "6", "2"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    top, bottom = saved_figures["counts.png"].axes  # what is drawn: the table's numbers
    assert top.get_title() == "Events per video" and tick_labels(top.xaxis) == ["0", "2"]  # no game known: indices
    assert bar_heights(top) == {"qwen7b": [4, 4], "llava": [4, 4], "found by both": [1, 1]}
    assert top.get_yscale() == "linear" and bottom.get_xscale() == "linear"  # counts alike: a linear axis
    assert bottom.get_title(loc="left") == "Events per label"
    assert tick_labels(bottom.yaxis) == ["Goal", "Foul", "Corner", "Shots on target", "Offside"]
    assert bar_heights(bottom) == {"qwen7b": [2, 2, 2, 2, 0], "llava": [2, 2, 0, 2, 2],
                                   "found by both": [2, 0, 0, 0, 0]}


def test_the_plot_of_one_video_names_its_game(project, tmp_path, capsys, saved_figures):
    """Every SoccerNet half is 1_224p.mkv or 2_224p.mkv: the title of a one-video plot says which game."""
    game = "england_epl/2015-2016/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham"
    (project / "videos.txt").write_text("".join(f"{game}/{h}_224p.mkv\n" for h in (1, 2, 1, 2)))
    png = tmp_path / "one.png"
    assert compare_counts.main(["--project", str(project), "--videos", "2", "--plot", str(png)]) == 0, \
        capsys.readouterr().err
    figure = saved_figures["one.png"]
    top, _ = figure.axes
    assert figure.get_suptitle() == f"Events in video 2 ({videos.display_name(f'{game}/1_224p.mkv', 100)})"
    assert game in figure.get_suptitle() and bar_heights(top) == {"qwen7b": [4], "llava": [4], "found by both": [1]}
    assert tick_labels(top.xaxis) == ["2: 2015-08-29 Liverpool 0 - 3 West Ham (1)"]


@needs_seed
def test_the_plot_of_real_qwen_files_shows_llavas_counts_per_game_and_class(tmp_path, capsys, saved_figures):
    """Qwen's ~850 events per video against LLaVA's 10-15 of its first minute: a log axis, so LLaVA's bars are
    seen; one tick per game (named from videos.txt); rows for the 17 classes only,
    every other label ('Premier League logo', Qwen's 'Other') summed into one row."""
    games = ["england_epl/2015-2016/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham",
             "spain_laliga/2016-2017/2016-09-10 - 21-30 Barcelona 1 - 2 Alaves"]
    (tmp_path / "videos.txt").write_text(f"{games[0]}/1_224p.mkv\n{games[0]}/2_224p.mkv\n{games[1]}/2_224p.mkv\n")
    labels = ["Throw-in", "Foul", "Premier League logo", "Corner", "Goal", "Clearance"] * 2
    for video in (0, 1, 2):
        shutil.copy(SEED / f"qwen7b/final_predictions_qwen7b_video_{video}.json",
                    settings.final_path(tmp_path, video, "qwen7b"))
        events = [llava(label, 5.0 * k + 1) for k, label in enumerate(labels)]
        settings.final_path(tmp_path, video, "llava").write_text(json.dumps(events[:10 + video]))
    png = tmp_path / "counts.png"
    assert compare_counts.main(["--project", str(tmp_path), "--plot", str(png)]) == 0, capsys.readouterr().err
    lines = map(str.split, capsys.readouterr().out.splitlines())
    table = {r[0]: r[1:] for r in lines if r[:1] in (["0"], ["1"], ["2"])}
    top, bottom = saved_figures["counts.png"].axes
    assert top.get_yscale() == "symlog" and bottom.get_xscale() == "symlog"
    assert tick_labels(top.yaxis)[:4] == ["0", "1", "10", "100"]  # plain numbers, not powers of ten
    heights = bar_heights(top)
    assert heights["llava"] == [10, 11, 12] and heights["qwen7b"] == [int(table[v][0]) for v in "012"]
    assert min(heights["qwen7b"]) > 10 * max(heights["llava"])
    assert tick_labels(top.xaxis) == ["0: 2015-08-29 Liverpool 0 - 3 West Ham (1)",
                                      "1: 2015-08-29 Liverpool 0 - 3 West Ham (2)",
                                      "2: 2016-09-10 Barcelona 1 - 2 Alaves (2)"]
    drawn = tick_labels(bottom.yaxis)
    assert set(drawn[:-1]) <= set(settings.SOCCERNET_CLASSES) and "Premier League logo" not in drawn
    assert {"Throw-in", "Foul", "Corner", "Goal", "Clearance"} <= set(drawn)
    per_row = dict(zip(drawn, zip(*bar_heights(bottom).values())))
    other = drawn[-1]
    assert other.startswith("other labels (") and per_row[other][1] == 2 + 2 + 2  # LLaVA's logos, 2 per video
    assert sum(qwen for qwen, _, _ in per_row.values()) == sum(heights["qwen7b"])  # each Qwen event in one row


@needs_seed
def test_real_qwen_files_as_they_are(tmp_path, capsys):
    # Video 0 of the real Qwen run against a LLaVA final holding the same events (our format).
    qwen = SEED / "qwen7b/final_predictions_qwen7b_video_0.json"
    shutil.copy(qwen, settings.final_path(tmp_path, 0, "qwen7b"))
    same = [llava(e["label"], e["time"], e["confidence"], e["team"]) for e in final_events(load(qwen))]
    settings.final_path(tmp_path, 0, "llava").write_text(json.dumps(same))
    assert compare_counts.main(["--project", str(tmp_path), "--videos", "0"]) == 0
    # 950 windows -> 854 events once a label repeated within 3 s counts once (checked with a
    # naive greedy pass): the same rule for both files, so all match.
    assert rows(capsys.readouterr().out) == [["0", "854", "854", "854", "0", "0", "0"],
                                             ["total", "854", "854", "854", "0", "0", "0"]]


@needs_seed
def test_real_phi_files_are_empty(capsys):
    code = compare_counts.main(["--dirs", str(SEED / "qwen7b"), str(SEED / "phi3.5"), "--models", "qwen7b", "phi3.5",
                                "--videos", "0-11"])
    out = capsys.readouterr().out
    assert code == 0
    assert rows(out)[-1] == ["total", "10635", "0", "0", "10635", "0", "0"]


def test_a_final_of_another_video_is_refused_and_the_ensemble_names_its_video(project, tmp_path, capsys):
    (project / "videos.txt").write_text("league/game/1_224p.mkv\nleague/game/2_224p.mkv\nleague/x/1_224p.mkv\n")
    for video, source in ((0, "league/game/1_224p.mkv"), (2, "league/x/1_224p.mkv")):
        settings.final_path(project, video, "llava").write_text(json.dumps([{**r, "video": source} for r in LLAVA]))
    code = compare_counts.main(["--project", str(project), "--videos", "0-3", "--ensemble", str(tmp_path / "ens")])
    assert code == 0, capsys.readouterr().err
    assert {r["video"] for r in load(settings.final_path(tmp_path / "ens", 2, "ensemble"))} == {"league/x/1_224p.mkv"}
    settings.final_path(project, 2, "llava").write_text(json.dumps([{**r, "video": "league/game/2_224p.mkv"}
                                                                     for r in LLAVA]))  # video 1's final, as 2's
    assert compare_counts.main(["--project", str(project), "--videos", "0-3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"compare_counts.py: error: {settings.final_path(project, 2, 'llava')} was made from 'league/game/2_224p.mkv', "
        f"but video #2 of {project / 'videos.txt'} is 'league/x/1_224p.mkv'")


def test_errors_are_one_line(project, tmp_path, capsys, monkeypatch):
    assert compare_counts.main(["--project", str(tmp_path / "missing"), "--videos", "0-3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"project directory {tmp_path / 'missing'} (--project) does not exist" in err
    (tmp_path / "empty").mkdir()
    assert compare_counts.main(["--project", str(tmp_path / "empty"), "--videos", "0-3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no video of --videos has both final_predictions_qwen7b_video_N.json" in err
    bad = settings.final_path(project, 2, "llava")
    bad.write_text("[{")
    assert compare_counts.main(["--project", str(project), "--videos", "0-3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "not valid JSON" in err
    bad.write_text('{"time": 1}')
    assert compare_counts.main(["--project", str(project), "--videos", "0-3"]) == 1
    assert capsys.readouterr().err == (  # the one reader of finals (records.read_final): evaluate says the same
        f"compare_counts.py: error: predictions file {bad} is not a JSON list of {{\"time\": ..., ...}} records (a "
        "final_predictions_*.json?): move it away, or rerun that video (merge_results_llava.py writes it)\n")
    bad.write_text('[{"time": 1.0, "raw": "None", "video": "a.mkv"}, {"raw": "None", "video": "a.mkv"}]')  # ours
    assert compare_counts.main(["--project", str(project), "--videos", "0-3"]) == 1
    assert capsys.readouterr().err.startswith(f"compare_counts.py: error: predictions file {bad}: record #1 has no "
                                              "\"time\" ({\"raw\": \"None\", \"video\": \"a.mkv\"}); times are seconds")
    with pytest.raises(SystemExit) as e:
        compare_counts.main(["--videos", "5-2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --videos: '5-2': START (5) is after END (2): write the range 2-5" in err
    monkeypatch.setenv("LLAVA_MATCH_S", "three")  # environment values are checked like the flag
    with pytest.raises(SystemExit) as e:
        compare_counts.main([])
    assert e.value.code == 2 and "LLAVA_MATCH_S='three' is not a valid --tolerance value" in capsys.readouterr().err



def best_by_brute_force(a, b, tolerance, key):
    """(most pairs, least total |dt| among those) over every one-to-one matching."""
    def dt(i, j):
        return abs(a[i]["time"] - b[j]["time"])

    def go(i, used):
        if i == len(a):
            return 0, 0.0
        count, cost = go(i + 1, used)  # a[i] unmatched
        best = (count, -cost)
        for j in range(len(b)):
            if j not in used and key(a[i]) == key(b[j]) and dt(i, j) <= tolerance + 1e-9:
                count, cost = go(i + 1, used | {j})
                best = max(best, (count + 1, -(cost + dt(i, j))))
        return best[0], -best[1]
    return go(0, frozenset())


@pytest.mark.parametrize("key", [lambda e: e["label"], lambda e: None], ids=["same label", "any label"])
def test_match_is_a_maximum_matching(key):
    rng = random.Random(12)
    for case in range(300):
        tolerance = rng.choice([0, 1, 2.5, 3])
        spread = rng.choice([4, 10, 30])

        def events(spread=spread):  # whole and fractional seconds: exact ties and exactly-tolerance gaps happen
            return [{"time": rng.choice([rng.randint(0, spread), round(rng.uniform(0, spread), 1)]),
                     "label": rng.choice("GGC")} for _ in range(rng.randint(0, 6))]
        a, b = events(), events()
        pairs = match(a, b, tolerance, key=key)
        assert pairs == sorted(pairs)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)  # one-to-one
        assert all(key(a[i]) == key(b[j]) and abs(a[i]["time"] - b[j]["time"]) <= tolerance + 1e-9 for i, j in pairs)
        count, cost = best_by_brute_force(a, b, tolerance, key)
        assert len(pairs) == count, (case, a, b, tolerance)
        # among the maximum matchings, the closest: least total time difference
        assert sum(abs(a[i]["time"] - b[j]["time"]) for i, j in pairs) == pytest.approx(cost, abs=1e-9), (case, a, b)


def test_match_pairs_across_a_prediction_between_two_events():
    gt = [{"time": 100.0, "label": "Goal"}, {"time": 104.0, "label": "Goal"}]
    predicted = [{"time": 102.2, "label": "Goal"}, {"time": 106.5, "label": "Goal"}]
    assert match(gt, predicted, 3) == [(0, 0), (1, 1)]  # closest pair first gave [(1, 0)]
    # one pair possible: the closer one is taken (here the later partner)
    assert match([{"time": 10.0, "label": "Goal"}], [{"time": 7.5, "label": "Goal"}, {"time": 10.1, "label": "Goal"}],
                 3) == [(0, 1)]
    assert match(gt, [{"time": 103.0, "label": "Goal"}], 3) == [(1, 0)]  # 1 s from 104 beats 3 s from 100
    assert match(gt, [{"time": 107.0, "label": "Goal"}], 3) == [(1, 0)]  # exactly 3 s: within tolerance
    assert match(gt, [{"time": 102.0, "label": "Corner"}], 3) == []


def test_match_tolerance_is_inclusive_despite_float_error():
    """4.4 - 1.4 is 3.0000000000000004: events 3 s apart on paper match at +-3 s (settings.TIME_EPS)."""
    assert 4.4 - 1.4 > 3.0
    assert match([{"time": 1.4, "label": "Goal"}], [{"time": 4.4, "label": "Goal"}], 3.0) == [(0, 0)]
    assert match([{"time": 4.4, "label": "Goal"}], [{"time": 1.4, "label": "Goal"}], 3.0) == [(0, 0)]
    assert match([{"time": 1.4, "label": "Goal"}], [{"time": 4.41, "label": "Goal"}], 3.0) == []


def test_compare_counts_the_maximum_matching(tmp_path, capsys):
    qwen = [llava("Goal", 100.0), llava("Goal", 104.0)]
    settings.final_path(tmp_path, 0, "qwen7b").write_text(json.dumps(qwen))
    settings.final_path(tmp_path, 0, "llava").write_text(json.dumps([llava("Goal", 102.2), llava("Goal", 106.5)]))
    assert compare_counts.main(["--project", str(tmp_path), "--videos", "0", "--dedup-s", "0"]) == 0
    assert rows(capsys.readouterr().out)[0] == ["0", "2", "2", "2", "0", "0", "0"]  # was both 1, only 1 and 1


def test_no_events_in_either_model_is_a_table_of_zeros(tmp_path, capsys, saved_figures):
    for video in (0, 1):
        settings.final_path(tmp_path, video, "qwen7b").write_text("[]")
        settings.final_path(tmp_path, video, "llava").write_text(json.dumps(
            [{"time": 4.0, "raw": "A player from the away team kicks the ball."}]))  # no event in it
    table, png, ens = tmp_path / "counts.csv", tmp_path / "counts.png", tmp_path / "ens"
    code = compare_counts.main(["--project", str(tmp_path), "--videos", "0-1", "--csv", str(table), "--plot", str(png),
                                "--ensemble", str(ens)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    table_lines = [line.split() for line in captured.out.splitlines()[2:5]]
    assert table_lines == [["0", "0", "0", "0", "0", "0", "0"], ["1", "0", "0", "0", "0", "0", "0"],
                           ["total", "0", "0", "0", "0", "0", "0"]]
    assert "no events in either model's files (2 videos compared): nothing to compare per label" in captured.out
    assert "most frequent disagreements" not in captured.out
    with open(table) as f:
        assert list(csv.reader(f))[-1] == ["total", "0", "0", "0", "0", "0", "0"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top, bottom = saved_figures["counts.png"].axes
    assert bar_heights(top) == {"qwen7b": [0, 0], "llava": [0, 0], "found by both": [0, 0]}
    assert [t.get_text() for t in bottom.texts] == ["no events in either model's files"] and not bottom.axison
    assert load(settings.final_path(ens, 0, "ensemble")) == [] and load(settings.final_path(ens, 1, "ensemble")) == []


def test_the_current_directory_is_the_project_when_soccer_project_is_unset(project, monkeypatch, capsys):
    """compare (and evaluate, status: settings.project_dir) run in a project directory need no SOCCER_PROJECT;
    elsewhere the default stays ~/soccer_project."""
    monkeypatch.delenv("SOCCER_PROJECT", raising=False)
    (project / "videos.txt").write_text("a.mkv\nb.mkv\nc.mkv\nd.mkv\n")
    monkeypatch.chdir(project)
    assert compare_counts.main([]) == 0
    out, err = capsys.readouterr()
    assert err == f"project: {project} (the current directory: SOCCER_PROJECT is not set and it has raw_data/ or " \
                  "videos.txt)\n"
    assert rows(out)[-1][0] == "total"
    monkeypatch.chdir(project.parent)
    monkeypatch.setenv("HOME", str(project.parent))
    assert settings.project_dir(must_exist=False) == project.parent / "soccer_project"


def test_the_ensemble_uses_token_probabilities_where_both_models_have_them(project, tmp_path, capsys):
    """Two llava runs with token probabilities: the ensemble's events carry their mean, and it says so; against
    the seed's Qwen files (none) it keeps the written confidence only, and says that."""
    run_a, run_b = tmp_path / "run a", tmp_path / "run b"
    for folder, probs in ((run_a, (0.9, 0.2)), (run_b, (0.7, None))):
        folder.mkdir()
        events = [{**llava("Goal", 12.0, 0.5), "token_prob": probs[0]}, {**llava("Foul", 30.0), "token_prob": probs[1]}]
        settings.final_path(folder, 0, "llava").write_text(json.dumps(events))
    code = compare_counts.main(["--dirs", str(run_a), str(run_b), "--models", "llava", "llava",
                                "--ensemble", str(tmp_path / "ens")])
    out = capsys.readouterr().out
    assert code == 0
    goal, foul = load(settings.final_path(tmp_path / "ens", 0, "ensemble"))
    assert goal["token_prob"] == pytest.approx(0.8) and goal["confidence"] == 0.5
    assert foul["token_prob"] is None and foul["confidence"] == 0.7  # run b has none for it
    assert goal["models"]["llava"]["token_prob"] == 0.7  # (both named llava: the second view is kept)
    assert ("ensemble scores: the mean token probability of both models for 1 event; the mean written confidence "
            "only for 1 event where a model has none") in out
    code = compare_counts.main(["--project", str(project), "--videos", "0", "--ensemble", str(tmp_path / "ens2")])
    out = capsys.readouterr().out
    assert code == 0
    assert [e["token_prob"] for e in load(settings.final_path(tmp_path / "ens2", 0, "ensemble"))] == [None]
    assert ("ensemble scores: the mean written confidence (1 event): qwen7b and llava do not both have token "
            "probabilities (the seed's files have none)") in out


def test_other_peoples_bad_times_are_repaired_with_one_warning_per_model(project, capsys):
    """A Qwen file with a negative time and one without a usable time: counted at 0 s / left out, one warning."""
    bad = [{"time": -2.0, "raw": QWEN[2]["raw"]}, {"time": None, "raw": QWEN[3]["raw"]}]
    settings.final_path(project, 2, "qwen7b").write_text(json.dumps(QWEN + bad))
    assert compare_counts.main(["--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("⚠️")] == [
        "⚠️ qwen7b: of its records, 1 with a negative time counted at 0 s and 1 without a usable time left out "
        "(files not written by this pipeline's merge)"]
    assert rows(out)[1][1] == "5"  # video 2: the four events of QWEN and the foul at 0 s


def test_without_models_our_qwen_runs_are_compared_with_llava_where_they_exist(project, capsys):
    """Issue 32: the project holds the seed's Qwen files (qwen7b), LLaVA's and, for video 2, our Qwen2.5-VL run's
    (qwen2.5vl, events as the merge writes them): no flag compares ours with LLaVA and says so in its first line;
    without ours, the seed's, as before; --models still picks any two."""
    qwen_ours = [llava("Goal", 12.5, 0.9), llava("Offside", 31.0)]
    settings.final_path(project, 2, "qwen2.5vl").write_text(json.dumps(qwen_ours))
    assert compare_counts.main(["--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"qwen2.5vl vs llava (found in {project}; --models A B compares others): ")
    assert rows(out) == [["2", "2", "4", "2", "0", "2", "0"], ["total", "2", "4", "2", "0", "2", "0"]]
    assert "no final_predictions_llava_video_N.json" not in out  # video 3 has the seed's Qwen file only
    assert compare_counts.main(["--project", str(project), "--models", "qwen7b", "llava"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("qwen7b vs llava: ") and rows(out)[-1] == ["total", "8", "8", "2", "6",
                                                                                    "6", "2"]
    settings.final_path(project, 2, "qwen2.5vl").unlink()
    assert compare_counts.main(["--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"qwen7b vs llava (found in {project}; --models A B compares others): ")
