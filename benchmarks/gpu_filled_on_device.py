"""The worker on a real GPU that another process fills (issue 20): every window runs out of memory, and
the worker must stop after five with that reason (exit 1), not end its slice "done" with holes.

    PYTHONPATH=$PWD/.whl/site python3 benchmarks/gpu_filled_on_device.py VIDEO

Builds the full-size random checkpoint (no download), runs the worker once on a free GPU (the control:
exit 0, every window answered, the partial's made_by), then again on another slice while this process,
once the worker logs "model loaded", takes all but FREE_MIB of the GPU's free memory.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llava_soccer import settings, synthetic  # noqa: E402

FREE_MIB = 512


def worker(project, ckpt, gpu_id, log_path):
    cmd = [sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu-id", str(gpu_id), "--num-workers", "4",
           "--video-index", "0", "--project", str(project), "--model", str(ckpt), "--max-new-tokens", "16",
           "--batch-size", "auto", "--progress-every", "5"]
    return subprocess.Popen(cmd, stderr=open(log_path, "w"), stdout=subprocess.DEVNULL, cwd=ROOT)


def main(video):
    work = Path(tempfile.mkdtemp())
    t0 = time.monotonic()
    ckpt = synthetic.make_checkpoint(work / "ckpt", "full", dtype="bfloat16", device="cuda")
    torch.cuda.empty_cache()
    print(f"full-size checkpoint built in {time.monotonic() - t0:.0f} s")
    project = work / "project"
    (project / "raw_data").mkdir(parents=True)
    (project / "raw_data" / "match.mkv").symlink_to(Path(video).resolve())

    control = worker(project, ckpt, 0, work / "control.log")
    code = control.wait()
    doc = json.loads(settings.partial_path(project, 0, 0).read_text())
    made_by = {k: doc["made_by"][k] for k in ("quantization", "compute_dtype", "nf4_weights", "model_revision")}
    print(f"control, free GPU: exit {code}; statuses {sorted({r['status'] for r in doc['windows']})}, "
          f"{len(doc['windows'])} windows; made_by {json.dumps(made_by)}")
    print("".join(open(work / "control.log").readlines()[-2:]), end="")

    proc = worker(project, ckpt, 1, work / "filled.log")
    while "model loaded" not in (work / "filled.log").read_text():
        assert proc.poll() is None, (work / "filled.log").read_text()
        time.sleep(0.2)
    free, total = torch.cuda.mem_get_info()
    hog = torch.empty(free - FREE_MIB * 2**20, dtype=torch.uint8, device="cuda")  # noqa: F841 (held)
    print(f"after the worker loaded its model: took {(free - FREE_MIB * 2**20) / 2**30:.1f} GiB, "
          f"{FREE_MIB} MiB left free of {total / 2**30:.0f} GiB")
    code = proc.wait()
    doc = json.loads(settings.partial_path(project, 0, 1).read_text())
    print(f"filled GPU: exit {code}; statuses {[r['status'] for r in doc['windows']]}")
    print("".join(line for line in open(work / "filled.log") if "⚠️" in line or "error" in line), end="")


if __name__ == "__main__":
    main(sys.argv[1])
