"""Frames that are not in the file are not answered: real ffmpeg videos damaged as downloads and disks damage
them, read back through the barcode of each frame's index (synthetic.make_video).

Three classes of damage to the 60 s barcoded 25 fps Matroska video (H.264, a key frame every 10 s): its middle
half zeroed; 20 KB of random bytes at a third of the file; a preallocated download (the real first and last
MiB, zeros between). The decoder skips the damaged data and goes on at a later frame, and the first frames
after it are decoded from pictures that were lost (the 14 s picture under 45-50 s timestamps). Before the
check, every window was answered with such frames and the video was "done".
"""
import gzip
import json
import re
import subprocess

import numpy as np
import pytest

import llava_split_worker as worker
import merge_results_llava
from conftest import load, make_project
from llava_soccer import cli, synthetic, videos
from llava_soccer.settings import FPS, partial_path, raw_answers_path

MIB = 1 << 20


def damaged(path, first, last, fill):
    """A copy of path whose bytes first:last are replaced by fill(n)."""
    data = bytearray(path.read_bytes())
    data[first:last] = fill(last - first)
    return bytes(data)


@pytest.fixture(scope="module")
def damaged_videos(tmp_path_factory, video_25fps):
    """{class: damaged .mkv}; the preallocated one is a noisier encode of video_25fps (3.9 MB: zeros between
    its first and last MiB)."""
    d = tmp_path_factory.mktemp("damaged")
    n = video_25fps.stat().st_size
    noisy = d / "noisy.mkv"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(video_25fps), "-vf", "noise=alls=10:allf=t+u",
                    "-c:v", "libx264", "-preset", "ultrafast", str(noisy)], check=True)
    assert noisy.stat().st_size > 3 * MIB
    rng = np.random.default_rng(0)
    made = {
        "zeroed": damaged(video_25fps, n // 4, 3 * n // 4, bytes),
        "random": damaged(video_25fps, n // 3, n // 3 + 20_000, lambda k: rng.integers(0, 256, k, np.uint8).tobytes()),
        "preallocated": damaged(noisy, MIB, noisy.stat().st_size - MIB, bytes),
    }
    for name, data in made.items():
        (d / f"{name}.mkv").write_bytes(data)
    return {name: d / f"{name}.mkv" for name in made}


# (damage, windows that must be undecodable, windows that must be answered): the frames the damage took, and
# those from a key frame after it on (the reader may give up a few more near the damage, never take less)
CASES = [("zeroed", range(8, 23), [0, 1, 2, 3, 4, 27, 28, 29]),
         ("random", range(10, 15), [0, 1, 2, 3, 4, 5, 6, 7, 8, 25, 26, 27, 28, 29]),
         ("preallocated", range(8, 23), [0, 1, 2, 3, 4, 5, 6, 27, 28, 29])]


@pytest.mark.parametrize("damage,lost,kept", CASES)
def test_every_frame_given_is_the_frame_of_its_time_and_windows_without_theirs_are_missing(
        damage, lost, kept, damaged_videos):
    info = videos.probe(damaged_videos[damage])
    assert info.n_windows == 30  # the header still says 60 s
    windows = list(videos.iter_windows(info, range(info.n_windows)))
    for w in windows:
        grid = info.window_times(w.k)
        if w.missing:  # undecodable: no frame at all, the grid times without a real frame named
            assert w.frames == w.times == [] and set(w.missing) <= set(grid), w.k
        else:  # every frame shown is the frame of its time (0.1 s: half a 5 FPS interval), none is a stand-in
            assert w.times == grid and len(w.frames) == len(grid), w.k
            shown = [synthetic.read_barcode(f) / 25 for f in w.frames]
            assert all(abs(s - t) <= 0.5 / FPS + 1e-6 for s, t in zip(shown, w.times)), (w.k, shown, w.times)
    missing = [w.k for w in windows if w.missing]
    assert set(lost) <= set(missing), missing
    assert not set(kept) & set(missing), missing


@pytest.mark.parametrize("fixture", ["video_25fps", "video_2997fps"])
def test_undamaged_videos_miss_no_frame(fixture, request):
    info = videos.probe(request.getfixturevalue(fixture))
    assert [w.k for w in videos.iter_windows(info, range(info.n_windows)) if w.missing] == []


@pytest.mark.slow
def test_a_damaged_video_ends_incomplete_as_a_truncated_one(tmp_path, damaged_videos, none_checkpoint, capsys):
    """The zeroed video through the worker and the merge: the windows without their frames are undecodable (no
    model call), the worker says so in one line with the time ranges and exits 3, the merge writes the video
    INCOMPLETE with those ranges, as for a truncated file."""
    project = make_project(tmp_path, {"zeroed.mkv": damaged_videos["zeroed"]})
    args = ["--gpu-id", "0", "--num-workers", "1", "--video-index", "0", "--project", str(project),
            "--model", str(none_checkpoint), "--quantization", "fp32"]
    assert worker.main(args) == cli.EXIT_INCOMPLETE
    err = capsys.readouterr().err
    records = load(partial_path(project, 0, 0))["windows"]
    holes = [round(r["time"] / 2) for r in records if r["status"] == "undecodable"]
    assert len(records) == 30 and set(range(8, 23)) <= set(holes) and 29 not in holes
    assert all(r["raw"] is None and re.fullmatch(r"no frames in the file at \d+\.\d-\d+\.\d s", r["error"])
               for r in records if r["status"] == "undecodable")
    assert {r["raw"] for r in records if r["status"] == "ok"} == {"None"}
    ranges = f"{len(holes)} of 30 windows undecodable at {2.0 * holes[0]:.1f}-{2.0 * holes[-1] + 3:.1f} s"
    (warning,) = [line for line in err.splitlines() if "undecodable" in line]
    assert f"⚠️ {ranges}: the video file has no frames there" in warning
    assert merge_results_llava.main(["--video-index", "0", "--project", str(project)]) == 3
    out, err = capsys.readouterr()
    assert f"30 windows from 1 partial: {30 - len(holes)} answered, {len(holes)} undecodable" in out
    assert f"⚠️ video 0 is INCOMPLETE: {ranges}" in err
    with gzip.open(raw_answers_path(project, 0), "rt") as f:
        assert json.load(f)["incomplete"] == ranges
    state, line = videos.final_state(project, 0)
    assert state == "incomplete" and "a rerun cannot fill it" in line
