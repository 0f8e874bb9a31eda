"""benchmarks/bench_worker.py still runs the worker's own loop (on CPU with a tiny checkpoint here;
its numbers are meaningful only on a GPU: benchmarks/RESULTS.md)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_worker_runs_the_worker_loop_and_writes_its_table(tmp_path, video_25fps, goal_checkpoint):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_worker.py"), "--video", str(video_25fps),
                           "--checkpoint", str(goal_checkpoint), "--quantization", "fp32", "--batch-sizes", "1", "3",
                           "--windows", "3", "--max-new-tokens", "4", "--decoder-check", "yes", "--profile", "yes",
                           "--assume-gpu", "7.5,24", "--plan-check", "6.1,11", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["batch_size"], r["windows"]) for r in result["runs"]] == [("1", 3), ("3", 3)]
    assert all(r["s_per_window"] > 0 and r["half_on_4_gpus_min"] > 0 for r in result["runs"])
    # batches of 1: the two after the first give the steady rate; one batch of 3 has none
    assert result["runs"][0]["steady_s_per_window"] > 0 and result["runs"][1]["steady_s_per_window"] is None
    assert result["split"]["fp32"]["tokens"] > 15 * 100  # 15 frames of the tiny model's ~120 tokens
    assert "| fp32 | 3 | fast+auto+auto |" in proc.stdout
    assert "plan for a Titan RTX-class GPU (compute capability 7.5, 24 GiB, assumed)" in proc.stdout
    plans = result["plan_check"]["fp32"]  # fp32 weights: the 6.1 plan computes in fp32 too, so the same logits
    assert plans["6.1,11"]["finite"] and plans["6.1,11"]["max_abs_diff"] < 1e-4
    check = result["decoder_check"]["fp32"]  # the parrot's answer is 2 tokens (answer, </s>) on every path
    assert check["graph_equals_eager"] and check["leading_tokens_equal_eager_vs_transformers"] == [2, 2]
    prof = result["profile"]["fp32"]  # one whole batch of 3 windows, by phase
    assert (tmp_path / "trace_fp32_full.json.gz").stat().st_size > 1000 and prof["trace"].endswith(".json.gz")
    assert prof["windows"] == 3 and "aten::" in prof["top_kernels"] and "fp32 profile prefill: {'wall_s'" in proc.stdout
    assert prof["class_scores"]  # the default: the batch's class-score pass is its own phase
    phases = [prof[k]["wall_s"] for k in ("prefill", "decode (incl. graph capture)", "class scores", "answers + JSON")]
    assert all(t > 0 for t in phases) and sum(phases) <= prof["whole batch"]["wall_s"] * 1.01
