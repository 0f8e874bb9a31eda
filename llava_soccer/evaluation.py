"""What evaluate_soccernet.py does: SoccerNet-v2 labels and final predictions in, official average-mAP,
precision/recall and the three rankings side by side out (docs/evaluation.md); the script parses its flags and
calls run(args).

Every input is read and checked before anything is written (load_model, read_labels, read_saved); the outputs
are written into a staging folder that replaces --out whole (staging, write_all, publish).
"""
import csv
import difflib
import io
import re
import shutil
from collections import Counter
from pathlib import Path

from . import provenance, rankings, records, settings, soccernet, status, videos
from .cli import InputError, log_safe
from .events import full_window_times
from .jsonio import atomic_savefig, atomic_write_json, atomic_write_text, read_json
from .records import record_time
from .settings import SOCCERNET_CLASSES

METRIC_NAMES = {"tight": "tight", "loose": "loose", "at1": "@1s", "at5": "@5s"}
RANKING_DIR = "{ranking}_ranking"  # <out>/token_ranking/<model>/<game>/results_spotting.json; confidence: <out>/<model>
THRESHOLDS_FILE = "thresholds.json"
FLATTER = ("⚠️ the thresholds and best F1 are tuned on the games scored here, which flatters them: quote them as an "
           "upper bound; for an honest F1, tune on other games and pass their thresholds.json with --thresholds")



def parse_models(text, default_dir):
    models = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, folder = item.partition("=")
        if not re.fullmatch(r"[\w.+-]+", name):
            raise InputError(f"--models: {name!r} is not a model name (letters, digits, . _ + -)")
        if name.endswith(RANKING_DIR.format(ranking="")):
            raise InputError(f"--models: {name!r} ends as the folders of the other rankings' results do: rename it")
        models[name] = Path(folder).expanduser() if folder else default_dir
    if not models:
        raise InputError("--models is empty: give e.g. llava or llava,qwen7b=/path/to/qwen_finals")
    return models


def load_model(name, folder, manifest, wanted, project, args):
    """The Halves of one model, with its events; notes for videos that are not SoccerNet halves; what each file
    says of its origin ({index: videos.Origin})."""
    files = soccernet.prediction_files(folder, name)
    if wanted is not None:  # bounded by videos.txt before any list is made: --videos 0-999999999 is two numbers
        missing = [i for i in wanted.below(len(manifest)) if i not in files]
        past = wanted.from_(len(manifest))
        if missing or past:
            runs = settings.runs_text(missing)
            raise InputError(f"--videos asks for {', '.join(filter(None, (runs, past)))} but {folder} has no "
                             f"final_predictions_{name}_video_<N>.json for them"
                             + (f" ({project / videos.MANIFEST} lists {len(manifest)} videos)" if past else ""))
        files = {i: p for i, p in files.items() if i in wanted}
    if not files:
        raise InputError(f"no final_predictions_{name}_video_<N>.json in {folder} "
                         "(run the pipeline, or point --predictions-dir / --models NAME=DIR at them)")
    halves, notes, seen, origins, unlisted, repairs = [], [], {}, {}, [], Counter()
    for index, path in files.items():
        if index >= len(manifest):
            origin = videos.origin_of(path)
            if origin.video is None and origin.made_by is None:  # not our merge's: skipped, counted below
                unlisted.append(index)
                continue
            raise InputError(f"{path.name} is for video #{index} but {project / videos.MANIFEST} lists "
                             f"{len(manifest)} videos: use the project the predictions came from (--project)")
        where = soccernet.video_half(manifest[index])
        if where is None:
            notes.append(f"video #{index} ({log_safe(manifest[index])}) is not <league>/<season>/<game>/<1|2>_*.mkv: "
                         f"skipped")
            continue
        if where in seen:
            raise InputError(f"videos #{seen[where]} and #{index} are both {where[0]} half {where[1]} "
                             f"({name}): choose one with --videos")
        seen[where] = index
        origins[index] = videos.check_source(project, index, path, manifest)
        events, unscored, _ = soccernet.read_predictions(path, args.missing_confidence, args.dedup_s, repairs=repairs)
        halves.append(soccernet.Half(index, manifest[index], where[0], where[1], path, events, unscored))
    if unlisted:  # other people's finals beyond our videos.txt (not the merge's: ours are refused above)
        print(f"⚠️ {name}: {settings.count(len(unlisted), 'final')} of videos {project / videos.MANIFEST} does not "
              f"list (#{settings.runs_text(unlisted)}; it lists {len(manifest)}): skipped; pass the project they came "
              f"from (--project) to score them")
    if records.repairs_note(repairs):
        print(f"⚠️ {name}: {records.repairs_note(repairs)}")
    return halves, notes, origins


def write_results(halves, labels, spot_dir, args) -> tuple:
    """Write one ranking's results_spotting.json per game under spot_dir: (the official results, predictions
    collapsed into one per class and 0.5 s frame)."""
    by_game = {}
    for h in halves:
        by_game.setdefault(h.game, []).append(h)
    collapsed, official_labels = 0, {}
    for game, game_halves in by_game.items():
        content, n = soccernet.results_spotting(game, game_halves)
        collapsed += n
        (spot_dir / game).mkdir(parents=True, exist_ok=True)
        atomic_write_json(spot_dir / game / soccernet.RESULTS_FILE, content)
        done = {h.half for h in game_halves}
        official_labels[game] = [a["raw"] for a in labels[game] if a["half"] in done]
    official = soccernet.official_average_map(official_labels, spot_dir, args.metrics) if args.metrics else {}
    return official, collapsed


def evaluate_model(name, halves, labels, stage, args):
    """Write the model's results_spotting.json files (under stage, publish()'s); return its summary."""
    official, collapsed = write_results(halves, labels, stage / name, args)
    unscored_gt, skipped_gt = Counter(), 0
    counts = soccernet.new_counts()
    below_threshold = 0
    for h in halves:
        annotations = labels[h.game]
        gt = [a for a in annotations if a["half"] == h.half]
        unscored_gt.update(a["label"] for a in gt if a["label"] not in SOCCERNET_CLASSES)
        gt = [a for a in gt if a["label"] in SOCCERNET_CLASSES]
        preds = [e for e in h.events if e["confidence"] >= args.min_confidence]
        below_threshold += len(h.events) - len(preds)
        soccernet.count_matches(gt, preds, args.tolerance, counts)
    done = {(h.game, h.half) for h in halves}
    skipped_gt = sum((game, a["half"]) not in done for game in {h.game for h in halves} for a in labels[game])
    rows = soccernet.class_rows(counts)
    present = [c for c in SOCCERNET_CLASSES if counts[c]["gt"]]
    for metric, res in official.items():
        # Not official: the mean over classes the ground truth has (the official mean divides by 17).
        res["a_mAP_present_classes"] = (sum(res["a_mAP_per_class"][c] for c in present) / len(present)
                                        if present else None)
        for row in rows:
            row[f"a_mAP_{metric}"] = res["a_mAP"] if row["class"] == "all" else res["a_mAP_per_class"][row["class"]]
    unscored_pred = Counter()
    for h in halves:
        unscored_pred.update(h.unscored)
    return {
        "model": name,
        "videos": [{"index": h.index, "video": h.video, "game": h.game, "half": h.half,
                    "predictions_file": str(h.source), "events": len(h.events)} for h in halves],
        "games": len({h.game for h in halves}),
        "official": official,
        "per_class": rows,
        "not_scored": {
            "predicted_labels_outside_classes": dict(unscored_pred.most_common()),
            "ground_truth_labels_outside_classes": dict(unscored_gt.most_common()),
            "ground_truth_in_unprocessed_halves": skipped_gt,
            "predictions_below_min_confidence": below_threshold,
            "predictions_sharing_a_0.5s_frame_dropped_from_results_spotting": collapsed,
        },
    }


def rank_model(s, halves, labels, stage, out, args, saved) -> tuple:
    """({ranking: its official average-mAP, best-F1 thresholds per class, F1 at the saved thresholds (saved:
    read_thresholds' models, or None)}, {ranking: pooled precision/recall curve}) of one model; a ranking its
    files cannot give is {"available": False, "note": the one line why}. Files go under stage, named as in out."""
    name, gt = s["model"], rankings.ground_truth(halves, labels)
    ranked = {"confidence": (halves, None),
              "token": rankings.token_halves(halves, args.missing_confidence, args.dedup_s),
              "class": rankings.class_halves(halves, name, args.nms_window)}
    result, curves = {}, {}
    for ranking, (hs, note) in ranked.items():
        if hs is None:
            result[ranking] = {"available": False, "note": note}
            continue
        where = Path(name) if ranking == "confidence" else Path(RANKING_DIR.format(ranking=ranking), name)
        official = s["official"] if ranking == "confidence" else write_results(hs, labels, stage / where, args)[0]
        by_class = rankings.class_curves(hs, gt, args.tolerance)
        best = rankings.best_thresholds(by_class)
        result[ranking] = {"available": True, "note": note, "results_dir": str(out / where),
                           "predictions": sum(len(h.events) for h in hs),
                           "official": {m: {"a_mAP": r["a_mAP"], "a_mAP_per_class": r["a_mAP_per_class"]}
                                        for m, r in official.items()},
                           "best_f1": best, "best_f1_all": rankings.total_f1(best)}
        mine = (saved or {}).get(name, {}).get(ranking)
        if mine is not None:
            at = rankings.at_thresholds(hs, gt, args.tolerance, mine)
            result[ranking].update(at_saved_thresholds=at, at_saved_thresholds_all=rankings.total_f1(at))
        curves[ranking] = (rankings.pooled(by_class), sum(n_gt for _, n_gt in by_class.values()))
    return result, curves


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def print_report(s, args):
    n_videos = len(s["videos"])
    print(f"\n== {s['model']}: {n_videos} video{'s' * (n_videos != 1)}, {s['games']} game{'s' * (s['games'] != 1)} ==")
    for line in s["made_by"]:
        print(line)
    if s["official"]:
        parts = [f"{METRIC_NAMES[m]} {r['a_mAP']:.4f}" for m, r in s["official"].items()]
        print("official average-mAP (SoccerNet evaluator; classes absent from the ground truth count 0): "
              + "  ".join(parts))
        parts = [f"{METRIC_NAMES[m]} {fmt(r['a_mAP_present_classes'], 4)}" for m, r in s["official"].items()]
        print("  same, averaged over the classes present in the ground truth only: " + "  ".join(parts))
    print(f"precision/recall: one-to-one within +-{args.tolerance:g} s, confidence >= {args.min_confidence:g} "
          "(vis = visible, n/s = not shown)")
    head = (f"{'class':<19}{'GT':>5}{'vis':>5}{'n/s':>5}{'pred':>6}{'TP':>5}{'prec':>7}{'recall':>7}{'F1':>7}"
            f"{'rec vis':>8}{'rec n/s':>8}")
    head += "".join(f"{METRIC_NAMES[m]:>7}" for m in s["official"])
    print(head)
    for r in s["per_class"]:
        if r["class"] == "all":
            print("-" * len(head))
        line = (f"{r['class']:<19}{r['gt']:>5}{r['gt_visible']:>5}{r['gt_not_shown']:>5}{r['pred']:>6}{r['tp']:>5}"
                f"{fmt(r['precision']):>7}{fmt(r['recall']):>7}{fmt(r['f1']):>7}"
                f"{fmt(r['recall_visible']):>8}{fmt(r['recall_not_shown']):>8}")
        line += "".join(f"{fmt(r.get(f'a_mAP_{m}')):>7}" for m in s["official"])
        print(line)
    ns = s["not_scored"]
    for key, what in (("predicted_labels_outside_classes", "predicted labels outside the 17 classes"),
                      ("ground_truth_labels_outside_classes", "ground-truth labels outside the 17 classes")):
        if ns[key]:
            items = list(ns[key].items())
            more = f", ... ({len(items)} labels)" if len(items) > 8 else ""
            text = ", ".join(f"{log_safe(k, 60)} {v}" for k, v in items[:8]) + more  # labels as written
            print(f"not scored, {what}: {text}")
    if ns["ground_truth_in_unprocessed_halves"]:
        print(f"not scored: {ns['ground_truth_in_unprocessed_halves']} ground-truth events in halves not processed")


def print_rankings(s, args, saved_from) -> None:
    """The three rankings side by side: official average-mAP of each, then per class the best F1 on these games
    and its threshold (and the F1 at thresholds saved from other games), with the average-mAP of the first
    metric; n/a (one line why) where the files lack that score."""
    metrics = list(s["official"])
    print(f"\nrankings of {s['model']}: what orders its predictions (token and class scores mapped by "
          f"{rankings.TEMPERED['name']} k={rankings.TEMPERED_K:g} into [0, 1], where the official average-mAP sweeps "
          f"200 fixed thresholds: docs/evaluation.md)")
    for ranking, r in s["rankings"].items():
        what = f"{ranking:<11}{rankings.RANKINGS[ranking]:<52}"
        if not r["available"]:
            print(f"  {what}{r['note']}")
            continue
        parts = [f"{METRIC_NAMES[m]} {r['official'][m]['a_mAP']:.4f}" for m in metrics]
        print(f"  {what}" + "  ".join(parts + [f"best F1 {fmt(r['best_f1_all'])}"]))
        if r["note"]:
            print(f"  {'':<11}{r['note']}")
    first = metrics[0] if metrics else None
    saved = f"{'F1 sv':>7}" if saved_from else ""
    cell = f"{'F1':>7}{'thr':>7}" + saved + (f"{METRIC_NAMES[first]:>7}" if first else "")
    print(f"best F1 per class within +-{args.tolerance:g} s, one-to-one, at the threshold on the ranking's score that "
          f"reaches it (thr){'; F1 sv: at the thresholds of ' + str(saved_from) if saved_from else ''}")
    print(f"{'':<24}" + "".join(f"{ranking:^{len(cell)}}" for ranking in s["rankings"]))
    print(f"{'class':<19}{'GT':>5}" + cell * len(s["rankings"]))
    for c in [*SOCCERNET_CLASSES, "all"]:
        line = f"{c:<19}{next(r['gt'] for r in s['per_class'] if r['class'] == c):>5}"
        for r in s["rankings"].values():
            line += ranking_cells(r, c, first, bool(saved_from)) if r["available"] else f"{'n/a':>{len(cell)}}"
        print(line)
    print(FLATTER)


def ranking_cells(r, c, metric, saved) -> str:
    """One class's cells of one ranking in print_rankings' table ("all": F1 of all classes, each at its own
    threshold, and the official mean)."""
    if c == "all":
        f1, thr, sv = r["best_f1_all"], None, r.get("at_saved_thresholds_all")
        ap = r["official"][metric]["a_mAP"] if metric else None
    else:
        f1, thr = r["best_f1"][c]["f1"], r["best_f1"][c]["threshold"]
        sv = (r.get("at_saved_thresholds") or {}).get(c, {}).get("f1")
        ap = r["official"][metric]["a_mAP_per_class"][c] if metric else None
    text = f"{fmt(f1):>7}{fmt(thr):>7}"
    text += f"{fmt(sv):>7}" if saved else ""
    return text + (f"{fmt(ap):>7}" if metric else "")


def thresholds_file(summaries, args) -> dict:
    """What thresholds.json holds: per model, ranking and class the threshold of best F1 on the games scored."""
    return {"note": FLATTER.removeprefix("⚠️ "), **{k: getattr(args, k) for k in rankings.SETTINGS},
            "score_transforms": rankings.SCORE_TRANSFORMS,  # the scale its thresholds are on
            "games": sorted({v["game"] for s in summaries for v in s["videos"]}),
            "made_by": {s["model"]: s["runs"] for s in summaries},  # the runs that made the predictions tuned on
            "models": {s["model"]: {ranking: r["best_f1"] if r["available"] else None
                                    for ranking, r in s["rankings"].items()} for s in summaries}}


def read_saved(path, models) -> dict:
    """rankings.read_thresholds(path), checked to have every model of --models (else InputError: the closest name
    it has), before anything is read or written."""
    saved = rankings.read_thresholds(path)
    for name in models:
        if name not in saved["models"]:
            close = difflib.get_close_matches(name, list(saved["models"]), 1, 0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise InputError(f"thresholds file {path} has no thresholds for {name} (it has "
                             f"{', '.join(saved['models']) or 'none'}{hint}): pass one tuned on that model, or "
                             f"--models")
    return saved


def warn_saved(saved, path, summaries, args) -> dict:
    """saved's models, after saying when it was tuned on games scored here, with other settings, or on
    predictions made otherwise."""
    scored = {v["game"] for s in summaries for v in s["videos"]}
    same = scored & set(saved["games"])
    if same:
        print(f"⚠️ {path} was tuned on {len(same)} of the {len(scored)} games scored here: F1 at its thresholds is "
              f"not held out for those")
    def shown(v):
        return format(v, "g") if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    for key, value in saved["settings"].items():
        if value != getattr(args, key):
            flag, here = key.replace("_", "-"), shown(getattr(args, key))
            print(f"⚠️ {path} was tuned with --{flag} {shown(value)} (here {here}): its thresholds may not carry "
                  f"over; pass the same, or tune again")
    for s in summaries:
        theirs = saved["made_by"].get(s["model"])
        if theirs is not None and theirs != s["runs"]:
            print(f"⚠️ {path}'s {s['model']} thresholds were tuned on predictions made by {'; '.join(theirs)}; "
                  f"these were made by {'; '.join(s['runs'])}: F1 at them compares different runs")
    return saved["models"]


def write_csv(path, summaries, metrics):
    columns = ["model", "class", "gt", "gt_visible", "gt_not_shown", "pred", "pred_visible", "pred_not_shown",
               "tp", "tp_visible", "tp_not_shown", "precision", "recall", "f1", "precision_visible",
               "recall_visible", "f1_visible", "precision_not_shown", "recall_not_shown", "f1_not_shown"]
    columns += [f"a_mAP_{m}" for m in metrics]
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for s in summaries:
        for r in s["per_class"]:
            w.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                        for k, v in {"model": s["model"], **r}.items()})
    atomic_write_text(path, buf.getvalue())


def plot_precision_recall(path, summaries, args):
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(SOCCERNET_CLASSES))
    fig, axes = plt.subplots(len(summaries), 1, figsize=(12, 3.6 * len(summaries)), squeeze=False)
    for ax, s in zip(axes[:, 0], summaries):
        rows = {r["class"]: r for r in s["per_class"]}
        for k, (key, color) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"))):
            vals = [rows[c][key] or 0 for c in SOCCERNET_CLASSES]
            ax.bar(x + (k - 0.5) * 0.4, vals, 0.4, label=key, color=color)
        for i, c in enumerate(SOCCERNET_CLASSES):
            ax.text(i, 1.02, f"{rows[c]['gt']}/{rows[c]['pred']}", ha="center", fontsize=7)
        ax.set_xticks(x, SOCCERNET_CLASSES, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_title(f"{s['model']}: precision and recall per class (+-{args.tolerance:g} s, "
                     f"confidence >= {args.min_confidence:g}; numbers: ground truth/predicted)", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


# One look per ranking, widest first and underneath, so curves that coincide (the token probabilities often order
# the events as the written confidence does) still show each one.
CURVE_STYLES = ({"linestyle": "-", "marker": "o", "linewidth": 4, "markersize": 9, "alpha": 0.45},
                {"linestyle": "--", "marker": "s", "linewidth": 2, "markersize": 5, "alpha": 0.8},
                {"linestyle": ":", "marker": "x", "linewidth": 1.5, "markersize": 6, "alpha": 1.0})


def plot_rankings(path, summaries, curves, args):
    """Per model, the precision/recall curve of each ranking over all classes (one threshold for all), each
    with its point of best F1; a ranking the files lack is named n/a in the legend, a curve equal to one drawn
    before says so in it ("token (same as confidence)"), a panel without any prediction says "no events"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(5.5 * len(summaries), 4.6), squeeze=False)
    for ax, s in zip(axes[0], summaries):
        drawn = {}  # ranking -> (recall, precision) of its curve
        for k, (ranking, r) in enumerate(s["rankings"].items()):
            if not r["available"]:
                ax.plot([], [], label=f"{ranking}: n/a")
                continue
            points, n_gt = curves[s["model"]][ranking]
            recall = [tp / n_gt if n_gt else 0 for _, tp, _ in points]
            precision = [tp / n for _, tp, n in points]
            same = next((other for other, xy in drawn.items() if points and xy == (recall, precision)), None)
            drawn[ranking] = (recall, precision)
            label = f"{ranking} (same as {same})" if same else ranking
            style = CURVE_STYLES[k % len(CURVE_STYLES)]
            (line,) = ax.plot(recall, precision, label=label, zorder=2 + k, **style)
            best = max(range(len(points)), key=lambda i: 2 * points[i][1] / (n_gt + points[i][2]), default=None)
            if best is not None:  # a ring, sized by the curve's marker: rings of coinciding curves nest
                ax.scatter([recall[best]], [precision[best]], s=(style["markersize"] + 8) ** 2, facecolors="none",
                           edgecolors=line.get_color(), linewidths=1.5, zorder=5)
        if not any(recall for recall, _ in drawn.values()):
            ax.text(0.5, 0.5, f"no events: {s['model']} predicted nothing in the halves scored", ha="center",
                    va="center", fontsize=9)
        ax.set(xlim=(0, 1.05), ylim=(0, 1.05), xlabel="recall", ylabel="precision")
        ax.set_title(f"{s['model']}: precision/recall by ranking (+-{args.tolerance:g} s; ring: best F1)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def plot_timeline(path, index, video, gt, sources, span):
    """Ground truth of one half and each model's events on it, one row per class, over span (start, end): the
    seconds every model processed (processed_span), in seconds up to 10 minutes, else in minutes; each title
    counts what lies outside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = span
    unit, scale = ("seconds", 1) if hi - lo <= 600 else ("minutes", 60)
    def outside(times):
        n = sum(not lo <= t <= hi for t in times)
        return f", {n} outside the {unit} shown" if n else ""

    rows = 1 + len(sources)
    fig, axes = plt.subplots(rows, 1, figsize=(14, 2.6 * rows + 0.6), sharex=True, squeeze=False,
                             layout="constrained")  # one colourbar beside all panels: their time axes line up
    ypos = {c: i for i, c in enumerate(SOCCERNET_CLASSES)}
    ax = axes[0, 0]
    for vis, color in (("visible", "black"), ("not shown", "tab:gray")):
        pts = [(a["time"] / scale, ypos[a["label"]]) for a in gt if a["visibility"] == vis and a["label"] in ypos]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="|", s=120, color=color, label=vis)
    ax.set_title(f"video #{index} ({videos.display_name(video, 100)}): ground truth"
                 f"{outside([a['time'] for a in gt if a['label'] in ypos])}", fontsize=10, loc="left")
    ax.legend(loc="upper right", fontsize=7)
    for ax, (name, events) in zip(axes[1:, 0], sources.items()):
        dots = ax.scatter([e["time"] / scale for e in events], [ypos[e["label"]] for e in events], marker="|",
                          s=120, c=[e["confidence"] for e in events], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{name} ({settings.count(len(events), 'event')}{outside([e['time'] for e in events])}, "
                     "colour = confidence)", fontsize=10, loc="left")
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(SOCCERNET_CLASSES)), SOCCERNET_CLASSES, fontsize=6)
        ax.set_ylim(-1, len(SOCCERNET_CLASSES))
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlim(lo / scale, hi / scale)  # shared: where every model looked, not the longest run
    axes[-1, 0].set_xlabel(f"{unit} from the start of the half")
    fig.colorbar(dots, ax=axes[:, 0].tolist(), label="confidence", fraction=0.02, pad=0.01)  # sources: 1 or more
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def processed_span(h, model) -> tuple | None:
    """(first, last second) of the windows a model processed in one half: from its raw-answers archive (every
    window, with or without an event), else from 0 to the end of the last window of its final's records (the
    seed's files hold one per window; ours one per event: at least that far); None when neither has any."""
    archive = rankings.archive_path(h, model)
    data = read_json(archive, "raw answers file", rankings.ARCHIVE_FIX) if archive.is_file() else None
    windows = data.get("windows") if isinstance(data, dict) else None
    starts = [record_time(w.get("time")) for w in windows if isinstance(w, dict)] if isinstance(windows, list) else []
    starts = [t for t in starts if t is not None]
    if not starts:  # no archive: the final's records, already read and checked (records.read_final)
        starts = [0.0] + [record_time(r["time"]) for r in read_json(h.source, "predictions file")]
    return (min(starts), full_window_times(max(starts))[-1]) if len(starts) > 1 or windows else None


def timeline_span(halves) -> tuple:
    """The x range of a timeline ({model: its half}): the seconds every model processed (LLaVA's first minute, not
    Qwen's whole half beside it); where they share none, from the first to the last second any processed."""
    spans = [sp for sp in (processed_span(h, name) for name, h in halves.items()) if sp]
    if not spans:
        return 0.0, 60.0
    lo, hi = max(a for a, _ in spans), min(b for _, b in spans)
    return (lo, hi) if lo < hi else (min(a for a, _ in spans), max(b for _, b in spans))


def inputs(args):
    """(project, SoccerNet folder, videos.txt's lines), each checked: one line naming the fix otherwise."""
    project = settings.project_dir(args.project)
    if not args.soccernet:
        raise InputError("no SoccerNet folder: pass --soccernet DIR (holding <league>/<season>/<game>/Labels-v2.json) "
                         "or set SOCCERNET_DIR")
    root = Path(args.soccernet).expanduser()
    if not root.is_dir():
        raise InputError(f"--soccernet {root} is not a folder (expected <league>/<season>/<game>/Labels-v2.json in it)")
    manifest = videos.read_list(project)  # read only: this tool writes nothing but --out
    if not manifest:
        raise InputError(f"{project / videos.MANIFEST} is missing or empty: pass the project the predictions came "
                         "from (--project or SOCCER_PROJECT)")
    return project, root, manifest


def run(args):
    """Every input is read and checked first (flags, videos.txt, --thresholds, finals, labels, --out); then all
    outputs are written into a staging folder that replaces --out whole at the end (publish): a run that stops
    leaves the earlier run's set as it was, never its summary beside new per-game files."""
    project, root, manifest = inputs(args)
    out = Path(args.out).expanduser() if args.out else project / "soccernet_eval"
    where = Path(args.predictions_dir).expanduser() if args.predictions_dir else project
    found = [] if args.models else soccernet.models_in(where)  # both models' runs side by side, the seed's too
    if found and args.videos is not None:  # those with every video asked that videos.txt lists (as --models wants)
        asked = args.videos.below(len(manifest))
        whole = [m for m in found if set(asked) <= set(soccernet.prediction_files(where, m))]
        lacking, found = [m for m in found if m not in whole], whole or found  # none: load_model names what lacks
    else:
        lacking = []
    # none there: the default model's, whose missing files load_model names
    models = parse_models(args.models or ",".join(found) or settings.DEFAULT_TAG, where)
    thresholds = Path(args.thresholds).expanduser() if args.thresholds else None
    saved = read_saved(thresholds, models) if thresholds else None
    wanted = args.videos

    loaded, origins = {}, {}
    for name, folder in models.items():
        halves, notes, origins[name] = load_model(name, folder, manifest, wanted, project, args)
        for note in notes:
            print(f"{name}: {note}")
        if not halves:
            raise InputError(f"none of {name}'s videos is a SoccerNet half (<league>/<season>/<game>/1_*.mkv)")
        loaded[name] = halves
    labels, unlabelled = read_labels(root, loaded)
    if args.plot:
        timeline_halves(loaded, args)  # a --timeline-video without predictions stops here, not after the writing
    warn_past_the_end(loaded, origins, project)
    warn_changed(loaded, origins, project)
    if found:  # said once every input is read: a bad one is the only line
        but = f"; {', '.join(lacking)} lack some of --videos, left out" if lacking else ""
        print(f"models: {', '.join(found)} (every model with finals in {where}{but}; --models picks)")

    stage = staging(out)
    try:
        written = write_all(stage, out, loaded, origins, labels, unlabelled, saved, project, root, args)
        publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # a run that stopped: its half-written set goes, out stays
    print(f"\nwrote results_spotting.json per game under {out}/<model>/"
          + "".join(f", {out}/{d}/<model>/" for d in written[0]) + ", and " + ", ".join(written[1]))
    return 0


def write_all(stage, out, loaded, origins, labels, unlabelled, saved, project, root, args) -> tuple:
    """Score and write everything into stage: (the other rankings' folders, the other files' names)."""
    summaries = [evaluate_model(name, halves, labels, stage, args) for name, halves in loaded.items()]
    for s in summaries:  # what made the files scored: the run(s), unknown origins, incomplete videos
        made = {h.index: origins[s["model"]][h.index] for h in loaded[s["model"]]}
        s["made_by"] = provenance.report(made)
        s["runs"] = sorted({provenance.describe(o.made_by) for o in made.values()})  # as thresholds.json compares
        for v in s["videos"]:
            v["incomplete"] = origins[s["model"]][v["index"]].incomplete
    saved = warn_saved(saved, Path(args.thresholds).expanduser(), summaries, args) if saved else None
    curves = {}
    for s in summaries:
        s["rankings"], curves[s["model"]] = rank_model(s, loaded[s["model"]], labels, stage, out, args, saved)
    for s in summaries:
        print_report(s, args)
        print_rankings(s, args, args.thresholds)
    if len({tuple(sorted(v["index"] for v in s["videos"])) for s in summaries}) > 1:
        print("\nnote: the models were scored on different videos; pass --videos to compare them on the same ones")

    settings_used = {k: getattr(args, k) for k in ("tolerance", "min_confidence", "missing_confidence", "dedup_s",
                                                   "metrics", "nms_window", "thresholds")}
    atomic_write_json(stage / "summary.json", {"soccernet": str(root), "project": str(project),
                                               "settings": settings_used,
                                               "score_transforms": rankings.SCORE_TRANSFORMS,
                                               "games_without_labels": unlabelled,
                                               "models": summaries})
    write_csv(stage / "per_class.csv", summaries, args.metrics)
    atomic_write_json(stage / THRESHOLDS_FILE, thresholds_file(summaries, args))
    written = ["summary.json", "per_class.csv", THRESHOLDS_FILE]
    if args.plot:
        written += plots(stage, summaries, loaded, labels, args)
        plot_rankings(stage / "precision_recall_by_ranking.png", summaries, curves, args)
        written.append("precision_recall_by_ranking.png")
    ranked = sorted({RANKING_DIR.format(ranking=k) for s in summaries for k, r in s["rankings"].items()
                     if r["available"] and k != "confidence"})
    return ranked, written


OUR_FILES = re.compile(rf"summary\.json|per_class\.csv|{re.escape(THRESHOLDS_FILE)}|"
                       r"precision_recall(_by_ranking)?\.png|timeline_video_\d+\.png")  # what write_all writes


def staging(out: Path) -> Path:
    """A fresh .<out>.partial folder beside out, for this run's outputs (publish() moves it to out), after checking
    out holds only what an earlier run wrote (it is replaced whole) and settling what a stopped run left."""
    stage, old = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass --out DIR, a folder for the results")
    for entry in out.iterdir() if out.is_dir() else ():
        inside = list(entry.rglob("*")) if entry.is_dir() and not entry.is_symlink() else None
        ours = OUR_FILES.fullmatch(entry.name) and entry.is_file() if inside is None else all(
            f.is_dir() or f.name == soccernet.RESULTS_FILE for f in inside)
        if not ours:
            raise InputError(f"--out {out} holds {entry.name}, which evaluate_soccernet.py does not write: each run "
                             f"replaces the whole folder, so pass --out DIR, a new folder or one of its own")
    try:
        if old.is_dir() and not out.exists():
            old.rename(out)  # a run stopped between publish()'s two renames: the earlier set comes back
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {out} ({e.strerror}): pass --out DIR, a folder "
                         f"you can write to") from None
    return stage


def publish(stage: Path, out: Path) -> None:
    """The run's outputs become out at once: the earlier set moves aside, the new one in, the earlier one goes."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def read_labels(root, loaded) -> tuple:
    """({game: annotations}, [games without a Labels-v2.json]) for the games of the loaded halves. A game
    without labels is left out of every model (one line each); InputError when no game has them. A labels
    file that is there but damaged still stops with its one line: it would be scored wrong."""
    labels, unlabelled = {}, []
    for game in sorted({h.game for halves in loaded.values() for h in halves}):
        path = root / game / soccernet.LABELS_FILE
        if path.exists():
            labels[game] = soccernet.read_labels(path)
            continue
        unlabelled.append(game)
        indices = sorted({h.index for halves in loaded.values() for h in halves if h.game == game})
        print(f"game {log_safe(game)}: no {soccernet.LABELS_FILE} under {root}: not scored "
              f"(video{'s' * (len(indices) > 1)} {', '.join(f'#{i}' for i in indices)})")
    if not labels:
        raise InputError(f"none of the {len(unlabelled)} games predicted has a {soccernet.LABELS_FILE} under {root} "
                         f"(e.g. {root / unlabelled[0] / soccernet.LABELS_FILE}): is --soccernet the folder holding "
                         f"<league>/<season>/<game>/?")
    if unlabelled:
        print(f"{len(unlabelled)} of {len(labels) + len(unlabelled)} games not scored: no {soccernet.LABELS_FILE}")
    for name in list(loaded):
        loaded[name] = [h for h in loaded[name] if h.game in labels]
        if not loaded[name]:
            print(f"{name}: none of its games has a {soccernet.LABELS_FILE}: not scored")
            del loaded[name]
    return labels, unlabelled


PAST_THE_END_S = 60  # predictions this far past a video's end are of another video (a wrong index?)


def warn_past_the_end(loaded, origins, project) -> None:
    """One warning per half whose predictions lie past the end of the video they are scored against: its
    length from what made the final (made_by), else from the video file itself."""
    for name, halves in loaded.items():
        for h in halves:
            latest = max((e["time"] for e in h.events), default=0.0)
            made = origins[name][h.index].made_by or {}
            length = (made.get("video_file") or {}).get("duration_s")
            if length is None and latest > PAST_THE_END_S:
                path = project / "raw_data" / h.video
                length = videos.probe(path).duration if path.is_file() else None
            if isinstance(length, (int, float)) and latest > length + PAST_THE_END_S:
                print(f"⚠️ {name}: video #{h.index} ({log_safe(h.video)}) has predictions up to {latest:.0f} s, but "
                      f"the video is {length:.0f} s long: are they another video's (a wrong index)?")


def timeline_halves(loaded, args) -> dict:
    """{index: {model: its half of that video}} of the timeline plots: the videos of --timeline-video (default
    all, every video scored); InputError naming the videos no model has predictions for."""
    shown = {}
    for name, halves in loaded.items():
        for h in halves:
            if args.timeline_video is None or h.index in args.timeline_video:
                shown.setdefault(h.index, {})[name] = h
    asked, scored = args.timeline_video, sorted({h.index for halves in loaded.values() for h in halves})
    if asked is not None:  # bounded by the videos scored: --timeline-video 0-999999999 is two numbers
        missing = [i for i in asked.below(scored[-1] + 1) if i not in shown]
        past = asked.from_(scored[-1] + 1)
        if missing or past:
            raise InputError(f"--timeline-video {', '.join(filter(None, (settings.runs_text(missing), past)))}: no "
                             f"model has predictions scored there; choose among the videos scored "
                             f"({settings.runs_text(scored)}), or all")
    return dict(sorted(shown.items()))


def plots(out, summaries, loaded, labels, args) -> list:
    """The precision/recall plot and the timeline of each video asked for: the names of the files written."""
    plot_precision_recall(out / "precision_recall.png", summaries, args)
    written = ["precision_recall.png"]
    for index, shown in timeline_halves(loaded, args).items():
        first = next(iter(shown.values()))
        gt = [a for a in labels[first.game] if a["half"] == first.half]
        plot_timeline(out / f"timeline_video_{index}.png", index, first.video, gt,
                      {name: h.events for name, h in shown.items()}, timeline_span(shown))
        written.append(f"timeline_video_{index}.png")
    return written


def warn_changed(loaded, origins, project) -> None:
    """One warning per final whose video file changed, or is gone, since it was made (status.video_file_note:
    the words submit_llava.sh and status_llava.py use)."""
    for name, halves in loaded.items():
        for h in halves:
            note = status.video_file_note(project, origins[name][h.index].made_by)
            if note:
                print(f"⚠️ {name}: video #{h.index} ({log_safe(h.video)}): {note.removeprefix('⚠️ ')}")
