"""demo.sh: the README's one-command demo (no GPU, no Slurm, no download) runs the full loop."""
import json
import os
import re
import subprocess
import sys

from conftest import ROOT


def test_demo_runs_the_full_loop_and_shows_every_file(odd_root):
    demo_dir = odd_root / "demo dir"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LLAVA_")) and k != "SOCCER_PROJECT"}
    env.update(LLAVA_PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "demo.sh"), str(demo_dir)], capture_output=True, text=True,
                       timeout=1200, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for i in (0, 1):
        events = json.loads((demo_dir / f"final_predictions_llava_video_{i}.json").read_text())
        assert events and {e["label"] for e in events} == {"Goal"}
        # the newcomer saw the worker files appear, then the final replace them
        for g in (0, 1):
            assert f"[files] + partial_results_llava_vid{i}_gpu{g}.json" in out
            assert f"[files] - partial_results_llava_vid{i}_gpu{g}.json" in out
        assert f"[files] + final_predictions_llava_video_{i}.json" in out
    assert list(demo_dir.glob("partial_results_*")) == []
    assert "local run on" in out and "2 worker(s) per video, GPUs: none (CPU)" in out
    assert re.search(r"summary: 2 done, 0 skipped", out) and re.search(r"summary: 0 done, 2 skipped", out)
    assert "demo done" in out
