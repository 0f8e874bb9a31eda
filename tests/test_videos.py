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


@pytest.fixture(scope="module")
def video_from_a_pipe(tmp_path_factory):
    """30 s of barcoded 25 fps H.264 that ffmpeg encodes from frames on its stdin to its stdout (Matroska,
    redirected to a file): a container written to a pipe cannot go back to write its duration (or cues), so
    OpenCV's frame count is negative."""
    path = tmp_path_factory.mktemp("pipe") / "from a pipe.mkv"
    with open(path, "wb") as out:
        ffmpeg = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                                   "398x224", "-r", "25", "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
                                   "-pix_fmt", "yuv420p", "-f", "matroska", "-"], stdin=subprocess.PIPE, stdout=out)
        for i in range(750):
            ffmpeg.stdin.write(synthetic.frame_image(i).tobytes())
        ffmpeg.stdin.close()
        assert ffmpeg.wait() == 0
    return path


def test_a_video_written_to_a_pipe_is_read_to_its_end_not_called_corrupt(video_from_a_pipe, odd_root,
                                                                         goal_checkpoint, capsys):
    """Issue 33 item 11: such a video was 'corrupt file or missing codec'. probe counts its frames instead, and a
    worker's slice in its second half (reached by seeking) gets the frames at their exact timestamps."""
    import cv2

    import llava_split_worker as worker
    from conftest import load, make_project
    from llava_soccer.settings import partial_path
    assert cv2.VideoCapture(str(video_from_a_pipe)).get(cv2.CAP_PROP_FRAME_COUNT) <= 0  # what OpenCV says
    info = videos.probe(video_from_a_pipe)
    assert (info.fps, info.duration, info.n_windows) == (25, 30, 15)
    last = list(videos.iter_windows(info, [info.n_windows - 1]))[0]
    assert [synthetic.read_barcode(f) for f in last.frames] == [round(t * 25) for t in last.times]

    project = make_project(odd_root / "pipe", {"match/1_224p.mkv": video_from_a_pipe})
    capsys.readouterr()
    code = worker.main(["--gpu-id", "3", "--num-workers", "4", "--video-index", "0", "--project", str(project),
                        "--model", str(goal_checkpoint), "--quantization", "fp32", "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert code == 0, err
    records = load(partial_path(project, 0, 3))["windows"]  # the last quarter: 3 windows from 24 s, seeking there
    assert len(records) == len(info.slice_windows(3, 4)) > 0 and "video 0: " in err and "(30.0 s, 25.000 fps" in err
