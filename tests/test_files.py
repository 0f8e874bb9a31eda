"""Issue 21, items 3 and 4: file names and trees, model text in the logs, damaged files the pipeline reads
back, a project directory that cannot be used, tools that only read.

Real files throughout: ffmpeg-made videos, tiny parrot checkpoints, gzip archives cut short or overwritten,
projects made read-only (as user nobody when the tests run as root, who ignores permissions). What is
checked is what a user sees: the exit code, the one line, and the files left as they were.
"""
import contextlib
import gzip
import io
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import compare_counts
import evaluate_soccernet
import llava_split_worker
import merge_results_llava
from conftest import ROOT, make_project, nobody_prefix
from llava_soccer import settings, synthetic, videos
from llava_soccer.cli import log_safe
from test_merge import all_windows, write_partials

FORGED = "[2026-12-05 10:00:00] video 9: done"  # a line submit_llava.sh writes when video 9 is finished
FORGING = f"\n{FORGED}\x1b[2K"                     # ... after a line break; ESC[2K erases the line shown before
GAME = "league/season/game"


def cli(*args, prefix=(), **env):
    """A tool's command line, as a user runs it: (exit code, stdout, stderr)."""
    run = subprocess.run([*prefix, sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=600)
    return run.returncode, run.stdout, run.stderr


def in_process(main, argv):
    """main(argv) of a tool: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_no_forged_line(text):
    """No line of text starts like a real log line the model wrote, and nothing can erase or move the cursor."""
    assert "\x1b" not in text and "\r" not in text
    for line in text.splitlines():  # every line boundary Python knows: \n, \r, \x1c-\x1e, \x85, \u2028, \u2029
        assert not re.match(r"\s*\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] video 9", line), line


def one_error_line(err, prog):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(directory: Path) -> dict:
    """Every path under directory with its kind, size, mtime and bytes: equal snapshots = nothing written."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(directory))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def make_read_only(directory: Path):
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)


# --- names and trees ------------------------------------------------------------------------------

BAD_NAMES = {b"caf\xe9.mkv": "b'caf\\xe9.mkv' (not valid UTF-8)",  # Latin-1, as Windows copies leave them
             "g/line\nbreak.mkv": "'g/line\\nbreak.mkv' (a line break)",
             "g/ leading.mkv": "'g/ leading.mkv' (a leading or trailing space)",
             "dir /trailing.mkv": "'dir /trailing.mkv' (a leading or trailing space)",
             "esc\x1b[2K.mp4": "'esc\\x1b[2K.mp4' (a control character)"}


def add_bad_names(project, video):
    raw = os.fsencode(project / "raw_data")
    for name in BAD_NAMES:
        path = os.path.join(raw, name if isinstance(name, bytes) else os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(video, path)


def test_names_a_line_cannot_hold_are_skipped_by_name_and_block_no_other_video(tmp_path, video_25fps, capsys):
    project = make_project(tmp_path, {"ok.mkv": video_25fps})
    add_bad_names(project, video_25fps)
    # the worker gets past the list (and stops at the model, which does not exist)
    assert llava_split_worker.main(["--gpu-id", "0", "--num-workers", "1", "--video-index", "0", "--project",
                                    str(project), "--model", "/nonexistent/model"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UnicodeEncodeError" not in err
    (warning,) = [line for line in err.splitlines() if "⚠️" in line]
    assert f"⚠️ 5 video files under {project / 'raw_data'} skipped, never listed in videos.txt" in warning
    for shown in BAD_NAMES.values():
        assert shown in warning
    assert "rename them" in warning and "the other videos are not affected" in warning
    assert "--model /nonexistent/model: no such directory" in err
    assert (project / "videos.txt").read_text() == (project / ".videos_given.txt").read_text() == "ok.mkv\n"
    assert videos.resolve_video(project, 0).name == "ok.mkv"


def test_a_bad_name_appearing_later_does_not_block_merging_a_processed_video(tmp_path, video_25fps):
    project = make_project(tmp_path, {f"{GAME}/1_224p.mkv": video_25fps})
    videos.manifest(project)
    partials = write_partials(project, all_windows()[:15], all_windows()[15:])  # the workers' work, done
    add_bad_names(project, video_25fps)  # then someone copies in more videos
    code, out, err = cli(ROOT / "merge_results_llava.py", "--video-index", "0", "--project", project)
    assert code == 0, err
    assert "wrote " in out and settings.final_path(project, 0).exists() and not any(p.exists() for p in partials)
    (warning,) = err.splitlines()
    assert warning.startswith("⚠️ 5 video files under") and "b'caf\\xe9.mkv' (not valid UTF-8)" in warning
    assert (project / "videos.txt").read_text() == f"{GAME}/1_224p.mkv\n"


def test_symlinked_folders_are_followed_each_real_folder_once(tmp_path, video_25fps):
    elsewhere = tmp_path / "disk2" / "season" / "game"  # e.g. a league kept on another disk
    elsewhere.mkdir(parents=True)
    os.symlink(video_25fps, elsewhere / "1_224p.mkv")
    os.symlink("../..", elsewhere / "up")  # a loop inside the linked tree
    project = make_project(tmp_path, {"real/x.mkv": video_25fps})
    raw = project / "raw_data"
    os.symlink(tmp_path / "disk2", raw / "league")
    os.symlink("..", raw / "real" / "back")   # a loop back to raw_data
    os.symlink("real", raw / "a_link")        # the same real folder again, sorting first
    os.symlink(tmp_path / "nowhere", raw / "broken")
    assert videos.manifest(project) == ["league/season/game/1_224p.mkv", "real/x.mkv"]
    assert videos.resolve_video(project, 0).resolve() == video_25fps.resolve()


def test_the_list_is_read_a_constant_number_of_times_whatever_its_length(tmp_path, monkeypatch):
    """The video list is linear: an earlier version rebuilt a set of every listed video for each video found
    (27 s per call at 28,000 videos; benchmarks/RESULTS.md). Counted, not timed: iterations over the list."""
    iterations = []

    class Counted(list):
        def __iter__(self):
            iterations.append(1)
            return super().__iter__()

    raw = tmp_path / "p" / "raw_data"
    raw.mkdir(parents=True)
    for n in range(400):
        (raw / f"{n:03d}.mkv").touch()
    assert len(videos.manifest(tmp_path / "p")) == 400
    real = videos._lines
    monkeypatch.setattr(videos, "_lines", lambda path, fix="": Counted(real(path, fix)))
    (raw / "new.mkv").touch()
    assert videos.manifest(tmp_path / "p")[-1] == "new.mkv"
    assert 0 < len(iterations) <= 6


# --- what reaches the logs ------------------------------------------------------------------------

def test_log_safe_escapes_every_control_character_and_bounds_the_length():
    plain = "Goal [home, 0.90] ball in the net — 进球 ⚽ \\n"
    assert log_safe(plain) == plain
    assert log_safe(FORGING) == "\\n[2026-12-05 10:00:00] video 9: done\\x1b[2K"
    for c in [*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xa0)), "\u2028", "\u2029", "\u202e", "\u2066",
              "\udce9"]:
        safe = log_safe(f"a{c}b")
        assert safe.startswith("a\\") and safe.endswith("b") and safe.isprintable() and len(safe.splitlines()) == 1
    long = log_safe("\x1b" * 10_000, 50)
    assert long.startswith("\\x1b" * 12) and long.endswith("... (10000 chars)") and len(long) < 80
    assert log_safe(["a\nb"]) == "['a\\nb']"  # any value: its str()


def test_model_text_in_the_merge_summary_cannot_forge_a_line(tmp_path, video_25fps):
    project = make_project(tmp_path, {f"{GAME}/1_224p.mkv": video_25fps})
    videos.manifest(project)
    raws = {1: f"A goal!{FORGING} nothing else",  # prose: a parse failure, printed
            3: json.dumps({"label": f"Goal{FORGING}", "team": f"home{FORGING}", "confidence": 0.9, "frame": 3})}
    write_partials(project, all_windows(raws)[:15], all_windows(raws)[15:])
    code, out, err = cli(ROOT / "merge_results_llava.py", "--video-index", "0", "--project", project)
    assert code == 0, err
    assert_no_forged_line(out + err)
    assert "labels that are not SoccerNet classes (kept as they are): Goal\\n[2026-12-05 10:00:00] video 9: " \
           "done\\x1b[2K 1" in out
    assert "  2 s: 'A goal!\\n[2026-12-05 10:00:00] video 9: done\\x1b[2K nothing else'" in out


def forged_finals(project):
    """A LLaVA and a Qwen final of video 0 whose labels and details carry FORGING."""
    event = {"time": 10.0, "raw": f"x{FORGING}", "label": f"Goal{FORGING}", "label_raw": f"Goal{FORGING}",
             "team": "home", "confidence": 0.9, "details": FORGING, "event_time": 11.0, "frame": 6,
             "video": f"{GAME}/1_224p.mkv"}
    settings.final_path(project, 0, "llava").write_text(json.dumps([event, {**event, "label": "Foul", "label_raw":
                                                                            None, "event_time": 30.0}]))
    settings.final_path(project, 0, "qwen7b").write_text(json.dumps([{**event, "label": f"Card{FORGING}",
                                                                      "label_raw": None, "event_time": 30.5}]))


def soccernet_labels(root, *labels):
    (root / GAME).mkdir(parents=True)
    annotations = [{"gameTime": f"1 - 00:{10 + 5 * k:02d}", "label": label, "position": str(10_000 + 5_000 * k),
                    "team": "home", "visibility": "visible"} for k, label in enumerate(labels)]
    (root / GAME / "Labels-v2.json").write_text(json.dumps({"annotations": annotations}))
    return root


def test_labels_in_compare_and_evaluate_cannot_forge_a_line(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "videos.txt").write_text(f"{GAME}/1_224p.mkv\n")
    forged_finals(project)
    code, out, err = in_process(compare_counts.main, ["--project", str(project)])
    assert code == 0, err
    assert_no_forged_line(out + err)
    assert re.search(r"^Goal\\n\[2026-12-05 10:00:00\] video 9: done\\x1b\[2K +0 +1 +0$", out, re.M), out
    assert "  Card\\n[2026-12-05 10:00:00] video 9: done\\x1b[2K / Foul: 1" in out  # qwen7b / llava
    sn = soccernet_labels(tmp_path / "sn", "Goal", f"Throw{FORGING}")
    code, out, err = in_process(evaluate_soccernet.main, ["--project", str(project), "--soccernet", str(sn),
                                                          "--metrics", "none", "--out", str(tmp_path / "eval")])
    assert code == 0, err
    assert_no_forged_line(out + err)
    assert "not scored, predicted labels outside the 17 classes: Goal\\n[2026-12-05 10:00:00] video 9: " \
           "done\\x1b[2K 1" in out
    assert "ground-truth labels outside the 17 classes: Throw\\n[2026-12-05 10:00:00] video 9: done\\x1b[2K 1" in out


@pytest.fixture(scope="module")
def forging_checkpoint(tmp_path_factory):
    """A tiny checkpoint that answers every window with an event whose label, team and details forge a
    finished video, in JSON escapes as a model writes them, then the same as raw text."""
    answer = (json.dumps({"label": f"Goal{FORGING}", "team": f"home\r{FORGED}", "confidence": 0.9, "frame": 8,
                          "details": f"net{FORGING}"}) + FORGING)
    return synthetic.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "forging", "tiny", answer=answer)


@pytest.mark.slow
def test_model_text_cannot_forge_a_line_in_the_worker_log(tmp_path, forging_checkpoint):
    clip = synthetic.make_video(tmp_path / "clip.mkv", 10)
    project = make_project(tmp_path, {f"{GAME}/1_224p.mkv": clip})
    code, _, err = cli(ROOT / "llava_split_worker.py", "--gpu-id", "0", "--num-workers", "1", "--video-index", "0",
                       "--project", project, "--model", forging_checkpoint, "--quantization", "fp32",
                       "--max-new-tokens", "4")
    assert code == 0, err
    assert_no_forged_line(err)
    events = [line for line in err.splitlines() if "⚽" in line]
    assert len(events) == 5
    assert events[0].endswith("⚽ 0:01.4 (1.4 s) Goal\\n[2026-12-05 10:00:00] video 9: done\\x1b[2K "
                              "[home\\r[2026-12-05 10:00:00] vi... (40 chars), 0.90] net\\n[2026-12-05 10:00:00] "
                              "video 9: done\\x1b[2K")
    code, out, err = cli(ROOT / "merge_results_llava.py", "--video-index", "0", "--project", project)
    assert code == 0, err
    assert_no_forged_line(out + err)


# --- files read back ------------------------------------------------------------------------------

DAMAGED_PARTIALS = {  # what a partial can hold after a crash, a copy gone wrong or a hand edit
    "NaN": '{"windows": [{"time": NaN, "raw": "None"}]}',
    "Infinity": '{"windows": [{"time": Infinity, "raw": "None"}]}',
    "-Infinity": '[{"time": -Infinity, "raw": "None"}]',
    "1e999": '[{"time": 1e999, "raw": "None"}]',
    "400 digits": '[{"time": 1' + "0" * 400 + ', "raw": "None"}]',
    "list": '[{"time": [0.0], "raw": "None"}]',
    "string": '[{"time": "0.0", "raw": "None"}]',
    "bool": '[{"time": false, "raw": "None"}]',
    "null": '[{"time": null, "raw": "None"}]',
    "made_by": '{"made_by": "llava", "windows": []}',
    "record": '{"windows": ["None"]}',
    "nested": "[" * 100_000,
    "not UTF-8": b'[{"time": 0.0, "raw": "\xff\xfe"}]',
    "truncated": '{"windows": [{"time": 0.0, "raw": "No',
    "directory": None,
}


def damage(path: Path, content):
    if content is None:
        path.mkdir()
        (path / "x").write_text("a file in it")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("kind", DAMAGED_PARTIALS)
def test_a_damaged_partial_stops_the_merge_with_one_line_and_loses_nothing(tmp_path, video_25fps, kind):
    project = make_project(tmp_path, {f"{GAME}/1_224p.mkv": video_25fps})
    videos.manifest(project)
    good, bad = write_partials(project, all_windows()[:15], all_windows()[15:])
    bad.unlink()
    damage(bad, DAMAGED_PARTIALS[kind])
    before = snapshot(project)
    code, out, err = in_process(merge_results_llava.main, ["--video-index", "0", "--project", str(project)])
    assert code == 1
    line = one_error_line(err, "merge_results_llava.py")
    assert f"partial {bad}" in line and "delete it and rerun the worker" in line, line
    assert snapshot(project) == before and not settings.final_path(project, 0).exists()


@pytest.mark.parametrize("kind", ["NaN", "Infinity", "400 digits", "list", "string", "bool", "null", "nested",
                                  "not UTF-8", "truncated", "directory"])
def test_a_damaged_partial_stops_the_worker_with_one_line(tmp_path, video_25fps, capsys, kind):
    project = make_project(tmp_path, {"m.mkv": video_25fps})
    partial = settings.partial_path(project, 0, 0)
    damage(partial, DAMAGED_PARTIALS[kind])
    before = snapshot(project)
    assert llava_split_worker.main(["--gpu-id", "0", "--num-workers", "1", "--video-index", "0", "--project",
                                    str(project), "--model", "/nonexistent/model"]) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and f"partial file {partial}" in line and "to start" in line, line
    assert {k: v for k, v in snapshot(project).items() if k not in ("videos.txt", ".videos_given.txt")} == before


def gzip_damage(data: bytes):
    return {"archive cut short": data[:len(data) // 2],                    # EOFError
            "archive overwritten": data[:10] + b"\xff" * 40 + data[50:],  # zlib.error: invalid block type
            "archive CRC": data[:-8] + bytes(8),                          # gzip.BadGzipFile
            "archive not gzip": b'{"video": "x"}'}


@pytest.mark.parametrize("kind", ["archive cut short", "archive overwritten", "archive CRC", "archive not gzip",
                                  "archive is a directory", "final is a directory", "final not JSON"])
def test_a_damaged_final_or_archive_is_one_line_in_every_reader(tmp_path, kind):
    project = tmp_path / "project"
    (project / "raw_data").mkdir(parents=True)
    for name in ("videos.txt", ".videos_given.txt"):
        (project / name).write_text(f"{GAME}/1_224p.mkv\n")
    final, archive = settings.final_path(project, 0), settings.raw_answers_path(project, 0)
    events = [{"time": 10.0, "raw": "r", "label": "Goal", "team": "home", "confidence": 0.9, "event_time": 11.0,
               "video": f"{GAME}/1_224p.mkv"}]
    final.write_text(json.dumps(events))
    settings.final_path(project, 0, "qwen7b").write_text(json.dumps(events))
    data = gzip.compress(json.dumps({"video": f"{GAME}/1_224p.mkv", "incomplete": None,
                                     "windows": [{"time": 2.0 * k, "raw": "None" * 20} for k in range(200)]}).encode())
    archive.write_bytes(gzip_damage(data).get(kind, data))
    damaged = final if kind.startswith("final") else archive
    if kind.endswith("directory"):
        damaged.unlink()
        damage(damaged, None)
    elif kind == "final not JSON":
        final.write_text('[{"time": 10.0, "raw": "r", "lab')
    if kind in ("archive cut short", "archive overwritten", "archive CRC"):  # each error Python gives for them
        with pytest.raises({"archive cut short": EOFError, "archive overwritten": zlib.error,
                            "archive CRC": gzip.BadGzipFile}[kind]), gzip.open(archive, "rt") as f:
            json.load(f)
    before = snapshot(project)
    sn = soccernet_labels(tmp_path / "sn", "Goal")
    runs = {
        "submit_llava.sh": cli("-m", "llava_soccer.videos", "state", project, "0"),  # before each video
        "merge_results_llava.py": in_process(merge_results_llava.main, ["--video-index", "0", "--project",
                                                                        str(project)]),
        "compare_counts.py": in_process(compare_counts.main, ["--project", str(project)]),
        "evaluate_soccernet.py": in_process(evaluate_soccernet.main, ["--project", str(project), "--soccernet",
                                                                      str(sn), "--metrics", "none", "--out",
                                                                      str(tmp_path / "eval")]),
    }
    for prog, (code, out, err) in runs.items():
        assert code == 1, (prog, out, err)
        line = one_error_line(err, prog)
        assert str(damaged) in line and ("move it" in line or "delete" in line), (prog, line)
    assert snapshot(project) == before
    # at the start of submit_llava.sh, the check of the range's finals leaves that video to its own turn
    code, out, err = cli("-m", "llava_soccer.videos", project, "0", "0")
    assert code == 0 and err == "", err


@pytest.mark.slow
def test_submit_runs_the_other_videos_when_one_videos_files_are_damaged(tmp_path, goal_checkpoint):
    from test_slurm import Site, run_local, summary
    clips = {name: synthetic.make_video(tmp_path / name, 10) for name in ("a.mkv", "b.mkv", "c.mkv")}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "LLAVA_MODEL": str(goal_checkpoint),
           "LLAVA_QUANT": "fp32", "LLAVA_PYTHON": sys.executable, "LLAVA_HOME": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "CUDA_VISIBLE_DEVICES": ""}
    site = Site(tmp_path, "site", clips, env)
    videos.manifest(site.project)
    events = [{"time": 0.0, "raw": "r", "label": "Goal", "team": "home", "confidence": 0.9, "event_time": 1.0,
               "video": "b.mkv"}]
    site.final(1).write_text(json.dumps(events))  # video 1: done, but its archive was cut short
    archive = settings.raw_answers_path(site.project, 1)
    archive.write_bytes(gzip.compress(json.dumps({"video": "b.mkv", "windows": []}).encode())[:20])
    site.final(2).mkdir()  # video 2: a directory where its final should be
    before = {p: p.read_bytes() for p in (site.final(1), archive)}
    r = run_local(site, "0", "2")
    assert r.returncode == 1, r.stderr
    assert summary(r.stderr)["done"] == [0] and summary(r.stderr)["failed"] == [1, 2]
    assert site.final(0).exists() and "video 0: done" in r.stderr
    assert re.search(rf"\] video 1: FAILED \(raw answers file {re.escape(str(archive))} is damaged \(.*: not a "
                     rf"complete gzip file\): move it out of ", r.stderr), r.stderr
    assert f"] video 2: FAILED (predictions file {site.final(2)} is a directory, not a file: move it" in r.stderr
    assert {p: p.read_bytes() for p in before} == before and site.final(2).is_dir()


@pytest.mark.parametrize("kind", ["not UTF-8", "directory"])
def test_a_damaged_video_list_is_one_line_with_the_fix(tmp_path, video_25fps, capsys, kind):
    project = make_project(tmp_path, {f"{GAME}/1_224p.mkv": video_25fps})
    videos.manifest(project)
    listed = project / "videos.txt"
    listed.unlink()
    damage(listed, b"league/season/game/1_224p.mkv\n\xe9t\xe9.mkv\n" if kind == "not UTF-8" else None)
    assert llava_split_worker.main(["--gpu-id", "0", "--num-workers", "1", "--video-index", "0", "--project",
                                    str(project), "--model", "/nonexistent/model"]) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    problem = "is not valid UTF-8 (byte 30)" if kind == "not UTF-8" else "is a directory, not a file"
    assert f"{listed} {problem}: restore it with: cp {project / '.videos_given.txt'} {listed}" in line
    code, _, err = in_process(evaluate_soccernet.main, ["--project", str(project), "--soccernet", str(tmp_path)])
    assert code == 1 and f"{listed} {problem}" in one_error_line(err, "evaluate_soccernet.py")


# --- the project directory ------------------------------------------------------------------------

TOOLS = {
    "llava_split_worker.py": (llava_split_worker.main, ["--gpu-id", "0", "--num-workers", "1", "--video-index", "0"]),
    "merge_results_llava.py": (merge_results_llava.main, ["--video-index", "0"]),
    "compare_counts.py": (compare_counts.main, []),
    "evaluate_soccernet.py": (evaluate_soccernet.main, ["--metrics", "none"]),
}


@pytest.mark.parametrize("case", ["missing", "a file", "HOME unset", "from SOCCER_PROJECT"])
@pytest.mark.parametrize("prog", TOOLS)
def test_a_project_directory_that_cannot_be_used_is_one_line_in_every_tool(tmp_path, monkeypatch, capsys, prog,
                                                                           case):
    main, argv = TOOLS[prog]
    monkeypatch.setenv("SOCCERNET_DIR", str(tmp_path))
    monkeypatch.delenv("SOCCER_PROJECT", raising=False)
    where = tmp_path / "soccer_project"
    if case == "HOME unset":
        monkeypatch.delenv("HOME")
        expected = "project directory ~/soccer_project (the default, SOCCER_PROJECT is not set) names no " \
                   "directory: HOME is not set; set SOCCER_PROJECT=/path/to/soccer_project or pass --project DIR"
    elif case == "from SOCCER_PROJECT":
        monkeypatch.setenv("SOCCER_PROJECT", str(where))
        expected = f"project directory {where} (SOCCER_PROJECT) does not exist: set SOCCER_PROJECT="
    else:
        argv = [*argv, "--project", str(where)]
        if case == "a file":
            where.write_text("")
            expected = f"project directory {where} (--project) is a file, not a directory: set SOCCER_PROJECT="
        else:
            expected = (f"project directory {where} (--project) does not exist: set SOCCER_PROJECT=/path/to/"
                        f"soccer_project or pass --project DIR, or create it with SOCCER_PROJECT={where} bash "
                        f"{ROOT / 'setup_llava.sh'}")
    assert main(argv) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert expected in line and "Traceback" not in err


@pytest.mark.slow
def test_an_unreadable_project_is_one_line_in_every_tool(open_tmp):
    project = open_tmp / "soccer_project"
    (project / "raw_data").mkdir(parents=True)
    prefix = nobody_prefix()
    project.chmod(0o700 if prefix else 0o000)  # root's own directory: nobody cannot enter it
    try:
        for prog, (_, argv) in TOOLS.items():
            code, out, err = cli(ROOT / prog, *argv, "--project", project, prefix=prefix, SOCCERNET_DIR=str(open_tmp))
            assert code == 1 and "Traceback" not in err, (prog, err)
            (line,) = [line for line in err.splitlines() if "error:" in line]
            assert f"cannot read the project directory {project} (--project): permission denied" in line, line
    finally:
        project.chmod(0o755)


# --- tools that only read -------------------------------------------------------------------------

def test_compare_and_evaluate_write_nothing_in_a_read_only_project(open_tmp, video_25fps):
    """A project the user can only read (a colleague's, a finished run): compare and evaluate work and leave it
    as it was, even where the video list is behind (a new video, no .videos_given.txt), which the workers and the
    merge would update."""
    project = make_project(open_tmp / "shared", {f"{GAME}/1_224p.mkv": video_25fps})
    videos.manifest(project)
    (project / ".videos_given.txt").unlink()
    os.symlink(video_25fps, project / "raw_data" / "new.mkv")
    forged_finals(project)
    gz = gzip.compress(json.dumps({"video": f"{GAME}/1_224p.mkv", "made_by": None, "incomplete": None,
                                   "windows": []}).encode())
    settings.raw_answers_path(project, 0).write_bytes(gz)
    sn = soccernet_labels(open_tmp / "sn", "Goal")
    out_dir = open_tmp / "out"
    out_dir.mkdir(mode=0o777)
    out_dir.chmod(0o777)
    make_read_only(project)
    before = snapshot(project)
    prefix = nobody_prefix()  # the fixture gives the permissions back
    code, out, err = cli(ROOT / "compare_counts.py", "--project", project, "--csv", out_dir / "counts.csv",
                         prefix=prefix)
    assert code == 0, err
    assert "wrote" in out and (out_dir / "counts.csv").exists()
    code, out, err = cli(ROOT / "evaluate_soccernet.py", "--project", project, "--soccernet", sn, "--metrics",
                         "none", "--out", out_dir / "eval", prefix=prefix)
    assert code == 0, err
    assert (out_dir / "eval" / "summary.json").exists()
    assert snapshot(project) == before
    assert not (project / ".videos_given.txt").exists() and "new.mkv" not in (project / "videos.txt").read_text()
    # its default output folder is in the project: one line saying to pass --out
    code, out, err = cli(ROOT / "evaluate_soccernet.py", "--project", project, "--soccernet", sn, "--metrics",
                         "none", prefix=prefix)
    assert code == 1 and f"cannot create the output folder {project / 'soccernet_eval'} (Permission denied): " \
                         f"pass --out DIR" in one_error_line(err, "evaluate_soccernet.py")
    assert snapshot(project) == before
