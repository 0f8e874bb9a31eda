"""Files that are never half-written (temp file beside, fsync, rename), strict JSON (no NaN or
Infinity, which jq and browsers reject), and clear input errors.

A temp file's name says who writes it, `.{name}.{host}.{pid}.{random}.tmp`, so that clearing the
temps a killed writer left never removes the temp of a live one (two jobs on one video, issue 20).
"""
import errno
import gzip
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
import zlib
from pathlib import Path

STALE_S = 600  # default of LLAVA_LOCK_STALE_S: 20 missed heartbeats of claims.py's locks


class InputError(Exception):
    """Bad input from the user: main() prints it as one line and exits non-zero."""


class UnreadableFile(InputError):
    """One file the pipeline reads back (a partial, a final, a raw-answers archive, videos.txt) cannot be read:
    damaged (not JSON, a broken gzip stream), a directory, or not readable. It concerns that file's video only:
    submit_llava.sh marks that video FAILED with the line and runs the others."""


# What log_safe() escapes: C0 and C1 controls (newlines, carriage returns, ESC of ANSI sequences, ...), Unicode
# line and paragraph separators, bidirectional overrides (text that displays in another order than it reads)
# and lone surrogates (not writable as UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m[0]
    return _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def log_safe(text, limit: int | None = 200) -> str:
    """text (or str() of any value) as a harmless piece of ONE log line: what a model, a file or a file name
    says can neither end the line (and forge one such as "video 9: done") nor move the cursor or erase the
    line (ANSI escapes): control characters become visible escapes ("\\n", "\\x1b"); at most `limit`
    characters (None: all), a longer text ends in "... (N chars)"."""
    text = text if isinstance(text, str) else str(text)
    cut = limit is not None and len(text) > limit
    safe = _UNSAFE.sub(_escape, text[:limit + 1] if cut else text)
    if limit is not None and (cut or len(safe) > limit):
        return f"{safe[:limit]}... ({len(text)} chars)"
    return safe


def stale_after_s() -> float:
    """LLAVA_LOCK_STALE_S (default 600): a video lock not touched, or a temp file of another host
    not renamed, for this many seconds has lost its writer (a node that died)."""
    raw = os.environ.get("LLAVA_LOCK_STALE_S") or str(STALE_S)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"LLAVA_LOCK_STALE_S={raw!r} must be a number of seconds above 0 (default {STALE_S})")
    return value


def process_start(pid: int) -> int | None:
    """When process pid on this machine started (clock ticks since boot, /proc/PID/stat field 22),
    or None when there is no such process or it is a zombie. Comparing start times tells a
    process from a later one that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and ')'
    return None if fields[0] == "Z" else int(fields[19])


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
            e.filename = str(path)  # a failed write() names no file: say which one (disk_problem)
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


EXIT_RETRY = 75  # EX_TEMPFAIL: fix the cause (disk space) and rerun the same command
EXIT_INCOMPLETE = 3  # finished, with windows no rerun can fill (undecodable): the worker's and the merge's code
_DISK_ERRORS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only",
                errno.EFBIG: "the file is larger than the file size limit (ulimit -f)"}  # Python ignores SIGXFSZ


def excerpt(value, limit=120) -> str:
    """A JSON value as an error line quotes it: its JSON text, cut to about limit characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except ValueError:  # an integer of more than 4300 digits
        text = "(too large to show)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def disk_problem(e: OSError) -> str | None:
    """One line for a write that failed for lack of space/quota or a read-only disk (the data
    already written is intact: atomic writes), else None."""
    if e.errno not in _DISK_ERRORS:
        return None
    where = Path(e.filename) if e.filename else None
    fix = ("raise the limit (ulimit -f unlimited)" if e.errno == errno.EFBIG
           else f"free space (df -h {where.parent if where else '.'})")
    return (f"cannot write {where or 'the project directory'}: {_DISK_ERRORS[e.errno]}. Files written before are "
            f"intact; {fix} and rerun the same command")


def first_line(e: BaseException, limit=200) -> str:
    """The first line of an exception's message (hub and compiler errors run to pages), at most
    `limit` characters (None: all); "" when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


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


def run_cli(run, args, prog, report=None, failures=(InputError,)) -> int:
    """A script's main(): run(args)'s exit code, or 1 with one line for bad input (failures), or
    EXIT_RETRY with one line when the disk is full or read-only. report(line) writes the line
    (default: stderr, prefixed with prog)."""
    report = report or (lambda line: print(f"{prog}: {line}", file=sys.stderr))
    try:
        return run(args)
    except failures as e:
        report(f"error: {log_safe(e, 2000)}")  # messages quote files and model text: one line, whatever they hold
        return 1
    except OSError as e:
        problem = disk_problem(e)
        if problem is not None:
            report(f"error: {log_safe(problem, 2000)}")
            return EXIT_RETRY
        if e.filename is None:
            raise
        # a path that is a directory, a permission, ...: checked where we know the file, this is the last resort
        report(f"error: {log_safe(e.filename, 500)}: {e.strerror or first_line(e)}; check that path (its type and "
               f"permissions) and rerun")
        return 1
