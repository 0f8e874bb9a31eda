"""Score final predictions against SoccerNet-v2 labels: official average-mAP + precision/recall.

    pip install --no-deps SoccerNet==0.2.0          # the official evaluator (once; see README)
    python evaluate_soccernet.py --soccernet /data/SoccerNet
    python evaluate_soccernet.py --soccernet /data/SoccerNet --models llava,qwen7b=/data/qwen_runs --plot
    python evaluate_soccernet.py --videos 0-9 --tolerance 5 --min-confidence 0.6 --metrics tight
    python evaluate_soccernet.py --videos 10-19 --thresholds /data/eval_0-9/thresholds.json

Reads every $SOCCER_PROJECT/final_predictions_<model>_video_<N>.json (or --videos) of every model there
(llava, qwen2.5vl, the seed's qwen7b, ...: one line names them) or of --models, maps N
through $SOCCER_PROJECT/videos.txt to <league>/<season>/<game>/<half>_<res>.mkv, and reads
<soccernet>/<league>/<season>/<game>/Labels-v2.json. Only the games and halves that were
processed are scored. Predictions are ranked three ways, side by side (docs/evaluation.md): by the
confidence written in the answer, by the token probability of the label, and by the class scores of every
window (raw_answers_<model>_video_<N>.json.gz beside the final; peaks after NMS over --nms-window s);
a ranking the files lack is n/a. Writes into --out (default $SOCCER_PROJECT/soccernet_eval):
  <model>/<league>/<season>/<game>/results_spotting.json   official layout (EvalAI, evaluator), by confidence
  token_ranking/<model>/..., class_ranking/<model>/...      the same ranked by token probability, class scores
  summary.json, per_class.csv                              everything printed, and more
  thresholds.json                                          per class, the threshold of best F1 (--thresholds)
  precision_recall.png, precision_recall_by_ranking.png,
  timeline_video_<N>.png                                   with --plot
Token and class scores are mapped into [0, 1] by one fixed transform first (tempered odds, k=4: the evaluator
sweeps 200 fixed thresholds, so values count, not only their order; summary.json "score_transforms").
Official numbers come from SoccerNet.Evaluation.ActionSpotting.evaluate itself, in [0, 1]
(papers print them x100); classes absent from the ground truth count 0 in its mean.
Exit codes: 0 done, 1 input error (one line names the file and the fix), 2 bad flags.
"""
if __name__ == "__main__":  # first: another python may have to run this script (llava_soccer/venv.py)
    from llava_soccer import venv
    venv.ensure(("numpy", "matplotlib", "cv2"), optional=("SoccerNet",))

import argparse
import sys

from llava_soccer import evaluation, rankings, settings, soccernet, status
from llava_soccer.cli import run_cli


def parse_args(argv):
    env = settings.env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--soccernet", default=env("SOCCERNET_DIR", None),
                   help="SoccerNet folder holding <league>/<season>/<game>/Labels-v2.json")
    p.add_argument("--project", default=None, help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    p.add_argument("--models", default=None,
                   help="comma-separated models, each NAME (files in --predictions-dir) or NAME=DIR; "
                        "e.g. llava,qwen7b=/runs/qwen (default: every model with finals in --predictions-dir, "
                        "e.g. llava,qwen2.5vl)")
    p.add_argument("--predictions-dir", "--predictions_dir", default=None,
                   help="folder of final_predictions_<model>_video_<N>.json (default: the project directory)")
    p.add_argument("--videos", default="all", type=settings.video_list,
                   help="video indices to score, e.g. 0-9,12 (default all with predictions)")
    p.add_argument("--out", default=None, help="output folder (default <project>/soccernet_eval)")
    p.add_argument("--tolerance", type=float, default=settings.MATCH_S,
                   help="precision/recall: a prediction matches a ground-truth event of its class at most this "
                        f"many seconds away, one-to-one, as many pairs as possible (default {settings.MATCH_S:g})")
    p.add_argument("--min-confidence", "--min_confidence", type=soccernet.confidence_flag, default=0.0,
                   help="precision/recall: ignore predictions less confident than this, in [0, 1] or a percent "
                        "in (1, 100] as the events' own confidences (60 = 60%% = 0.6; default 0 = all); the "
                        "official mAP sweeps all thresholds itself")
    p.add_argument("--missing-confidence", "--missing_confidence", type=soccernet.confidence_flag, default=0.5,
                   help="confidence given to events without a usable one (none, or outside 0-100), read as "
                        "--min-confidence (default 0.5)")
    p.add_argument("--dedup-s", type=float, default=env("LLAVA_DEDUP_S", settings.DEDUP_S),
                   help="events of one label this many seconds apart or closer are one event, the most confident "
                        f"kept (the merge's rule; default {settings.DEDUP_S:g}; 0 keeps all but exact repeats)")
    p.add_argument("--metrics", default=",".join(soccernet.OFFICIAL_METRICS),
                   help="official average-mAP variants: tight (1-5 s), loose (5-60 s), at1, at5, or none "
                        "(default all four; about 8 s per model)")
    p.add_argument("--nms-window", "--nms_window", type=float, default=rankings.NMS_WINDOW_S,
                   help="class-score ranking: a peak of a class's score suppresses that class within +-half this "
                        f"many seconds (the SoccerNet-v2 baselines' NMS window; default {rankings.NMS_WINDOW_S:g})")
    p.add_argument("--thresholds", default=None, metavar="FILE",
                   help="also report F1 per class at the thresholds of FILE, a thresholds.json written for other "
                        "games (thresholds tuned on the games scored flatter the result)")
    p.add_argument("--plot", action="store_true",
                   help="also draw precision_recall.png, precision_recall_by_ranking.png and timeline_video_<N>.png "
                        "(default off)")
    p.add_argument("--timeline-video", "--timeline_video", type=settings.video_list, default="all",
                   help="videos to draw a timeline_video_<N>.png of with --plot, e.g. 0 or 0-9,12 (default all: "
                        "every video scored)")
    settings.check_env(p, {"soccernet": "SOCCERNET_DIR", "dedup_s": "LLAVA_DEDUP_S"})
    args = p.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    if metrics == ["none"]:
        metrics = []
    bad = [m for m in metrics if m not in soccernet.OFFICIAL_METRICS]
    if bad:
        p.error(f"--metrics: unknown {','.join(bad)}; choose from {','.join(soccernet.OFFICIAL_METRICS)} or none")
    args.metrics = metrics
    if not (args.tolerance >= 0 and args.dedup_s >= 0 and args.nms_window >= 0):  # also NaN
        p.error("--tolerance, --dedup-s and --nms-window must be 0 or more seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run_cli(evaluation.run, args, "evaluate_soccernet.py")
    except BrokenPipeError:  # | head: the reader has what it wants (the files are written or not, as run says)
        return status.quiet_exit()


if __name__ == "__main__":
    sys.exit(main())
