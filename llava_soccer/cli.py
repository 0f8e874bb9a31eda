"""What every command line shares: bad input as one line (InputError, UnreadableFile), text made safe for one log
line, the shared exit codes and run_cli, the main() that turns an exception into one line and an exit code.

Standard library only: settings, claims and jsonio raise InputError, and claims must start fast (no torch).
"""
import errno
import json
import re
import sys
from pathlib import Path

EXIT_RETRY = 75  # EX_TEMPFAIL: fix the cause (disk space) and rerun the same command
EXIT_INCOMPLETE = 3  # finished, with windows no rerun can fill (undecodable): the worker's and the merge's code
_DISK_ERRORS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only",
                errno.EFBIG: "the file is larger than the file size limit (ulimit -f)"}  # Python ignores SIGXFSZ


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


def excerpt(value, limit=120) -> str:
    """A JSON value as an error line quotes it: its JSON text, cut to about limit characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except ValueError:  # an integer of more than 4300 digits
        text = "(too large to show)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def first_line(e: BaseException, limit=200) -> str:
    """The first line of an exception's message (hub and compiler errors run to pages), at most
    `limit` characters (None: all); "" when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


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
