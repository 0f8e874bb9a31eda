"""What made a result ("made_by"): the model, every setting that changes its answers, the code and the
video file. Partials, final events and raw-answers archives carry it, so no result mixes two runs.

    made_by = provenance.made_by(args, plan, prompt, provenance.video_file(project, video, info))
                                       # the worker (worker.identity), before loading the model
    provenance.differences(old, new)   # ["quantization bf16 -> nf4", ...]: [] means the same run

Two made_by are the same run when every field but "code" and the video's "mtime" is equal: a code
update or a copied video file (same bytes) may resume a video, another model, setting or file may not.
"""
import datetime
import hashlib
import json
import subprocess
from pathlib import Path

from .jsonio import log_safe
from .settings import FPS, STEP_S, WINDOW_S

MIB = 1 << 20
NOT_COMPARED = ("code",)              # recorded for people; a code update does not change the run
NOT_COMPARED_VIDEO = ("mtime",)       # a copy of the same bytes is the same video


def _sha(paths_and_ranges) -> str:
    """sha256 (16 hex digits) of the bytes at the given (path, offset, length) ranges."""
    h = hashlib.sha256()
    for path, offset, length in paths_and_ranges:
        with open(path, "rb") as f:
            f.seek(offset)
            h.update(f.read(length))
    return h.hexdigest()[:16]


def _ends(path: Path, size: int):
    """The first and the last MiB of a file: enough to tell a truncated or replaced file, in 2 MiB of reading."""
    return [(path, 0, MIB), (path, max(0, size - MIB), MIB)]


def video_file(project: Path, path: Path, info=None) -> dict:
    """The video's identity: raw_data/ path, size, modification time, digest of its first and last MiB and,
    when probed (info), its duration as the worker reads it."""
    st = path.stat()
    out = {"path": path.relative_to(project / "raw_data").as_posix(), "size": st.st_size,
           "mtime": datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds"),
           "sha256_ends": _sha(_ends(path, st.st_size))}
    if info is not None:
        out.update(duration_s=round(info.duration, 3), fps=round(info.fps, 3), frames=info.frame_count)
    return out


def model_revision(model_id: str) -> str | None:
    """A hub model's commit in the local cache ("abc123...") or, for a checkpoint directory, a digest of its
    configs and weight files ("dir sha256:..."); None when a hub model is not cached yet (the worker takes
    the commit from the loaded model then) or the directory does not exist."""
    from .loading import is_local
    path = Path(model_id).expanduser()
    if is_local(model_id):
        if not path.is_dir():
            return None  # the worker refuses it before loading (loading.check_model_source)
        parts = []
        for f in sorted(path.iterdir()):
            if f.suffix == ".json":
                parts.append((f, 0, f.stat().st_size))
            elif f.suffix in (".safetensors", ".bin", ".pt"):
                parts += _ends(f, f.stat().st_size)
        return f"dir sha256:{_sha(parts)}"
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


def made_by(args, plan, prompt: str, video: dict) -> dict:
    """The identity of a worker's results: args are llava_split_worker.py's settings, plan its GPU plan,
    prompt the prompt of a sample window, video video_file()'s dict."""
    greedy = not args.temperature
    return {
        "model": args.model, "model_revision": model_revision(args.model),
        "quantization": args.quantization, "compute_dtype": plan.compute_dtype, "nf4_weights": plan.nf4_weights,
        "visual_tokens": args.visual_tokens,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16],
        "max_new_tokens": args.max_new_tokens, "class_scores": args.class_scores,
        "temperature": args.temperature, "top_p": None if greedy else args.top_p,  # top-p only matters sampling
        "sampling": f"{FPS:g} fps, {WINDOW_S:g} s windows every {STEP_S:g} s",
        "code": code_version(), "video_file": video,
    }


def differences(old: dict | None, new: dict) -> list[str]:
    """What differs between two made_by ("quantization bf16 -> nf4"), ignoring what NOT_COMPARED says;
    old None (a file written before results recorded their origin) differs in everything."""
    if not isinstance(old, dict):
        return ["unknown origin (written before results recorded what made them)"]
    out = [f"{k} {old.get(k)} -> {new.get(k)}" for k in new
           if k not in NOT_COMPARED and k != "video_file" and old.get(k) != new.get(k)]
    ov, nv = (m.get("video_file") if isinstance(m.get("video_file"), dict) else {} for m in (old, new))
    out += [f"video {k} {ov.get(k)} -> {nv.get(k)}" for k in nv
            if k not in NOT_COMPARED_VIDEO and k in ov and ov[k] != nv[k]]
    return out


def same_file(recorded: dict | None, project: Path) -> bool | None:
    """Whether the video a made_by names is still the same file (path, size and end digests; None when the
    made_by does not say). No decoding: fast enough for submit_llava.sh before each video."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("path"), str) or not recorded["path"]:
        return None
    path = project / "raw_data" / recorded["path"]
    if not path.is_file():
        return False
    now = video_file(project, path)
    return all(now[k] == recorded.get(k) for k in ("size", "sha256_ends"))


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
                    f"{m.get('sampling')}; code {m.get('code')}", 600)


def run_key(m: dict | None) -> str:
    """A key equal for two made_by of the same settings on any video (to group one model's files)."""
    if not isinstance(m, dict):
        return "unknown"
    return json.dumps({k: v for k, v in m.items() if k not in (*NOT_COMPARED, "video_file")}, sort_keys=True)


def report(origins: dict) -> list[str]:
    """Lines saying what made one model's files ({video index: videos.Origin}), for compare_counts.py and
    evaluate_soccernet.py (which put the model's name before each): the run (a warning when its files come
    from several), unknown origins, incomplete videos."""
    from .merge import consecutive_runs

    def ranges(indices):
        return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in consecutive_runs(sorted(indices)))

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
        lines += [f"  videos {ranges(indices)}: {describe(made)}" for made, indices in runs.values()]
    if unknown:
        lines.append(f"videos {ranges(unknown)}: {describe(None)}")
    for index, origin in sorted(origins.items()):
        if origin.incomplete:
            lines.append(f"⚠️ video {index} is INCOMPLETE: {origin.incomplete} (no predictions there)")
    return lines
