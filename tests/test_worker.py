"""llava_split_worker.py on real H.264 videos with real tiny LLaVA-NeXT checkpoints."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import transformers

import llava_split_worker as worker
from conftest import GOAL_ANSWER, ROOT, appended, cpu_plan, load, load_engine, make_project, nobody_prefix
from llava_soccer import cli, decoding, families, jsonio, reporting, synthetic, videos
from llava_soccer import worker as worker_loop
from llava_soccer.families import llava_next
from llava_soccer.generation import Generation
from llava_soccer.settings import SOCCERNET_CLASSES, partial_path


def windows_of(partial):
    """The window records of a partial file."""
    return load(partial)["windows"]


def write_partial(project, ckpt, records, *extra, gpu=0, workers=1, index=0):
    """A partial as run_worker(...) with these flags would write it: its made_by is the worker's own."""
    args = worker.parse_args(["--gpu-id", str(gpu), "--num-workers", str(workers), "--video-index", str(index),
                              "--project", str(project), "--model", str(ckpt), "--quantization", "fp32", *extra])
    video = videos.resolve_video(project, index)
    made_by = worker_loop.identity(args, worker_loop.plan_for(args)[1], project, video, videos.probe(video))
    jsonio.atomic_write_json(partial_path(project, index, gpu), worker_loop.partial_doc(made_by, records))


def run_worker(project, ckpt, *extra, gpu=0, workers=1, index=0):
    return worker.main(["--gpu-id", str(gpu), "--num-workers", str(workers), "--video-index", str(index),
                        "--project", str(project), "--model", str(ckpt), "--quantization", "fp32", *extra])


def worker_cmd(project, ckpt, gpu=0, workers=1, index=0):
    """The worker's command line in the first versions' underscore spellings (still accepted)."""
    return [sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu_id", str(gpu), "--num_workers",
            str(workers), "--video_index", str(index), "--project", str(project), "--model", str(ckpt),
            "--quantization", "fp32"]


class FailingEngine:
    """A real engine (conftest.load_engine) whose answer() first asks fail(batch sizes so far) for an error to
    raise: the worker's failure paths met through its engine seam (worker.run(cfg, engine=...)), nothing patched."""

    def __init__(self, engine, fail):
        self.engine, self.fail, self.calls = engine, fail, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def answer(self, windows, generation):
        self.calls.append(len(windows))
        error = self.fail(self.calls)
        if error is not None:
            raise error
        return self.engine.answer(windows, generation)


def run_engine(project, ckpt, engine, *extra, gpu=0, workers=1):
    """run_worker() with this engine, as llava_split_worker.py's main() runs the worker (its exit code and lines)."""
    from llava_soccer.cli import InputError, run_cli
    cfg = worker.parse_args(["--gpu-id", str(gpu), "--num-workers", str(workers), "--video-index", "0",
                             "--project", str(project), "--model", str(ckpt), "--quantization", "fp32", *extra])
    worker.log_to_stderr(cfg)
    return run_cli(lambda c: worker_loop.run(c, engine=engine), cfg, "llava_split_worker.py",
                   failures=(InputError, worker_loop.Abort))


@pytest.mark.parametrize("fixture", ["video_25fps", "video_2997fps"])
def test_each_window_gets_the_frames_at_its_exact_timestamps(fixture, request):
    info = videos.probe(request.getfixturevalue(fixture))
    assert info.n_windows == (30 if fixture == "video_25fps" else 16)
    for k, start, times, frames in videos.iter_windows(info, range(info.n_windows)):
        assert start == 2 * k
        assert len(frames) == (15 if start + 3 <= info.duration else len(times))
        for t, frame in zip(times, frames):
            # the frame shown nearest to t, read back from the barcode burned into it
            assert synthetic.read_barcode(frame) == round(t * info.fps), (start, t)
            assert frame.shape == (224, 398, 3)
    # RGB, not OpenCV's BGR: the pitch is green-dominant, red low
    assert frame[100, 5, 1] > 100 and frame[100, 5, 0] < 90


def test_starting_late_in_a_video_seeks_to_the_right_frames(video_25fps):
    info = videos.probe(video_25fps)
    (k, start, times, frames), = videos.iter_windows(info, [27])
    assert [synthetic.read_barcode(f) for f in frames] == [round(t * 25) for t in times] == list(range(1350, 1425, 5))


@pytest.mark.parametrize("frames,fps", [(1500, 25.0), (899, 29.97), (1, 25.0), (75001, 25.0), (29, 29.97)])
def test_slices_cover_every_window_exactly_once(frames, fps):
    info = videos.VideoInfo(None, fps, frames)
    for n in range(1, 6):
        owned = [k for g in range(n) for k in info.slice_windows(g, n)]
        assert sorted(owned) == list(range(info.n_windows))
    assert info.n_windows == -(-info.n_samples // 10)


@pytest.mark.slow
def test_four_workers_write_one_record_per_window_with_the_models_answer(odd_root, video_25fps, goal_checkpoint,
                                                                         capsys):
    project = make_project(odd_root / "four", {"league/season/game/1_224p.mkv": video_25fps})
    for g in range(4):
        assert run_worker(project, goal_checkpoint, gpu=g, workers=4) == 0
    log = capsys.readouterr().err
    assert (project / "videos.txt").read_text() == "league/season/game/1_224p.mkv\n"
    starts = []
    for g in range(4):
        records = windows_of(partial_path(project, 0, g))
        assert [r["time"] for r in records] == sorted(r["time"] for r in records)
        starts += [r["time"] for r in records]
        for r in records:
            assert r["status"] == "ok" and r["raw"] == GOAL_ANSWER and r["parsed"] is True
            (event,) = r["events"]
            # frame 8 of the window = 7 samples after its start, at 5 FPS; the parrot says its one token surely
            assert 0.9 < event.pop("token_prob") <= 1
            assert event == {"label": "Goal", "label_raw": "Goal", "team": "home", "confidence": 0.9,
                             "details": "ball in the net", "frame": 8, "time": round(r["time"] + 1.4, 3),
                             "label_span": [11, 15]}
            assert set(r["class_scores"]) == set(SOCCERNET_CLASSES) and 0 <= r["none_prob"] <= 1
            assert all(0 <= v <= 1 for v in r["class_scores"].values())
    assert starts == [2.0 * k for k in range(30)]
    # each record says which frames the model saw: the video's last window has 10 (58.0-59.8 s), not 15
    assert records[-1]["frames"] == [round(58 + i / 5, 3) for i in range(10)] and len(records[0]["frames"]) == 15
    assert "slice 1/4: 8 windows 0.0-14.0s" in log and "slice 4/4: 7 windows 46.0-58.0s" in log
    assert "⚽ 0:01.4 (1.4 s) Goal [home, 0.90] ball in the net" in log
    assert "model loaded in" in log and "30/30" not in log


@pytest.mark.slow
def test_rerun_of_a_complete_slice_exits_at_once(odd_root, video_25fps, none_checkpoint, capsys):
    project = make_project(odd_root / "rerun", {"a.mkv": video_25fps})
    assert run_worker(project, none_checkpoint, gpu=3, workers=4) == 0
    records = windows_of(partial_path(project, 0, 3))
    assert all(r["raw"] == "None" and r["events"] == [] and r["parsed"] for r in records)
    capsys.readouterr()
    # what a kill -9 during an atomic write leaves (an old-style name, 20 minutes old), and the
    # temp of a live writer on this host (this process) that must survive the worker's start
    stale = partial_path(project, 0, 3).with_name(".partial_results_llava_vid0_gpu3.json.x1y2.tmp")
    stale.write_text('[{"time": 46')
    os.utime(stale, (time.time() - 1200, time.time() - 1200))
    live = stale.with_name(f".partial_results_llava_vid0_gpu3.json.{socket.gethostname()}.{os.getpid()}.ab12.tmp")
    live.write_text('[{"time": 4')
    t = time.monotonic()
    assert run_worker(project, none_checkpoint, gpu=3, workers=4) == 0
    assert time.monotonic() - t < 5
    err = capsys.readouterr().err
    assert "slice already complete" in err and "model loaded" not in err
    assert windows_of(partial_path(project, 0, 3)) == records and not stale.exists() and live.exists()


@pytest.mark.parametrize("change, says", [
    ("model", "model_revision dir sha256:"),                   # another checkpoint (directory digests differ)
    ("quantization", "quantization bf16 -> fp32"),              # (the partial's value -> this run's)
    ("max_new_tokens", "max_new_tokens 64 -> 256"),
    ("visual_tokens", "visual_tokens reduced -> full"),
    ("video", "video size"),                                    # the file replaced under the same name
    ("index", "video path b.mkv -> a.mkv"),                     # a partial copied from another video index
    ("unknown", "unknown origin"),                              # written before made_by existed
])
def test_a_partial_made_by_another_run_is_refused_then_replaced_on_request(tmp_path, video_10s, video_2997fps,
                                                                           goal_checkpoint, none_checkpoint,
                                                                           change, says, capsys):
    """Resuming would mix two runs in one result: one line naming what differs, nothing loaded, the partial
    kept; --replace-mismatched starts the slice over (the old file replaced only by the new one)."""
    project = make_project(tmp_path, {"a.mkv": video_10s, "b.mkv": video_2997fps})
    old = [{"time": 0.0, "end": 2.8, "status": "ok", "raw": "None", "parsed": True, "events": []}]
    flags = {"quantization": ["--quantization", "bf16"], "max_new_tokens": ["--max-new-tokens", "64"],
             "visual_tokens": ["--visual-tokens", "reduced"]}.get(change, [])
    if change == "unknown":
        partial_path(project, 0, 0).write_text(json.dumps(old))
    elif change == "index":  # video 1's partial, renamed as video 0's
        write_partial(project, goal_checkpoint, old, index=1)
        partial_path(project, 1, 0).rename(partial_path(project, 0, 0))
    else:
        write_partial(project, none_checkpoint if change == "model" else goal_checkpoint, old, *flags)
    if change == "video":
        replaced = tmp_path / "replaced.mkv"
        replaced.write_bytes((project / "raw_data" / "a.mkv").read_bytes() + b"\0" * 100)
        (project / "raw_data" / "a.mkv").unlink()
        (project / "raw_data" / "a.mkv").symlink_to(replaced)
    before = partial_path(project, 0, 0).read_bytes()
    assert run_worker(project, goal_checkpoint) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"partial file {partial_path(project, 0, 0)} was made by another run (" in line and says in line
    assert "Delete it to start that slice over, or rerun with --replace-mismatched" in line
    assert "model loaded" not in err and partial_path(project, 0, 0).read_bytes() == before
    if change != "video":
        return  # (one case runs the slice over: 5 windows on the CPU)
    assert run_worker(project, goal_checkpoint, "--replace-mismatched") == 0
    assert "starting this slice over (--replace-mismatched)" in capsys.readouterr().err
    records = windows_of(partial_path(project, 0, 0))
    assert len(records) == 5 and {r["raw"] for r in records} == {GOAL_ANSWER}


@pytest.mark.slow
def test_a_truncated_video_ends_incomplete_with_one_line_and_exit_3(tmp_path, none_checkpoint, capsys):
    """A download cut at ~25%: the windows past the end of the data cannot be decoded. The worker records
    them as undecodable (no model call), says so in one line with the time range, exits 3; a rerun of the
    same file has nothing to do."""
    full = synthetic.make_video(tmp_path / "full.mkv", 40, "25")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 4])
    project = make_project(tmp_path, {"cut.mkv": cut})
    assert videos.probe(cut).n_windows == 20  # the header still says 40 s
    assert run_worker(project, none_checkpoint) == cli.EXIT_INCOMPLETE
    err = capsys.readouterr().err
    records = windows_of(partial_path(project, 0, 0))
    statuses = [r["status"] for r in records]
    first_hole = statuses.index("undecodable")
    assert len(records) == 20 and 2 <= first_hole < 15 and set(statuses[first_hole:]) == {"undecodable"}
    (warning,) = [line for line in err.splitlines() if "undecodable" in line]
    assert f"{20 - first_hole} of 20 windows undecodable from {2.0 * first_hole:.1f} s on: the video file" in warning
    assert "a rerun cannot fill them, replace the file to redo the video" in warning
    assert run_worker(project, none_checkpoint) == cli.EXIT_INCOMPLETE
    assert "slice already complete" in capsys.readouterr().err


@pytest.mark.xdist_group("serial")
@pytest.mark.slow
def test_kill_9_mid_slice_then_rerun_gives_the_same_records(tmp_path, goal_checkpoint, capsys):
    """A worker process killed with SIGKILL mid-slice; the rerun (in this process: the kill is the point, not the
    rerun's process) resumes after the saved windows and ends with the records of an uninterrupted run."""
    video = synthetic.make_video(tmp_path / "v.mkv", 24, "25")  # 12 windows: the kill lands after 4, well before 12
    clean, killed = (make_project(tmp_path / name, {"v.mkv": video}) for name in ("clean", "killed"))
    engine = load_engine(goal_checkpoint)
    assert run_engine(clean, goal_checkpoint, engine) == 0  # the reference
    partial = partial_path(killed, 0, 0)
    proc = subprocess.Popen(worker_cmd(killed, goal_checkpoint), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while not (partial.exists() and len(windows_of(partial)) >= 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(windows_of(partial))
    assert 4 <= n_before < 12
    capsys.readouterr()
    assert run_engine(killed, goal_checkpoint, engine) == 0
    assert f"{n_before} already in" in capsys.readouterr().err
    assert load(partial) == load(partial_path(clean, 0, 0))


@pytest.mark.xdist_group("serial")
@pytest.mark.slow
def test_sigusr1_saves_and_exits_75_then_resumes(tmp_path, none_checkpoint):
    """SIGUSR1 to a worker process mid-slice: it saves, exits 75 and says how to resume; the rerun (in this process)
    does the windows left."""
    video = synthetic.make_video(tmp_path / "v.mkv", 24, "25")  # 12 windows: the signal comes after 2
    project = make_project(tmp_path / "p", {"v.mkv": video})
    partial = partial_path(project, 0, 0)
    proc = subprocess.Popen(worker_cmd(project, none_checkpoint), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not (partial.exists() and len(windows_of(partial)) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    err = proc.communicate()[1]
    assert proc.returncode == reporting.EXIT_INTERRUPTED == 75, err
    assert "SIGUSR1 received" in err and "rerun the same command to resume" in err
    n = len(windows_of(partial))
    assert 2 <= n < 12
    assert run_worker(project, none_checkpoint) == 0
    assert [r["time"] for r in windows_of(partial)] == [2.0 * k for k in range(12)]


def test_failures_that_are_not_in_a_row_never_stop_the_worker(odd_root, video_25fps, goal_checkpoint, capsys):
    """Every other window fails: five failures (MAX_ERRORS_IN_A_ROW), never two in a row, so the count restarts
    after each answer and the slice runs to its end (exit 1: the failed windows are retried by a rerun)."""
    engine = FailingEngine(load_engine(goal_checkpoint), lambda calls: ValueError(
        "Image features and image tokens do not match") if len(calls) % 2 == 0 else None)
    project = make_project(odd_root / "scattered", {"a.mkv": video_25fps})
    assert run_engine(project, goal_checkpoint, engine, gpu=0, workers=3) == 1  # slice 0 of 3: 10 windows
    err = capsys.readouterr().err
    assert worker_loop.MAX_ERRORS_IN_A_ROW == 5  # as many failures as would stop it if the count never restarted
    assert [r["status"] for r in windows_of(partial_path(project, 0, 0))] == ["ok", "failed"] * 5
    assert "in a row" not in err and "5 of 10 windows failed" in err


@pytest.mark.slow
def test_oom_halves_the_batch_then_a_window_that_fails_alone_is_retried_by_the_rerun(odd_root, video_25fps,
                                                                                    goal_checkpoint, capsys):
    def oom(calls):  # batches never fit; window 4 s (call 4,2,1,1,2,[1]) fails alone too
        if calls[-1] > 1 or len(calls) == 6:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    engine = FailingEngine(load_engine(goal_checkpoint), oom)
    project = make_project(odd_root / "oom", {"a.mkv": video_25fps})
    assert run_engine(project, goal_checkpoint, engine, "--batch-size", "4", gpu=0, workers=4) == \
        reporting.EXIT_FAILED
    records = windows_of(partial_path(project, 0, 0))
    assert [r["time"] for r in records] == [2.0 * k for k in range(8)]
    assert engine.calls[:4] == [4, 2, 1, 1]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["time"] == 4.0
    assert failed[0]["error"] == "OOM" and failed[0]["raw"] is None
    err = capsys.readouterr().err
    assert f"⚠️ out of GPU memory (OOM) at {failed[0]['time']}s: window failed (is another process" in err
    assert "1 of 8 windows failed (OOM) at 4.0-7.0 s: rerun the same command to retry them" in err
    assert all(r["raw"] == GOAL_ANSWER for r in records if r["status"] == "ok")
    # the rerun retries that window, and only that one
    assert run_engine(project, goal_checkpoint, engine.engine, gpu=0, workers=4) == reporting.EXIT_DONE
    assert "7 already in" in capsys.readouterr().err
    assert all(r["status"] == "ok" for r in windows_of(partial_path(project, 0, 0)))


def test_a_gpu_out_of_memory_on_every_window_stops_the_worker_with_the_reason(odd_root, video_25fps,
                                                                              goal_checkpoint, capsys):
    """Another process fills the GPU: OOM counts towards "five in a row" like any failure."""
    engine = FailingEngine(load_engine(goal_checkpoint),
                           lambda calls: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    project = make_project(odd_root / "oom every", {"a.mkv": video_25fps})
    assert run_engine(project, goal_checkpoint, engine, "--batch-size", "2", gpu=0, workers=2) == \
        reporting.EXIT_FAILED
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "5 windows in a row failed, last at 8.0s (out of GPU memory (OOM)): is another process using" in line
    assert "a rerun retries the failed ones" in line
    assert [r["status"] for r in windows_of(partial_path(project, 0, 0))] == ["failed"] * 4  # the 5th: not saved


def test_a_window_that_keeps_failing_is_recorded_and_five_in_a_row_stop_the_worker(odd_root, video_25fps,
                                                                                  goal_checkpoint, capsys):
    engine = FailingEngine(load_engine(goal_checkpoint),
                           lambda calls: ValueError("Image features and image tokens do not match"))
    project = make_project(odd_root / "broken", {"a.mkv": video_25fps})
    assert run_engine(project, goal_checkpoint, engine, gpu=0, workers=2) == 1
    err = capsys.readouterr().err
    assert "⚠️ ValueError: Image features and image tokens do not match at 0.0s: window failed" in err
    assert "5 windows in a row failed, last at 8.0s (ValueError: Image features" in err
    assert [r["status"] for r in windows_of(partial_path(project, 0, 0))] == ["failed"] * 4


@pytest.mark.slow
def test_nf4_quantized_checkpoint_runs_on_cpu(odd_root, video_25fps, goal_checkpoint, capsys):
    import bitsandbytes as bnb
    model = load_engine(goal_checkpoint, "nf4").model
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) > 10
    project = make_project(odd_root / "nf4", {"a.mkv": video_25fps})
    args = ["--gpu_id", "3", "--num_workers", "4", "--video_index", "0", "--project", str(project),
            "--model", str(goal_checkpoint), "--quantization", "nf4", "--batch-size", "auto"]
    assert worker.main(args) == 0
    err = capsys.readouterr().err
    assert "quantization=nf4 device=cpu" in err and "--batch-size auto: no GPU, using batches of 1" in err
    assert {r["raw"] for r in windows_of(partial_path(project, 0, 3))} == {GOAL_ANSWER}


@pytest.mark.slow
def test_nf4_weights_dequantized_once_are_bitsandbytes_own_dequantization(tmp_path):
    """--nf4-weights dequantized (the plan on 8.0+ cards of 64+ GiB): every 4-bit layer becomes a plain
    one holding exactly the tensor bitsandbytes rebuilds for its products."""
    import bitsandbytes as bnb
    import numpy as np
    ckpt = str(synthetic.make_checkpoint(tmp_path / "r", "tiny", seed=5, init_std=0.5))
    packed, processor = families.load(ckpt, cpu_plan("nf4"), "cpu")
    dequantized, _ = families.load(ckpt, cpu_plan("nf4", nf4_weights="dequantized"), "cpu")
    fours = {name: m for name, m in packed.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    plain = dict(dequantized.named_modules())
    assert len(fours) > 10 and not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.values())
    for name, four in fours.items():
        weight = bnb.functional.dequantize_4bit(four.weight.data, four.weight.quant_state)
        assert type(plain[name]) is torch.nn.Linear and torch.equal(plain[name].weight, weight), name
    rng = np.random.default_rng(1)
    windows = llava_next.prepare(processor, [([t + 0.2 * i for i in range(15)], [rng.integers(0, 255, (224, 398, 3),
                                         dtype=np.uint8) for _ in range(15)]) for t in (0.0, 2.0)])
    # bnb's CPU kernels round otherwise than F.linear (on a GPU, a prefill's products are F.linear on this very
    # tensor: benchmarks/RESULTS.md, session 7): near logits, where unrelated ones differ by ~140%
    with torch.inference_mode():
        logits = [model(**windows[0], logits_to_keep=1).logits[0, -1] for model in (packed, dequantized)]
    assert decoding.relative_error(logits[1], logits[0]) < decoding.SELF_CHECK_MAX_ERROR / 2


@pytest.mark.slow
def test_a_window_has_the_real_models_token_count(tmp_path, video_25fps):
    """At image size 336 the processor gives the hub model's numbers: 1,608 tokens per 224p frame."""
    ckpt = synthetic.make_checkpoint(tmp_path / "ck336", "tiny336")
    processor = transformers.LlavaNextProcessor.from_pretrained(ckpt)
    (_, _, times, frames), = videos.iter_windows(videos.probe(video_25fps), [0])
    inputs, = llava_next.prepare(processor, [(times, frames)])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == 15 * 1608
    text = processor.batch_decode(inputs["input_ids"])[0]
    assert "Frame 1 (0:00.0): <image>" in text and "Frame 15 (0:02.8): <image>" in text
    # the fast mode: base view + one tile
    engine = load_engine(ckpt, visual_tokens="reduced")
    inputs = engine.prepare([(times, frames)])
    assert int((inputs[0]["input_ids"] == image_id).sum()) == 15 * 926
    assert len(engine.generate(inputs, Generation(max_new_tokens=2))) == 1


def test_new_videos_get_new_indices_without_renumbering(tmp_path, video_25fps, video_2997fps):
    project = make_project(tmp_path, {"b/2_224p.mkv": video_25fps})
    assert videos.manifest(project) == ["b/2_224p.mkv"]
    make_project(tmp_path, {"a/1_224p.mkv": video_2997fps})
    assert videos.manifest(project) == ["b/2_224p.mkv", "a/1_224p.mkv"]
    assert videos.resolve_video(project, 1).name == "1_224p.mkv"


@pytest.mark.parametrize("case,message", [
    ("index", "--video-index 5 is out of range: "),
    ("corrupt", "cannot read video "),
    ("model", "--model /no/such/model: no such directory"),
    ("foreign", "has windows outside this slice (e.g. 1.0 s): it was written with another --num-workers"),
    ("garbled", "is not valid JSON"),
])
def test_bad_input_is_one_clear_line_and_exit_1(tmp_path, video_25fps, goal_checkpoint, case, message, capsys):
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"\x1aE\xdf\xa3 not really a matroska file" * 100)
    project = make_project(tmp_path, {"good.mkv": video_25fps, "z_bad.mkv": bad})
    if case == "foreign":
        write_partial(project, goal_checkpoint, [{"time": 1.0, "raw": "None"}])
    if case == "garbled":
        partial_path(project, 0, 0).write_text('[{"time": 0.0, "raw": "No')
    index = {"index": 5, "corrupt": 1}.get(case, 0)
    ckpt = "/no/such/model" if case == "model" else goal_checkpoint
    assert run_worker(project, ckpt, index=index) == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err_lines) == 1 and message in err_lines[0]


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        worker.main(["--gpu_id", "4", "--num_workers", "4", "--video_index", "0"])
    assert e.value.code == 2
    assert "--gpu-id: 4 is not between 0 and --num-workers - 1 (3)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,code", [(["--help"], 0), (["--gpu-id", "x"], 2), (["--print-plan"], 0)])
def test_answers_that_need_no_model_load_no_torch(argv, code):
    """torch is imported for the engine only (and by a GPU build of torch, to find the GPU): where it is missing
    these still answer, and in a fraction of the seconds it takes to load (python -X importtime lists every module
    imported). This machine's torch is a CPU build: --print-plan plans for the CPU without it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_")}
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "llava_split_worker.py"), *argv],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == code, r.stderr[-2000:]
    loaded = re.findall(r"^import time:.*\| +(torch\S*)$", r.stderr, re.M)
    assert not loaded, f"{' '.join(argv)} imported {', '.join(loaded[:5])}"

def test_each_exit_code_is_defined_once():
    """An exit code has one name in one module (cli, claims, reporting, a script): a second module's copy of it
    (an alias such as worker.EXIT_DONE = reporting.EXIT_DONE) is a second place to keep in step."""
    import ast
    defined = {}
    for path in sorted([*(ROOT / "llava_soccer").rglob("*.py"), *ROOT.glob("*.py")]):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for name in (n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                if name.startswith("EXIT_"):
                    defined.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert {name: where for name, where in defined.items() if len(where) > 1} == {}
    assert {"EXIT_DONE", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_INCOMPLETE", "EXIT_LOST_LOCK"} <= set(defined)


def test_underscore_flags_of_the_first_versions_parse_as_the_dashed_ones(monkeypatch):
    monkeypatch.delenv("LLAVA_NUM_WORKERS", raising=False)
    rest = ["--project", "/p", "--batch-size", "2"]
    old = worker.parse_args(["--gpu_id", "1", "--num_workers", "3", "--video_index", "5", *rest])
    new = worker.parse_args(["--gpu-id", "1", "--num-workers", "3", "--video-index", "5", *rest])
    assert old == new and (new.gpu_id, new.num_workers, new.video_index) == (1, 3, 5)
    assert worker.parse_args(["--gpu-id=1", "--num_workers=3", "--video-index", "5", *rest]) == new


@pytest.mark.parametrize("env,argv,says", [
    ("0", [], "LLAVA_NUM_WORKERS='0' (--num-workers): must be at least 1"),
    ("x", [], "LLAVA_NUM_WORKERS='x' is not a valid --num-workers value"),
    ("4", ["--num_workers", "0"], "error: --num-workers: must be at least 1"),  # the flag given, not the variable
    ("4", ["--num-workers=0"], "error: --num-workers: must be at least 1"),
])
def test_llava_num_workers_is_checked_under_the_dashed_name(env, argv, says, monkeypatch, capsys):
    monkeypatch.setenv("LLAVA_NUM_WORKERS", env)
    with pytest.raises(SystemExit) as e:
        worker.parse_args(["--print-plan", *argv])
    assert e.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert says in line, line


CONFIG_READS = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import llava_split_worker
    config, reads = sys.argv[2] + "/config.json", []

    def parses(event, args):  # the pipeline's own reads of the checkpoint's config.json (families.of_model)
        if event == "open" and str(args[0]) == config:
            frame, names = sys._getframe(1), []
            while frame:
                names.append(frame.f_code.co_name)
                frame = frame.f_back
            reads.append("of_model" in names[:3])

    sys.addaudithook(parses)
    code = llava_split_worker.main(sys.argv[3:])
    print("config.json read", sum(reads), "times by the pipeline,", len(reads), "in all")
    sys.exit(code)
""")


@pytest.mark.slow
def test_a_run_reads_the_checkpoints_config_once(tmp_path, video_10s, goal_checkpoint):
    """The worker reads the model's family from its config.json once per run and hands it on (the lock's and
    partial's names, the plan, made_by, the load); transformers' own reads while loading are its business."""
    project = make_project(tmp_path, {"v.mkv": video_10s})
    r = subprocess.run([sys.executable, "-c", CONFIG_READS, str(ROOT), str(goal_checkpoint),
                        *worker_cmd(project, goal_checkpoint, gpu=3, workers=4)[2:]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "config.json read 1 times by the pipeline," in r.stdout
    assert windows_of(partial_path(project, 0, 3))[0]["raw"] == GOAL_ANSWER


@pytest.mark.slow
def test_hf_token_is_used_but_never_printed(tmp_path, video_25fps, none_checkpoint):
    project = make_project(tmp_path, {"v.mkv": video_25fps})
    env = {**os.environ, "HF_TOKEN": "hf_SuperSecretValue123"}
    out = subprocess.run(worker_cmd(project, none_checkpoint, gpu=3, workers=4), env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0
    assert "HF_TOKEN=set" in out.stderr
    assert "SuperSecret" not in out.stderr + out.stdout


# the frames per window each family's decoder tests use (Qwen's vision tower sees ~1,000 patches a frame: 3 frames
# keep its tests as quick as LLaVA's)
FRAMES = {"llava_next": 15, "qwen2_5_vl": 3}


@pytest.fixture(scope="module", params=families.ALL, ids=lambda f: f.NAME)
def random_engine(request, tmp_path_factory):
    """(checkpoint, engine, frames per window, visual tokens) of each family's tiny random checkpoint (answers differ
    window by window), loaded once per family for the decoder tests that take it; they leave the model as they found
    it. Qwen at --visual-tokens reduced (112 tokens a frame, not 256): the worker's 15-frame windows run its vision
    tower, and the decoder does not depend on the image token count."""
    family, frames = request.param, FRAMES[request.param.NAME]
    ckpt = family.build_checkpoint(tmp_path_factory.mktemp(family.NAME) / "random", "tiny", seed=5, init_std=0.5)
    visual_tokens = "reduced" if family.NAME == "qwen2_5_vl" else "full"
    return ckpt, load_engine(ckpt, visual_tokens=visual_tokens), frames, visual_tokens


def random_windows(seed, starts, frames):
    """Windows [(frame_times, rgb_frames)] of random 224p frames starting at `starts`: `frames` frames each, or
    frames[i] for window i (a list)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    counts = frames if isinstance(frames, list) else [frames] * len(starts)
    return [([t + 0.2 * i for i in range(n)], [rng.integers(0, 255, (224, 398, 3), dtype=np.uint8) for _ in range(n)])
            for t, n in zip(starts, counts)]


@pytest.mark.slow
def test_batching_and_the_fast_decoder_do_not_change_greedy_answers(tmp_path, video_25fps, random_engine):
    """A random checkpoint (answers differ window by window) gives the same text for every
    window whether generated alone by transformers' generate (the plain path), by it in batches,
    or by the fast decoder (the default) alone or in batches; for every family (the worker's windows of 15
    frames)."""
    ckpt, engine, _, visual_tokens = random_engine
    answers = {}
    for name, extra in {"plain": ["--decoder", "transformers"], "default": [], "fast3": ["--batch-size", "3"],
                        "transformers2": ["--decoder", "transformers", "--batch-size", "2"]}.items():
        project = make_project(tmp_path / name, {"v.mkv": video_25fps})
        assert run_engine(project, ckpt, engine, "--max-new-tokens", "12", "--visual-tokens", visual_tokens, *extra,
                          gpu=1, workers=4) == 0
        answers[name] = [(r["time"], r["raw"]) for r in windows_of(partial_path(project, 0, 1, engine.family.TAG))]
    assert len(answers["plain"]) == 7 and len({raw for _, raw in answers["plain"]}) > 4
    assert answers["default"] == answers["plain"]
    assert answers["fast3"] == answers["plain"] and answers["transformers2"] == answers["plain"]


@pytest.mark.slow
def test_fast_decoder_matches_generate_on_prompts_of_different_lengths_and_early_stops(tmp_path, random_engine):
    """Windows whose prompts differ in length (frame times crossing 10:00 add a character) are
    left-padded in generate()'s batch; the fast decoder prefills each alone and masks per row (Qwen: each
    row's own M-RoPE offset). Same greedy text, including rows that stop early at the end token (a checkpoint
    that answers "None")."""
    _, random, frames, _ = random_engine
    windows = random_windows(0, (590.0, 599.8, 1000.0, 4.0), frames)
    none = load_engine(random.family.build_checkpoint(tmp_path / "none", "tiny", answer="None"))
    answers = []
    for engine, n in ((random, 10), (none, 30)):
        inputs = engine.prepare(windows)
        assert len({w["input_ids"].shape[1] for w in inputs}) == 3  # padding happens in a batch
        alone = [engine.generate([w], Generation(n, decoder="transformers"))[0] for w in inputs]
        assert engine.generate(inputs, Generation(n, decoder="transformers")) == alone
        assert engine.generate(inputs, Generation(n, decoder="fast")) == alone
        answers.append(alone)
    assert len(set(answers[0])) == 4 and answers[1] == ["None"] * 4


@pytest.mark.slow
def test_rows_that_finish_early_stop_costing_and_the_others_keep_their_answers(random_engine):
    """Real answers end early ("None" is two tokens) while others run on. A finished row's step
    attends to one slot only (decoding.greedy); the rows still running give generate()'s text (Qwen: each row
    at its own M-RoPE offset)."""
    _, engine, frames, _ = random_engine
    model, family = engine.model, engine.family
    inputs = engine.prepare(random_windows(2, (0.0, 2.0, 4.0, 6.0), frames))
    with torch.inference_mode():
        ids = decoding.Decoder(family, model, cpu_plan()).greedy(inputs, 12, eos=[-1], pad=0)  # no row stops
    # an end token that row 0 says early and some other row never says: rows stop at different steps
    def stops(eos):
        return [int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else 12 for row in ids]
    eos = next(int(t) for t in ids[0, 1:] if 1 < stops(int(t))[0] < 12 and max(stops(int(t))) == 12)
    stops = stops(eos)
    positions = []
    real_step = decoding.Step.__call__
    with pytest.MonkeyPatch.context() as mp:  # the shared model's end token, then the positions each step attends up to
        mp.setattr(model.generation_config, "eos_token_id", eos)
        alone = [engine.generate([w], Generation(12, decoder="transformers"))[0] for w in inputs]
        assert engine.generate(inputs, Generation(12, decoder="fast")) == alone
        mp.setattr(decoding.Step, "__call__", lambda self, tokens, pos, offsets: positions.append(pos.tolist())
                   or real_step(self, tokens, pos, offsets))
        with torch.inference_mode():
            decoding.Decoder(family, model, cpu_plan()).greedy(inputs, 12, eos=[eos], pad=0)
    # step k makes token k + 1: a row whose end token was token s - 1 attends to slot 0 from step s - 1 on
    assert [[p == 0 for p in step] for step in positions] == [[k >= s - 1 for s in stops]
                                                              for k in range(len(positions))]
    assert len(positions) == 11 and any(0 < k < 11 for k in stops)


@pytest.mark.slow
def test_batches_of_one_size_reuse_the_kv_buffers_and_decode_step_with_the_same_answers(random_engine):
    """The worker's batches go through one plan: the second batch of a size decodes on the first's
    buffers (zeroed again) and step (its CUDA graph on a GPU); a batch of another size gets new ones.
    Every window's tokens are those it gets with a fresh plan: batch 2's rows have one frame more and one less
    than batch 1's (the same buffer length), so Qwen's rows sit at other M-RoPE offsets than the step's last."""
    _, engine, frames, _ = random_engine
    inputs = engine.prepare(random_windows(4, (0.0, 2.0, 4.0, 6.0, 8.0), [frames, frames - 1, frames - 1, frames,
                                                                          frames]))
    engine.reset()  # no buffers kept from the tests before, which share this engine
    decoder = engine.decoder
    with torch.inference_mode():
        fresh = [decoding.Decoder(engine.family, engine.model, cpu_plan()).greedy(inputs[i:i + 2], 10, [-1], 0)
                 for i in (0, 2, 4)]
        kept = []
        for i in (0, 2, 4):
            kept.append(decoder.greedy(inputs[i:i + 2], 10, [-1], 0))
            kept.append((decoder.kept["kv"][0][0], decoder.kept["run"]))
    assert all(torch.equal(a, b) for a, b in zip(fresh, kept[::2])) and fresh[0].shape == (2, 10)
    (kv0, run0), (kv1, run1), (kv2, run2) = kept[1::2]
    assert kv1 is kv0 and run1 is run0  # batch 2 of 2 windows: the same buffers and step
    assert kv2 is not kv0 and kv2.shape[0] == 1 and run2 is not run0  # batch 3 of 1 window: new ones


@pytest.mark.slow
@pytest.mark.parametrize("family", families.ALL, ids=lambda f: f.NAME)
def test_a_fast_decode_step_gives_the_logits_of_the_models_own_forward(tmp_path, family):
    """decoding.Step for two windows of different prompt lengths, two new tokens each, against
    transformers' forward over each window's prompt + those tokens: same logits (fp32; leaving out
    the new token itself from attention would differ by 4e-3 to 5e-2 on LLaVA's checkpoint; Qwen's new tokens
    rotate at slot + the window's M-RoPE offset)."""
    import numpy as np
    rng = np.random.default_rng(1)
    windows = [([t + 0.2 * i for i in range(3)], [rng.integers(0, 255, (224, 398, 3), dtype=np.uint8)
                                                  for _ in range(3)]) for t in (599.6, 4.0)]
    ckpt = family.build_checkpoint(tmp_path / "r", "tiny", seed=7, init_std=0.1)
    model, processor = families.load(str(ckpt), cpu_plan(), "cpu")
    fam = families.of_loaded(model)
    inputs = fam.prepare(processor, windows)
    new = torch.tensor([[5, 9], [7, 11]])
    with torch.inference_mode():
        first, _, lengths, kv, offsets = decoding.prefill(fam, model, inputs, room=2)
        step = decoding.Step(fam, model, *kv)
        ours = [step(new[:, 0], lengths, offsets), step(new[:, 1], lengths + 1, offsets)]
        for row, window in enumerate(inputs):
            assert first[row] == model(**window).logits[0, -1].argmax() and lengths[row] == window["input_ids"].shape[1]
            for t in range(2):
                logits = model(**appended(window, new[row, :t + 1])).logits
                torch.testing.assert_close(ours[t][row], logits[0, -1], rtol=1e-5, atol=1e-4)
    assert lengths[0] > lengths[1] and (offsets != 0).all() == (family.NAME == "qwen2_5_vl")


# --- operational failures: one line, before the model loads where possible, data intact ----------

def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_exit_75_and_a_rerun_resumes(tmp_path, video_25fps, goal_checkpoint,
                                                                     capsys, monkeypatch):
    project = make_project(tmp_path, {"m.mkv": video_25fps})
    real_json, calls = jsonio._json, []

    def disk_fills_up(obj, **kw):  # the second write of the partial finds the disk full
        calls.append(obj)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")  # ENOSPC, as write() raises it: no file name
        return real_json(obj, **kw)

    monkeypatch.setattr(jsonio, "_json", disk_fills_up)
    assert run_worker(project, goal_checkpoint, "--batch-size", "1", "--max-new-tokens", "4", workers=10) == 75
    (line,) = error_lines(capsys)
    assert "no space left on the disk" in line and "partial_results_llava_vid0_gpu0.json" in line
    assert [r["time"] for r in windows_of(partial_path(project, 0, 0))] == [0.0]  # the first window, intact
    monkeypatch.setattr(jsonio, "_json", real_json)
    assert run_worker(project, goal_checkpoint, "--batch-size", "1", "--max-new-tokens", "4", workers=10) == 0
    assert [r["time"] for r in windows_of(partial_path(project, 0, 0))] == [0.0, 2.0, 4.0]


def test_little_free_space_is_refused_before_the_model_loads(tmp_path, video_25fps, capsys, monkeypatch):
    project = make_project(tmp_path, {"m.mkv": video_25fps})
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 5 * 10**6))
    assert run_worker(project, "/nonexistent/model") == 1
    (line,) = error_lines(capsys)
    assert "only 5 MB free in" in line and "df -h" in line


def test_a_read_only_project_is_refused_before_the_model_loads(open_tmp, video_25fps):
    """chmod a-w on the project (root ignores that, so the worker then runs as nobody)."""
    base = open_tmp / "shared"
    project = base / "soccer_project"
    (project / "raw_data").mkdir(parents=True)
    (project / "raw_data" / "m.mkv").write_bytes(open(video_25fps, "rb").read())
    videos.manifest(project)
    for path in (base, project / "raw_data", project / "raw_data" / "m.mkv", project / "videos.txt"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    project.chmod(0o555)
    prefix = nobody_prefix()
    run = subprocess.run([*prefix, *worker_cmd(project, "/nonexistent/model")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1, run.stderr
    lines = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, run.stderr
    assert f"cannot write in {project} (Permission denied)" in lines[0], run.stderr
    (line,) = lines
    assert f"cannot write in {project} (Permission denied)" in line and "--project / SOCCER_PROJECT" in line
    assert "model loaded" not in run.stderr


def test_a_hub_model_without_network_fails_in_seconds_with_the_recipe(tmp_path, video_25fps, capsys, monkeypatch):
    project = make_project(tmp_path, {"m.mkv": video_25fps})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: as a node without network
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t = time.monotonic()
    assert run_worker(project, "some-lab/some-model") == 1
    assert time.monotonic() - t < 60  # not minutes of retries
    (line,) = error_lines(capsys)
    assert "model some-lab/some-model is not in the Hugging Face cache here" in line
    assert "127.0.0.1 cannot be reached (no network on this node)" in line
    assert "snapshot_download('some-lab/some-model')" in line and "HF_HUB_OFFLINE=1" in line


def test_an_edited_video_list_is_refused_and_restoring_it_works(tmp_path, video_25fps, video_2997fps, goal_checkpoint,
                                                                capsys):
    """Removing line 0 of videos.txt by hand would renumber every later video (finals are named by
    index): the worker refuses with the command that restores the list, before loading a model."""
    project = make_project(tmp_path, {"a/1.mkv": video_25fps, "b/2.mkv": video_2997fps})
    assert videos.manifest(project) == ["a/1.mkv", "b/2.mkv"]
    listed = project / "videos.txt"
    for edit in ("b/2.mkv\n", "b/2.mkv\na/1.mkv\n", "a/1.mkv\nb/renamed.mkv\n"):
        listed.write_text(edit)
        assert run_worker(project, "/nonexistent/model", index=0) == 1
        (line,) = error_lines(capsys)
        assert "after video indices were given out" in line and f"cp {project / '.videos_given.txt'} {listed}" in line
    listed.write_text((project / ".videos_given.txt").read_text())
    assert run_worker(project, goal_checkpoint, "--max-new-tokens", "4", index=1, workers=8) == 0
    assert videos.resolve_video(project, 1).name == "2.mkv"


@pytest.fixture(scope="module")
def video_vfr(tmp_path_factory, video_25fps):
    """Variable frame rate: the barcoded 25 fps video's frames 0-99 at 25 fps (0-4 s), then the
    next 400 at 10 fps (4-44 s), as phones and screen recorders write them."""
    path = tmp_path_factory.mktemp("vfr") / "vfr.mkv"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-t", "20", "-i", str(video_25fps), "-vf",
                    "setpts='if(lt(N,100),N/25,4+(N-100)/10)/TB'", "-fps_mode", "vfr", "-enc_time_base", "1/1000",
                    "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)
    return path


def vfr_time(n):
    return n / 25 if n < 100 else 4 + (n - 100) / 10


def test_variable_frame_rate_video_is_sampled_by_presentation_time(video_vfr):
    """Counting frames at the nominal 25 fps would show 9.0 s at 6.0 s; each sample must be the
    frame whose timestamp is nearest (half a frame interval at most), also after a seek."""
    info = videos.probe(video_vfr)
    assert abs(info.duration - 44) < 0.5
    for first in (0, 12):  # from the start, and a worker starting late (a seek by the nominal fps lands after 24 s)
        windows = list(videos.iter_windows(info, range(first, info.n_windows)))
        for _, start, times, frames in windows:
            for t, frame in zip(times, frames):
                shown = vfr_time(synthetic.read_barcode(frame))
                assert abs(shown - t) <= (0.02 if t < 4 else 0.05) + 1e-6, (start, t, shown)
        assert sum(len(w.frames) for w in windows) == sum(len(info.window_samples(w.k)) for w in windows) - (
            windows[-1].frames == [] and 0)


def test_a_corrupt_video_is_our_one_line_without_ffmpegs_noise(tmp_path, video_25fps, capfd):
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"\x1aE\xdf\xa3 not really a matroska file" * 100)
    project = make_project(tmp_path, {"good.mkv": video_25fps, "z_bad.mkv": bad})
    assert run_worker(project, "/nonexistent/model", index=1) == 1
    err = capfd.readouterr().err
    assert "cannot read video" in err and "EBML" not in err and "Truncating packet" not in err
