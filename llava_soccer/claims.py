"""One lock per video in the project directory, so two jobs never process the same video at once.

submit_llava.sh takes `.lock_<tag>_video_I.json` before it starts video I (<tag>: the model's family TAG,
settings.LOCK: one lock per model and video, so jobs of two models run one video at once), beats it every
LLAVA_LOCK_HEARTBEAT_S (30 s) while the video runs (its mtime is the heartbeat; `beat` touches it
only while its token is still this run's) and removes it when the video ends; a job that finds it
held by a live holder skips the video. The lock is made with O_CREAT|O_EXCL, which is atomic on
NFSv3+ (flock is not, on many NFS and Lustre mounts).

A lock whose holder runs on this host, with its recorded process start time, is live (also while
that process is stopped: SIGSTOP, scontrol suspend). Otherwise it is stale, and is taken over, when
  (a) its host is this host and its pid is gone or is another process (start time differs):
      a holder killed with kill -9;
  (b) its job id and cluster (SLURM_CLUSTER_NAME) are this process's and its run came before
      ours (SLURM_RESTART_COUNT lower): an earlier run of this same job, requeued (on any node);
      job ids repeat across clusters and after a controller reset, which restarts at count 0;
  (c) its heartbeat (mtime) is older than LLAVA_LOCK_STALE_S seconds (default 600, 20 missed
      heartbeats): a node that died, or a job suspended on another node. An mtime in the future
      (the clock of the node that wrote it is ahead) is set back to our now by take(), so that
      such a lock goes stale STALE_S after we first saw it, not STALE_S after a time to come.
Anything else is live. Two takers breaking one stale lock take a `.break` mutex (O_EXCL, itself
abandoned after 60 s), re-read the lock under it and remove it only if the same holder still
has it, so exactly one of them wins.

A run that lost its lock (taken over as stale while it was stopped or cut off) must write nothing
more: Fence(project, video)() re-reads the lock right before each atomic rename of a partial,
raw-answers or final file (jsonio's fence=) and raises LostLock (one line; exit EXIT_LOST_LOCK)
unless the token is still LLAVA_CLAIM, the token submit_llava.sh passes to its workers and merge.
A run started by hand (no LLAVA_CLAIM) holds no lock: each of its writes is refused while a live
holder has the video (a job started beside it meanwhile), as at its start.

    python -m llava_soccer.claims take PROJECT VIDEO PID      # token (exit 0) or holder (exit 3)
    python -m llava_soccer.claims beat PROJECT VIDEO TOKEN    # touch it if ours (exit 0), else exit 3
    python -m llava_soccer.claims release PROJECT VIDEO TOKEN
each with --model-tag TAG last for another model's lock than LLaVA's (families.TAGS).
Only the standard library and settings/cli: it must start fast (no torch).
"""
import json
import math
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .cli import InputError, log_safe
from .settings import DEFAULT_TAG, lock_path

EXIT_HELD, EXIT_ERROR = 3, 2
EXIT_LOST_LOCK = 4  # worker and merge: another run took the video's lock over; that run owns the video now
BREAK_ABANDONED_S = 60  # a .break mutex (held for milliseconds) or a lock never written, this old, lost its writer
LOCK_FIELDS = {"video": int, "token": str, "job": (str, int), "array_task": str, "cluster": str, "restart": int,
               "host": str, "pid": int, "pid_start": int, "since": str}
# ^ what _new_info writes (None allowed): anything else is not a lock


def _wrong_field(info: dict) -> tuple | None:
    """(key, kind) of the first field of the wrong type (a list, an object, a bool for a number), or None."""
    return next(((key, kind) for key, kind in LOCK_FIELDS.items() if info.get(key) is not None
                 and (isinstance(info[key], bool) or not isinstance(info[key], kind))), None)


def _malformed(info: dict) -> bool:
    """A lock this pipeline did not write: a field of the wrong type."""
    return _wrong_field(info) is not None


STALE_S = 600  # default of LLAVA_LOCK_STALE_S: 20 missed heartbeats


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


class LostLock(InputError):
    """This run's lock of the video was taken over by another run: stop, writing nothing."""


def _restart() -> int:
    """SLURM_RESTART_COUNT (0 on a job's first run, +1 per requeue)."""
    raw = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(raw) if raw.isascii() and raw.isdigit() else 0


def _new_info(video: int, pid: int) -> dict:
    job, array = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return {"video": video, "token": secrets.token_hex(16), "job": job or None,
            "array_task": f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{array}" if job and array else None,
            "cluster": os.environ.get("SLURM_CLUSTER_NAME") if job else None, "restart": _restart() if job else None,
            "host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid),
            "since": datetime.now().isoformat(timespec="seconds")}


def _create(path: Path, info: dict) -> bool:
    """Make the lock holding info; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _read(path: Path, video: int):
    """(info, identity, age in s) of the lock, or (None, None, None) when there is none. info
    without a token: a lock whose writer has not written it (yet: it writes within milliseconds)."""
    for _ in range(20):
        try:
            with open(path, "rb") as f:
                st, text = os.fstat(f.fileno()), f.read()
        except FileNotFoundError:
            return None, None, None
        try:
            info = json.loads(text)
        except ValueError:  # also a UnicodeDecodeError
            info = None
        if isinstance(info, dict) and info.get("token"):
            break
        info = {"video": video}
        time.sleep(0.01)
    return info, (info.get("token"), st.st_ino), time.time() - st.st_mtime


def _stale(info: dict, age: float) -> str | None:
    """Why the lock is stale (the rules in this module's docstring), or None when it is live."""
    if not info.get("token"):
        return "its lock was never written" if age > BREAK_ABANDONED_S else None
    if _malformed(info):  # never a live holder's: gone as a lock never written is
        return "its lock file is no lock of this pipeline" if age > BREAK_ABANDONED_S else None
    if info.get("host") == socket.gethostname():
        if process_start(info.get("pid")) != info.get("pid_start"):
            return f"its process {info.get('pid')} is gone"
        return None  # alive here (maybe stopped: it resumes, and must find its lock)
    restart = info.get("restart")
    if (info.get("job") and info["job"] == os.environ.get("SLURM_JOB_ID")
            and info.get("cluster") == os.environ.get("SLURM_CLUSTER_NAME")
            and isinstance(restart, int) and restart < _restart()):
        return "an earlier run of this job, requeued"
    if age > stale_after_s():
        return f"no heartbeat for {age:.0f} s"
    return None


def _unskew(path: Path, age: float) -> float:
    """age, or 0 after setting a future mtime back to now (a writer whose clock is ahead): the lock then goes
    stale LLAVA_LOCK_STALE_S after this look, not after its writer's clock says. It never looks staler than
    a lock beaten just now, and a live holder keeps beating it."""
    if age >= 0:
        return age
    try:
        os.utime(path)
    except OSError:  # not ours to touch (permissions): then it stays live until its time comes
        pass
    return 0.0


def who(info: dict) -> str:
    """'job 19 on node7 since 12:04', 'job 20 (array task 18_2) on ...', 'local run pid 1234 on host since ...'"""
    if info.get("job"):
        task = f" (array task {info['array_task']})" if info.get("array_task") else ""
        holder = f"job {info['job']}{task} on {info.get('host')}"
    else:
        holder = f"local run pid {info.get('pid')} on {info.get('host')}"
    try:
        since = datetime.fromisoformat(info.get("since"))
        when = since.strftime("%H:%M" if since.date() == datetime.now().date() else "%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        when = info.get("since")
    return f"{holder} since {when}"


def holder_line(info: dict) -> str:
    """'video 3: being processed by job 19 on node7 since 12:04' (callers add their own tail)."""
    if not info.get("token"):
        return f"video {info.get('video')}: being claimed by another run (its lock is being written)"
    if _malformed(info):
        return (f"video {info.get('video')}: held by a lock file that is no lock of this pipeline (fields of the "
                f"wrong type), taken over {BREAK_ABANDONED_S} s after its last change; remove it if no job runs")
    return f"video {info.get('video')}: being processed by {who(info)}"


@contextmanager
def _break_mutex(lock: Path):
    """`with _break_mutex(lock) as got:` holds LOCK.break while got is True (False: another taker has it)."""
    mutex = lock.with_name(lock.name + ".break")
    try:
        os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        try:
            if time.time() - mutex.stat().st_mtime > BREAK_ABANDONED_S:  # its taker died holding it
                mutex.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        yield False
        return
    try:
        yield True
    finally:
        mutex.unlink(missing_ok=True)


def take(project, video: int, pid: int, report=None, wait_s=5.0, model: str = DEFAULT_TAG):
    """(token, None) when this run now holds video's lock of model (its TAG) for process pid, else (None, holder
    line). report(line) is told when a stale lock was taken over, and why."""
    path, mine = lock_path(Path(project), video, model), _new_info(video, pid)
    deadline = time.monotonic() + wait_s
    while True:
        if _create(path, mine):
            return mine["token"], None
        held, identity, age = _read(path, video)
        why = held and _stale(held, _unskew(path, age))
        if held and not why:
            return None, holder_line(held)
        if why:
            with _break_mutex(path) as got:
                if got:
                    again, same, age = _read(path, video)
                    if again is not None and same == identity and _stale(again, max(age, 0.0)):
                        path.unlink(missing_ok=True)
                    if _create(path, mine):
                        if report:
                            report(f"video {video}: taking over the stale lock of {who(held)} ({why})")
                        return mine["token"], None
        if time.monotonic() > deadline:
            return None, holder_line(held or {"video": video})
        time.sleep(0.02)  # another taker holds the mutex (for milliseconds) or the lock went meanwhile


def release(project, video: int, token: str, model: str = DEFAULT_TAG):
    """Remove video's lock of model if token holds it: None, else the holder line of whoever holds it now.
    Under the .break mutex, so that a taker breaking this lock as stale cannot lose its new one."""
    path = lock_path(Path(project), video, model)
    deadline = time.monotonic() + 2
    while True:
        with _break_mutex(path) as got:
            if got or time.monotonic() > deadline:
                held, _, _ = _read(path, video)
                if held is None or held.get("token") != token:
                    return held and holder_line(held)
                path.unlink(missing_ok=True)
                return None
        time.sleep(0.02)


class Fence:
    """`fence = Fence(project, video, model=TAG)`; `fence()` before each write of the video's files of that model
    (jsonio's fence=): returns the lock's info (None when there is none) while this run may write, else raises,
    in one line, LostLock (a run of submit_llava.sh, token LLAVA_CLAIM, whose lock is gone or another run's) or
    InputError (a run by hand, no token, while a live holder has the video)."""

    def __init__(self, project, video: int, token: str | None = None, model: str = DEFAULT_TAG):
        self.path, self.video = lock_path(Path(project), video, model), video
        self.token = token or os.environ.get("LLAVA_CLAIM") or None

    def __call__(self) -> dict | None:
        held, _, age = _read(self.path, self.video)
        if self.token is None:
            if held is None or _stale(held, max(age, 0.0)):
                return held
            raise InputError(f"{holder_line(held)}: its files are that run's; wait until it ends (or scancel it), "
                             f"then run again")
        if held is not None and held.get("token") == self.token:
            return held
        to = (f"lost to {who(held)} (ours was taken over as stale)" if held and held.get("token")
              else "lost (its lock file is gone or being rewritten)")
        raise LostLock(f"video {self.video}: lock {to}: stopping, nothing written")


def stops_on_lost_lock(run, report):
    """run, returning EXIT_LOST_LOCK after report(its one line) when it raises LostLock (a main()'s wrapper)."""
    def guarded(*args, **kw):
        try:
            return run(*args, **kw)
        except LostLock as e:
            report(log_safe(e, 1000))
            return EXIT_LOST_LOCK
    return guarded


def check(project, video: int, model: str = DEFAULT_TAG) -> None:
    """At the start of a worker or merge: Fence(project, video, model=model)() (its one-line errors)."""
    Fence(project, video, model=model)()


def beat(project, video: int, token: str, model: str = DEFAULT_TAG) -> str | None:
    """Touch video's lock (the heartbeat) if token still holds it: None, else the holder line of whoever holds it.
    The touch goes through the file read (its descriptor), so it never reaches a lock that replaced ours."""
    path = lock_path(Path(project), video, model)
    try:
        with open(path, "rb") as f:
            try:
                info = json.loads(f.read())
            except ValueError:
                info = None
            if isinstance(info, dict) and info.get("token") == token:
                os.utime(f.fileno())
                return None
    except FileNotFoundError:
        return f"video {video}: its lock is gone"
    return holder_line(info if isinstance(info, dict) else {"video": video})


class BadLock(InputError):
    """A lock file that cannot be read as a lock (a directory, unreadable, fields of the wrong type): status shows
    that video as locked with this line; no job can take it either."""


def peek(project, video: int, model: str = DEFAULT_TAG):
    """(info, why it is stale or None, heartbeat age in s) of video's lock, or None when there is none:
    a read-only look by the rules take() applies (status_llava.py); it never writes (a future mtime: age 0).
    BadLock (one line) for a lock file that is a directory, unreadable, or whose fields are of the wrong type."""
    path = lock_path(Path(project), video, model)
    try:
        info, _, age = _read(path, video)
    except OSError as e:
        why = "is a directory" if path.is_dir() else e.strerror
        raise BadLock(f"unreadable lock file {path.name}: {why}; remove it if no job runs") from None
    if info is None:
        return None
    if wrong := _wrong_field(info):
        key, kind = wrong
        raise BadLock(f"lock file {path.name} has {key} {json.dumps(info[key])[:60]}, not a "
                      f"{'number' if kind is int else 'string'}: remove it if no job runs")
    age = max(age, 0.0)
    return info, _stale(info, age), age


def _number(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise InputError(f"{what} must be a number, not {text!r}")
    return int(text)


def _tag(text: str) -> str:
    from .families import TAGS
    if text not in TAGS:
        raise InputError(f"--model-tag {text!r} is no model family's tag (one of {', '.join(TAGS)}: "
                         f"python -m llava_soccer.families tag MODEL says a model's)")
    return text


def main(argv) -> int:
    """The command line above: prints the token, a holder line, or one error line (exit 2)."""
    try:
        model = DEFAULT_TAG
        if len(argv) == 6 and argv[4] == "--model-tag":
            argv, model = argv[:4], _tag(argv[5])
        if len(argv) != 4 or argv[0] not in ("take", "beat", "release"):
            raise InputError("usage: python -m llava_soccer.claims take PROJECT VIDEO PID | "
                             "beat PROJECT VIDEO TOKEN | release PROJECT VIDEO TOKEN, each [--model-tag TAG]")
        command, project, video, last = argv[0], Path(argv[1]), _number(argv[2], "VIDEO"), argv[3]
        if not project.is_dir():
            raise InputError(f"project directory {project} does not exist")
        if command == "beat":
            other = beat(project, video, last, model)
            if other:
                print(f"{other}: our lock was taken over as stale, left to it")
            return EXIT_HELD if other else 0
        if command == "release":
            other = release(project, video, last, model)
            if other:
                print(f"{other}: our lock was taken over as stale, left to it")
            return 0
        pid = _number(last, "PID")
        if process_start(pid) is None:
            raise InputError(f"PID {pid} is not a running process")
        notes = []
        token, held = take(project, video, pid, report=notes.append, model=model)
        print("\n".join([token or held, *notes]))  # line 1: what submit_llava.sh reads; then notes for its log
        return 0 if token else EXIT_HELD
    except InputError as e:
        print(f"claims: error: {e}", file=sys.stderr)
    except OSError as e:
        if e.filename and Path(e.filename).is_dir():  # not a permission: writable or not, it is no lock
            print(f"claims: error: the lock {e.filename} is a directory, not a file: remove the directory "
                  f"{e.filename} (no job can hold a lock there)", file=sys.stderr)
        else:
            print(f"claims: error: cannot use the lock {e.filename} ({e.strerror}): make {argv[1]} writable",
                  file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
