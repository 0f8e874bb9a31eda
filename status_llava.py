"""Where a run stands: one line per video and the totals, read from the project directory only.

    python status_llava.py                      # every video of videos.txt
    python status_llava.py --videos 0-39        # a range (also 0-9,12)
    python status_llava.py --videos 0-39 --watch        # again every 30 s until Ctrl-C (--watch 60: every 60 s)
    SOCCER_PROJECT=/scratch/me/soccer python status_llava.py
    LLAVA_MODEL=Qwen/Qwen2.5-VL-7B-Instruct python status_llava.py   # another model's videos (also --model)

Per video: done (events by label), in progress (job and node from its lock, windows saved/total, rate,
ETA), failed (the reason; a rerun retries), stopped (part done, no job: a rerun resumes), incomplete
(undecodable windows: reruns skip it while the file is unchanged), held (a lock whose job is not
running), not started; then the totals, events by label, and how long the rest takes at the rate
the running jobs measure. The model is the one the worker runs (--model, LLAVA_MODEL, default LLaVA): its files
are named by its family (final_predictions_qwen2.5vl_video_N.json, ...), and a line names the other models that
have finals in the project. It writes nothing (works on a project you cannot write to, while jobs run).
The project: --project, else SOCCER_PROJECT, else the current directory when it is a project, else
~/soccer_project. Exit codes: 0 shown, 1 the project cannot be read (one line says why), 2 bad flags,
141 its reader stopped reading (| head: nothing said).
"""
if __name__ == "__main__":  # first: another python may have to run this script (llava_soccer/venv.py)
    from llava_soccer import venv
    venv.ensure((), optional=("cv2",))

import argparse
import sys
import time

from llava_soccer import families, settings, status
from llava_soccer.cli import run_cli


class OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line naming the flag and the fix (exit 2), not a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def watch_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0: use e.g. --watch 60")
    return value


def parse_args(argv):
    p = OneLineParser(prog="status_llava.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", default="all", type=settings.video_list,
                   help="video indices, e.g. 0-39 or 0-9,12 (default all: every video of videos.txt)")
    p.add_argument("--watch", nargs="?", const=30.0, default=None, type=watch_seconds, metavar="SECONDS",
                   help="print again every SECONDS (default 30) until interrupted")
    p.add_argument("--project", default=None, help="project directory (env SOCCER_PROJECT, default ~/soccer_project)")
    p.add_argument("--model", default=None,
                   help=f"the model whose videos to show, as the worker takes it (default {settings.DEFAULT_MODEL})")
    settings.check_env(p, {"model": "LLAVA_MODEL"})
    return p.parse_args(argv)


def run(args) -> int:
    project = settings.project_dir(args.project)
    model_id = settings.model_in_use(args.model)
    tag = families.tag_of(model_id)  # its files' name; a model no family runs: one line, exit 1
    seen = {}  # what --watch saw of each running video: its rate is measured between refreshes
    while True:
        print("\n".join(status.report(project, args.videos, seen, model_id, tag)), flush=True)
        if args.watch is None:
            return 0
        time.sleep(args.watch)
        print(flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run_cli(run, args, "status_llava.py")
    except KeyboardInterrupt:  # --watch ends with Ctrl-C
        return 0
    except BrokenPipeError:  # | head -3: the reader has what it wants; say nothing, as `yes | head` does
        return status.quiet_exit()


if __name__ == "__main__":
    sys.exit(main())
