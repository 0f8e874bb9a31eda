"""Frame timing of llava_soccer/videos.py on ffmpeg-made videos whose timestamps are unusual.

(Constant and variable frame rates are covered in test_worker.py.)
"""
import logging
import subprocess

import pytest

from llava_soccer import synthetic, videos


@pytest.fixture(scope="module")
def video_repeated_timestamps(tmp_path_factory, video_25fps):
    """The barcoded 25 fps video's first 300 frames with every timestamp given twice (0, 0, 0.04,
    0.04, ...), as broken muxers and some screen recorders write them; Matroska stores it as is."""
    path = tmp_path_factory.mktemp("dup") / "repeated timestamps.mkv"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(video_25fps), "-frames:v", "300", "-vf",
                    "setpts=floor(N/2)/(25*TB)", "-fps_mode", "passthrough", "-c:v", "libx264", "-bf", "0",
                    "-preset", "ultrafast", str(path)], check=True)
    return path


def test_timestamps_that_do_not_increase_warn_once_and_count_frames(video_repeated_timestamps, caplog):
    info = videos.probe(video_repeated_timestamps)
    assert info.fps == 25
    with caplog.at_level(logging.WARNING, logger="llava_worker"):
        windows = list(videos.iter_windows(info, range(info.n_windows)))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("⚠️ repeated timestamps.mkv: frame timestamps do not increase (0.000 s, then 0.000 s "
                              "at frame 1): sampling by frame count at 25.000 fps instead")
    assert "remux the file (ffmpeg -i IN -c copy OUT.mkv)" in warning
    assert len(windows) == info.n_windows >= 2
    for w in windows:
        assert len(w.frames) == len(w.times) == len(info.window_samples(w.k))
        # sample time t is frame t x 25 when frames are counted (by their timestamps t would be frame 2 x t x 25)
        assert [synthetic.read_barcode(f) for f in w.frames] == [round(t * 25) for t in w.times], w.start


def test_display_name_keeps_the_game_and_the_half():
    game = "england_epl/2015-2016/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham/1_224p.mkv"
    assert videos.display_name(game, 200) == game
    assert videos.display_name(game, 60) == "…/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham/1_224p.mkv"
    assert videos.display_name("a\nvideo 9: done/1_224p.mkv") == "a\\nvideo 9: done/1_224p.mkv"  # one line
    assert len(videos.display_name("x" * 300 + ".mkv", 50)) == 50
