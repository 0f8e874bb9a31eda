"""Per-GPU execution plans (llava_soccer/gpus.py) and the self-checked optional paths, through the
worker's command line: what --print-plan prints, which flags and environment values it refuses,
and that every path a plan can pick (fp16 compute, chunked prefill, Triton decode attention,
CUDA graphs, fused kernels) gives the plain path's answers on a real tiny random checkpoint, on
CPU, with real H.264 windows. GPU-only paths fail on CPU, or are made to give wrong numbers here,
and must then fall back with one warning."""
import functools
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import llava_split_worker as worker
from conftest import ROOT, cpu_plan, load, make_project
from llava_soccer import decoding, families, fused, gpus, synthetic, videos
from llava_soccer.engine import Engine
from llava_soccer.families import llava_next
from llava_soccer.generation import Generation
from llava_soccer.settings import partial_path

REQUIRED_KEYS = {"gpu", "capability", "memory_gib", "assumed", "quantization", "compute_dtype", "storage_dtype",
                 "prefill_attention", "prefill_chunk", "decode_attention", "fused_kernels", "nf4_weights",
                 "cuda_graphs", "batch_size_estimate", "memory_cap_gib", "warnings"}
# what the plan leaves out, so every other run below is "plain": PyTorch's own kernels, eager steps
PLAIN = ["--decode-attention", "sdpa", "--cuda-graphs", "no", "--fused-kernels", "no", "--prefill-chunk", "0"]
WORKERS = 10  # slice 0 of 10 of the 60 s video: windows at 0, 2 and 4 s


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No LLAVA_* variable of the caller's shell leaks in."""
    for name in ("LLAVA_ASSUME_GPU", "LLAVA_ATTENTION", "LLAVA_PREFILL_CHUNK", "LLAVA_DECODE_ATTENTION",
                 "LLAVA_FUSED_KERNELS", "LLAVA_NF4_WEIGHTS", "LLAVA_CUDA_GRAPHS", "LLAVA_QUANT", "LLAVA_BATCH_SIZE",
                 "LLAVA_MODEL", "LLAVA_NUM_WORKERS", "LLAVA_MAX_NEW_TOKENS", "LLAVA_DECODER", "LLAVA_VISUAL_TOKENS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    """Random weights large enough (std 0.5) that each window gets its own answer, and that bf16
    rounding already changes some of them."""
    return synthetic.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "random", "tiny", seed=3, init_std=0.5)


def print_plan(capsys, *argv):
    """(exit code, the plan as a dict) of `--print-plan` with a model that does not exist."""
    code = worker.main(["--print-plan", "--model", "/nonexistent/model", *argv])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one JSON object on one line, nothing else on stdout
    return code, json.loads(out)


def run_worker(root, name, video, ckpt, *extra):
    """The worker on slice 0 of WORKERS of `video` in a fresh project: (exit code, its records)."""
    project = make_project(root / name, {"match/1_224p.mkv": video})
    code = worker.main(["--gpu-id", "0", "--num-workers", str(WORKERS), "--video-index", "0", "--project",
                        str(project), "--model", str(ckpt), "--quantization", "fp32", "--max-new-tokens", "8",
                        *extra])
    path = partial_path(project, 0, 0)
    return code, load(path)["windows"] if path.exists() else None


def answers(records):
    assert records and all(r["status"] == "ok" for r in records), records
    return [(r["time"], r["raw"]) for r in records]


@pytest.fixture(scope="module")
def plain_answers(odd_root, video_25fps, random_ckpt):
    """The answers of the plain path, which every optional path must reproduce."""
    code, records = run_worker(odd_root, "plain", video_25fps, random_ckpt, *PLAIN)
    assert code == 0
    result = answers(records)
    assert [t for t, _ in result] == [0.0, 2.0, 4.0]
    assert len({raw for _, raw in result}) == 3  # the windows' answers differ: a wrong path would show
    return result


def warnings_in(log):
    return [line for line in log.splitlines() if "⚠️" in line]


# --- 1. the plan per GPU --------------------------------------------------------------------

@pytest.mark.parametrize("gpu,dtype,modern,chunked", [
    ("6.1,11", "float32", False, True),    # GTX 1080 Ti
    ("6.0,16", "float16", False, False),   # Tesla P100: full-rate fp16, so the 7.x plan (issue 33)
    ("7.0,12", "float16", False, True),    # Titan V
    ("7.5,24", "float16", False, False),   # Titan RTX
    ("8.0,80", "bfloat16", True, False),   # A100
    ("8.9,48", "bfloat16", True, False),   # L40S
    ("9.0,80", "bfloat16", True, False),   # H100
])
def test_print_plan_for_an_assumed_gpu(gpu, dtype, modern, chunked, capsys):
    code, plan = print_plan(capsys, "--assume-gpu", gpu)
    assert code == 0  # and /nonexistent/model was never loaded
    assert REQUIRED_KEYS <= set(plan)
    cc, gib = gpu.split(",")
    assert plan["capability"] == cc and plan["memory_gib"] == float(gib) and plan["assumed"] is True
    assert plan["quantization"] == "nf4" and plan["compute_dtype"] == dtype
    # fp32 compute on Pascal keeps weights, activations and the KV cache in fp16 (an fp32 cache would not fit)
    assert plan["storage_dtype"] == ("float16" if dtype == "float32" else dtype)
    assert plan["decode_attention"] == ("triton" if modern else "sdpa")
    assert plan["fused_kernels"] is modern
    assert plan["prefill_attention"][0] == ("cudnn" if modern else "efficient")
    assert plan["prefill_attention"][-1] == "math"
    assert plan["prefill_chunk"] == (gpus.PREFILL_CHUNK if chunked else None)
    assert isinstance(plan["prefill_chunk"], int) or not chunked
    assert plan["cuda_graphs"] is True
    assert plan["memory_cap_gib"] is None  # no real GPU here to cap
    assert plan["warnings"] == []


@pytest.mark.parametrize("gpu,slow", [("6.0", False), ("6.1", True), ("6.2", False), ("7.0", False)])
def test_fp16_warns_only_where_fp16_arithmetic_is_slow(gpu, slow, capsys):
    """GP102/GP104 (6.1) run fp16 at 1/64 rate: warned; the P100 (6.0) runs it at twice fp32's: not."""
    code, plan = print_plan(capsys, "--assume-gpu", gpu + ",24", "--quantization", "fp16")
    assert code == 0 and plan["compute_dtype"] == "float16"
    assert any("1/64 rate" in w for w in plan["warnings"]) is slow, plan["warnings"]


@pytest.mark.parametrize("gpu,weights", [("6.1,11", "packed"), ("7.5,24", "packed"), ("7.5,64", "packed"),
                                         ("8.0,40", "packed"), ("8.0,80", "dequantized"), ("9.0,139", "dequantized")])
def test_nf4_weights_are_dequantized_once_on_large_modern_cards(gpu, weights, capsys):
    """Only 8.0+ cards of 64+ GiB give 10 GiB of their memory to a bf16 copy of the NF4 weights: the
    batch estimate counts it. Other quantizations have no NF4 weights."""
    code, plan = print_plan(capsys, "--assume-gpu", gpu)
    assert code == 0 and plan["nf4_weights"] == weights and f"nf4 ({weights} weights)" in gpus.Plan(**plan).line()
    _, packed = print_plan(capsys, "--assume-gpu", gpu, "--nf4-weights", "packed")
    assert packed["nf4_weights"] == "packed"
    assert packed["batch_size_estimate"] >= plan["batch_size_estimate"]
    if weights == "dequantized":
        assert plan["batch_size_estimate"] < packed["batch_size_estimate"] or plan["batch_size_estimate"] == 16
    _, bf16 = print_plan(capsys, "--assume-gpu", gpu, "--quantization", "bf16")
    assert bf16["nf4_weights"] is None


def test_nf4_weights_flag_and_variable(capsys, monkeypatch):
    _, plan = print_plan(capsys, "--assume-gpu", "7.5,24", "--nf4-weights", "dequantized")
    assert plan["nf4_weights"] == "dequantized" and plan["warnings"] == []  # fp16 compute and storage: it fits
    _, plan = print_plan(capsys, "--assume-gpu", "6.1,11", "--nf4-weights", "dequantized")
    assert plan["nf4_weights"] == "packed"  # fp32 compute, fp16 storage: one warning says so
    assert len(plan["warnings"]) == 1 and "stay packed" in plan["warnings"][0]
    monkeypatch.setenv("LLAVA_NF4_WEIGHTS", "packed")
    _, plan = print_plan(capsys, "--assume-gpu", "9.0,80")
    assert plan["nf4_weights"] == "packed"
    monkeypatch.setenv("LLAVA_NF4_WEIGHTS", "bf16")
    with pytest.raises(SystemExit) as e:
        worker.main(["--print-plan", "--model", "/nonexistent/model"])
    assert e.value.code == 2 and "LLAVA_NF4_WEIGHTS" in capsys.readouterr().err


def test_assume_gpu_without_memory_uses_the_typical_card(capsys):
    code, plan = print_plan(capsys, "--assume-gpu", "7.5")
    assert code == 0
    assert plan["memory_gib"] == 24.0 and "Titan RTX" in plan["gpu"] and plan["compute_dtype"] == "float16"
    assert plan["prefill_chunk"] is None
    code, plan = print_plan(capsys, "--assume-gpu", "6.1")
    assert code == 0 and plan["memory_gib"] == 11.0 and plan["prefill_chunk"] == gpus.PREFILL_CHUNK


def test_llava_assume_gpu_environment_variable_works_like_the_flag(capsys, monkeypatch):
    monkeypatch.setenv("LLAVA_ASSUME_GPU", "7.0,12")
    code, from_env = print_plan(capsys)
    assert code == 0
    monkeypatch.delenv("LLAVA_ASSUME_GPU")
    assert from_env == print_plan(capsys, "--assume-gpu", "7.0,12")[1]
    assert from_env["capability"] == "7.0" and from_env["compute_dtype"] == "float16"
    # the flag wins over the environment
    monkeypatch.setenv("LLAVA_ASSUME_GPU", "7.0,12")
    assert print_plan(capsys, "--assume-gpu", "9.0,80")[1]["capability"] == "9.0"


def test_print_plan_without_a_gpu_is_the_cpu_plan(capsys):
    code, plan = print_plan(capsys, "--quantization", "fp32")
    assert code == 0
    assert plan["gpu"] == "cpu" and plan["capability"] is None and plan["assumed"] is False
    assert plan["compute_dtype"] == "float32" and plan["prefill_attention"] == ["math"]
    assert plan["decode_attention"] == "sdpa" and plan["fused_kernels"] is False and plan["cuda_graphs"] is False


@pytest.mark.parametrize("gpu,env", [("9.0,80", False), ("8.9,24", True)])
def test_fp8_is_planned_on_gpus_with_fp8_tensor_cores(gpu, env, capsys, monkeypatch):
    if env:  # LLAVA_QUANT=fp8 works like the flag
        monkeypatch.setenv("LLAVA_QUANT", "fp8")
    code, plan = print_plan(capsys, "--assume-gpu", gpu, *([] if env else ["--quantization", "fp8"]))
    assert code == 0 and plan["quantization"] == "fp8" and plan["compute_dtype"] == "bfloat16"
    assert plan["decode_attention"] == "triton" and plan["cuda_graphs"] is True


@pytest.mark.parametrize("gpu,says", [("8.0,80", "an A100-class GPU has compute capability 8.0"),
                                      ("7.5,24", "a Titan RTX-class GPU has compute capability 7.5"),
                                      (None, "there is no GPU here")])
def test_fp8_elsewhere_is_refused_with_one_line(gpu, says, capsys):
    code = worker.main(["--print-plan", "--quantization", "fp8", *(["--assume-gpu", gpu] if gpu else [])])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("error: --quantization fp8 needs FP8 tensor cores (compute "
                           f"capability 8.9+: Ada, Hopper, Blackwell) and {says}: use nf4 (the default) or bf16")


def test_help_states_the_plans_chunking_threshold(capsys):
    with pytest.raises(SystemExit) as e:
        worker.main(["--help"])
    assert e.value.code == 0
    assert f"under {gpus.CHUNKED_BELOW_GIB} GiB" in " ".join(capsys.readouterr().out.split())


# --- 2. explicit flags win --------------------------------------------------------------------

def test_bf16_on_turing_is_honoured_with_a_warning(capsys):
    code, plan = print_plan(capsys, "--assume-gpu", "7.5,24", "--quantization", "bf16")
    assert code == 0
    assert plan["compute_dtype"] == "bfloat16" and plan["storage_dtype"] == "bfloat16"
    (warning,) = plan["warnings"]
    assert "--quantization bf16 on compute capability 7.5" in warning and "emulates" in warning


@pytest.mark.parametrize("gpu,flags,key,value", [
    ("7.5,24", ["--decode-attention", "triton"], "decode_attention", "triton"),
    ("9.0,80", ["--decode-attention", "sdpa"], "decode_attention", "sdpa"),
    ("9.0,80", ["--fused-kernels", "no"], "fused_kernels", False),
    ("7.5,24", ["--fused-kernels", "yes"], "fused_kernels", True),
    ("9.0,80", ["--cuda-graphs", "no"], "cuda_graphs", False),
    ("6.1,11", ["--prefill-chunk", "0"], "prefill_chunk", None),
    ("9.0,80", ["--prefill-chunk", "2048"], "prefill_chunk", 2048),
    ("9.0,80", ["--attention", "efficient"], "prefill_attention", ["efficient", "cudnn", "flash", "math"]),
    ("7.5,24", ["--quantization", "fp32"], "compute_dtype", "float32"),
])
def test_explicit_flags_win_over_the_plan(gpu, flags, key, value, capsys):
    code, plan = print_plan(capsys, "--assume-gpu", gpu, *flags)
    assert code == 0 and plan[key] == value


def test_flash_attention_on_turing_warns_that_it_needs_8_0(capsys):
    code, plan = print_plan(capsys, "--assume-gpu", "7.5,24", "--attention", "flash")
    assert code == 0 and plan["prefill_attention"][0] == "flash"
    assert any("--attention flash needs compute capability 8.0+" in w for w in plan["warnings"])


# --- 3. bad environment values: exit 2 and one line saying what is wrong ----------------------

@pytest.mark.parametrize("env,value,says", [
    ("LLAVA_ASSUME_GPU", "banana", ["LLAVA_ASSUME_GPU", "'banana' is not CC[,GIB], e.g. 7.5,24"]),
    ("LLAVA_ASSUME_GPU", "7.5,0", ["LLAVA_ASSUME_GPU", "the memory must be 1 to 4096 GiB"]),
    ("LLAVA_FUSED_KERNELS", "true", ["LLAVA_FUSED_KERNELS='true'", "choose from auto, yes, no", "--fused-kernels"]),
    ("LLAVA_PREFILL_CHUNK", "-5", ["LLAVA_PREFILL_CHUNK='-5' (--prefill-chunk): must be a whole number"]),
    ("LLAVA_BATCH_SIZE", "0", ["LLAVA_BATCH_SIZE='0' (--batch-size): must be a whole number >= 1"]),
    ("LLAVA_MAX_NEW_TOKENS", "abc", ["LLAVA_MAX_NEW_TOKENS='abc' is not a valid --max-new-tokens value"]),
    ("LLAVA_MAX_NEW_TOKENS", "0", ["LLAVA_MAX_NEW_TOKENS='0' (--max-new-tokens): must be at least 1"]),
])
def test_bad_environment_values_exit_2_with_one_line(env, value, says, capsys, monkeypatch):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as e:
        worker.main(["--print-plan", "--model", "/nonexistent/model"])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = [line for line in captured.err.splitlines() if "error:" in line]
    for text in says:
        assert text in line, line


# --- 4. fp16 compute gives fp32's answers --------------------------------------------------

@pytest.mark.slow
def test_fp16_compute_gives_the_fp32_answers(random_ckpt, video_25fps):
    """The 7.x plans compute in fp16: the same greedy answers as fp32, plain weights and NF4 alike
    (NF4 with the Titan RTX plan's fp16 compute vs the GTX 1080 Ti plan's fp32 compute). On CPU."""
    info = videos.probe(video_25fps)
    windows = [(w.times, w.frames) for w in videos.iter_windows(info, [0, 7, 22])]

    def answers_with(quantization, gpu):
        plan = cpu_plan(quantization, assume_gpu=gpu, cuda_graphs="no", decode_attention="sdpa", fused_kernels="no",
                        prefill_chunk="0")
        engine = Engine.load(str(random_ckpt), plan, "cpu")
        assert engine.model.dtype == getattr(torch, plan.storage_dtype)
        return plan.compute_dtype, engine.generate(engine.prepare(windows), Generation(8))

    fp32 = answers_with("fp32", None)
    assert fp32[0] == "float32" and len(set(fp32[1])) == 3
    assert answers_with("fp16", "7.5,24") == ("float16", fp32[1])
    nf4_fp32 = answers_with("nf4", "6.1,11")
    assert nf4_fp32[0] == "float32" and len(set(nf4_fp32[1])) == 3
    assert answers_with("nf4", "7.5,24") == ("float16", nf4_fp32[1])


def compile_with(monkeypatch, compile_):
    """torch.compile replaced by compile_, and fused's kernels compiled again in this process with it, once (a new
    cache for fused.compiled: the process's own, which may hold a real compile, is left untouched)."""
    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(fused, "compiled", functools.cache(fused.compiled.__wrapped__))


# --- 5. the H100 plan on a CPU: every optional path falls back, same answers ------------------

@pytest.mark.slow
def test_a_gpu_plan_on_cpu_falls_back_with_one_warning_each_and_the_same_answers(odd_root, video_25fps, random_ckpt,
                                                                                 plain_answers, monkeypatch, capsys):
    """--assume-gpu on CPU plans for that GPU (no memory cap without one): Triton decode attention
    and CUDA graphs fail their self-check and warn once each. The fused kernels pass theirs: torch.compile is
    the identity here, as in test_fused_kernels_are_checked_against_transformers, which checks their self-check
    both ways (Inductor compiling them for this CPU cost ~20 s of CPU on a clean machine, and a failed compile
    only warns; the GPU tests compile them for real)."""
    compile_with(monkeypatch, lambda fn, *args, **kwargs: fn)
    capsys.readouterr()
    code, records = run_worker(odd_root, "h100 on cpu", video_25fps, random_ckpt, "--assume-gpu", "9.0,80")
    log = capsys.readouterr().err
    assert code == 0
    assert answers(records) == plain_answers
    assert "plan for an H100-class GPU (compute capability 9.0, 80 GiB, assumed)" in log
    assert "decode attention triton; fused kernels yes; CUDA graphs yes" in log
    warned = warnings_in(log)
    triton = [w for w in warned if "triton decode attention failed its self-check" in w]
    graphs = [w for w in warned if "CUDA-graph decoding failed its self-check" in w]
    assert len(triton) == 1 and "using SDPA decode attention instead" in triton[0]
    assert len(graphs) == 1 and "using eager decode steps instead" in graphs[0]
    assert "fused kernels passed their self-check" in log
    assert len(warned) == 2, warned
    assert "3 of 3 windows answered" in log


# --- 6. optional paths that give wrong numbers are caught ---------------------------------

@pytest.mark.parametrize("kernel", ["wrong", "right"])
@pytest.mark.slow
def test_triton_decode_attention_is_checked_against_sdpa(kernel, odd_root, video_25fps, random_ckpt, plain_answers,
                                                         monkeypatch, capsys):
    """A stand-in for the Triton kernel runs on CPU: one that gives wrong attention is caught by the
    attention self-check (its only call) with a warning; a right one passes and decodes every token."""
    calls = []

    def split_kv_attention(q, keys, values, positions, scale, block=64):
        calls.append(q.shape)
        right = decoding.attend(q, keys, values, positions, scale, "sdpa")
        return right if kernel == "right" else -3 * right

    monkeypatch.setattr(decoding, "split_kv_attention", split_kv_attention)
    capsys.readouterr()
    code, records = run_worker(odd_root, f"triton {kernel}", video_25fps, random_ckpt, "--assume-gpu", "9.0,80",
                               "--cuda-graphs", "no", "--fused-kernels", "no")
    log = capsys.readouterr().err
    assert code == 0 and answers(records) == plain_answers
    layers = 2  # the tiny checkpoint's
    if kernel == "wrong":
        (warning,) = warnings_in(log)
        m = re.search(r"triton decode attention failed its self-check on this GPU \(batch \d+, float32: its output "
                      r"differs from an fp32 reference by ([\d.]+)% of the largest value, more than 0.4%\); using SDPA "
                      r"decode attention instead", warning)
        assert m and float(m[1]) > 100, warning
        assert len(calls) == 1  # the check alone, then never again
    else:
        assert warnings_in(log) == []
        assert re.search(r"triton decode attention passed its self-check \(batch \d+, float32: within [\d.]+% of "
                         r"an fp32 reference, tolerance 0.4%\)", log), log
        assert len(calls) > 3 * layers  # decoded every window with it


ATTENTION_SHAPES = [((1, 8, 4, 128), 3000, [2990]), ((2, 8, 4, 128), 3000, [2500, 7]),
                    ((16, 2, 2, 64), 700, list(range(0, 700, 44)))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_shape,slots,positions", ATTENTION_SHAPES)
def test_the_decode_attention_self_check_compares_the_operation_with_an_fp32_reference(q_shape, slots, positions,
                                                                                       dtype, caplog):
    """Issue 33 item 9: the self-check of a decode attention kernel is the operation alone against fp32 SDPA on
    the batch's shapes, with the dtype's rounding as tolerance (whole-model logits under FP8 are as noisy as the
    old threshold, so the kernel used flipped with the batch size). On CPU, PyTorch's SDPA in the storage dtype
    passes; kernels that are wrong by one slot at either end of a row, or by a sign, fail; the real Triton
    kernel fails (no GPU) with one warning. Each verdict is reached once per process per shape and dtype."""
    positions = torch.tensor(positions)
    scale = q_shape[-1] ** -0.5

    def sdpa(q, keys, values, at, s):
        return decoding.attend(q, keys, values, at, s, "sdpa")

    def short(q, keys, values, at, s):  # misses each row's last slot
        return decoding.attend(q, keys, values, (at - 1).clamp_min(0), s, "sdpa")

    def long(q, keys, values, at, s):  # reads one slot past each row's end
        return decoding.attend(q, keys, values, at + 1, s, "sdpa")

    def negated(q, keys, values, at, s):
        return -sdpa(q, keys, values, at, s)

    assert decoding.attention_error(sdpa, q_shape, slots, positions, dtype, scale) < 0.25 * \
        decoding.ATTENTION_TOLERANCE[dtype]
    for wrong in ([short] if positions.min() > 0 else []) + [long, negated]:
        assert decoding.attention_error(wrong, q_shape, slots, positions, dtype, scale) > 0.3, wrong.__name__

    caplog.set_level("INFO", logger="llava_worker")
    for _ in range(2):  # the second call reuses the verdict: nothing logged
        assert decoding.check_attention("stand-in", q_shape, slots, positions, dtype, scale, kernel=sdpa)
        assert not decoding.check_attention("stand-in", q_shape, slots, positions, dtype, scale, kernel=long)
        assert not decoding.check_attention("triton", q_shape, slots, positions, dtype, scale)  # no GPU here
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "stand-in passed its self-check (batch" in lines[0]
    assert lines[1].startswith("⚠️ stand-in failed its self-check on this GPU (batch")
    assert "RuntimeError: split_kv_attention needs a CUDA GPU and Triton" in lines[2]


@pytest.mark.parametrize("kernels", ["wrong", "right"])
@pytest.mark.slow
def test_fused_kernels_are_checked_against_transformers(kernels, odd_root, video_25fps, random_ckpt, plain_answers,
                                                        monkeypatch, capsys):
    """torch.compile replaced by one whose RMSNorm is wrong (x3): the self-check warns and the
    prefill keeps transformers' kernels; one that compiles to the same function passes."""
    compiled = []

    def compile_(fn, *args, **kwargs):
        compiled.append(fn)
        if kernels == "wrong" and fn is fused.rms_norm:
            return lambda x, weight, eps: 3 * fn(x, weight, eps)
        return fn

    compile_with(monkeypatch, compile_)
    capsys.readouterr()
    code, records = run_worker(odd_root, f"fused {kernels}", video_25fps, random_ckpt, "--assume-gpu", "9.0,80",
                               "--decode-attention", "sdpa", "--cuda-graphs", "no")
    log = capsys.readouterr().err
    assert code == 0 and answers(records) == plain_answers
    assert fused.rms_norm in compiled
    if kernels == "wrong":
        (warning,) = warnings_in(log)
        assert re.search(r"fused kernels failed their self-check on this GPU \(ValueError: their logits differ from "
                         r"transformers' kernels' by [\d.]+%\); prefill runs transformers' own kernels", warning)
        assert "fused kernels compiled and checked" not in log
    else:
        assert warnings_in(log) == []
        assert "fused kernels passed their self-check" in log and "fused kernels compiled and checked" in log


def test_fusing_one_model_leaves_another_in_the_same_process_untouched(random_ckpt, monkeypatch):
    """fused.install changes the modules of the model it is given, not Mistral's classes: a second
    model loaded beside it runs transformers' own code (no fused kernel is called), with the same
    logits as before; fused.remove gives the fused model back its own code; a deleted fused model is freed
    at once (its modules hold no reference to themselves). torch.compile as in the test above: the
    functions themselves, counted."""
    import gc
    import weakref

    from transformers.models.mistral import modeling_mistral as mistral
    compiled, calls = [], []

    def compile_(fn, *args, **kwargs):
        def counted(*a, **kw):
            calls.append(fn.__name__)
            return fn(*a, **kw)
        compiled.append(fn.__name__)
        return counted

    def own_forwards(model):
        return [type(m).__name__ for m in model.modules() if "forward" in vars(m)]

    compile_with(monkeypatch, compile_)
    eager = (mistral.MistralRMSNorm.forward, mistral.MistralMLP.forward, mistral.MistralAttention.forward,
             mistral.apply_rotary_pos_emb)
    one, _ = families.load(str(random_ckpt), cpu_plan(), "cpu")
    other, _ = families.load(str(random_ckpt), cpu_plan(), "cpu")
    before = fused.lm_logits(other)
    assert fused.install(one) is True
    layers = one.config.text_config.num_hidden_layers
    assert sorted(set(own_forwards(one))) == ["MistralAttention", "MistralMLP", "MistralRMSNorm"]
    assert len(own_forwards(one)) == layers * 4 + 1  # 2 norms, MLP, attention per layer; the final norm
    assert own_forwards(other) == []
    assert (mistral.MistralRMSNorm.forward, mistral.MistralMLP.forward, mistral.MistralAttention.forward,
            mistral.apply_rotary_pos_emb) == eager
    calls.clear()
    torch.testing.assert_close(fused.lm_logits(other), before, rtol=0, atol=0)
    assert calls == []  # the other model called no fused kernel
    torch.testing.assert_close(fused.lm_logits(one), fused.lm_logits(other))
    assert {"rms_norm", "silu_gate", "apply_rotary_pos_emb"} <= set(calls)  # the fused model called each
    fused.remove(one)
    assert own_forwards(one) == []
    assert fused.install(one) and fused.install(other)
    assert len(own_forwards(other)) == layers * 4 + 1 and len(compiled) == 3  # compiled once per process
    modules = [weakref.ref(m) for m in one.modules()]
    gc.disable()
    try:
        del one
        assert [type(m()).__name__ for m in modules if m() is not None] == []  # no cycle keeps one alive
    finally:
        gc.enable()


# --- 7. chunked prefill gives the whole prefill's answers ------------------------------------

@pytest.fixture(scope="module")
def long_prompts(odd_root, video_25fps):
    """random_ckpt's weights at 112 px, ~5,000 tokens a window (past the 1080 Ti plan's 4,096-token chunk; the
    56 px "tiny" gives ~1,800), and the plain path's answers with it: (checkpoint, answers)."""
    ckpt = synthetic.make_checkpoint(odd_root / "ckpt112", "tiny112", seed=3, init_std=0.5)
    code, records = run_worker(odd_root, "plain 112 px", video_25fps, ckpt, *PLAIN)
    assert code == 0
    return ckpt, answers(records)


@pytest.mark.parametrize("flags,chunk", [(["--prefill-chunk", "500"], 500),
                                         (["--assume-gpu", "6.1,11", "--cuda-graphs", "no"], gpus.PREFILL_CHUNK)])
@pytest.mark.slow
def test_chunked_prefill_gives_the_whole_prefills_answers(flags, chunk, odd_root, video_25fps, long_prompts,
                                                          monkeypatch, capsys):
    """An explicit chunk, and the GTX 1080 Ti plan's own (4096 tokens, fp32 compute, SDPA decode)."""
    ckpt, plain = long_prompts
    prompts = []
    real_last_logits = decoding.last_logits

    def last_logits(model, embeds, cache, chunk=None, position_ids=None):
        prompts.append((embeds.shape[1], chunk))
        return real_last_logits(model, embeds, cache, chunk, position_ids)

    monkeypatch.setattr(decoding, "last_logits", last_logits)
    capsys.readouterr()
    code, records = run_worker(odd_root, f"chunk {chunk}", video_25fps, ckpt, *flags)
    log = capsys.readouterr().err
    assert code == 0 and answers(records) == plain
    assert f"prefill chunks of {chunk} tokens" in log
    assert len(prompts) == 3 and all(n > chunk and c == chunk for n, c in prompts)  # really cut into chunks
    assert not [w for w in warnings_in(log) if "self-check" in w]  # (fp32 on an 11 GiB plan warns of OOM)


# --- 8. a GPU that this torch build has no kernels for --------------------------------------

def simulate_gpu(monkeypatch, name, capability, gib, arch_list):
    """torch reports one CUDA GPU: the parts of torch.cuda that pick_device and gpus.detect ask."""
    props = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1], total_memory=gib * 2**30,
                                  multi_processor_count=80)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.version, "cuda", "12.8")


@pytest.mark.parametrize("extra", [[], ["--assume-gpu", "9.0,80"]])
def test_a_gpu_without_kernels_in_this_torch_is_refused_before_loading_the_model(extra, odd_root, video_25fps,
                                                                                 monkeypatch, capsys):
    """A Titan V (7.0) with a torch built for sm_75+ only: exit 1, one line naming the fix, before
    the model is loaded (the model path does not exist) and before anything is written. Assuming
    another GPU does not hide it: the check is for the real card."""
    simulate_gpu(monkeypatch, "NVIDIA TITAN V", (7, 0), 12, ["sm_75", "sm_80", "sm_90"])
    project = make_project(odd_root / f"titan v {len(extra)}", {"v.mkv": video_25fps})
    code = worker.main(["--gpu-id", "0", "--num-workers", "4", "--video-index", "0", "--project", str(project),
                        "--model", "/nonexistent/model", *extra])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "has no kernels for compute capability 7.0 (built for sm_75 sm_80 sm_90)" in line
    assert "srun -p GPU --gres=gpu:1 bash setup_llava.sh" in line
    assert "cannot load model" not in err and "model loaded" not in err
    assert not partial_path(project, 0, 0).exists()
    # --print-plan says the same and prints no plan
    assert worker.main(["--print-plan", "--model", "/nonexistent/model", *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "has no kernels for compute capability 7.0" in captured.err


@pytest.mark.parametrize("arch_list", [["sm_70", "sm_75", "sm_80"], ["sm_80", "sm_90", "compute_70"],
                                       ["sm_60", "sm_70"]])
def test_a_gpu_with_kernels_in_this_torch_gets_its_plan(arch_list, monkeypatch, capsys):
    """The same Titan V with a torch that has sm_70 cubins or compute_70 PTX: its own plan."""
    simulate_gpu(monkeypatch, "NVIDIA TITAN V", (7, 0), 12, arch_list)
    code, plan = print_plan(capsys)
    assert code == 0
    assert plan["gpu"] == "NVIDIA TITAN V" and plan["capability"] == "7.0" and plan["assumed"] is False
    assert plan["compute_dtype"] == "float16" and plan["prefill_chunk"] == gpus.PREFILL_CHUNK
    assert plan["memory_cap_gib"] is None


def test_assuming_a_smaller_gpu_on_a_real_one_caps_the_memory(monkeypatch, capsys):
    simulate_gpu(monkeypatch, "NVIDIA H200", (9, 0), 140, ["sm_80", "sm_90"])
    code, plan = print_plan(capsys, "--assume-gpu", "7.5,24")
    assert code == 0
    assert plan["gpu"] == "a Titan RTX-class GPU (on NVIDIA H200)" and plan["assumed"] is True
    assert plan["memory_cap_gib"] == round(24 - gpus.CONTEXT_GIB, 2)
    assert plan["compute_dtype"] == "float16" and plan["decode_attention"] == "sdpa"


@pytest.mark.parametrize("card,share,memory,weights,chunk", [
    (("NVIDIA H100 80GB HBM3", (9, 0), 80), 4, 20, "packed", None),   # the FACTS run that went OOM as 4 x 80 GB
    (("NVIDIA H100 80GB HBM3", (9, 0), 80), 1, 80, "dequantized", None),
    (("NVIDIA TITAN RTX", (7, 5), 24), 2, 12, "packed", gpus.PREFILL_CHUNK),  # a 12 GB share prefills in chunks
])
def test_workers_sharing_a_gpu_plan_for_their_share(card, share, memory, weights, chunk, monkeypatch, capsys):
    """LLAVA_GPU_SHARE=N (submit_llava.sh sets it when workers outnumber GPUs): each worker plans as for a card
    of 1/N of the memory, with PyTorch's memory capped at it (each process has its own CUDA context)."""
    simulate_gpu(monkeypatch, card[0], card[1], card[2], ["sm_75", "sm_80", "sm_90"])
    monkeypatch.setenv("LLAVA_GPU_SHARE", str(share))
    code, plan = print_plan(capsys)
    assert code == 0 and plan["shared_by"] == share and plan["memory_gib"] == memory
    assert plan["nf4_weights"] == weights and plan["prefill_chunk"] == chunk
    assert plan["memory_cap_gib"] == (round(memory - gpus.CONTEXT_GIB, 2) if share > 1 else None)
    four = (memory - gpus.CONTEXT_GIB - llava_next.WEIGHTS_GIB["nf4"] - llava_next.ACTIVATIONS_GIB) // llava_next.KV_GIB
    assert share == 1 or plan["batch_size_estimate"] == max(1, four)


def test_a_share_on_the_cpu_or_a_bad_share_is_the_usual_plan_or_one_line(monkeypatch, capsys):
    code, plan = print_plan(capsys, "--gpu-share", "4")
    assert code == 0 and plan["gpu"] == "cpu" and plan["shared_by"] == 1 and plan["memory_cap_gib"] is None
    monkeypatch.setenv("LLAVA_GPU_SHARE", "0")
    with pytest.raises(SystemExit) as e:
        print_plan(capsys)
    assert e.value.code == 2 and "LLAVA_GPU_SHARE='0' (--gpu-share): must be at least 1" in capsys.readouterr().err


@pytest.mark.slow  # a whole worker process: importing bitsandbytes and loading NF4 on the CPU is the point (~10 s)
def test_a_worker_that_sees_no_gpu_says_so_once_and_bitsandbytes_is_quiet(odd_root, video_25fps, goal_checkpoint):
    """Issue 33 item 10: submit_llava.sh logs "on GPU 0 (CUDA_VISIBLE_DEVICES=0)" for a worker; when its torch
    sees no GPU (this CPU machine: a broken driver or a CPU build of torch on a GPU node) the worker says so,
    once. bitsandbytes' import-time line about its optional CPU kernel package ("Failed to load CPU
    gemm_4bit_forward from kernels-community", once per worker: 4 per video) is dropped. A real worker
    process (bitsandbytes is imported once per process), NF4 on the CPU."""
    project = make_project(odd_root / "no gpu visible", {"match/1_224p.mkv": video_25fps})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "llava_split_worker.py"), "--gpu-id", "0", "--num-workers",
                        str(WORKERS), "--video-index", "0", "--project", str(project), "--model", str(goal_checkpoint),
                        "--quantization", "nf4", "--max-new-tokens", "8"], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "no GPU visible" in line]
    assert len(said) == 1 and said[0].endswith(
        "⚠️ no GPU visible to this worker (CUDA_VISIBLE_DEVICES=0, torch.cuda.is_available() False): running on the "
        "CPU, very slowly; check the node's driver and the torch build (setup's checks)"), r.stderr
    assert "kernels-community" not in r.stderr and "gemm_4bit_forward" not in r.stderr, r.stderr
    assert "quantization=nf4 device=cpu" in r.stderr
