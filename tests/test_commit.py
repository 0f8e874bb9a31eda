"""One commit point per video: a merge killed, or stopped by a full disk, at any step leaves the old result with
its old state or the new one with its new state, and a rerun finishes it (issue 29, item 3).

The case that lost a result: an older INCOMPLETE final (its video file has changed since, so a rerun redoes it)
with its raw answers, new complete partials, and the merge interrupted after writing one of its two files.
"""
import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, load, make_project
from llava_soccer import records, settings, videos
from llava_soccer.jsonio import UnreadableFile
from test_merge import all_windows, answer, ev, killed_at_stop, made_by, run_merge, write_partials

SOURCE = "league/game/1_224p.mkv"
OLD_INCOMPLETE = "14 of 30 windows undecodable from 32.0 s on"
NEW_GOALS = range(0, 30, 3)  # a Goal in every third window: 10 events


@pytest.fixture
def project(odd_root, video_25fps, request):
    p = make_project(odd_root / request.node.name, {SOURCE: video_25fps})
    videos.manifest(p)
    return p


def old_result(project, with_digest=False):
    """The older INCOMPLETE final (4 events) and its raw answers, made from the video file before it was
    replaced (another size): a rerun redoes it. with_digest=False: raw answers written before final_digest."""
    made = made_by(project)
    old = {**made, "video_file": {**made["video_file"], "size": made["video_file"]["size"] + 1}}
    final = [{"time": 2.0 * k, "raw": "old", "label": "Foul", "team": "home", "confidence": 0.5, "details": None,
              "event_time": 2.0 * k + 1, "video": SOURCE, "made_by": old} for k in range(4)]
    archive = {"video": SOURCE, "made_by": old, "windows_total": 30, "incomplete": OLD_INCOMPLETE,
               "windows": [{"time": 2.0 * k, "status": "ok", "raw": "old"} for k in range(16)]}
    if with_digest:
        archive["final_digest"] = records.final_digest(final)
    settings.final_path(project, 0).write_text(json.dumps(final))
    settings.raw_answers_path(project, 0).write_bytes(gzip.compress(json.dumps(archive).encode()))
    return snapshot(project)


def new_partials(project):
    """Two complete partials of the video as it is now."""
    windows = all_windows({k: answer(ev("Goal", 1)) for k in NEW_GOALS})
    return write_partials(project, windows[:15], windows[15:])


def snapshot(project):
    return {p: p.read_bytes() for p in (settings.final_path(project, 0), settings.raw_answers_path(project, 0))}


def state(project):
    """What submit_llava.sh's per-video call says: (state, line)."""
    r = subprocess.run([sys.executable, "-m", "llava_soccer.videos", "state", str(project), "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return tuple(r.stdout.split("\t")[:2])


def status_row(project):
    """Video 0's row in status_llava.py."""
    r = subprocess.run([sys.executable, str(ROOT / "status_llava.py"), "--project", str(project)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("0  ")]
    return " ".join(row.split())


NOT_MERGED = "stopped all 30 windows saved, not merged (the merge failed or was interrupted): a rerun merges it"


def assert_old_state(project, old):
    """The old result, with its old state: incomplete, its file changed since, so a rerun redoes it."""
    assert snapshot(project) == old
    assert state(project)[0] == "redo" and f"is incomplete ({OLD_INCOMPLETE})" in state(project)[1]
    assert NOT_MERGED in status_row(project)


def assert_interrupted(project, old):
    """New raw answers beside the old final: neither 'done' nor the old 'incomplete'; a rerun merges again, and
    readers (compare, evaluate) refuse the pair with one line."""
    final, archive = settings.final_path(project, 0), settings.raw_answers_path(project, 0)
    assert final.read_bytes() == old[final] and archive.read_bytes() != old[archive]
    assert state(project) == ("redo", "video 0: its last merge was interrupted (final_predictions_llava_video_0"
                                      ".json is older than the raw answers beside it): merging its saved partials "
                                      "again")
    assert NOT_MERGED in status_row(project)
    with pytest.raises(UnreadableFile, match="is older than the raw-answers file beside it"):
        videos.check_source(project, 0, final)


def assert_new_state(project):
    final = settings.final_path(project, 0)
    assert [(e["label"], e["time"]) for e in load(final)] == [("Goal", 2.0 * k) for k in NEW_GOALS]
    with gzip.open(settings.raw_answers_path(project, 0), "rt") as f:
        archive = json.load(f)
    assert archive["incomplete"] is None and archive["final_digest"] == records.final_digest(load(final))
    assert state(project) == ("done", f"video 0: skipped, {final} exists")
    assert "done 10 events: Goal 10" in status_row(project)
    assert videos.check_source(project, 0, final).incomplete is None


# A child process merges; the step named stops it (it prints STOPPED and waits) and the test SIGKILLs it there,
# as a node failure or `scancel --signal=KILL` would.
CHILD = textwrap.dedent("""
    import os, pathlib, sys, time
    sys.path.insert(0, sys.argv[1])
    import merge_results_llava
    step, replaced = sys.argv[3], []
    real_replace, real_unlink = os.replace, pathlib.Path.unlink

    def stop():
        print("STOPPED", flush=True)
        time.sleep(60)

    def replace(a, b):
        if step == "before raw answers":
            stop()
        real_replace(a, b)
        replaced.append(b)
        if (step, len(replaced)) in (("after raw answers", 1), ("after final", 2)):
            stop()

    def unlink(self, *a, **k):
        real_unlink(self, *a, **k)
        if step == "deleting partials" and self.name.startswith("partial_results"):
            stop()

    os.replace, pathlib.Path.unlink = replace, unlink
    merge_results_llava.main(["--video_index", "0", "--project", sys.argv[2]])
""")


@pytest.mark.parametrize("with_digest", [False, True], ids=["older raw answers", "raw answers with digest"])
@pytest.mark.parametrize("step", ["before raw answers", "after raw answers", "after final", "deleting partials"])
def test_a_merge_killed_at_any_step_leaves_the_old_or_the_new_result_and_a_rerun_finishes(project, capsys, step,
                                                                                           with_digest):
    old = old_result(project, with_digest)
    partials = new_partials(project)
    assert_old_state(project, old)

    killed_at_stop(CHILD, project, step)

    if step == "before raw answers":
        assert_old_state(project, old)
    elif step == "after raw answers":
        assert_interrupted(project, old)
    else:
        assert_new_state(project)
        assert sum(p.exists() for p in partials) == (2 if step == "after final" else 1)
    code, out, err = run_merge(project, capsys)  # what submit_llava.sh runs after the workers (they find all saved)
    assert code == 0, err
    if step == "deleting partials":
        assert "video 0: already merged into" in out and "deleted 1 partial that a merge stopped while" in out
    assert_new_state(project)
    assert not any(p.exists() for p in partials)
    assert not any(p.name.endswith(".tmp") for p in project.iterdir())


def test_raw_answers_of_another_final_without_partials_are_one_line_not_a_state(project, capsys):
    """The partials of an interrupted merge deleted by hand: nothing can say what the final holds. submit's state
    call fails that video with one line (submit_llava.sh: FAILED, the others run), the merge too."""
    old = old_result(project)
    for path in new_partials(project):
        path.unlink()
    archive = settings.raw_answers_path(project, 0)
    archive.write_bytes(gzip.compress(json.dumps({"video": SOURCE, "incomplete": None,
                                                  "final_digest": "0" * 64}).encode()))
    final = settings.final_path(project, 0)
    says = (f"{final} is older than the raw-answers file beside it: a merge of video 0 was interrupted after writing "
            f"the raw answers, before the final, and its partials are gone. Move both files out of {project}, then "
            f"rerun video 0")
    r = subprocess.run([sys.executable, "-m", "llava_soccer.videos", "state", str(project), "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"submit_llava.sh: error: {says}\n")
    assert run_merge(project, capsys)[::2] == (1, f"merge_results_llava.py: error: {says}\n")
    assert final.read_bytes() == old[final]


def test_the_digest_is_the_same_for_the_records_and_the_file_written(project, capsys):
    """NaN, a lone surrogate and non-ASCII text in model output: the digest of what the merge holds equals
    that of the file read back (else every merge would look interrupted)."""
    raws = {2: "{'label': 'Goal', 'team': 'home', 'confidence': NaN, 'frame': 3, 'details': 'but\\udcff ⚽ é'}"}
    write_partials(project, all_windows(raws))
    assert run_merge(project, capsys)[0] == 0
    assert state(project)[0] == "done"


def mount_tmpfs(directory, size):
    directory.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (root only): {r.stderr.decode().strip()}")


def fill(directory, leave_pages):
    """Fill the file system of directory, then free leave_pages pages (4 KiB, tmpfs's unit)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size // 4096 * 4096 - 4096 * leave_pages)
    return filler


@pytest.mark.parametrize("step", ["raw answers", "final"])
def test_a_full_disk_at_either_write_leaves_the_old_or_an_interrupted_state_and_a_rerun_finishes(
        tmp_path, video_25fps, capsys, step):
    """A real full file system (tmpfs), with just room for the raw answers (the final's write fails) or not
    even that."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    try:
        project = make_project(disk, {SOURCE: video_25fps})
        videos.manifest(project)
        old = old_result(project)
        partials = new_partials(project)
        dry = shutil.copytree(project, tmp_path / "dry", symlinks=True)  # the sizes the merge will write
        assert run_merge(dry, capsys, "--keep-partials")[0] == 0
        pages = {name: -(-path.stat().st_size // 4096) for name, path in (
            ("raw answers", settings.raw_answers_path(dry, 0)), ("final", settings.final_path(dry, 0)))}
        assert pages["final"] > 1  # the old raw answers' page, freed when replaced, cannot hold it
        filler = fill(disk, pages["raw answers"] - 1 if step == "raw answers" else pages["raw answers"])

        code, out, err = run_merge(project, capsys)
        assert code == 75 and "no space left on the disk" in err, err
        assert all(p.exists() for p in partials)
        if step == "raw answers":
            assert_old_state(project, old)
        else:
            assert_interrupted(project, old)
        filler.unlink()
        assert run_merge(project, capsys)[0] == 0
        assert_new_state(project)
        assert not any(p.exists() for p in partials)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
