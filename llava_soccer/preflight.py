"""submit_llava.sh's checks before anything runs: the worker's own rules (config.WorkerSettings) applied once to
the LLAVA_* variables, the model's source, and what `bash submit_llava.sh --check START END` shows. Standard
library only (no torch; huggingface_hub for a hub id that is not cached): each answers in a second or two.

    python -m llava_soccer.preflight env        # every LLAVA_* worker setting: nothing, or one line and exit 2
    python -m llava_soccer.preflight model      # LLAVA_MODEL can be loaded from here: one line; exit 2 if not
    python -m llava_soccer.preflight videos PROJECT FIRST LAST   # --check: each video's state, then the count

A bad value is one line naming the variable, its value and what it may be; submit_llava.sh stops with it
before the first video, finished videos included (the worker would refuse it, once per worker and video).
"""
import dataclasses
import difflib
import os
import sys
from pathlib import Path

from . import config, families, loading, settings, videos
from .cli import InputError, log_safe

EX_USAGE = 2


def env_settings() -> config.WorkerSettings:
    """The worker settings the LLAVA_* variables give (the flags submit_llava.sh passes are its own, checked
    there), or InputError naming the first bad variable, its value and the fix."""
    values = {}
    for f in dataclasses.fields(config.WorkerSettings):
        name = f.metadata["env"]
        raw = settings.env(name, None) if name and f.name != "num_workers" else None  # empty = unset, as the worker
        if raw is None:
            continue
        kind = f.metadata["argparse"].get("type")
        try:
            values[f.name] = kind(raw) if kind else raw
        except ValueError as e:
            problem = str(e) if kind is config.yes_no else f"must be {'a whole number' if kind is int else 'a number'}"
            raise InputError(_line(name, raw, f.name, problem)) from None
    try:
        return config.WorkerSettings(**values)
    except config.SettingError as e:
        name = config.WorkerSettings.__dataclass_fields__[e.field].metadata["env"]
        raise InputError(_line(name, os.environ.get(name, ""), e.field, e.problem)) from None


def _line(name, raw, field, problem):
    meta = config.WorkerSettings.__dataclass_fields__[field]
    default = ("yes" if meta.default else "no") if isinstance(meta.default, bool) else meta.default
    default = "" if default is None else f", {default}"
    return log_safe(f"{name}={raw}: {problem} ({meta.metadata['names'][0]}); unset it for the default{default}", 500)


def model_line(cfg) -> str:
    """Where the model comes from, or InputError naming LLAVA_MODEL: a missing directory, a hub id the hub says
    does not exist (or is gated, or the token is refused: ask_hub), a hub model neither cached nor reachable
    (loading.check_model_source)."""
    try:
        found = ask_hub(cfg.model)
        if not found:
            loading.check_model_source(cfg.model)
    except InputError as e:
        raise InputError(f"LLAVA_MODEL={cfg.model}: {e}" if os.environ.get("LLAVA_MODEL") else str(e)) from None
    where = "local checkpoint directory" if loading.is_local(cfg.model) else f"Hugging Face hub id{found}"
    return f"model {cfg.model} ({where}), quantization {cfg.quantization}"


def ask_hub(model_id: str) -> str:
    """Ask the hub once, for the whole job, whether a hub id that is not cached here exists: a misspelt id used
    to pass the network check and fail every worker of every video. InputError with the fix when the hub says
    no; ", found on ENDPOINT" when it says yes; "" when it was not asked or could not be reached (a local
    directory, a cached model, HF_HUB_OFFLINE, no network: loading.check_model_source's rules apply)."""
    if loading.is_local(model_id) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return ""
    import httpx
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return ""
    hub = constants.ENDPOINT  # HF_ENDPOINT, or https://huggingface.co
    try:
        model_info(model_id, timeout=10)  # HF_TOKEN, when set, is sent (and never printed)
    except GatedRepoError:
        raise InputError(f"{hub}/{model_id} is gated: accept its terms there with your account, then export "
                         f"HF_TOKEN=<a read token of that account> before sbatch") from None
    except RepositoryNotFoundError:
        close = difflib.get_close_matches(model_id, [settings.DEFAULT_MODEL], cutoff=0.8)
        fix = f"did you mean the default, {close[0]}? (unset LLAVA_MODEL for it)" if close else \
            f"check the spelling on {hub}, or unset LLAVA_MODEL for the default, {settings.DEFAULT_MODEL}"
        raise InputError(f"the Hugging Face hub has no model {model_id} (or it is private and HF_TOKEN "
                         f"{'cannot see it' if os.environ.get('HF_TOKEN') else 'is not set'}): {fix}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "an error"
        fix = ("HF_TOKEN is refused: make a new read token (huggingface.co/settings/tokens) and export it, or unset "
               "HF_TOKEN for public models") if status == 401 else "try again later"
        raise InputError(f"{hub} answered HTTP {status} for model {model_id}: {fix}") from None
    except (httpx.HTTPError, OSError):
        return ""  # unreachable: the offline rule (the model must be in the cache) decides
    return f", found on {hub}"


def video_states(project: Path, first: int, last: int) -> int:
    """What submit would do with each video of first..last, one line each, then (last line) how many videos
    videos.txt would list; writes nothing (no videos.txt, no lock)."""
    listed = videos.read_list(project)
    raw = project / "raw_data"
    new = [v for v in videos._scan(raw)[0] if v not in set(listed)] if raw.is_dir() else []
    if new:
        print(f"  {settings.count(len(new), 'new video')} under {raw}: the run appends them to videos.txt "
              f"(indices {len(listed)}..{len(listed) + len(new) - 1})")
    listed += new
    tag = families.tag_of(settings.model_in_use())  # the files of the model the job runs
    words = {"todo": "to do", "done": "done, skipped", "incomplete": "incomplete, skipped (file unchanged)",
             "redo": "to do again (incomplete, its file changed)"}
    for index in range(first, min(last, len(listed) - 1) + 1):
        try:
            state = words[videos.final_state(project, index, listed, tag)[0]]
        except InputError as e:
            state = f"FAILS: {log_safe(e, 300)}"
        print(f"  video {index}: {state}: {videos.display_name(listed[index])}")
    print(len(listed))
    return 0


def main(argv) -> int:
    try:
        if argv[:1] == ["videos"] and len(argv) == 4:
            return video_states(Path(argv[1]), int(argv[2]), int(argv[3]))
        cfg = env_settings()
        if argv == ["model"]:
            print(model_line(cfg))
        elif argv != ["env"]:
            print("usage: python -m llava_soccer.preflight env|model|videos PROJECT FIRST LAST", file=sys.stderr)
            return EX_USAGE
    except InputError as e:
        print(log_safe(e, 2000), file=sys.stderr)
        return EX_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
