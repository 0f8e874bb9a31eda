"""Shared logic of the LLaVA soccer pipeline; the top-level scripts are thin command lines over it.

settings   every number and path convention (5 FPS, 3 s windows, 2 s step, file names)
venv       which python runs a script: the scripts rerun themselves in the project's venv when this one lacks packages
cli        what every command line shares: one-line input errors, log-safe text, exit codes, run_cli
jsonio     atomic, strict JSON writes (fence=), JSON read back with one line for a damaged file, disk checks
claims     one lock per video, so two jobs never process the same video at once; process start times, stale age
videos     videos.txt manifest, window grid and slices, exact-timestamp frame reading
events     model text -> events (never eval), label normalisation to the 17 SoccerNet classes
records    the window and final records, and the one reader of final files
merge      partials -> final events: coverage check, re-parsing, de-duplication
provenance what made a result (made_by: model, settings, code, video file), compared before runs are joined
rankings   the three scores that rank predictions for evaluation: written confidence, token probability, class
           scores (dense candidates after NMS); thresholds of best F1
soccernet  SoccerNet labels, results_spotting.json, official average-mAP, precision/recall
evaluation evaluate_soccernet.py's run: predictions and labels read and checked, scored three ways, written
           into a staging folder that replaces --out whole
matching   one-to-one label+time matching (model vs model, model vs ground truth)
config     the worker's settings: one frozen dataclass that makes llava_split_worker.py's flags and checks them
gpus       one execution plan per GPU (dtypes, kernels, chunks, batch size) from its capability and memory; frozen
doctor     setup_llava.sh's checks (python -m llava_soccer.doctor MODEL): python, packages, torch vs GPUs/driver,
           OpenCV, model
prompt     the event question, the prompt with frame times, processor inputs of a window
loading    where the model comes from (checked in seconds), from_pretrained as the plan says, NF4 dequantized
engine     the loaded model and its runtime in one owner: kernels installed, decoder state, self-checks, generate
fused      torch.compile'd RMSNorm/rotary/SiLU-gate kernels put into one model's Mistral modules
fp8        FP8 e4m3 linear layers for the language model (8.9+)
scores     token probabilities of events; 17 class scores per window from one extra pass per batch over the cache
decoding   the fast greedy decoder: per-window (chunked) prefill, CUDA-graph decode, self-checks
worker     llava_split_worker.py's loop: one GPU's slice of a video in batches, OOM halving, signals
resume     a rerun picks the slice up from its partial: made_by checked, what is done and what is left
reporting  what the worker tells: progress, event lines, the slice's summary, its holes and exit code
status     status_llava.py's reading of a project: each video's state, rate and ETA (read only)
synthetic  tiny/full-size random checkpoints and barcoded H.264 videos for tests and demos
"""
