"""What made a result ("made_by"): the model, every setting that changes its answers, the version of what the
results mean, the code and the video file. Partials, final events and raw-answers archives carry it, so no result
mixes two runs.

    made_by = provenance.made_by(args, plan, prompt, provenance.video_file(project, video, info))
                                       # the worker (worker.identity), before loading the model
    provenance.differences(old, new)   # ["quantization bf16 -> nf4", ...]: [] means the same run

Two made_by are the same run when every field but "code" and the video's "mtime" is equal: a code
update or a copied video file (same bytes) may resume a video, another model, setting, results version or
file may not. Files are identified by a digest of their whole content, read once and kept in the project's
.fingerprints/ (content_digest): an unchanged file is never read again.
"""
import datetime
import hashlib
import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from .claims import process_start
from .cli import log_safe
from .jsonio import atomic_write_json
from .settings import FPS, STEP_S, WINDOW_S, runs_text

# Bump it whenever a change alters answers or scores (prompt building, frames, decoding, parsing, class scores):
# partials and finals of another version are then another run, refused by the worker and the merge.
# History: 1 (2026-12-06, first recorded): frames checked against their times, token probabilities read at
# each label's own span, class scores at every label position ending on any closing-quote token.
RESULTS_VERSION = 1
MIB = 1 << 20
NOT_COMPARED = ("code",)              # recorded for people; a code update does not change the run
NOT_COMPARED_VIDEO = ("mtime",)       # a copy of the same bytes is the same video
FINGERPRINTS = ".fingerprints"        # in the project: one small JSON file per (file, state) hashed
CACHED_FROM = 64 * MIB                # smaller files are read again each time (milliseconds), not cached
RACY_S = 2.0                          # a file changed this recently may still be changing: not cached
READ_RATE = 20e6                      # bytes/s: the slowest disk a digest waited for is assumed to read at
CHECKPOINT_FILES = (".json", ".model", ".txt", ".jinja", ".safetensors", ".bin", ".pt", ".pth")


def _sha(paths_and_ranges) -> str:
    """sha256 (16 hex digits) of the bytes at the given (path, offset, length) ranges."""
    h = hashlib.sha256()
    for path, offset, length in paths_and_ranges:
        with open(path, "rb") as f:
            f.seek(offset)
            h.update(f.read(length))
    return h.hexdigest()[:16]


def _ends(path: Path, size: int):
    """The first and the last MiB of a file: all that made_by recorded of a video before its whole content
    (video_file still records it, so files made then are checked as they were)."""
    return [(path, 0, MIB), (path, max(0, size - MIB), MIB)]


def _state(path: Path, st) -> str:
    """What changes whenever the file's bytes may have: its place, inode, size, modification and change
    time. The change time (ctime) is set by every write and cannot be set back (os.utime restores mtime
    only), so a file rewritten in place, even to the same size with its mtime restored, has another state."""
    return f"{path.resolve()} ino {st.st_ino} size {st.st_size} mtime {st.st_mtime_ns} ctime {st.st_ctime_ns}"


def content_digest(path: Path, cache: Path | None = None) -> str:
    """sha256 of the whole file ("sha256:" + 32 hex digits), read in 8 MiB blocks. With cache (a
    directory), a file of CACHED_FROM bytes or more is read once per state (_state): the digest is kept
    in cache/<digest of the state>.json, one file per state, so workers writing the same entry at once
    write the same bytes (atomically). Not cached: a file that changed while it was read or less than
    RACY_S ago (it may still be changing), and when cache cannot be written (a read-only project: the
    file is read again next time)."""
    st = path.stat()
    state = _state(path, st)
    entry = cache / f"{hashlib.sha256(state.encode()).hexdigest()[:32]}.json" \
        if cache is not None and st.st_size >= CACHED_FROM else None
    kept = _kept(entry, state)
    if kept:
        return kept
    with _one_reader(entry, st.st_size):
        return _kept(entry, state) or _read_and_keep(path, entry, state)  # (kept by the reader just before?)


def _kept(entry: Path | None, state: str) -> str | None:
    """The digest kept in entry for this state of the file, or None (no entry, another state, damaged)."""
    try:
        kept = json.loads(entry.read_text()) if entry else None
        if isinstance(kept, dict) and kept.get("state") == state and isinstance(kept.get("digest"), str):
            return kept["digest"]
    except (OSError, ValueError):
        pass  # missing, or damaged: read the file again
    return None


@contextmanager
def _one_reader(entry: Path | None, size: int):
    """`with _one_reader(entry, size):` one process at a time reads a file for a cache entry, the others wait and
    then find its entry: the workers of a job start together and would each read the same GBs of a new
    checkpoint. The body runs holding ENTRY.lock (O_EXCL, as claims.py: atomic on NFS), or after waiting while
    another process held it, until it is gone, its holder (on this host) is dead, or it is older than a read of
    size bytes at READ_RATE (+ 60 s); without a cache (or one that cannot be written) at once."""
    if entry is None:
        yield
        return
    lock = entry.with_name(entry.name + ".lock")
    try:
        entry.parent.mkdir(exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except OSError:  # another reader holds it, or the cache cannot be written (a read-only project: no wait)
        fd = None
    if fd is None:
        while _waited_on(lock, 60 + size / READ_RATE):
            time.sleep(0.1)
        yield
        return
    try:
        os.write(fd, f"{socket.gethostname()} {os.getpid()} {process_start(os.getpid())}".encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _waited_on(lock: Path, deadline_s: float) -> bool:
    """Whether lock is still held by a reader worth waiting for."""
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:  # gone: its reader is done
        return False
    try:
        host, pid, start = lock.read_text().split()
    except (OSError, ValueError):  # not written yet (its holder writes it right after creating it), or gone
        return lock.exists() and age < deadline_s
    if host == socket.gethostname() and str(process_start(int(pid) if pid.isdigit() else -1)) != start:
        return False  # its reader died (or its pid is another process's now): claims.py's rule for a lock's holder
    return age < deadline_s


def _read_and_keep(path: Path, entry: Path | None, state: str) -> str:
    """The digest of the whole file, kept in entry (when given) if the file did not change while read and is
    older than RACY_S."""
    h, block = hashlib.sha256(), bytearray(8 * MIB)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(block):
            h.update(memoryview(block)[:n])
    digest = f"sha256:{h.hexdigest()[:32]}"
    after = path.stat()
    if entry and _state(path, after) == state and time.time() - after.st_ctime > RACY_S:
        try:
            entry.parent.mkdir(exist_ok=True)
            atomic_write_json(entry, {"state": state, "digest": digest})
        except OSError:
            pass
    return digest


def fingerprints(project: Path) -> Path:
    """Where the project keeps the digests of the files it has read (content_digest)."""
    return Path(project) / FINGERPRINTS


def video_file(project: Path, path: Path, info=None) -> dict:
    """The video's identity: raw_data/ path, size, modification time, digest of its whole content (read once
    per state of the file, content_digest), digest of its first and last MiB (all that made_by recorded
    before: compared with theirs, 2 MiB read) and, when probed (info), its duration as the worker reads it."""
    st = path.stat()
    out = {"path": path.relative_to(project / "raw_data").as_posix(), "size": st.st_size,
           "mtime": datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds"),
           "content": content_digest(path, fingerprints(project)), "sha256_ends": _sha(_ends(path, st.st_size))}
    if info is not None:
        out.update(duration_s=round(info.duration, 3), fps=round(info.fps, 3), frames=info.frame_count)
    return out


def model_revision(model_id: str, cache: Path | None = None) -> str | None:
    """A hub model's commit in the local cache ("abc123...") or, for a checkpoint directory, a digest of the
    names and whole contents of its configs, tokenizer and weight files (CHECKPOINT_FILES; "dir sha256:...";
    each weight file read once per state, kept in cache: content_digest); None when a hub model is not cached
    yet (the worker takes the commit from the loaded model then) or the directory does not exist."""
    from .loading import is_local
    path = Path(model_id).expanduser()
    if is_local(model_id):
        if not path.is_dir():
            return None  # the worker refuses it before loading (loading.check_model_source)
        files = [f for f in sorted(path.iterdir()) if f.suffix in CHECKPOINT_FILES and f.is_file()]
        listing = "".join(f"{f.name} {content_digest(f, cache)}\n" for f in files)
        return f"dir sha256:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
    from huggingface_hub import try_to_load_from_cache
    cached = try_to_load_from_cache(model_id, "config.json")
    return Path(cached).parent.name if isinstance(cached, str) else None


def code_version() -> str:
    """The pipeline's code: the git commit when it runs from a checkout, else a digest of its sources."""
    home = Path(__file__).resolve().parents[1]
    try:  # only our own checkout: setup_llava.sh's copy may sit inside another repository (a dotfiles home)
        r = subprocess.run(["git", "-C", str(home), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                           text=True, timeout=10) if (home / ".git").exists() else None
        if r and r.returncode == 0 and r.stdout.strip():
            return f"git {r.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return f"sources sha256:{_sha((p, 0, p.stat().st_size) for p in sources)}"


def made_by(args, plan, prompt: str, video: dict, project: Path | None = None, family=None) -> dict:
    """The identity of a worker's results: args are llava_split_worker.py's settings, plan its GPU plan,
    prompt the prompt of a sample window, video video_file()'s dict, project where a checkpoint's digests
    are kept (None: its weights are read again), family the model's (llava_soccer/families/; None: args.model's).
    The kernels recorded are those that round differently (docs/design.md#made_by says why the others are
    not): the fast decoder's prefill chunks and decode attention only where it runs (Generation.fast)."""
    from .families import of_model
    from .generation import Generation
    family = family or of_model(args.model)
    greedy = not args.temperature
    fast = Generation.from_settings(args, family).fast
    return {
        "results_version": RESULTS_VERSION,
        "model": args.model, "family": family.NAME,
        "model_revision": model_revision(args.model, fingerprints(project) if project is not None else None),
        "quantization": args.quantization, "compute_dtype": plan.compute_dtype, "nf4_weights": plan.nf4_weights,
        "storage_dtype": plan.storage_dtype,
        "visual_tokens": args.visual_tokens,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
        "max_new_tokens": args.max_new_tokens, "class_scores": args.class_scores,
        "temperature": args.temperature, "top_p": None if greedy else args.top_p,  # top-p only matters sampling
        "decoder": "fast" if fast else "transformers",
        "prefill_attention": ">".join(plan.prefill_attention), "fused_kernels": plan.fused_kernels,
        "prefill_chunk": plan.prefill_chunk if fast else None,
        "decode_attention": plan.decode_attention if fast else None,
        "sampling": f"{FPS:g} fps, {WINDOW_S:g} s windows every {STEP_S:g} s",
        "code": code_version(), "video_file": video,
    }


def differences(old: dict | None, new: dict) -> list[str]:
    """What differs between two made_by ("quantization bf16 -> nf4"), ignoring what NOT_COMPARED says;
    old None (a file written before results recorded their origin) differs in everything, an old made_by
    without some of new's fields (written by code that did not record them) in those."""
    if not isinstance(old, dict):
        return ["unknown origin (written before results recorded what made them)"]
    old, new = with_family(old), with_family(new)
    out = []
    if old.get("results_version") != new.get("results_version"):
        out.append(f"results version {old.get('results_version', 'unrecorded')} -> {new.get('results_version')}: "
                   f"this code computes answers or scores differently")
    compared = [k for k in new if k not in (*NOT_COMPARED, "video_file", "results_version")]
    unrecorded = [k for k in compared if k not in old]
    if unrecorded:
        out.append(f"not recorded then: {', '.join(unrecorded)}")
    out += [f"{k} {old[k]} -> {new[k]}" for k in compared if k in old and old[k] != new[k]]
    ov, nv = (m.get("video_file") if isinstance(m.get("video_file"), dict) else {} for m in (old, new))
    out += [f"video {k} {ov.get(k)} -> {nv.get(k)}" for k in nv
            if k not in NOT_COMPARED_VIDEO and k in ov and ov[k] != nv[k]]
    return out


def with_family(m: dict) -> dict:
    """A made_by with its model family: one written before families were recorded was LLaVA-NeXT's (the only
    family then), so LLaVA's older partials and finals are read as what they are, not refused."""
    return m if "family" in m else {**m, "family": "llava_next"}


def same_file(recorded: dict | None, project: Path) -> bool | None:
    """Whether the video a made_by names is still the same file (path, size and the digests it recorded:
    whole content, ends; None when the made_by does not say). No decoding, and the content is read only when
    the file changed since it was last read (content_digest): fast enough for submit_llava.sh before each
    video and for status over every video."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("path"), str) or not recorded["path"]:
        return None
    path = project / "raw_data" / recorded["path"]
    if not path.is_file():
        return False
    if path.stat().st_size != recorded.get("size"):
        return False  # (no need to read it)
    now = video_file(project, path)
    return now["sha256_ends"] == recorded.get("sha256_ends") and \
        now["content"] == recorded.get("content", now["content"])  # older made_by recorded no content


def describe(m: dict | None) -> str:
    """One line for logs and reports (made_by is read from files: whatever it holds, one line)."""
    if not isinstance(m, dict):
        return "unknown origin (written before results recorded what made them)"
    rev = str(m.get("model_revision") or "?")
    rev = rev if rev.startswith("dir ") else rev[:12]
    weights = f" ({m['nf4_weights']} weights)" if m.get("nf4_weights") else ""
    t = m.get("temperature")
    sampling = "greedy" if not t else f"temperature {f'{t:g}' if isinstance(t, (int, float)) else t}, top-p " \
        f"{m.get('top_p')}"
    return log_safe(f"{m.get('model')} @ {rev}, {m.get('quantization')}{weights} computing in "
                    f"{m.get('compute_dtype')}, {m.get('visual_tokens')} visual tokens, prompt "
                    f"{m.get('prompt_sha256')}, {m.get('max_new_tokens')} new tokens, {sampling}, "
                    f"{m.get('sampling')}; results version {m.get('results_version', 'unrecorded')}; code "
                    f"{m.get('code')}", 600)


def run_key(m: dict | None) -> str:
    """A key equal for two made_by of the same settings on any video (to group one model's files)."""
    if not isinstance(m, dict):
        return "unknown"
    return json.dumps({k: v for k, v in with_family(m).items() if k not in (*NOT_COMPARED, "video_file")},
                      sort_keys=True)


def report(origins: dict) -> list[str]:
    """Lines saying what made one model's files ({video index: videos.Origin}), for compare_counts.py and
    evaluate_soccernet.py (which put the model's name before each): the run (a warning when its files come
    from several), unknown origins, incomplete videos."""
    runs = {}
    for index, origin in origins.items():
        runs.setdefault(run_key(origin.made_by), (origin.made_by, []))[1].append(index)
    unknown = runs.pop("unknown", (None, []))[1]
    lines = []
    if len(runs) == 1:
        made, indices = next(iter(runs.values()))
        lines.append(f"made by {describe(made)}")
    elif runs:
        lines.append(f"⚠️ its files were made by {len(runs)} different runs, which do not compare alike:")
        lines += [f"  videos {runs_text(sorted(indices))}: {describe(made)}" for made, indices in runs.values()]
    if unknown:
        lines.append(f"videos {runs_text(sorted(unknown))}: {describe(None)}")
    for index, origin in sorted(origins.items()):
        if origin.incomplete:
            lines.append(f"⚠️ video {index} is INCOMPLETE: {origin.incomplete} (no predictions there)")
    return lines
