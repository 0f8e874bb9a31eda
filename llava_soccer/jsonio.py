"""Files that are never half-written (temp file beside, fsync, rename), and clear input errors."""
import json
import os
import sys
import tempfile
from pathlib import Path


class InputError(Exception):
    """Bad input from the user: main() prints it as one line and exits non-zero."""


def _atomic_write(path, write) -> None:
    """Replace path with what write(binary file) writes; a crash leaves the old file or the new
    one, never a mix (temp file beside it, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: https://docs.python.org/3/library/os.html#os.replace
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temps(path) -> None:
    """Delete temp files that a killed atomic write of path left behind. Only the one process
    that writes path may call this (each partial has one worker, each final one merge)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_savefig(fig, path, dpi=100) -> None:
    """Save a matplotlib figure as PNG the same way: a reader never sees half a picture."""
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def read_json(path, what="file"):
    """Load JSON, or raise InputError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is not valid JSON ({e})") from None


def run_cli(run, args, prog) -> int:
    """A script's main(): run(args)'s exit code, or 1 with one line on stderr for bad input."""
    try:
        return run(args)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
