"""Which video an index means, its window grid, and its frames at exact 5 FPS timestamps.

Windows start on one global grid (0, 2, 4, ... s) and belong to the slice their start lies
in, so N workers together cover every window exactly once. Frames are decoded once, in
order (grab() skips, retrieve() only decodes the frames we keep), and shared by the
overlapping windows; a seek happens only where a worker starts or jumps far ahead.
"""
import logging
import math
import os
import re
import shlex
import sys
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

from .cli import InputError, UnreadableFile, log_safe, run_cli
from .jsonio import atomic_write_text, read_json
from .settings import (
    DEFAULT_TAG,
    FINAL,
    FPS,
    FRAMES_PER_WINDOW,
    RAW_ANSWERS,
    SAMPLES_PER_STEP,
    STEP_S,
    VIDEO_SUFFIXES,
    final_path,
    name_pattern,
)

log = logging.getLogger("llava_worker")
MANIFEST = "videos.txt"
GIVEN = ".videos_given.txt"  # every line of videos.txt ever handed out (manifest())
# A frame counts for a sample time only when its presentation timestamp is within half a sample interval of
# it: a decoder that lost data (a damaged or preallocated file) returns whatever frame comes next instead.
TOLERANCE = 0.5 / FPS


class Window(namedtuple("Window", "k start times frames")):
    """Window k from start: its frames (RGB arrays) and their seconds; missing: the grid times of the window that
    have no real frame in the file. A window with any missing is given without frames (undecodable): the model
    must not be shown a stand-in for a moment the file does not hold."""

    def __new__(cls, k, start, times, frames, missing=()):
        window = super().__new__(cls, k, start, times, frames)
        window.missing = list(missing)
        return window


def manifest(project: Path) -> list[str]:
    """Video paths relative to raw_data/, index = line number.

    Written the first time; later runs append videos that appeared since, so an index never
    changes meaning once given. GIVEN keeps a copy of every line handed out: a videos.txt whose
    lines were removed, reordered or renamed since is refused (finals are named by index). A file
    whose name a line cannot hold (not UTF-8, a line break or other control character, leading or
    trailing spaces) is never listed: one warning line names it and says to rename it, the others
    go on. Linear in the number of videos (28,000: benchmarks/RESULTS.md).
    """
    raw, path, given_path = project / "raw_data", project / MANIFEST, project / GIVEN
    listed, given = _checked_lines(project)
    if raw.is_dir():
        found, refused, unreadable = _scan(raw)
        if refused:
            shown = ", ".join(f"{name} ({why})" for name, why in refused[:5])
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            log.warning(log_safe(f"⚠️ {len(refused)} video file{'s' * (len(refused) != 1)} under {raw} skipped, "
                                 f"never listed in {MANIFEST} (a line cannot hold the name): {shown}{more}; "
                                 f"rename {'them' if len(refused) > 1 else 'it'} (e.g. convmv -f latin1 -t utf-8 "
                                 f"-r --notest DIR for another encoding), the other videos are not affected", 1000))
        if unreadable:
            log.warning(log_safe(f"⚠️ cannot read {len(unreadable)} folder(s) under {raw} ({unreadable[0]}): their "
                                 f"videos are not listed; chmod a+rx them", 1000))
        known = set(listed)
        new = [v for v in found if v not in known]
        if new or not path.exists():
            listed += new
            atomic_write_text(path, "".join(f"{v}\n" for v in listed))
    if given != listed or not given_path.exists():
        atomic_write_text(given_path, "".join(f"{v}\n" for v in listed))
    return listed


def read_list(project: Path) -> list[str]:
    """videos.txt's lines (index = line number), checked against GIVEN as manifest() checks them, without
    scanning raw_data/ or writing anything: for the tools that only read (compare_counts.py,
    evaluate_soccernet.py), which must work on a project the user cannot write to."""
    return _checked_lines(project)[0]


def _q(path: Path) -> str:
    """A path as a shell word: the cp commands the messages print run as printed ("my project")."""
    return shlex.quote(str(path))


def _checked_lines(project: Path) -> tuple[list[str], list[str]]:
    """(videos.txt's lines, GIVEN's lines or the same when there is no GIVEN), or InputError when lines that
    were handed out changed."""
    path, given_path = project / MANIFEST, project / GIVEN
    listed = _lines(path, f"restore it with: cp {_q(given_path)} {_q(path)}")
    given = _lines(given_path, f"if {path} is right, restore it with: cp {_q(path)} {_q(given_path)}") \
        if given_path.exists() else listed
    for n, (was, now) in enumerate(zip(given, listed + [None] * len(given))):
        if was != now:
            change = f"is now {now!r}" if now is not None else "was removed"
            raise InputError(f"{path} line {n + 1} ({was!r}) {change} after video indices were given out: index {n} "
                             f"must keep its video (final_predictions_*_video_{n}.json belong to it). Restore the "
                             f"list with: cp {_q(given_path)} {_q(path)} (new videos are appended by themselves)")
    return listed, given


# A path a line of videos.txt cannot hold: a control character (line break, tab, ESC, ...), a Unicode line
# separator, or whitespace at either end of a part (editors and shells lose it: the index would name no file).
_CONTROL = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
_NOT_A_LINE, _CONTROL = re.compile(rf"{_CONTROL}|(?:^|/)\s|\s(?:/|$)"), re.compile(_CONTROL)


def _scan(raw: Path) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(video paths under raw relative to it, sorted; [(name shown escaped, why)] of the video files whose names a
    line cannot hold; folders that could not be read). Symlinked folders are followed, each real folder once:
    a link back up the tree is no loop, and a real folder is preferred to a link to it."""
    found, refused, unreadable, seen = [], [], [], set()
    top_len = len(str(raw)) + 1
    for top, dirs, files in os.walk(raw, followlinks=True, onerror=lambda e: unreadable.append(e.filename)):
        try:
            st = os.stat(top)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(top, d)), d))
        prefix = top[top_len:] + "/" if len(top) >= top_len else ""
        for name in files:
            if os.path.splitext(name)[1].lower() not in VIDEO_SUFFIXES or not os.path.isfile(os.path.join(top, name)):
                continue
            rel = prefix + name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # os gives undecodable bytes as lone surrogates
                refused.append((repr(os.fsencode(rel)), "not valid UTF-8"))
                continue
            if _NOT_A_LINE.search(rel):
                why = ("a line break" if "\n" in rel or "\r" in rel else "a control character"
                       if _CONTROL.search(rel) else "a leading or trailing space")
                refused.append((repr(rel), why))
                continue
            found.append(rel)
    found.sort()
    refused.sort()
    return found, refused, unreadable


Origin = namedtuple("Origin", "video made_by incomplete known")
# what a final says of itself: its video (raw_data/ path or None), what made it (provenance.made_by, None when
# unknown), "incomplete" (None, or the merge's one line on its undecodable windows) and whether it says so at all


def origin_of(final: Path) -> Origin:
    """What a final file and the raw-answers archive beside it (merge) say of their origin. Other models'
    files and finals written before made_by existed give Origin(None, None, None, False). UnreadableFile when
    the archive belongs to another final (_origin): what this one holds, complete or not, is unknown."""
    origin, merged = _origin(final)
    if not merged:
        name = name_pattern(FINAL).fullmatch(final.name)
        index = name["video"] if name else "?"
        raise UnreadableFile(f"{final} is older than the raw-answers file beside it: a merge of video {index} was "
                             f"interrupted after writing the raw answers, before the final, and its partials are "
                             f"gone. Move both files out of {final.parent}, then rerun video {index}")
    return origin


def _origin(final: Path) -> tuple[Origin, bool]:
    """(origin_of(final), whether its raw-answers file belongs to it). The merge writes the raw answers first,
    with the final_digest of the final it then writes (the commit point): a digest that differs is a merge
    interrupted between the two writes, whose answers (and "incomplete") say nothing of the older final beside
    them, so Origin is then the final's own. An archive older than "final_digest" belongs to its final, as
    it always did."""
    from .records import final_digest
    name = name_pattern(FINAL).fullmatch(final.name)
    archive = final.with_name(RAW_ANSWERS.format(**name.groupdict())) if name else None
    rerun = f"rerun video {name['video']}" if name else "rerun the video"
    records = read_json(final, "predictions file", f"move it{' and ' + archive.name if archive else ''} out of "
                                                   f"{final.parent}, then {rerun}")
    events = [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    said = {r.get("video") for r in events if isinstance(r.get("video"), str)}
    made_by = next((r["made_by"] for r in events if isinstance(r.get("made_by"), dict)), None)
    data = read_json(archive, "raw answers file", f"move it out of {final.parent} ({final.name} keeps the events), "
                                                  f"or move both out and {rerun}") \
        if archive and archive.exists() else None
    data = data if isinstance(data, dict) else {}
    merged = "final_digest" not in data or data["final_digest"] == final_digest(records)
    data = data if merged else {}
    said.update([data["video"]] if isinstance(data.get("video"), str) else [])
    made_by = data.get("made_by") if isinstance(data.get("made_by"), dict) else made_by
    said = sorted(said)
    if len(said) > 1:
        raise InputError(f"{final} and its raw-answers file name different videos ({', '.join(map(repr, said))}): "
                         f"they belong to different runs; delete both and rerun the video")
    incomplete = data.get("incomplete")  # the merge's line; a file can hold anything
    incomplete = None if incomplete is None else log_safe(incomplete, 300)
    return Origin(said[0] if said else None, made_by, incomplete, "made_by" in data or bool(made_by)), merged


def check_source(project: Path, index: int, final: Path, listed=None) -> Origin:
    """origin_of(final), or InputError when it was made from another video than line index of
    videos.txt (listed: its lines, default read as they are): a final copied from another project, or
    kept across a rebuilt videos.txt, would be skipped as done and scored against the wrong game."""
    return _same_video(origin_of(final), project, index, final, listed)


def _same_video(origin: Origin, project: Path, index: int, final: Path, listed) -> Origin:
    """check_source of an origin already read."""
    listed = _lines(project / MANIFEST, f"restore it with: cp {_q(project / GIVEN)} {_q(project / MANIFEST)}") \
        if listed is None else listed
    if not listed or origin.video is None:
        return origin  # nothing to check against (compare_counts on a folder of finals), or it does not say
    expected = listed[index] if index < len(listed) else None
    if origin.video != expected:
        line = f"is {expected!r}" if expected else f"does not exist (it lists {len(listed)} videos)"
        raise InputError(f"{final} was made from {origin.video!r}, but video #{index} of {project / MANIFEST} {line}: "
                         f"it belongs to another project or an older videos.txt. Move it and its raw_answers file out "
                         f"of {final.parent}, then rerun video {index}")
    return origin


def final_state(project: Path, index: int, listed=None, model: str = DEFAULT_TAG) -> tuple[str, str]:
    """What submit_llava.sh does with a video for model (its TAG: its files), and the line it logs: "todo" (no
    final), "done" (a complete final: skipped), "incomplete" (a final with undecodable windows whose video file is
    unchanged: a rerun cannot fill them, skipped) or "redo" (an incomplete final whose file changed, or
    a merge interrupted before it wrote the final, whose partials are still there: the workers find their
    windows saved and the merge runs again). listed: videos.txt's lines, when the caller has read them."""
    from .merge import partial_files
    from .provenance import same_file
    final = final_path(project, index, model)
    if not final.exists():
        return "todo", ""
    origin, merged = _origin(final)
    if not merged:
        if partial_files(project, index, model):  # the merge deletes them only after writing the final
            return "redo", (f"video {index}: its last merge was interrupted ({final.name} is older than the raw "
                            f"answers beside it): merging its saved partials again")
        origin = origin_of(final)  # raises: one line saying what to do
    origin = _same_video(origin, project, index, final, listed)
    same = same_file((origin.made_by or {}).get("video_file"), project)
    if origin.incomplete is None:
        if same is False:
            return "done", (f"video {index}: skipped, {final} exists; ⚠️ but its video file has changed since it "
                            f"was made: delete the final and its raw_answers file to redo it")
        return "done", f"video {index}: skipped, {final} exists"
    if same is False:
        return "redo", (f"video {index}: {final.name} is incomplete ({origin.incomplete}) and its video file has "
                        f"changed since: processing it again (the final is replaced when the new one is merged)")
    return "incomplete", (f"video {index}: skipped, {final.name} is INCOMPLETE ({origin.incomplete}) and its video "
                          f"file is unchanged, so a rerun cannot fill it: replace the file to redo it")


def _check_finals(project: str, first: str, last: str) -> int:
    """submit_llava.sh's check before anything starts: refuses an edited videos.txt and finals of the videos of
    first..last that were made from other videos, then prints how many videos videos.txt lists: the shell
    processes the part of the range that exists by this one count (indices past it are not looked at, so a
    huge last costs nothing)."""
    project = Path(project)
    listed = manifest(project)  # also refuses an edited videos.txt before any worker starts
    for index in range(int(first), min(int(last), len(listed) - 1) + 1):
        for final in sorted(project.glob(FINAL.format(model="*", video=index))):
            try:
                check_source(project, index, final, listed)
            except UnreadableFile:  # that video's own problem: `state` reports it (FAILED), the others run
                continue
    print(len(listed))
    return 0


def display_name(video: str, width: int = 90) -> str:
    """A video's raw_data/ path for log lines and titles, safe (log_safe) and at most about width characters:
    the leading folders go first ("…/2015-08-29 - 17-00 Liverpool 0 - 3 West Ham/1_224p.mkv"), since every
    SoccerNet half is called 1_224p.mkv or 2_224p.mkv and the game is the folder above."""
    text = log_safe(video, None)
    parts = text.split("/")
    while len(parts) > 1 and len("/".join(parts)) + 2 > width:
        parts.pop(0)
    short = "/".join(parts) if len(parts) > 1 or len(parts[0]) <= width else parts[0][-(width - 1):]
    return short if short == text else f"…/{short}" if len(parts) > 1 else f"…{short}"


def _state(project: str, index: str, *tag) -> int:
    """submit_llava.sh, before each video: "STATE<tab>LINE<tab>NAME" (final_state; display_name) of the files of
    the model whose TAG follows --model-tag (submit's families.tag_of of LLAVA_MODEL; default LLaVA's)."""
    if tag and (len(tag) != 2 or tag[0] != "--model-tag"):
        raise InputError("usage: python -m llava_soccer.videos state PROJECT VIDEO [--model-tag TAG]")
    listed = read_list(Path(project))
    state, line = final_state(Path(project), int(index), listed, tag[1] if tag else DEFAULT_TAG)
    name = display_name(listed[int(index)]) if int(index) < len(listed) else "?"
    print(f"{state}\t{line}\t{name}")
    return 0


def _lines(path: Path, fix="") -> list[str]:
    """The non-empty lines of a list file ([] when there is none), or UnreadableFile naming it and fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except UnicodeDecodeError as e:
        problem = f"is not valid UTF-8 (byte {e.start})"
    except OSError as e:
        problem = f"cannot be read ({e.strerror})"
    else:
        return [line for line in text.split("\n") if line]
    raise UnreadableFile(f"{path} {problem}{f': {fix}' if fix else ''}")


def resolve_video(project: Path, index: int) -> Path:
    """The file behind a video index, or InputError saying what to fix."""
    videos = manifest(project)
    if not videos:
        raise InputError(f"no videos: put .mkv/.mp4 files under {project / 'raw_data'} (or set SOCCER_PROJECT)")
    if not 0 <= index < len(videos):
        raise InputError(f"--video-index {index} is out of range: {project / MANIFEST} lists {len(videos)} "
                         f"videos (0..{len(videos) - 1})")
    path = project / "raw_data" / videos[index]
    if not path.is_file():
        raise InputError(f"video #{index} ({videos[index]}, listed in {project / MANIFEST}) is missing: {path}")
    return path


def sample_time(j: int) -> float:
    """The second of the j-th 5 FPS sample: frame times are this everywhere (prompt, events, records)."""
    return round(j / FPS, 3)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    frame_count: int

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps

    def sample_frame(self, j: int) -> int:
        """Frame index shown closest to the j-th sample time j / FPS."""
        return int(math.floor(j * self.fps / FPS + 0.5))

    @property
    def n_samples(self) -> int:
        n = math.ceil(self.frame_count * FPS / self.fps) + 1
        while n and self.sample_frame(n - 1) >= self.frame_count:
            n -= 1
        return n

    @property
    def n_windows(self) -> int:
        return math.ceil(self.n_samples / SAMPLES_PER_STEP)

    def window_start(self, k: int) -> float:
        return round(k * STEP_S, 3)

    def window_samples(self, k: int) -> range:
        first = k * SAMPLES_PER_STEP
        return range(first, min(first + FRAMES_PER_WINDOW, self.n_samples))

    def window_times(self, k: int) -> list[float]:
        """The seconds of window k's frames on the grid (the last windows have fewer than 15)."""
        return [sample_time(j) for j in self.window_samples(k)]

    def slice_of(self, k: int, num_workers: int) -> int:
        """Which of num_workers equal time slices window k starts in."""
        return min(num_workers - 1, int(self.window_start(k) * num_workers / self.duration))

    def slice_windows(self, gpu_id: int, num_workers: int) -> list[int]:
        return [k for k in range(self.n_windows) if self.slice_of(k, num_workers) == gpu_id]


def _cv2():
    """OpenCV, with FFmpeg's own messages ("EBML header parsing failed", "Truncating packet") off: they would
    land in the job log between our lines, and a video we cannot read is our one-line error instead. Set
    OPENCV_FFMPEG_LOGLEVEL=24 to see them. (Set here, before the first import, not at this module's import.)"""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2
    return cv2


def probe(path) -> VideoInfo:
    """fps and frame count of a video, or InputError if OpenCV cannot read it."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        if not (fps > 0 and cap.grab()):
            raise InputError(f"cannot read video {path}: OpenCV found no frames (corrupt file or missing codec)")
        scan = count <= 0
        if scan:
            # No duration in the container (a video written to a pipe: ffmpeg ... -f matroska - > x.mkv):
            # OpenCV's count is 0 or negative. Every frame is read once to find the last (~80 s an hour of 224p here).
            count = 1
        else:
            # The frame count may be the number of frames, not duration x fps: with a variable frame rate
            # the last frame's timestamp says how long the video is (a CFR file has nothing after it).
            cap.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
        last = 0.0
        for n in range(1, sys.maxsize if scan else 100_001):
            if not cap.grab():
                break
            count = n + 1 if scan else count
            last = max(last, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
        count = max(count, round(last * fps) + 1)  # frames at the nominal fps that the video spans
    finally:
        cap.release()
    return VideoInfo(Path(path), fps, count)


class FrameReader:
    """Frames of one video at increasing sample times, RGB uint8 arrays: for each time the frame
    whose presentation timestamp (the decoder's, CAP_PROP_POS_MSEC) is nearest, so variable-frame-
    rate video is sampled at the right moments too. Where the timestamps are unusable (not
    increasing) it warns once and counts frames at the nominal fps instead.

    A time gets None when that frame is not really there: its timestamp is more than TOLERANCE away
    (the decoder skipped damaged data and went on at a later frame), or it follows a jump of more than
    one sample interval in the timestamps and comes before the next key frame has been decoded (it was
    decoded from pictures that were lost: a stale or smeared image under a right timestamp)."""

    SEEK_AHEAD = 250  # frames: a longer jump seeks instead of grabbing through

    def __init__(self, info: VideoInfo):
        self._cv2 = cv2 = _cv2()
        self.info = info
        self._cap = cv2.VideoCapture(str(info.path))
        self._index = -1            # index of the frame grabbed last (-1: none yet)
        self._pts = None            # its timestamp (s), None before the first grab
        self._image = None          # its RGB image, when retrieved
        self._held = None           # (timestamp, image): the latest kept frame at or before the time asked
        self._interval = 1 / info.fps  # the last gap between timestamps: when to keep a frame
        self._by_index = False      # timestamps unusable: frame index / fps
        self._seekable = True       # False once a seek landed after the time asked
        self._last = -1             # the last sample asked for
        self._trusted_from = 0      # first frame index decoded from complete data (math.inf: after a jump)
        # frames the decoder may still hold back when it reads a packet (threads, reordering): how long a key
        # frame read after a jump may take to come out
        self._delay = int(self._cap.get(cv2.CAP_PROP_N_THREADS)) + int(self._cap.get(cv2.CAP_PROP_DTS_DELAY))
        self.ended = False

    def frame(self, j: int):
        """RGB frame nearest to sample time j / FPS, or None past the decodable end. j must not decrease."""
        if j < self._last:
            raise ValueError(f"sample {j} requested after sample {self._last}: frames must be read in order")
        self._last, t = j, j / FPS
        if self._index < 0 or (t - self._pts) * self.info.fps > self.SEEK_AHEAD:
            self._seek(t)
        while not self.ended and self._pts <= t:
            if self._pts + 1.5 * self._interval > t:  # maybe the last frame at or before t: keep it
                self._held = (self._pts, self._retrieve(), self._trusted())
            self._grab()
        held = self._held if self._held and t - self._held[0] <= 1.5 * self._interval else None
        if not self.ended and not (held and t - held[0] < self._pts - t):  # the next frame is nearer
            held = (self._pts, self._retrieve(), self._trusted())
        if held is None or not held[2] or abs(held[0] - t) > TOLERANCE + 1e-6:
            return None  # past the last frame, or that moment is not in the file
        return held[1]

    def _trusted(self) -> bool:
        return self._index >= self._trusted_from

    def _seek(self, t):
        """Grab the first frame or, for a long jump, seek to a frame a little before t (by the
        nominal fps; if that lands after t, as variable frame rates can, read from the start)."""
        target = max(0, int(t * self.info.fps) - 2)
        if target > self._index + self.SEEK_AHEAD and self._seekable:
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, target)
            self._index, self._pts, self._held, self._trusted_from = target - 1, None, None, 0
            self._grab()
            if not self.ended and self._pts <= t:
                return
            self._seekable = False
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            self._index, self._pts, self._held, self.ended, self._trusted_from = -1, None, None, False, 0
        if self._index < 0:
            self._grab()

    def _grab(self):
        if not self._cap.grab():
            self.ended = True
            return
        self._index += 1
        self._image = None
        pts = self._index / self.info.fps if self._by_index else self._cap.get(self._cv2.CAP_PROP_POS_MSEC) / 1000
        if self._pts is not None and pts <= self._pts and not self._by_index and self._index > 0:
            log.warning(f"⚠️ {self.info.path.name}: frame timestamps do not increase ({self._pts:.3f} s, then "
                        f"{pts:.3f} s at frame {self._index}): sampling by frame count at {self.info.fps:.3f} fps "
                        f"instead; remux the file (ffmpeg -i IN -c copy OUT.mkv) if times look wrong")
            self._by_index = True
            pts = self._index / self.info.fps
        if self._pts is not None and pts - self._pts > 1 / FPS and not self._by_index:
            self._trusted_from = math.inf  # data skipped: the frames up to the next key frame miss their references
        if self._trusted_from == math.inf and self._cap.get(self._cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
            self._trusted_from = self._index + self._delay  # a key frame was read; it comes out within _delay frames
        if self._pts is not None and pts > self._pts:
            self._interval = pts - self._pts
        self._pts = pts

    def _retrieve(self):
        if self._image is None:
            ok, bgr = self._cap.retrieve()
            self._image = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB) if ok else None
        return self._image

    def close(self):
        self._cap.release()


def iter_windows(info: VideoInfo, windows):
    """Yield a Window(k, start, times, frames) for each of the ascending window indices given.

    Samples shared by overlapping windows are decoded once. A window with a grid time that has no
    real frame (FrameReader: a file shorter than its header says, damaged or zeroed data) comes
    without frames and with its .missing times: the worker records it undecodable.
    """
    reader, cache = FrameReader(info), {}
    try:
        for k in windows:
            wanted = info.window_samples(k)
            cache = {j: f for j, f in cache.items() if j >= wanted.start}
            for j in wanted:
                if j not in cache:
                    cache[j] = reader.frame(j)
            missing = [sample_time(j) for j in wanted if cache[j] is None]
            if missing:
                yield Window(k, info.window_start(k), [], [], missing)
            else:
                yield Window(k, info.window_start(k), [sample_time(j) for j in wanted], [cache[j] for j in wanted])
    finally:
        reader.close()


if __name__ == "__main__":  # submit_llava.sh: python -m llava_soccer.videos P 0 39 before starting (checks the
    # finals of the range, prints the number of videos), python -m llava_soccer.videos state P 5 before each video
    # (prints "STATE<tab>LINE"; --model-tag TAG: that model's files)
    command = _state if sys.argv[1:2] == ["state"] else _check_finals
    sys.exit(run_cli(lambda a: command(*a), sys.argv[2:] if command is _state else sys.argv[1:], "submit_llava.sh"))
