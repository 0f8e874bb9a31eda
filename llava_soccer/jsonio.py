"""Files that are never half-written (temp file beside, fsync, rename), strict JSON (no NaN or
Infinity, which jq and browsers reject), JSON read back with one clear line for a missing or damaged file,
and the check that the project directory can be written.

A temp file's name says who writes it, `.{name}.{host}.{pid}.{random}.tmp`, so that clearing the
temps a killed writer left never removes the temp of a live one (two jobs on one video, issue 20).
"""
import gzip
import json
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
import zlib
from pathlib import Path

from .claims import process_start, stale_after_s
from .cli import InputError, UnreadableFile, first_line


def _atomic_write(path, write, fence=None) -> None:
    """Replace path with what write(binary file) writes; a crash leaves the old file or the new
    one, never a mix (temp file beside it, fsync, rename). The temp's name holds this host and
    pid: remove_stale_temps() leaves it alone while this process lives. fence(): called right
    before the rename, raises to leave path as it was (claims.Fence: this run still holds the
    video's lock)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # 0666 & ~umask, as open() makes: a lab sharing the project reads results
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except OSError as e:
        e.filename = str(path)  # the file meant, not its temp (a read-only or full disk, a permission)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if fence is not None:
            fence()
        os.replace(tmp, path)  # atomic on POSIX: https://docs.python.org/3/library/os.html#os.replace
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a failed write() names no file: say which one (cli.disk_problem)
        raise


def atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temps(path) -> None:
    """Delete the temp files that killed atomic writes of path left behind: those whose writer
    (host and pid in the name) ran on this host and is gone, and those of other hosts (or with
    an older name that says no writer) untouched for LLAVA_LOCK_STALE_S seconds; a temp lives
    milliseconds while it is written. A live writer's temp is never removed."""
    path = Path(path)
    host, limit, prefix = socket.gethostname(), stale_after_s(), f".{path.name}."
    for tmp in path.parent.glob(f"{prefix}*.tmp"):
        writer = tmp.name[len(prefix):-len(".tmp")].rsplit(".", 2)  # host (may hold dots), pid, random
        if len(writer) == 3 and writer[0] == host and writer[1].isdecimal():
            stale = process_start(int(writer[1])) is None
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > limit
            except FileNotFoundError:  # renamed or removed meanwhile by its writer
                continue
        if stale:
            tmp.unlink(missing_ok=True)


def atomic_savefig(fig, path, dpi=100) -> None:
    """Save a matplotlib figure as PNG the same way: a reader never sees half a picture."""
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def strict(obj):
    """obj with every non-finite float (NaN, Infinity) replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def _json(obj, **kw) -> bytes:
    # a lone surrogate in a model's text (valid in a Python str, not in UTF-8) becomes "?" rather
    # than failing the write
    return (json.dumps(strict(obj), allow_nan=False, **kw) + "\n").encode("utf-8", "replace")


def atomic_write_json(path, obj, fence=None) -> None:
    _atomic_write(path, lambda f: f.write(_json(obj, indent=1, ensure_ascii=False)), fence)


def atomic_write_json_gz(path, obj, fence=None) -> None:
    """Compact gzip-compressed JSON (the merge's archive of every window's raw answer)."""
    _atomic_write(path, lambda f: f.write(gzip.compress(_json(obj, ensure_ascii=False), mtime=0)), fence)


def read_json(path, what="file", fix=None):
    """Load JSON (gzip-compressed when the name ends in .gz), or raise InputError naming the file: not found, or
    (UnreadableFile) not valid JSON, a damaged gzip stream, a directory, not readable; fix (e.g. "delete it and
    rerun the worker") ends the line."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except (zlib.error, gzip.BadGzipFile, EOFError) as e:  # a truncated or overwritten archive
        problem = f"is damaged ({first_line(e, 120) or type(e).__name__}: not a complete gzip file)"
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number, [[[...
        problem = f"is not valid JSON ({first_line(e, 120) or type(e).__name__})"
    except OSError as e:  # permissions, an I/O error
        problem = f"cannot be read ({e.strerror or first_line(e, 120)})"
    raise UnreadableFile(f"{what} {path} {problem}{f': {fix}' if fix else ''}")


def check_writable(directory, need_mb=100) -> None:
    """InputError unless a file can be created in directory (a real write: root ignores chmod,
    not a read-only mount) and it has need_mb MB free: checked before the model loads."""
    directory = Path(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".llava_write_check.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"cannot write in {directory} ({e.strerror}): results go there; make it writable "
                         f"(chmod u+w) or choose another project directory (--project / SOCCER_PROJECT)") from None
    free_mb = shutil.disk_usage(directory).free / 1e6
    if free_mb < need_mb:
        raise InputError(f"only {free_mb:.0f} MB free in {directory} (needs {need_mb} MB for results): free space "
                         f"(df -h {directory}) and rerun")

