"""One GPU's slice of one video through LLaVA-v1.6-Mistral-7B: windows in, partial JSON out.

    python llava_split_worker.py --gpu-id 0 --num-workers 4 --video-index 5
    python llava_split_worker.py --gpu-id 0 --num-workers 1 --video-index 5 --quantization bf16 --batch-size 4
    python llava_split_worker.py --print-plan                      # this GPU's plan as JSON, no model loaded
    python llava_split_worker.py --print-plan --assume-gpu 6.1,11  # ... as if on a GTX 1080 Ti

Video I is line I of $SOCCER_PROJECT/videos.txt (made from raw_data/ the first time). The video
is cut into 3 s windows (15 frames at 5 FPS) every 2 s; this worker takes the windows that start
in the gpu_id-th of num_workers equal time slices, asks the model for events in each, and
rewrites $SOCCER_PROJECT/partial_results_llava_vid{I}_gpu{G}.json after every batch.

Rerun the same command to resume: answered windows are kept, failed ones (OOM, errors) are
retried. The partial records what made it (model and commit, settings, prompt, code, the video
file): a partial made by another run is refused (delete it, or --replace-mismatched). On
SIGUSR1/SIGTERM it finishes the current batch, saves and exits with code 75.
Dtypes and kernels follow one plan per GPU (llava_soccer/gpus.py), logged at start; the flags
below marked "auto" override it.
The flags are llava_soccer/config.py's WorkerSettings; the loop is llava_soccer/worker.py.
--gpu_id, --num_workers and --video_index (the spellings of the first versions) still work.
Exit codes: 0 every window answered; 3 finished, but some windows have no decodable frames (the
file is truncated or damaged: a rerun cannot fill them); 1 windows failed (a rerun retries them)
or an error (one line says why); 2 bad flags; 4 another run took the video's lock over (nothing
written); 75 interrupted or disk full. An error before any window was saved is also noted in
.failed_llava_video_I.json, so status_llava.py shows the video as failed with its reason.
"""
if __name__ == "__main__":  # first: another python may have to run this script (llava_soccer/venv.py)
    from llava_soccer import venv
    venv.ensure(("torch", "transformers", "cv2", "PIL", "numpy"))

import logging
import sys

from llava_soccer import config
from llava_soccer.cli import InputError, run_cli


def parse_args(argv=None) -> config.WorkerSettings:
    """The flags (llava_soccer/config.py's WorkerSettings) of argv; exit 2 with one line on a bad one."""
    return config.parse(argv, __doc__)


def log_to_stderr(args):
    """The worker's log lines on stderr, stamped as submit_llava.sh's lines in the same job log."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"[%(asctime)s] [vid{args.video_index} gpu{args.gpu_id}] %(message)s"
                        if not args.print_plan else "%(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")


def main(argv=None):
    args = parse_args(argv)
    log_to_stderr(args)
    from llava_soccer import reporting, worker  # after the flags: --help and a bad flag answer without loading torch

    def report(line):
        worker.log.error(line)
        reporting.note_failure(args, line)
    return run_cli(worker.run, args, "llava_split_worker.py", report=report, failures=(InputError, worker.Abort))


if __name__ == "__main__":
    sys.exit(main())
