"""merge_results_llava.py on hand-made partials of a real 60 s video (30 windows of 2 s)."""
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import merge_results_llava
from conftest import ROOT, load, make_project
from llava_soccer import claims, gpus, merge, provenance, settings, videos
from llava_soccer.config import WorkerSettings
from llava_soccer.events import final_events
from llava_soccer.families import llava_next

N_WINDOWS = 30


@pytest.fixture
def project(odd_root, video_25fps, request):
    p = make_project(odd_root / request.node.name, {"league/game/1_224p.mkv": video_25fps})
    videos.manifest(p)  # videos.txt, as the workers leave it
    return p


def killed_at_stop(script, project, point) -> subprocess.Popen:
    """Runs `python -c script ROOT PROJECT POINT`, which prints STOPPED when it reaches point, and kills it there
    with SIGKILL: a merge killed at that step."""
    child = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(project), point], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "STOPPED\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    return child


def answer(*events):
    """A window's raw text as LLaVA writes it: Python dicts, frames numbered 1..15."""
    return "\n".join("{" + ", ".join(f"'{k}': {v!r}" for k, v in e.items()) + "}" for e in events)


def ev(label, frame, confidence=0.9, team="home"):
    return {"label": label, "team": team, "confidence": confidence, "frame": frame, "details": "seen"}


def ok(k, raw="None"):
    return {"time": 2.0 * k, "end": 2.0 * k + 2.8, "status": "ok", "raw": raw, "parsed": True, "events": []}


def hole(k, status="failed", error="OOM"):
    return {"time": 2.0 * k, "end": 2.0 * k + 2.8, "status": status, "error": error, "raw": None, "events": []}


def made_by(project, video=0, **changes):
    """What a worker of this project records for the video (provenance.made_by), with changes."""
    path = project / "raw_data" / videos.manifest(project)[video]
    args = WorkerSettings(**{"model": "/ckpt/goal", "quantization": "fp32", **changes})
    return provenance.made_by(args, gpus.plan(args, None, llava_next), "[INST] a prompt [/INST]",
                              provenance.video_file(project, path, videos.probe(path)), family=llava_next)


def write_partials(project, *parts, video=0, made=True):
    """One partial per list of records, gpu0, gpu1, ... (as settings.partial_path names them), made by one run
    (made_by(project)), or made=None: a list, as partials written before made_by existed."""
    paths = [settings.partial_path(project, video, g) for g in range(len(parts))]
    made = made_by(project, video) if made is True else made
    for path, records in zip(paths, parts):
        path.write_text(json.dumps(records if made is None else {"made_by": made, "windows": records}))
    return paths


def all_windows(raws=None, skip=(), undecodable=()):
    raws = raws or {}
    return [hole(k) if k in skip else hole(k, "undecodable", "no frames decoded") if k in undecodable else
            ok(k, raws.get(k, "None")) for k in range(N_WINDOWS)]


STAMP = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")  # submit_llava.sh's log() and the worker's


def unstamped(line):
    """A merge log line without its time stamp, which it must have (as every line of the job log)."""
    assert STAMP.match(line), line
    return STAMP.sub("", line, count=1)


def run_merge(project, capsys, *extra, video=0):
    code = merge_results_llava.main(["--video_index", str(video), "--project", str(project), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_merge_writes_final_deletes_partials_and_summarises(project, capsys):
    raws = {
        1: "```json\n{\"label\": \"Shot on target\", \"team\": \"away\", \"confidence\": 0.8, \"frame\": 6}\n```",
        3: answer(ev("Goal", 8), ev("Offside", 8, 0.6)),  # two events in one window: both count
        5: "A player from the away team kicks the ball.",  # prose: a parse failure
        7: "Sure! {'label': 'Other', 'team': 'home', 'confidence': 0.5} is what I see.",
    }
    records = all_windows(raws)
    records[20] = {"time": 40.0, "raw": answer(ev("Corners", 1))}  # the seed's record format: no status
    paths = write_partials(project, records[:12], records[12:])

    code, out, err = run_merge(project, capsys)

    assert code == 0, err
    assert not any(p.exists() for p in paths)
    final = load(settings.final_path(project, 0))
    assert [(r["label"], r["event_time"], r["time"]) for r in final] == [
        ("Shots on target", 3.0, 2.0), ("Goal", 7.4, 6.0), ("Offside", 7.4, 6.0), ("Other", 15.4, 14.0),
        ("Corner", 40.0, 40.0)]
    goal = final[1]
    assert goal["raw"] == raws[3] and goal["team"] == "home" and goal["confidence"] == 0.9
    assert goal["details"] == "seen" and goal["frame"] == 8 and goal["label_raw"] == "Goal"
    assert final[0]["label_raw"] == "Shot on target"
    assert [e["label"] for e in final_events(final)] == [r["label"] for r in final]
    assert "30 windows from 2 partials: 30 answered, 0 undecodable" in out
    assert f"made by: {provenance.describe(made_by(project))}" in out
    assert all(r["made_by"] == made_by(project) for r in final)  # each event says what made it
    assert "events: 5 found, 5 after de-duplication (same label within 3 s)" in out
    assert "labels: Corner 1, Goal 1, Offside 1, Shots on target 1" in out
    assert "not SoccerNet classes (kept as they are): Other 1" in out
    assert "parse failures: 1 of 30 answered windows" in out
    assert "10 s: 'A player from the away team kicks the ball.'" in out
    assert "deleted 2 partials" in out


def test_dedup_boundaries_ties_and_labels(project, capsys):
    raws = {
        0: answer(ev("Goal", 1, 0.9)),                            # 0.0
        1: answer(ev("Goal", 5, 0.8)),                            # 2.8: 2.8 s after -> duplicate
        5: answer(ev("Corner", 1, 0.7)),                          # 10.0
        6: answer(ev("Corner", 6, 0.9)),                          # 13.0: exactly 3.0 s -> duplicate, wins
        10: answer(ev("Foul", 1)),                                # 20.0
        11: answer(ev("Foul", 7)),                                # 23.2: 3.2 s -> two events
        15: answer(ev("Goal", 3), ev("Offside", 3), ev("Shot on target", 3, 0.5), ev("Shots on target", 3, 0.7)),
        20: answer(ev("Throw-in", 1, 0.8)),                       # 40.0 } equal confidence:
        21: answer(ev("Throw-in", 1, 0.8)),                       # 42.0 } the earlier one stays
        25: "{'label': 'Clearance', 'frame': 1}",                 # 50.0, no confidence: ranks lowest
        26: answer(ev("Clearance", 1, 0.1)),                      # 52.0
    }
    write_partials(project, all_windows(raws))

    code, out, err = run_merge(project, capsys, "--keep-partials")

    assert code == 0, err
    final = load(settings.final_path(project, 0))
    kept = [(r["label"], r["event_time"], r["confidence"]) for r in final]
    assert kept == [("Goal", 0.0, 0.9), ("Corner", 13.0, 0.9), ("Foul", 20.0, 0.9), ("Foul", 23.2, 0.9),
                    ("Goal", 30.4, 0.9), ("Offside", 30.4, 0.9), ("Shots on target", 30.4, 0.7),
                    ("Throw-in", 40.0, 0.8), ("Clearance", 52.0, 0.1)]
    assert "events: 14 found, 9 after de-duplication" in out
    assert settings.partial_path(project, 0, 0).exists() and "partials kept" in out


def test_dedup_ranks_a_missing_confidence_below_zero(project, capsys):
    """An answer without a confidence loses to one that says 0: ranked as 0.0, the tie would keep the earlier."""
    raws = {25: "{'label': 'Clearance', 'frame': 1}",  # 50.0, no confidence
            26: answer(ev("Clearance", 1, 0))}           # 52.0, confidence 0
    write_partials(project, all_windows(raws))
    code, out, err = run_merge(project, capsys)
    assert code == 0, err
    assert [(r["event_time"], r["confidence"]) for r in load(settings.final_path(project, 0))] == [(52.0, 0.0)]
    events = [{"label": "Goal", "time": 1.0, "confidence": None}, {"label": "Goal", "time": 2.0, "confidence": 0.0}]
    assert merge.dedup(events, settings.DEDUP_S) == events[1:]


def test_dedup_flag_changes_the_window(project, capsys):
    write_partials(project, all_windows({0: answer(ev("Goal", 1)), 1: answer(ev("Goal", 5, 0.5))}))
    code, out, _ = run_merge(project, capsys, "--dedup-s", "2.5")
    assert code == 0
    assert [r["event_time"] for r in load(settings.final_path(project, 0))] == [0.0, 2.8]


@pytest.mark.parametrize("apart, kept", [(2.9, 1), (3.0, 1), (3.1, 2)])
def test_dedup_is_inclusive_at_three_seconds(apart, kept):
    # Float times are inexact: 4.4 - 1.4 = 3.0000000000000004 must still count as 3.0 s.
    events = [{"label": "Goal", "time": 1.4, "confidence": 0.9},
              {"label": "Goal", "time": round(1.4 + apart, 3), "confidence": 0.9}]
    assert 4.4 - 1.4 > 3.0
    assert len(merge.dedup(events, settings.DEDUP_S)) == kept


def test_missing_windows_block_the_final_and_keep_partials(project, capsys):
    old = settings.final_path(project, 0)
    old.write_text("[]\n")  # e.g. from an earlier run: must stay as it is
    records = all_windows()
    paths = write_partials(project, records[:10], records[20:29])  # 10-19 and 29 never written

    code, out, err = run_merge(project, capsys)

    assert code == merge_results_llava.EXIT_MISSING == 75
    assert old.read_text() == "[]\n"
    assert all(p.exists() for p in paths)
    assert "11 of 30 windows have no answer yet; not finalising, partials kept" in err
    assert "  missing 20.0-41.0 s (windows 10-19)\n" in err
    assert "  missing 58.0-60.0 s (window 29)\n" in err
    assert "rerun the workers of video 0" in err
    assert out == ""


def test_failed_windows_block_the_final_until_a_rerun_answers_them(project, capsys):
    """OOM or an error left holes a rerun can fill: no final, partials kept, exit 75, the holes named."""
    records = all_windows({4: answer(ev("Goal", 1))}, skip={0, 1, 29})
    paths = write_partials(project, records[:3], records[3:4], records[4:17], records[17:])
    code, out, err = run_merge(project, capsys)
    assert code == 75 and out == ""
    assert "3 of 30 windows have no answer yet; not finalising, partials kept" in err
    assert "  3 of 30 windows failed (OOM) at 0.0-5.0 s, 58.0-60.0 s\n" in err
    assert all(p.exists() for p in paths) and not settings.final_path(project, 0).exists()
    # the rerun's workers answer them: now the final is written, from any number of partials
    for p, part in zip(paths, (all_windows()[:3], records[3:4], records[4:17], all_windows()[17:])):
        p.write_text(json.dumps({"made_by": made_by(project), "windows": part}))
    code, out, err = run_merge(project, capsys)
    assert code == 0, err
    assert "30 windows from 4 partials: 30 answered, 0 undecodable" in out
    assert len(load(settings.final_path(project, 0))) == 1


def test_undecodable_windows_give_a_final_marked_incomplete_exit_3(project, capsys):
    """A truncated file: windows without frames cannot be filled by a rerun. The final holds what was seen,
    the raw-answers archive says incomplete with the time range, exit 3 (submit_llava.sh: INCOMPLETE)."""
    records = all_windows({2: answer(ev("Goal", 1))}, undecodable=range(16, 30))
    write_partials(project, records[:15], records[15:])
    code, out, err = run_merge(project, capsys)
    assert code == 3
    assert "30 windows from 2 partials: 16 answered, 14 undecodable" in out
    (warning,) = map(unstamped, err.splitlines())
    assert warning.startswith("⚠️ video 0 is INCOMPLETE: 14 of 30 windows undecodable from 32.0 s on: ")
    assert "reruns skip it until the file changes" in warning
    assert [e["label"] for e in load(settings.final_path(project, 0))] == ["Goal"]
    with gzip.open(settings.raw_answers_path(project, 0), "rt") as f:
        archive = json.load(f)
    assert archive["incomplete"] == "14 of 30 windows undecodable from 32.0 s on"
    assert archive["windows_total"] == 30 and archive["made_by"] == made_by(project)
    assert videos.origin_of(settings.final_path(project, 0)).incomplete == archive["incomplete"]


GAME = "england_epl/2015-2016/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham"


def test_merge_log_lines_are_stamped_and_name_the_game(odd_root, video_25fps, capsys, request):
    """In the job log the merge's lines carry the time stamp of submit's and the worker's lines, and its summary
    says which game (every SoccerNet half is 1_224p.mkv) and which of videos.txt's videos it is."""
    project = make_project(odd_root / request.node.name, {f"{GAME}/{h}_224p.mkv": video_25fps for h in (1, 2)})
    assert len(videos.manifest(project)) == 2
    write_partials(project, all_windows({3: answer(ev("Goal", 2))}), video=1)
    code, out, err = run_merge(project, capsys, video=1)
    assert code == 0, err
    lines = [unstamped(line) for line in out.splitlines()]
    assert lines[0] == (f"video 1 of 2 ({videos.display_name(f'{GAME}/2_224p.mkv')}): 30 windows from 1 partial: "
                        "30 answered, 0 undecodable")
    assert GAME in lines[0]  # short enough to be shown whole
    assert lines[-1].startswith(f"wrote {settings.final_path(project, 1)} (1 event)")
    assert err == ""
    write_partials(project, all_windows(skip=[4]), video=0)
    code, out, err = run_merge(project, capsys)
    assert code == 75 and out == ""
    first = unstamped(err.splitlines()[0])
    assert first == "video 0: 1 of 30 windows have no answer yet; not finalising, partials kept:"


@pytest.mark.parametrize("change, differs", [
    ({"model": "/ckpt/other"}, "model /ckpt/goal -> /ckpt/other"),
    ({"quantization": "nf4"}, "quantization fp32 -> nf4"),
    ({"visual_tokens": "reduced"}, "visual_tokens full -> reduced"),
    ({"max_new_tokens": 64}, "max_new_tokens 256 -> 64"),
    ({"temperature": 0.7}, "temperature 0.0 -> 0.7"),
    (None, "one is of unknown origin"),
])
def test_partials_made_by_different_runs_are_refused(project, capsys, change, differs):
    first = write_partials(project, all_windows({3: answer(ev("Goal", 8))})[:15])
    other = settings.partial_path(project, 0, 1)
    windows = all_windows()[15:]
    other.write_text(json.dumps(windows if change is None else
                                {"made_by": made_by(project, **change), "windows": windows}))
    code, out, err = run_merge(project, capsys)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("merge_results_llava.py: error: partials of one video were made by different runs: ")
    assert differs in line and "delete the partials of the run you do not want" in line
    assert first[0].exists() and other.exists() and not settings.final_path(project, 0).exists()


def test_partials_of_a_file_replaced_since_are_refused(project, capsys, tmp_path):
    write_partials(project, all_windows({3: answer(ev("Goal", 8))}))
    video = project / "raw_data" / "league/game/1_224p.mkv"
    copy = tmp_path / "replaced.mkv"
    shutil.copy(video, copy)
    with open(copy, "ab") as f:
        f.write(b"\0" * 1000)  # same name, other bytes (a finished download, a re-encode)
    video.unlink()
    video.symlink_to(copy)
    code, out, err = run_merge(project, capsys)
    assert code == 1
    assert "were made from another file than" in err and "video size" in err and "delete them and rerun" in err
    assert not settings.final_path(project, 0).exists()


def test_partials_of_unknown_origin_merge_into_a_final_that_says_so(project, capsys):
    write_partials(project, all_windows({3: answer(ev("Goal", 8))}), made=None)
    code, out, err = run_merge(project, capsys)
    assert code == 0
    assert "do not record what made them" in err and "made by: unknown origin" in out
    assert [e["made_by"] for e in load(settings.final_path(project, 0))] == [None]


def test_only_this_videos_partials_are_read(odd_root, video_25fps, capsys, request):
    project = make_project(odd_root / request.node.name, {"a/1_224p.mkv": video_25fps, "a/2_224p.mkv": video_25fps})
    assert videos.manifest(project) == ["a/1_224p.mkv", "a/2_224p.mkv"]
    write_partials(project, all_windows({0: answer(ev("Goal", 1))}), video=1)
    decoys = [project / "partial_results_llava_vid10_gpu0.json", project / "partial_results_llava_vid1_gpu0.json.bak",
              project / ".partial_results_llava_vid1_gpu1.json.x1.tmp"]
    for d in decoys:
        d.write_text("not json")
    code, out, err = run_merge(project, capsys, video=1)
    assert code == 0, err
    assert "30 windows from 1 partial:" in out
    assert len(load(settings.final_path(project, 1))) == 1
    assert all(d.exists() for d in decoys)


def test_a_stale_partial_does_not_undo_a_processed_window(project, capsys):
    # An earlier 2-worker run left gpu1 (windows 15-29, all processed); the rerun with one
    # worker skipped window 20 and processed the rest. Window 20 keeps the earlier answer.
    old = all_windows({20: answer(ev("Goal", 1))})[15:]
    new = all_windows({21: answer(ev("Foul", 1))}, skip={20})
    g0, g1 = write_partials(project, new, old)
    os.utime(g1, (1_000_000, 1_000_000))
    code, out, err = run_merge(project, capsys)
    assert code == 0, err
    assert [r["label"] for r in load(settings.final_path(project, 0))] == ["Goal", "Foul"]
    assert "15 windows were in more than one partial: used the newest file's record" in out


@pytest.mark.parametrize("content, message", [
    ("[{\"time\": 0.0, \"raw\": ", "is not valid JSON"),
    ("{\"time\": 0.0}", "is not a JSON list of window records"),
    ("[{\"time\": 3.0, \"raw\": \"None\"}]",
     "record 0 has time 3.0, not a window start of this video (0, 2, ..., 58 s)"),
    ("[{\"time\": 60.0, \"raw\": \"None\"}]", "record 0 has time 60.0, not a window start"),
    ("[{\"raw\": \"None\"}]", "record 0 has time None"),
])
def test_bad_partial_is_one_line_naming_the_file(project, capsys, content, message):
    write_partials(project, all_windows()[:15])
    bad = settings.partial_path(project, 0, 1)
    bad.write_text(content)
    code, out, err = run_merge(project, capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("merge_results_llava.py: error: partial ")
    assert str(bad) in err and message in err
    assert not settings.final_path(project, 0).exists() and bad.exists()


def test_no_partials(project, capsys):
    code, _, err = run_merge(project, capsys)
    assert code == 1 and "no partials of video 0" in err and "run the workers first" in err
    settings.final_path(project, 0).write_text("[]\n")
    code, out, _ = run_merge(project, capsys)
    assert code == 0 and "already merged" in out


@pytest.mark.parametrize("argv,env,says", [
    (["--dedup-s", "-1"], None, "--dedup-s (env LLAVA_DEDUP_S) must be a number of seconds >= 0, not -1"),
    (["--dedup-s", "nan"], None, "must be a number of seconds >= 0, not nan"),
    ([], "abc", "LLAVA_DEDUP_S='abc' is not a valid --dedup-s value"),
    ([], "-3", "must be a number of seconds >= 0, not -3"),
])
def test_bad_flags_and_environment_exit_2_with_one_line(project, capsys, monkeypatch, argv, env, says):
    if env is not None:
        monkeypatch.setenv("LLAVA_DEDUP_S", env)
    with pytest.raises(SystemExit) as e:
        merge_results_llava.main(["--video_index", "0", "--project", str(project), *argv])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert e.value.code == 2 and says in line
    assert not settings.final_path(project, 0).exists()


# A child process merges with a writer that stops at a chosen point and says so; the test
# then SIGKILLs it there, as a node failure or `scancel --signal=KILL` would.
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    import merge_results_llava
    point = sys.argv[3]

    def stop():
        print("STOPPED", flush=True)
        time.sleep(60)

    real_fdopen, real_replace = os.fdopen, os.replace

    class HalfWriter:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)
        def write(self, text):
            self.f.write(text[:len(text) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            stop()
        def __getattr__(self, name):
            return getattr(self.f, name)

    if point == "mid-write":
        os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
    else:
        os.replace = lambda *a: (stop(), real_replace(*a))
    merge_results_llava.main(["--video_index", "0", "--project", sys.argv[2]])
""")


@pytest.mark.parametrize("point, old_final", [("mid-write", True), ("before-rename", True), ("mid-write", False)])
def test_kill_while_writing_final_leaves_old_or_no_final(project, capsys, point, old_final):
    final = settings.final_path(project, 0)
    old = '[{"time": 0.0, "raw": "old"}]\n'
    if old_final:
        final.write_text(old)
    partials = write_partials(project, all_windows({k: answer(ev("Goal", 1)) for k in range(0, 30, 3)}))

    child = killed_at_stop(CHILD, project, point)
    assert child.returncode == -signal.SIGKILL

    if old_final:
        assert final.read_text() == old
    else:
        assert not final.exists()
    assert all(p.exists() for p in partials)
    assert any(p.name.endswith(".tmp") for p in project.iterdir())  # the killed writer's leftover

    code, out, err = run_merge(project, capsys)  # the rerun finishes the job
    assert code == 0, err
    assert len(load(final)) == 10 and not any(p.exists() for p in partials)
    assert not any(p.name.endswith(".tmp") for p in project.iterdir())  # the rerun removed the leftover


STALE_MERGE = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import merge_results_llava
    from llava_soccer import jsonio, settings
    project, point, note = Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])

    def taken_over():  # job 20 takes the lock over as stale; its worker fails and notes why
        lock = settings.lock_path(project, 0)
        lock.write_text(json.dumps({**json.loads(lock.read_text()), "token": "e" * 32, "job": "20", "host": "node7"}))
        jsonio.atomic_write_json(settings.failed_note_path(project, 0), note)

    real_replace, real_left_over = os.replace, merge_results_llava.left_over
    if point == "after its final":
        def replace(src, dst, *a, **k):
            real_replace(src, dst, *a, **k)
            if Path(dst) == settings.final_path(project, 0):
                taken_over()
        os.replace = replace
    else:
        merge_results_llava.left_over = lambda *a: real_left_over(*a) and (taken_over() or True)
    sys.exit(merge_results_llava.main(["--video_index", "0", "--project", str(project)]))
""")


@pytest.mark.parametrize("point", ["after its final", "finding partials a merge left"])
def test_a_merge_whose_lock_was_taken_over_deletes_nothing_of_the_new_owner(project, capsys, point):
    """A merge of submit_llava.sh (LLAVA_CLAIM) loses its video's lock as stale (it was stopped) right after its
    final landed, or once it found the partials a merge stopped while deleting them left: the job that owns the
    video now keeps its failure note and the partials it resumes from; the merge stops with one line, exit 4."""
    partials = write_partials(project, all_windows()[:15], all_windows()[15:])
    if point == "finding partials a merge left":
        assert run_merge(project, capsys, "--keep-partials")[0] == 0
        partials.pop().unlink()  # deleted by a merge stopped before it deleted the other
    token, _ = claims.take(project, 0, os.getpid())
    note = {"error": "error: --model /ckpt/gone: no such directory", "gpu_id": 1, "job": "20", "host": "node7"}
    child = subprocess.run([sys.executable, "-c", STALE_MERGE, str(ROOT), str(project), point, json.dumps(note)],
                           env={**os.environ, "LLAVA_CLAIM": token}, capture_output=True, text=True)
    assert child.returncode == claims.EXIT_LOST_LOCK, child.stdout + child.stderr
    assert re.search(r"video 0: lock lost to job 20 on node7 since .*: stopping, nothing written", child.stderr)
    assert load(settings.failed_note_path(project, 0)) == note
    assert all(p.exists() for p in partials)


def test_prose_answers_are_archived_warned_about_and_never_lost(project, capsys):
    """A model that answers in prose: every window fails to parse. The final is written (empty),
    but every raw answer survives in raw_answers_llava_video_0.json.gz, and the summary warns."""
    raws = {k: f"In this clip the players run across the pitch ({k})." for k in range(N_WINDOWS)}
    raws[4] = answer(ev("Goal", 8))
    paths = write_partials(project, all_windows(raws)[:15], all_windows(raws)[15:])

    code, out, err = run_merge(project, capsys)

    assert code == 0, err
    assert load(settings.final_path(project, 0))[0]["label"] == "Goal"
    assert not any(p.exists() for p in paths)
    archive = settings.raw_answers_path(project, 0)
    with gzip.open(archive, "rt", encoding="utf-8") as f:
        data = json.load(f)
    assert data["video"] == "league/game/1_224p.mkv"
    windows = data["windows"]
    assert [w["time"] for w in windows] == [2.0 * k for k in range(N_WINDOWS)]
    assert windows[3]["raw"] == raws[3] and windows[3]["status"] == "ok"
    assert windows[9] == {"time": 18.0, "end": 20.8, "frames": None, "status": "ok", "raw": raws[9], "error": None,
                          "none_prob": None, "class_scores": None}  # a partial older than the scores
    assert "parse failures: 29 of 30 answered windows" in out
    (warning,) = [line for line in err.splitlines() if "WARNING" in line]
    assert "29 of 30 windows (97%) did not parse" in warning and archive.name in warning
    assert f"and {archive.name} (every window's answer)" in out


def test_finals_are_strict_json_and_follow_the_umask(project, tmp_path):
    """No NaN/Infinity in a final (jq and browsers reject them) and files readable by the group
    when the umask says so (mkstemp alone would make them 0600)."""
    raws = {2: "{'label': 'Goal', 'team': 'home', 'confidence': NaN, 'frame': 3}",
            4: "{'label': 'Corner', 'team': 'home', 'confidence': Infinity, 'frame': 1e999}"}
    write_partials(project, all_windows(raws))
    run = subprocess.run(["sh", "-c", 'umask 002 && exec "$0" "$@"', sys.executable,
                          str(ROOT / "merge_results_llava.py"), "--video_index", "0", "--project", str(project)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    final = settings.final_path(project, 0)
    text = final.read_text(encoding="utf-8")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {final}"))  # (the raw texts keep theirs)
    assert {r["label"] for r in json.loads(text)} == {"Goal", "Corner"}
    for path in (final, settings.raw_answers_path(project, 0)):
        assert oct(path.stat().st_mode & 0o777) == oct(0o664), path


def test_a_full_disk_during_the_merge_is_one_line_exit_75_and_keeps_the_partials(project, capsys, monkeypatch):
    paths = write_partials(project, all_windows({3: answer(ev("Goal", 8))}))

    def full_disk(path, obj, fence=None):
        raise OSError(28, "No space left on device")  # ENOSPC, as the write raises it

    monkeypatch.setattr(merge_results_llava, "atomic_write_json", full_disk)
    code, out, err = run_merge(project, capsys)
    assert code == 75
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "no space left on the disk" in line and "rerun the same command" in line
    assert all(p.exists() for p in paths) and not settings.final_path(project, 0).exists()
    monkeypatch.undo()
    code, out, err = run_merge(project, capsys)
    assert code == 0 and "30 windows from 1 partial: 30 answered" in out
    assert "(1 event) and" in out and out.rstrip().endswith("deleted 1 partial")


def test_finals_name_their_video_and_one_of_another_video_is_refused(odd_root, video_25fps, capsys, request):
    """A final (with its raw answers) copied into another project, where index 0 is another video."""
    here, there = (make_project(odd_root / request.node.name / name, {rel: video_25fps})
                   for name, rel in (("here", "league/game/1_224p.mkv"), ("there", "league/other game/2_224p.mkv")))
    for p in (here, there):
        videos.manifest(p)
    write_partials(here, all_windows({3: answer(ev("Goal", 8)), 7: answer(ev("Corner", 2))}))
    assert run_merge(here, capsys)[0] == 0
    final, archive = settings.final_path(here, 0), settings.raw_answers_path(here, 0)
    assert [r["video"] for r in load(final)] == ["league/game/1_224p.mkv"] * 2
    assert videos.origin_of(final).video == "league/game/1_224p.mkv"

    copied = settings.final_path(there, 0)
    for path in (final, archive):
        shutil.copy(path, there / path.name)
    says = (f"merge_results_llava.py: error: {copied} was made from 'league/game/1_224p.mkv', but video #0 of "
            f"{there / 'videos.txt'} is 'league/other game/2_224p.mkv': it belongs to another project or an older "
            f"videos.txt. Move it and its raw_answers file out of {there}, then rerun video 0")
    code, out, err = run_merge(there, capsys)
    assert (code, out, err.strip()) == (1, "", says)
    write_partials(here, all_windows())  # no events: the archive beside the final still says where it came from
    assert run_merge(here, capsys)[0] == 0 and load(final) == []
    for path in (final, archive):
        shutil.copy(path, there / path.name)
    assert run_merge(there, capsys)[:3:2] == (1, says + "\n")
    (there / archive.name).unlink()  # a final that says nothing (older runs, other models) is not refused
    code, out, err = run_merge(there, capsys)
    assert code == 0 and "already merged" in out


@pytest.mark.parametrize("with_frames", [True, False])
def test_a_short_last_window_times_its_events_by_the_frames_it_had(project, capsys, with_frames):
    """The 60 s video's last window (58 s) has 10 frames, not 15: an event without a frame number lands at
    the middle of those (58.9 s, not 59.4), one naming frame 15 (which it never saw) too, never after the
    end of the video; frame "10" (a string of digits) is frame 10. Records written before windows said
    their frames are timed by the video's grid, the same way."""
    records = all_windows({29: answer({"label": "Goal"}, {"label": "Corner", "frame": 15},
                                      {"label": "Foul", "frame": "10"})})
    if with_frames:
        records[29]["frames"] = [round(58 + i / 5, 3) for i in range(10)]
    write_partials(project, records)
    assert run_merge(project, capsys)[0] == 0
    final = load(settings.final_path(project, 0))
    assert sorted((e["label"], e["event_time"], e["frame"]) for e in final) == [
        ("Corner", 58.9, 15), ("Foul", 59.8, 10), ("Goal", 58.9, None)]



def test_token_probabilities_and_class_scores_reach_the_final_and_the_archive(project, capsys):
    """The decoder's scores (issue 23): each event's token_prob (matched to the re-parsed event by its label as
    written and frame), its window's class_scores on every final event, none_prob and class_scores archived."""
    from llava_soccer.settings import SOCCERNET_CLASSES
    scores = {c: 0.01 * k for k, c in enumerate(SOCCERNET_CLASSES)}
    records = all_windows({3: answer(ev("Goal", 8), ev("Offside", 2, 0.6)), 5: answer(ev("Corner", 1))})
    records[3].update(none_prob=0.2, class_scores=scores, events=[
        {"label": "Offside", "label_raw": "Offside", "frame": 2, "token_prob": 0.4},  # out of order: matched
        {"label": "Goal", "label_raw": "Goal", "frame": 8, "token_prob": 0.75}])
    records[4].update(none_prob=0.9, class_scores=scores)  # answered None: scores archived all the same
    write_partials(project, records)  # window 5: a partial older than the scores
    code, out, err = run_merge(project, capsys)
    assert code == 0, err
    final = load(settings.final_path(project, 0))
    assert [(r["label"], r["token_prob"], r["class_scores"]) for r in final] == [
        ("Offside", 0.4, scores), ("Goal", 0.75, scores), ("Corner", None, None)]
    archived = load_gz(settings.raw_answers_path(project, 0))["windows"]
    assert [(w["none_prob"], w["class_scores"]) for w in archived[3:6]] == [(0.2, scores), (0.9, scores),
                                                                           (None, None)]
    assert [(e["token_prob"], e["class_scores"]) for e in final_events(final)] == [
        (0.4, scores), (0.75, scores), (None, None)]


def load_gz(path):
    with gzip.open(path) as f:
        return json.load(f)
