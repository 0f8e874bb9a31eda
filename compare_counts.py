"""Compare two models' final predictions, video by video (replaces the seed's shell loop).

    python compare_counts.py                                  # every video with a final, Qwen vs llava
    python compare_counts.py --videos 0-20 --models qwen7b llava --tolerance 3
    python compare_counts.py --csv counts.csv --plot counts.png --ensemble ensemble/
    python compare_counts.py --dirs ../qwen_runs ~/soccer_project  # each model's files elsewhere

Without --models: our Qwen2.5-VL runs (qwen2.5vl) where the project has their finals, else the seed's
Qwen files (qwen7b), against LLaVA (llava); the first line of the report says which.
Reads final_predictions_<model>_video_N.json of both models: ours (one record per event)
and the seed's older per-window files ({"time", "raw"}, e.g. the Qwen runs) alike. Labels
are normalised to the SoccerNet classes and each model's events are de-duplicated with the
merge's rule (same label within --dedup-s s), so a per-window file is not counted once per
overlapping window. Then, per video and in total: each model's events, events found by both
(same label within --tolerance s, one-to-one, as many pairs as possible), found by only one,
and label disagreements (one event of each model, unmatched, within --tolerance s of each
other, different labels). Videos where a model's file is missing are listed, not counted;
videos where neither model has an event count zeros.

--ensemble OUT_DIR writes final_predictions_ensemble_video_N.json: the events both models
found, at their mean time, with the mean of the two written confidences and, where both models
have one, the mean of their token probabilities ("token_prob", what evaluate_soccernet.py's token
ranking uses; the seed's Qwen files have none, so their ensembles rank by written confidence only),
in the merge's final format. It prints which score its events carry.
"""
if __name__ == "__main__":  # first: another python may have to run this script (llava_soccer/venv.py)
    from llava_soccer import venv
    venv.ensure(("numpy", "matplotlib"))

import argparse
import csv
import io
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from llava_soccer import families, merge, provenance, records, settings, soccernet, videos
from llava_soccer.cli import InputError, log_safe, run_cli
from llava_soccer.jsonio import atomic_savefig, atomic_write_json, atomic_write_text
from llava_soccer.matching import match
from llava_soccer.settings import SOCCERNET_CLASSES


def parse_args(argv):
    env = settings.env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", default="all", type=settings.video_list,
                   help="video indices, e.g. 0-9,12 (default all: every video with a final of either model)")
    p.add_argument("--models", nargs=2, default=None, metavar=("A", "B"),
                   help="the two model names in final_predictions_<model>_video_N.json (default: qwen2.5vl, our "
                        f"Qwen2.5-VL runs, where they have finals, else {SEED_QWEN}, the seed's; and llava)")
    p.add_argument("--project", default=None, help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    p.add_argument("--dirs", nargs=2, default=None, metavar=("DIR_A", "DIR_B"),
                   help="read each model's files from its own directory (default: both from --project)")
    p.add_argument("--tolerance", type=float, default=env("LLAVA_MATCH_S", settings.MATCH_S),
                   help=f"seconds within which two events are the same moment (default {settings.MATCH_S:g})")
    p.add_argument("--dedup-s", type=float, default=env("LLAVA_DEDUP_S", settings.DEDUP_S),
                   help=f"de-duplicate each model's events as the merge does (default {settings.DEDUP_S:g}; 0 merges "
                        "only equal times)")
    p.add_argument("--ensemble", default=None, metavar="OUT_DIR",
                   help="write the events both models found to OUT_DIR/final_predictions_ensemble_video_N.json")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the per-video table as CSV")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw per-video counts and a per-label comparison (matplotlib)")
    settings.check_env(p, {"tolerance": "LLAVA_MATCH_S", "dedup_s": "LLAVA_DEDUP_S"})
    args = p.parse_args(argv)
    if args.models and args.models[0] == args.models[1] and not args.dirs:
        p.error("--models names the same model twice: give two models, or --dirs to compare two runs")
    if not (args.tolerance >= 0 and args.dedup_s >= 0):  # also NaN
        p.error("--tolerance and --dedup-s must be 0 or more")
    return args


SEED_QWEN = "qwen7b"  # the seed's Qwen runs (its workers/qwen_split_worker.py): per-window files


def default_models(folder: Path) -> list[str]:
    """The two models compared without --models: our other model family's runs (the first of families.TAGS but
    LLaVA's with finals in folder), else the seed's Qwen files; against LLaVA's."""
    ours = [t for t in families.TAGS if t != settings.DEFAULT_TAG and soccernet.prediction_files(folder, t)]
    return [ours[0] if ours else SEED_QWEN, settings.DEFAULT_TAG]


def load_events(path: Path, dedup_s: float, repairs=None):
    """One model's events of a final file (records.read_final: other people's records repaired, counted into
    repairs), de-duplicated with the merge's rule; events without a label are left out, a label that is not text
    is counted as its JSON text."""
    events = [e for e in records.read_final(path, repairs) if e["label"] is not None]
    for e in events:
        if not isinstance(e["label"], str):  # a list or number where a label should be: counted as its text
            e["label"] = json.dumps(e["label"])
    return merge.dedup(events, dedup_s)  # a missing confidence (None) ranks lowest; left out of ensemble means


def compare(a, b, tolerance):
    """pairs, disagreements: matched (i, j); unmatched (i, j) at the same moment, other labels."""
    pairs = match(a, b, tolerance)
    used_a, used_b = {i for i, _ in pairs}, {j for _, j in pairs}
    left_a = [i for i in range(len(a)) if i not in used_a]
    left_b = [j for j in range(len(b)) if j not in used_b]
    near = match([a[i] for i in left_a], [b[j] for j in left_b], tolerance, key=lambda e: None)
    disagreements = [(left_a[i], left_b[j]) for i, j in near if a[left_a[i]]["label"] != b[left_b[j]]["label"]]
    return pairs, disagreements


def _ranges(indices) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in merge.consecutive_runs(indices))


LOG_RATIO = 10  # counts further apart than this (Qwen's ~850 events a video, LLaVA's ~12) get a log axis
OTHER_LABELS = "other labels"  # the one bar row of every label outside the 17 SoccerNet classes


def video_tick(video, source) -> str:
    """A video's tick label: its index and, where its raw_data/ path is known, the game folder (date, teams,
    score; every SoccerNet half is 1_224p.mkv or 2_224p.mkv) and half, or else the file's name."""
    if not source:
        return str(video)
    where = soccernet.video_half(source)
    name = f"{PurePosixPath(source).parent.name} ({where[1]})" if where else PurePosixPath(source).name
    name = re.sub(r"^(\d{4}-\d\d-\d\d) - \d\d-\d\d ", r"\1 ", name)  # the kick-off time says nothing here
    return f"{video}: {videos.display_name(name, 40)}"


def label_rows(per_label) -> tuple:
    """(row names, {row: Counter}) of the per-label panel: the SoccerNet classes found, most counted first, then
    one row summing every other label (the printed table lists them one by one)."""
    classes = [lab for lab in per_label if lab in SOCCERNET_CLASSES]
    rows = {lab: per_label[lab] for lab in sorted(classes, key=lambda lab: -max(per_label[lab].values()))}
    others = [lab for lab in per_label if lab not in SOCCERNET_CLASSES]
    if others:
        name = f"{OTHER_LABELS} ({len(others)} kind{'s' * (len(others) != 1)}, in the table)"
        rows[name] = sum((per_label[lab] for lab in others), Counter())
    return list(rows), rows


def count_scale(values, ax, which) -> None:
    """A log axis (symlog: 0 and 1 stay readable; ticks as plain numbers) where the non-zero counts differ more
    than LOG_RATIO times, so the smaller model's bars do not vanish; linear otherwise."""
    from matplotlib.ticker import FuncFormatter
    nonzero = [v for v in values if v > 0]
    if nonzero and max(nonzero) > LOG_RATIO * min(nonzero):
        getattr(ax, f"set_{which}scale")("symlog", linthresh=1)
        getattr(ax, f"{which}axis").set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def plot(path, names, rows, per_label, sources=None):
    """Per-video counts (top, one tick per game) and per-label counts over all videos (bottom: the SoccerNet
    classes, other labels in one row), each on a log axis where the counts differ more than LOG_RATIO times;
    sources {video: raw_data/ path} name the games (the title too when one video is plotted)."""
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    sources = sources or {}
    series = [(names[0], names[0]), (names[1], names[1]), ("both", "found by both")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.35 * len(rows) + 3), 10))
    x, w = np.arange(len(rows)), 0.28
    for n, (key, name) in enumerate(series):
        bars = top.bar(x + (n - 1) * w, [r[key] for r in rows], w, label=name)
        if len(rows) <= 12:  # the numbers, where they fit over the bars: a log axis is read roughly
            top.bar_label(bars, fontsize=7)
    ticks = [video_tick(r["video"], sources.get(r["video"])) for r in rows]
    named = any(sources.get(r["video"]) for r in rows)
    top.set_xticks(x, ticks, rotation=30 if named else 0, ha="right" if named else "center", fontsize=8)
    source = sources.get(rows[0]["video"]) if len(rows) == 1 else None
    if source:  # over the whole figure: the game's whole path fits
        fig.suptitle(f"Events in video {rows[0]['video']} ({videos.display_name(source, 100)})", fontsize=10)
    else:
        top.set_title("Events per video")
    top.set_ylabel("events")
    counts = [r[key] for r in rows for key, _ in series]
    count_scale(counts, top, "y")
    room = 1.2 if top.get_yscale() == "linear" else 6  # above the highest bar, for the legend
    top.set_ylim(0, room * max([1, *counts]))
    top.legend(ncols=3, loc="upper center")
    labels, per_row = label_rows(per_label)
    if not labels:  # neither model found anything
        bottom.text(0.5, 0.5, "no events in either model's files", ha="center", va="center")
        bottom.set_axis_off()
    else:
        y = np.arange(len(labels))
        for n, (key, name) in enumerate(series):
            bottom.barh(y + (n - 1) * w, [per_row[lab][key] for lab in labels], w, label=name)
        bottom.set_yticks(y, labels)
        bottom.invert_yaxis()
        count_scale([c[key] for c in per_row.values() for key, _ in series], bottom, "x")
        bottom.set(xlabel="events (all compared videos)")
        bottom.set_title("Events per label", loc="left")
        bottom.legend(ncols=3, loc="lower right", bbox_to_anchor=(1, 1), fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


@dataclass
class Tally:
    """What run() found over the videos of both models."""
    rows: list = field(default_factory=list)               # one per video compared
    per_label: dict = field(default_factory=dict)          # label -> Counter(model name / "both")
    pair_labels: Counter = field(default_factory=Counter)  # (label a, label b) of disagreements
    missing: dict = field(default_factory=dict)            # model name -> videos without its final
    origins: dict = field(default_factory=dict)            # model name -> {video: videos.Origin}
    sources: dict = field(default_factory=dict)            # video -> its raw_data/ path (None: unknown)
    ensemble_scores: Counter = field(default_factory=Counter)  # "token_prob" / "confidence": what ranks each event
    repairs: dict = field(default_factory=dict)            # model name -> Counter of records.repaired()


def run(args) -> int:
    try:
        project = settings.project_dir(args.project)
    except InputError:
        if not args.dirs or args.project:
            raise
        project = None  # --dirs: the project only says which video each index is (videos.check_source)
    dirs = [Path(d).expanduser() for d in args.dirs] if args.dirs else [project, project]
    names = args.models or default_models(dirs[0])
    args.found = "" if args.models else f" (found in {dirs[0]}; --models A B compares others)"
    tally = compare_videos(args, names, project, dirs)
    for name in names:
        if records.repairs_note(tally.repairs[name]):
            print(f"⚠️ {name}: {records.repairs_note(tally.repairs[name])}")
    if not tally.rows:
        raise InputError(f"no video{'' if args.videos is None else ' of --videos'} has both "
                         f"{settings.FINAL.format(model=names[0], video='N')} ({dirs[0]}) and "
                         f"{settings.FINAL.format(model=names[1], video='N')} ({dirs[1]}): check --project, --dirs, "
                         f"--models and --videos")
    columns = ["video", names[0], names[1], "both", f"only_{names[0]}", f"only_{names[1]}", "disagree"]
    total = {"video": "total", **{c: sum(r[c] for r in tally.rows) for c in columns[1:]}}
    print_report(args, names, tally, columns, total)
    if args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(tally.rows + [total])
        atomic_write_text(Path(args.csv).expanduser(), buf.getvalue())
        print(f"wrote {args.csv}")
    if args.plot:
        plot(Path(args.plot).expanduser(), names, tally.rows, tally.per_label, tally.sources)
        print(f"wrote {args.plot}")
    if args.ensemble:
        print(f"wrote {len(tally.rows)} ensemble files to {args.ensemble} ({total['both']} events)")
        print(ensemble_scores(tally.ensemble_scores, names))
    return 0


def ensemble_scores(scores: Counter, names) -> str:
    """The line that says which score ranks the ensemble's events: the mean token probability where both
    models have one, else the mean written confidence."""
    n_token, n_conf = settings.count(scores["token_prob"], "event"), settings.count(scores["confidence"], "event")
    if not scores["confidence"]:
        return f"ensemble scores: the mean token probability of {names[0]} and {names[1]} ({n_token})"
    if not scores["token_prob"]:
        return (f"ensemble scores: the mean written confidence ({n_conf}): {names[0]} and {names[1]} do not both "
                f"have token probabilities (the seed's files have none)")
    return (f"ensemble scores: the mean token probability of both models for {n_token}; the mean written "
            f"confidence only for {n_conf} where a model has none")


def compare_videos(args, names, project, dirs) -> Tally:
    """Each video with both models' finals: counts, per-label counts, disagreements, what made each file;
    the ensemble files when asked."""
    listed = videos.read_list(project) if project else []  # read once (not per video), never written
    tally = Tally(missing={name: [] for name in names}, origins={name: {} for name in names},
                  repairs={name: Counter() for name in names})
    found = [soccernet.prediction_files(d, name) for d, name in zip(dirs, names)]
    indices = sorted(set(found[0]) | set(found[1])) if args.videos is None else sorted(args.videos)
    for video in indices:
        paths = [settings.final_path(d, video, name) for d, name in zip(dirs, names)]
        for name, path in zip(names, paths):
            if not path.exists():
                tally.missing[name].append(video)
        if not all(p.exists() for p in paths):
            continue
        sources = [videos.check_source(project, video, path, listed) if project else videos.origin_of(path)
                   for path in paths]
        for name, origin in zip(names, sources):
            tally.origins[name][video] = origin
        a, b = (load_events(p, args.dedup_s, tally.repairs[name]) for p, name in zip(paths, names))
        pairs, disagreements = compare(a, b, args.tolerance)
        tally.rows.append({"video": video, names[0]: len(a), names[1]: len(b), "both": len(pairs),
                           f"only_{names[0]}": len(a) - len(pairs), f"only_{names[1]}": len(b) - len(pairs),
                           "disagree": len(disagreements)})
        for key, events in ((names[0], a), (names[1], b)):
            for e in events:
                tally.per_label.setdefault(e["label"], Counter())[key] += 1
        for i, _ in pairs:
            tally.per_label[a[i]["label"]]["both"] += 1
        tally.pair_labels.update((a[i]["label"], b[j]["label"]) for i, j in disagreements)
        source = next((o.video for o in sources if o.video), None)
        tally.sources[video] = listed[video] if video < len(listed) else source
        if args.ensemble:
            out = Path(args.ensemble).expanduser()
            out.mkdir(parents=True, exist_ok=True)
            made_by = {name: o.made_by for name, o in zip(names, sources)}
            both = [records.ensemble_record(a[i], b[j], names, source, made_by) for i, j in pairs]
            tally.ensemble_scores.update("confidence" if e["token_prob"] is None else "token_prob" for e in both)
            atomic_write_json(settings.final_path(out, video, "ensemble"), both)
    return tally


def print_report(args, names, tally, columns, total) -> None:
    """The table, what made each model's files, the per-label counts and the most frequent disagreements."""
    width = max(8, *(len(c) + 1 for c in columns))
    print(f"{names[0]} vs {names[1]}{args.found}: events after de-duplication (same label within {args.dedup_s:g} s); "
          f"both = same label within {args.tolerance:g} s; disagree = different labels within {args.tolerance:g} s")
    for r in [dict(zip(columns, columns))] + tally.rows + [total]:
        print("".join(f"{r[c]!s:>{width}}" for c in columns))
    for name in names:
        for line in provenance.report(tally.origins[name]):
            print(f"{name}: {line}")
        if tally.missing[name]:
            print(f"no {settings.FINAL.format(model=name, video='N')} for videos: {_ranges(tally.missing[name])} "
                  "(not compared)")
    n_videos = f"{len(tally.rows)} video{'s' * (len(tally.rows) != 1)}"
    per_label = tally.per_label
    if per_label:  # labels are the models' text (one outside the classes is kept as written): one line each
        print(f"\nper label, {n_videos}:")
        shown = {lab: log_safe(lab, 60) for lab in per_label}
        lw = max(len(text) for text in shown.values()) + 2
        print(f"{'label':<{lw}}" + "".join(f"{c:>{width}}" for c in (names[0], names[1], "both")))
        for lab in sorted(per_label, key=lambda lab: (-per_label[lab][names[0]] - per_label[lab][names[1]], lab)):
            counts = "".join(f"{per_label[lab][c]:>{width}}" for c in (names[0], names[1], "both"))
            print(f"{shown[lab]:<{lw}}{counts}")
    else:
        print(f"\nno events in either model's files ({n_videos} compared): nothing to compare per label")
    if tally.pair_labels:
        print(f"\nmost frequent disagreements ({names[0]} label / {names[1]} label):")
        for (la, lb), n in tally.pair_labels.most_common(5):
            print(f"  {log_safe(la, 60)} / {log_safe(lb, 60)}: {n}")


def main(argv=None) -> int:
    return run_cli(run, parse_args(argv), "compare_counts.py")


if __name__ == "__main__":
    sys.exit(main())
