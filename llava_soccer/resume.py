"""A worker's rerun picks its slice up where the partial file left it: what is done, what is still to do.

The partial is {"made_by": what made it (provenance.py), "windows": [one record per window]}; a record's status is
"ok" (answered), "failed" (OOM or an error: a rerun retries it) or "undecodable" (some of its frames are not in the
file, videos.iter_windows: a rerun of the same file cannot fill it). A partial made by another run (made_by differs)
is refused, or started over with --replace-mismatched: one result never mixes two runs.
"""
import logging

from . import provenance
from .cli import InputError, UnreadableFile, log_safe
from .jsonio import read_json
from .records import record_time, window_status

log = logging.getLogger("llava_worker")


def partial_doc(made_by, records) -> dict:
    """The partial file's contents (merge.read_windows reads them)."""
    return {"made_by": made_by, "windows": records}


def load_partial(path, slice_starts, made_by, replace):
    """The records already in the partial file that count as done (answered, or undecodable: a rerun of the
    same file cannot fill those), checked to belong to this slice and to this run (made_by)."""
    if not path.exists():
        return []
    doc = read_json(path, "partial file", "delete it to start that slice over")
    windows = doc.get("windows") if isinstance(doc, dict) else doc  # a list: written before made_by existed
    if not isinstance(windows, list) or not all(isinstance(r, dict) and "time" in r for r in windows):
        raise UnreadableFile(f"partial file {path} is not a list of window records; delete it to start over")
    bad = [r["time"] for r in windows if record_time(r["time"]) is None]  # NaN, Infinity, a list, "2", true
    if bad:
        raise UnreadableFile(f"partial file {path} is damaged: a record's time is {log_safe(repr(bad[0]), 60)}, not a "
                             f"number of seconds; delete it to start that slice over")
    differ = provenance.differences(doc.get("made_by") if isinstance(doc, dict) else None, made_by)
    if differ and replace:
        log.warning(log_safe(f"⚠️ {path.name} was made by another run ({'; '.join(differ)}): starting this slice "
                             f"over (--replace-mismatched); the file is replaced when the first batch is saved", 1000))
        return []
    if differ:
        raise InputError(f"partial file {path} was made by another run ({'; '.join(differ)}): resuming would mix "
                         f"two runs in one result. Delete it to start that slice over, or rerun with "
                         f"--replace-mismatched (LLAVA_REPLACE_MISMATCHED=1)")
    foreign = sorted({r["time"] for r in windows} - slice_starts)
    if foreign:
        raise InputError(f"partial file {path} has windows outside this slice (e.g. {foreign[0]} s): it was "
                         f"written with another --num-workers; delete it to start over")
    return [r for r in windows if window_status(r) != "failed"]


def resume(path, info, slice_windows, made_by, replace):
    """(the records of the partial file at path that count as done, the indices of the slice's windows still to
    do: those without such a record, failed ones included)."""
    records = load_partial(path, {info.window_start(k) for k in slice_windows}, made_by, replace)
    done = {r["time"] for r in records}
    return records, [k for k in slice_windows if info.window_start(k) not in done]


def check_revision(made_by, revision, records, path, model) -> None:
    """made_by names the hub commit from_pretrained really loaded (revision; None: unknown, e.g. a local
    directory); InputError when records were resumed from a partial made at another commit."""
    if revision and revision != made_by["model_revision"]:
        if records:
            raise InputError(f"partial file {path} was made by {model} at commit {made_by['model_revision']}, "
                             f"but this run loaded commit {revision}: delete it to start that slice over, or rerun "
                             f"with --replace-mismatched")
        made_by["model_revision"] = revision
