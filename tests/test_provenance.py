"""What made a result (llava_soccer/provenance.py): what counts as the same run, the results' and the code's
version, and files identified by their whole content (read once per state of the file)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, make_project
from llava_soccer import claims, config, gpus, provenance, settings, synthetic, videos
from llava_soccer.families import llava_next
from llava_soccer.settings import partial_path

MADE = {"results_version": 1, "model": "m", "model_revision": "r1", "quantization": "nf4",
        "compute_dtype": "float16", "nf4_weights": "packed", "storage_dtype": "float16",
        "visual_tokens": "full", "prompt_sha256": "p", "max_new_tokens": 256, "temperature": 0.0, "top_p": None,
        "decoder": "fast", "prefill_attention": "efficient>math", "fused_kernels": False, "prefill_chunk": None,
        "decode_attention": "sdpa", "sampling": "5 fps", "code": "git a",
        "video_file": {"path": "a.mkv", "size": 10, "mtime": "2026-01-01T00:00:00", "content": "sha256:c",
                       "sha256_ends": "s", "duration_s": 60.0, "fps": 25.0, "frames": 1500}}


def test_the_same_run_ignores_the_code_and_the_files_mtime_only():
    same = {**MADE, "code": "git b", "video_file": {**MADE["video_file"], "mtime": "2026-02-02T00:00:00"}}
    assert provenance.differences(MADE, same) == []
    assert provenance.differences(MADE, {**MADE, "compute_dtype": "bfloat16"}) == ["compute_dtype float16 -> bfloat16"]
    assert provenance.differences(MADE, {**MADE, "video_file": {**MADE["video_file"], "size": 11}}) == [
        "video size 10 -> 11"]
    assert provenance.differences(None, MADE) == ["unknown origin (written before results recorded what made them)"]
    assert provenance.run_key(MADE) == provenance.run_key({**same, "video_file": {"path": "b.mkv"}})


def test_code_version_is_this_checkouts_commit_or_a_digest_of_a_copy(tmp_path):
    """made_by's "code": the git commit of this checkout; a copy of the package (setup_llava.sh's, here
    inside another git repository) gets a digest of its sources, not that repository's commit."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert provenance.code_version() == f"git {head}"
    other = tmp_path / "home"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    shutil.copytree(ROOT / "llava_soccer", other / "soccer_project" / "llava_soccer")
    r = subprocess.run([sys.executable, "-c", "from llava_soccer import provenance; print(provenance.code_version())"],
                       cwd=other / "soccer_project", capture_output=True, text=True, check=True)
    assert r.stdout.startswith("sources sha256:")


def test_a_results_version_bump_or_an_older_made_by_is_another_run():
    """RESULTS_VERSION is compared (the code is not): a made_by of another version, or one written before the
    version and the kernels were recorded, is another run, said in words; the reading tools still describe it."""
    assert provenance.differences(MADE, {**MADE, "results_version": 2}) == [
        "results version 1 -> 2: this code computes answers or scores differently"]
    old = {k: v for k, v in MADE.items() if k not in ("results_version", "storage_dtype", "decoder",
                                                      "prefill_attention", "fused_kernels", "prefill_chunk",
                                                      "decode_attention")}
    assert provenance.differences(old, MADE) == [
        "results version unrecorded -> 1: this code computes answers or scores differently",
        "not recorded then: storage_dtype, decoder, prefill_attention, fused_kernels, prefill_chunk, "
        "decode_attention"]
    assert provenance.run_key(old) != provenance.run_key(MADE)
    assert "results version unrecorded; code git a" in provenance.describe(old)
    assert "results version 1; code git a" in provenance.describe(MADE)


def test_made_by_records_the_kernels_that_round_differently():
    """The plan's prefill attention, chunks, decode attention and fused kernels are part of the run; chunks and
    decode attention only where the fast decoder runs (sampling and --decoder transformers use generate())."""
    def made(assume, **flags):
        args = config.WorkerSettings(model="/no/such/ckpt", quantization="nf4", assume_gpu=assume, **flags)
        return provenance.made_by(args, gpus.plan(args, None, llava_next), "[INST] p [/INST]", {"path": "a.mkv"},
                                  family=llava_next)
    titan_v, titan_rtx = made("7.0,12"), made("7.5,24")
    assert titan_v["prefill_chunk"] == 4096 and titan_rtx["prefill_chunk"] is None
    assert provenance.differences(titan_v, titan_rtx) == ["prefill_chunk 4096 -> None"]
    a100 = made("8.0,80")
    assert {k: a100[k] for k in ("decoder", "prefill_attention", "decode_attention", "fused_kernels")} == {
        "decoder": "fast", "prefill_attention": "cudnn>flash>efficient>math", "decode_attention": "triton",
        "fused_kernels": True}
    assert "decode_attention triton -> sdpa" in provenance.differences(a100, made("8.0,80", decode_attention="sdpa"))
    sampled = made("7.0,12", temperature=0.7)
    assert (sampled["decoder"], sampled["prefill_chunk"], sampled["decode_attention"]) == ("transformers", None, None)
    assert made("7.0,12", decoder="transformers")["decoder"] == "transformers"


def preallocated(path, mib=5):
    """A download preallocated in place: its real first and last MiB, zeros between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ends = os.urandom(2 * provenance.MIB)
    path.write_bytes(ends[:provenance.MIB] + bytes((mib - 2) * provenance.MIB) + ends[provenance.MIB:])
    return path


@pytest.fixture
def cache_small_files(monkeypatch):
    """Cache every file that was not changed in the last 0.02 s (RACY_S, 2 s by default, would make each
    test wait): the tests' files are a few MiB, not CACHED_FROM's 64."""
    monkeypatch.setattr(provenance, "CACHED_FROM", 0)
    monkeypatch.setattr(provenance, "RACY_S", 0.02)


def test_a_download_completed_in_place_is_another_file(tmp_path, cache_small_files):
    """Issue 29: a preallocated download whose middle is then written (same size, same first and last MiB,
    even with its modification time set back) is another file: its digest was cached for the old state,
    and the write changed the file's change time, which os.utime cannot set back."""
    project = tmp_path / "p"
    video = preallocated(project / "raw_data" / "a.mkv")
    time.sleep(0.05)  # older than RACY_S: its digest is cached
    before = provenance.video_file(project, video)
    assert len(list(provenance.fingerprints(project).iterdir())) == 1
    assert provenance.same_file(before, project) is True
    time.sleep(0.05)  # the filesystem's change time moves on (timestamps tick every few ms)
    st = video.stat()
    with open(video, "r+b") as f:  # the download completes in place
        f.seek(2 * provenance.MIB)
        f.write(os.urandom(provenance.MIB))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = provenance.video_file(project, video)
    assert (after["size"], after["mtime"]) == (before["size"], before["mtime"])
    assert after["content"] != before["content"]
    assert provenance.same_file(before, project) is False
    made = {**MADE, "video_file": before}
    assert provenance.differences(made, {**made, "video_file": after}) == [
        f"video content {before['content']} -> {after['content']}"]


def test_a_final_made_from_a_preallocated_download_is_redone_once_it_completes(tmp_path, cache_small_files):
    """What submit_llava.sh and status_llava.py say of a final made while the download was preallocated: the
    completed file (same size and ends, mtime set back) is 'changed since', not 'skipped, ... exists'."""
    project = tmp_path / "p"
    video = preallocated(project / "raw_data" / "a.mkv")
    assert videos.manifest(project) == ["a.mkv"]
    time.sleep(0.05)
    made = {**MADE, "video_file": provenance.video_file(project, video)}
    event = {"time": 2.0, "label": "Goal", "video": "a.mkv", "made_by": made}
    settings.final_path(project, 0).write_text(json.dumps([event]))
    assert videos.final_state(project, 0) == ("done", f"video 0: skipped, {settings.final_path(project, 0)} exists")
    time.sleep(0.05)
    st = video.stat()
    with open(video, "r+b") as f:
        f.seek(2 * provenance.MIB)
        f.write(os.urandom(provenance.MIB))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    state, line = videos.final_state(project, 0)
    assert state == "done" and "⚠️ but its video file has changed since it was made" in line


def test_an_unchanged_file_is_read_once(tmp_path, cache_small_files):
    """status and submit ask same_file about every video each time: an unchanged file's digest comes from the
    project's cache (here the cached entry is altered: the answer is the entry's, so the file was not read),
    a changed one is read again, and a project whose cache cannot be written still gets its digests."""
    project = tmp_path / "p"
    video = preallocated(project / "raw_data" / "a.mkv")
    time.sleep(0.05)
    recorded = provenance.video_file(project, video)
    (entry,) = provenance.fingerprints(project).iterdir()
    kept = json.loads(entry.read_text())
    assert kept["digest"] == recorded["content"] and str(video.resolve()) in kept["state"]
    entry.write_text(json.dumps({**kept, "digest": "sha256:kept"}))
    assert provenance.content_digest(video, provenance.fingerprints(project)) == "sha256:kept"
    assert provenance.same_file({**recorded, "content": "sha256:kept"}, project) is True
    with open(video, "ab") as f:
        f.write(b"more")
    assert provenance.content_digest(video, provenance.fingerprints(project)) not in ("sha256:kept",
                                                                                      recorded["content"])
    shutil.rmtree(provenance.fingerprints(project))
    provenance.fingerprints(project).write_text("not a directory")  # the cache cannot be written
    assert provenance.content_digest(video, provenance.fingerprints(project)).startswith("sha256:")


def test_a_file_changed_just_now_is_not_cached(tmp_path, monkeypatch):
    """A file written less than RACY_S (2 s) ago may still be being written: its digest is not kept."""
    monkeypatch.setattr(provenance, "CACHED_FROM", 0)
    path = preallocated(tmp_path / "a.mkv", mib=3)
    cache = tmp_path / "cache"
    provenance.content_digest(path, cache)
    assert not cache.exists() or not any(cache.iterdir())  # no digest kept (nor a reader's lock left)


FOUR_WORKERS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from llava_soccer import provenance
    provenance.CACHED_FROM, provenance.RACY_S = 0, 0.02  # as cache_small_files
    ckpt, cache, go = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    reads = []

    def whole_reads(event, args):  # the digest's own reads of the checkpoint's files
        if event == "open" and Path(str(args[0])).parent == ckpt:
            frame, names = sys._getframe(1), []
            while frame:
                names.append(frame.f_code.co_name)
                frame = frame.f_back
            reads.extend([1] if {"content_digest", "_read_and_keep"} & set(names[:2]) else [])

    sys.addaudithook(whole_reads)
    print("ready", flush=True)
    while not go.exists():  # the workers of a job start together
        time.sleep(0.001)
    print(provenance.model_revision(str(ckpt), cache), len(reads), flush=True)
""")


def test_a_new_checkpoint_is_read_once_when_four_workers_start_together(tmp_path, goal_checkpoint):
    """submit_llava.sh starts a job's 4 workers at once, and each records the checkpoint's digest (made_by): one
    of them reads the weights (GBs for a real model), the others wait for its digest and reuse it."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(goal_checkpoint, ckpt)
    files = [f for f in ckpt.iterdir() if f.suffix in provenance.CHECKPOINT_FILES]
    cache, go = tmp_path / "p" / provenance.FINGERPRINTS, tmp_path / "go"
    cache.parent.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", FOUR_WORKERS, str(ROOT), str(ckpt), str(cache), str(go)],
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    assert all(w.stdout.readline() == "ready\n" for w in workers)
    go.touch()
    said = [w.communicate(timeout=120)[0].rsplit(maxsplit=1) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert len({revision for revision, _ in said}) == 1
    assert sum(int(n) for _, n in said) == len(files)  # each file read by one worker only
    assert sorted(p.suffix for p in cache.iterdir()) == [".json"] * len(files)  # no lock left


@pytest.mark.parametrize("holder", ["killed", "pid reused"])
def test_a_reader_killed_while_reading_does_not_hold_the_others_back(tmp_path, cache_small_files, holder):
    """The lock of a reader killed on this host (kill -9: it never removed it) is not waited on, nor one whose pid
    is now another process's (claims.py's rule: pid and start time): the next process reads the file itself and
    keeps its digest."""
    import socket
    import threading
    path = preallocated(tmp_path / "a.mkv", mib=3)
    time.sleep(0.05)
    cache = tmp_path / "cache"
    if holder == "killed":
        dead = subprocess.run([sys.executable, "-c", "import os; from llava_soccer.claims import process_start; "
                               "print(os.getpid(), process_start(os.getpid()))"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    else:  # this live process's pid, with a start time it never had
        dead = f"{os.getpid()} {claims.process_start(os.getpid()) - 1}"
    assert provenance.content_digest(path) == (digest := provenance.content_digest(path, tmp_path / "other"))
    entry = next((tmp_path / "other").iterdir())
    cache.mkdir()
    (cache / (entry.name + ".lock")).write_text(f"{socket.gethostname()} {dead}")
    got = []
    reader = threading.Thread(target=lambda: got.append(provenance.content_digest(path, cache)), daemon=True)
    reader.start()
    reader.join(timeout=30)  # a wait for the dead reader would last 60 s
    assert got == [digest] and (cache / entry.name).exists()


def test_a_checkpoint_is_identified_by_its_whole_weights(tmp_path, cache_small_files):
    """Issue 29: a fine-tune written into the same shard in place (a tensor in the middle of the file changed,
    the shard's size and first and last MiB unchanged) is another model_revision, so its windows never merge
    with the first model's windows as one run; the unchanged weights are read once."""
    from safetensors.torch import load_file, save_file
    # a real tiny checkpoint, in float64: a shard of 3.6 MB, with tensors between its first and last MiB
    ckpt = synthetic.make_checkpoint(tmp_path / "ckpt", "tiny", answer="None", dtype="float64")
    (shard,) = ckpt.glob("*.safetensors")
    size, raw = shard.stat().st_size, shard.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    middle = next(name for name, t in json.loads(raw[8:header_end]).items() if name != "__metadata__" and
                  header_end + t["data_offsets"][0] > provenance.MIB and
                  header_end + t["data_offsets"][1] < size - provenance.MIB)
    time.sleep(0.05)
    cache = tmp_path / "cache"
    first = provenance.model_revision(str(ckpt), cache)
    assert first.startswith("dir sha256:") and len(list(cache.iterdir())) == len(
        [f for f in ckpt.iterdir() if f.suffix in provenance.CHECKPOINT_FILES])  # each file's digest kept
    assert provenance.model_revision(str(ckpt), cache) == first
    time.sleep(0.05)
    tensors = load_file(shard)
    tensors[middle] += 0.01  # the fine-tune, saved into the same file
    save_file(tensors, shard, metadata={"format": "pt"})
    before = tmp_path / "first.safetensors"
    before.write_bytes(raw)
    assert shard.stat().st_size == size  # and its first and last MiB are the first model's:
    assert provenance._sha(provenance._ends(shard, size)) == provenance._sha(provenance._ends(before, size))
    assert provenance.model_revision(str(ckpt), cache) != first


def test_partials_of_another_results_version_are_refused(tmp_path, video_25fps, goal_checkpoint, monkeypatch,
                                                         capsys):
    """A code change that alters answers bumps RESULTS_VERSION: the worker then refuses to resume a partial of
    the older version, with one line naming it and the fix."""
    from test_worker import run_worker, write_partial
    project = make_project(tmp_path, {"a.mkv": video_25fps})
    old = [{"time": 0.0, "end": 2.8, "status": "ok", "raw": "None", "parsed": True, "events": []}]
    write_partial(project, goal_checkpoint, old)
    before = partial_path(project, 0, 0).read_bytes()
    monkeypatch.setattr(provenance, "RESULTS_VERSION", provenance.RESULTS_VERSION + 1)
    assert run_worker(project, goal_checkpoint) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert (f"was made by another run (results version {provenance.RESULTS_VERSION - 1} -> "
            f"{provenance.RESULTS_VERSION}: this code computes answers or scores differently)") in line
    assert "rerun with --replace-mismatched" in line
    assert partial_path(project, 0, 0).read_bytes() == before
