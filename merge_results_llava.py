"""Merge one video's partial results into final_predictions_llava_video_{I}.json.

    python merge_results_llava.py --video-index 5
    python merge_results_llava.py --video-index 5 --keep-partials --dedup-s 3.0

Reads every $SOCCER_PROJECT/partial_results_llava_vid{I}_gpu*.json (any number of workers),
re-parses each window's raw model text (so parser fixes apply to old partials), normalises
labels to the 17 SoccerNet classes (other labels are kept under their own name), and keeps
one event per label within --dedup-s seconds: the most confident, with its own time.

All partials must have been made by one run (the same model, settings and video file: their
"made_by"), else it refuses with one line naming what differs. Every window of the video must
have an answer: if any is missing or failed (OOM, an error) it writes nothing, keeps the
partials, prints the time ranges and exits 75: rerun the workers of that video (they resume and
retry failed windows), then merge again. Windows whose frames cannot be decoded (a truncated
file) cannot be filled by a rerun: the final is written with what was seen, the raw-answers
file says "incomplete" with the time ranges, and the exit code is 3.
Every window's raw model text (time, status, raw, error) is archived in
raw_answers_llava_video_{I}.json.gz beside the final file with made_by, windows_total and
incomplete (null, or the one-line reason), so parse failures can be read and re-parsed after the
partials are gone. Each final event carries "video" and "made_by". Both files are written
atomically, the raw answers first with the digest of the final they belong to (final_digest) and
the final last: an interruption between the two leaves files that disagree, which a rerun merges
again from the partials. The partials are deleted only after that.

Exit codes: 0 merged (or already merged), 1 error (one line says why), 2 bad flags,
3 merged but incomplete (undecodable windows), 4 lost the video's lock to another run (nothing
written: that run owns the video), 75 windows missing or failed, or the disk full.
"""
if __name__ == "__main__":  # first: another python may have to run this script (llava_soccer/venv.py)
    from llava_soccer import venv
    venv.ensure(("cv2",))

import argparse
import sys
import time

from llava_soccer import claims, families, merge, provenance, records, settings, videos
from llava_soccer.cli import EXIT_INCOMPLETE, EXIT_RETRY, InputError, log_safe, run_cli
from llava_soccer.jsonio import atomic_write_json, atomic_write_json_gz, read_json, remove_stale_temps

EXIT_MISSING = EXIT_RETRY  # EX_TEMPFAIL, as the worker's "interrupted": rerun the workers, then merge


def parse_args(argv):
    env = settings.env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video-index", "--video_index", type=int, required=True, help="line of videos.txt (0-based)")
    p.add_argument("--project", default=None, help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    p.add_argument("--model", default=None,
                   help="the model whose partials to merge, by its family's file names (env LLAVA_MODEL, default "
                        f"{settings.DEFAULT_MODEL})")
    p.add_argument("--dedup-s", type=float, default=env("LLAVA_DEDUP_S", settings.DEDUP_S),
                   help="events of one label this many seconds apart or closer are one event "
                        f"(default {settings.DEDUP_S:g}; 0 merges only equal times)")
    p.add_argument("--keep-partials", action="store_true",
                   help="keep the partial files after writing the final file (default: delete them)")
    p.add_argument("--show-failures", type=int, default=20,
                   help="unparseable windows whose text is printed in the summary (default 20)")
    settings.check_env(p, {"dedup_s": "LLAVA_DEDUP_S"})
    args = p.parse_args(argv)
    if not 0 <= args.dedup_s < float("inf"):
        p.error(f"--dedup-s (env LLAVA_DEDUP_S) must be a number of seconds >= 0, not {args.dedup_s:g}")
    return args


def say(line: str, err: bool = False) -> None:
    """One line of the merge's log, stamped as submit_llava.sh's and the worker's lines in the same job log
    (settings.LOG_TIME); err: on stderr (warnings, what blocks the merge)."""
    print(f"[{time.strftime(settings.LOG_TIME)}] {line}", file=sys.stderr if err else sys.stdout)


def _counts(counts: dict) -> str:
    """'Goal 3, Corner 1': labels are the model's text (a label outside the classes is kept as written)."""
    return ", ".join(f"{log_safe(label, 60)} {n}" for label, n in counts.items()) or "none"


def _short(text, width=100) -> str:
    """A window's raw answer, quoted, on one line of at most about width characters."""
    return log_safe(repr(text), width)


def run(args) -> int:
    project = settings.project_dir(args.project)
    tag = families.tag_of(settings.model_in_use(args.model))  # the model's name in its files
    fence = claims.Fence(project, args.video_index, model=tag)  # before every write: a video taken over is not ours
    fence()
    final = settings.final_path(project, args.video_index, tag)
    archive = settings.raw_answers_path(project, args.video_index, tag)
    for path in (final, archive):
        if path.is_dir():  # would be found only when writing it, after all the work
            raise InputError(f"{path} is a directory, where the merge writes a file: move it out of {project} "
                             f"and merge again (the partials are kept until then)")
    remove_stale_temps(final)
    files = merge.partial_files(project, args.video_index, tag)
    if not files:
        if final.exists():
            videos.check_source(project, args.video_index, final, videos.manifest(project))
            say(f"video {args.video_index}: already merged into {final} (no partials left)")
            return 0
        raise InputError(f"no partials of video {args.video_index} in {project} "
                         f"({settings.partial_path(project, args.video_index, '*', tag).name}): run the workers first")
    video = videos.resolve_video(project, args.video_index)
    listed = videos.read_list(project)  # "video 5 of 40": every SoccerNet half is 1_224p.mkv or 2_224p.mkv
    info = videos.probe(video)
    windows = merge.read_windows(files, info.n_windows)
    check_same_file(args.video_index, project, video, info, windows.made_by)
    if windows.missing and left_over(final, archive, windows):
        fence()  # deletes, as writes, only while the video is still this run's
        for path in files:
            path.unlink(missing_ok=True)
        say(f"video {args.video_index}: already merged into {final}; deleted "
            f"{settings.count(len(files), 'partial')} that a merge stopped while deleting them left")
        return 0
    if not finished(args.video_index, info, windows):
        return EXIT_MISSING

    undecodable = windows.indices("undecodable")
    incomplete = undecodable and merge.describe_holes(undecodable, info.n_windows, info.duration, "undecodable")
    found, failures = merge.window_records_to_events(windows, info)
    source = video.relative_to(project / "raw_data").as_posix()
    kept = merge.dedup(found, args.dedup_s)
    events = [records.final_record(e, source, windows.made_by) for e in kept]
    remove_stale_temps(archive)
    # The final is the commit point: the raw answers go first and name the final they belong to, so a kill or a
    # full disk between the two writes leaves an older final that disagrees with them (videos.origin_of: merge
    # interrupted, redone from the partials), never a final whose state is read from another merge's answers.
    atomic_write_json_gz(archive, {
        "video": source, "made_by": windows.made_by, "windows_total": info.n_windows, "incomplete": incomplete or None,
        "final_digest": records.final_digest(events),
        "windows": [records.archived_record(windows.records[i]) for i in sorted(windows.records)]}, fence=fence)
    atomic_write_json(final, events, fence=fence)
    fence()  # the failure note and the partials: deleted, as written, only while the video is still this run's
    settings.failed_note_path(project, args.video_index, tag).unlink(missing_ok=True)  # a failure the final outlives
    if not args.keep_partials:  # only now: until the final is written, they are what a rerun merges
        for path in files:
            path.unlink(missing_ok=True)

    say(f"video {args.video_index} of {len(listed)} ({videos.display_name(source)}): "
        f"{settings.count(info.n_windows, 'window')} from "
          f"{settings.count(len(files), 'partial')}: {info.n_windows - len(undecodable)} answered, "
          f"{len(undecodable)} undecodable")
    summarise(args, windows, found, kept, failures, info.n_windows - len(undecodable), archive.name, final.name)
    kept_note = "partials kept" if args.keep_partials else f"deleted {settings.count(len(files), 'partial')}"
    say(f"wrote {final} ({settings.count(len(kept), 'event')}) and {archive.name} (every window's answer); "
          f"{kept_note}")
    if incomplete:
        say(f"⚠️ video {args.video_index} is INCOMPLETE: {incomplete}: {video} has no frames there (truncated or "
              f"damaged?). The final holds what was seen and says so; reruns skip it until the file changes "
              f"(replace it, then rerun the video)", err=True)
        return EXIT_INCOMPLETE
    return 0


def check_same_file(index, project, video, info, made_by) -> None:
    """InputError when the partials were made from another file than the video is now (replaced, re-encoded,
    a download finished since); a warning when they do not say (written before made_by existed)."""
    if made_by is None:
        say(f"⚠️ the partials of video {index} do not record what made them (written before that was "
              f"recorded): the final will say 'unknown origin'", err=True)
        return
    changed = provenance.differences(made_by, {**made_by, "video_file": provenance.video_file(project, video, info)})
    if changed:
        raise InputError(f"the partials of video {index} were made from another file than {video} "
                         f"is now ({'; '.join(changed)}): delete them and rerun the video")


def left_over(final, archive, windows) -> bool:
    """Whether the partials are what remains of those a merge that wrote final (its commit point) was deleting
    when it stopped: the raw answers belong to the final (their final_digest) and hold every window of the
    partials as it is, made by the same run. Merging them again would lack the windows already deleted."""
    fix = f"move {final.name} and {archive.name} out of {final.parent} and merge again"
    if not (final.is_file() and archive.is_file()):
        return False
    data = read_json(archive, "raw answers file", fix)
    if not (isinstance(data, dict) and isinstance(data.get("windows"), list) and data.get("made_by") is not None
            and data.get("final_digest") == records.final_digest(read_json(final, "predictions file", fix))
            and data["made_by"] == windows.made_by):
        return False
    archived = {w.get("time"): w for w in data["windows"] if isinstance(w, dict)}
    return all(archived.get(r["time"]) == records.archived_record(r) for r in windows.records.values())


def finished(index, info, windows) -> bool:
    """Whether every window has an answer (or is undecodable); if not, the time ranges of those missing or
    failed, on stderr: the rerun of the workers fills them."""
    missing, failed = windows.missing, windows.indices("failed")
    if not (missing or failed):
        return True
    say(f"video {index}: {len(missing) + len(failed)} of {settings.count(info.n_windows, 'window')} "
          f"have no answer yet; not finalising, partials kept:", err=True)
    if failed:
        line = merge.describe_holes(failed, info.n_windows, info.duration, "failed", windows.records.values())
        say(f"  {line}", err=True)
    for line in merge.missing_ranges(missing, info.duration):
        say(f"  missing {line}", err=True)
    say(f"fix: rerun the workers of video {index} (they resume from the partials and retry failed "
          f"windows), then merge again", err=True)
    return False


def summarise(args, windows, found, kept, failures, answered, archive_name, final_name) -> None:
    """What made the final, its events and labels, and the answers that did not parse."""
    say(f"made by: {provenance.describe(windows.made_by)}")
    classes, others = merge.label_counts(kept)
    if windows.overlaps:
        say(f"  {windows.overlaps} windows were in more than one partial: used the newest file's record")
    say(f"events: {len(found)} found, {len(kept)} after de-duplication (same label within {args.dedup_s:g} s)")
    say(f"labels: {_counts(classes)}")
    if others:
        say(f"labels that are not SoccerNet classes (kept as they are): {_counts(others)}")
    say(f"parse failures: {len(failures)} of {answered} answered windows")
    for r in failures[:args.show_failures]:
        say(f"  {r['time']:g} s: {_short(r.get('raw'))}")
    if len(failures) > args.show_failures:
        say(f"  ... {len(failures) - args.show_failures} more (--show-failures N prints more)")
    if answered and len(failures) > answered / 2:
        say(f"⚠️ WARNING: {len(failures)} of {answered} windows ({len(failures) / answered:.0%}) did not parse: "
              f"the model did not answer in the asked format (prose?). Its answers are in {archive_name}; read "
              f"them before trusting {final_name} (README: Troubleshooting, Empty results)", err=True)


def main(argv=None) -> int:
    return run_cli(claims.stops_on_lost_lock(run, lambda line: say(line, err=True)), parse_args(argv),
                   "merge_results_llava.py")


if __name__ == "__main__":
    sys.exit(main())
