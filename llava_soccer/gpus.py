"""One execution plan per GPU: the dtypes and kernels the worker uses, chosen once from the GPU's
compute capability and memory, so the same command runs on a GTX 1080 Ti and on an H200.

    python llava_split_worker.py --gpu-id 0 --num-workers 4 --video-index 0 --print-plan
    python llava_split_worker.py ... --assume-gpu 7.5,24      # plan (and on a GPU run, memory capped) as a Titan RTX

The rules (docs/gpus.md; sources in the comments):
- 8.0+ (A100, L40S, H100, H200): bf16 compute, cuDNN/flash attention, Triton decode attention,
  torch.compile'd elementwise kernels, CUDA-graph decode.
- 7.x (Titan V, V100, Titan RTX, T4): no bf16 in hardware (Turing/Volta MMA has fp16 only), so fp16
  compute (NF4's compute dtype too); flash and cuDNN attention need 8.0+, so the memory-efficient
  SDPA kernel; Triton >= 3.3 supports 8.0+ only (triton-lang/triton#5066), so neither Triton decode
  attention nor torch.compile (its GPU backend writes Triton).
- 6.1 (GTX 1080 Ti, other GeForce/Quadro Pascal): as 7.x, but GP102/GP104 run fp16 arithmetic at
  1/64 rate, so matrix products compute in fp32 while weights, activations and the KV cache are
  stored in fp16 (an fp32 KV cache alone would not fit 11 GB).
- 6.0 (Tesla P100, GP100) runs fp16 at twice its fp32 rate (CUDA C++ Programming Guide, arithmetic
  instructions: 16-bit floating-point add, multiply, multiply-add), so it takes the 7.x plan: fp16
  compute and storage.
- NF4 on 8.0+ cards of 64 GiB or more (A100-80, H100, H200): the 4-bit weights are dequantized to
  bf16 once at load (+10 GiB), so no matrix product dequantizes them again: the same weights and
  the same bf16 products, ~4% faster (benchmarks/RESULTS.md, session 7). Smaller cards keep them
  packed (bitsandbytes dequantizes per product): their memory holds more windows instead.
- Cards under 16 GiB prefill the 25k-token prompt in chunks (llava_soccer.decoding), so faithful NF4
  at batch 1 fits an 11 GB card; larger ones prefill it whole (faster).
Optional paths (Triton decode attention, fused kernels, CUDA graphs) are checked against the plain
path the first time they run in a process and dropped with one warning if they fail or disagree.
"""
import dataclasses
import json
import re

from .cli import InputError

# --assume-gpu CC without GIB: the memory of the users' cards of that capability (docs/gpus.md table).
TYPICAL = {(6, 0): ("Tesla P100", 16), (6, 1): ("GTX 1080 Ti", 11), (7, 0): ("Titan V", 12),
           (7, 5): ("Titan RTX", 24), (8, 0): ("A100", 80), (8, 6): ("RTX 3090", 24), (8, 9): ("L40S", 48),
           (9, 0): ("H100", 80)}
CONTEXT_GIB = 0.7          # CUDA context + cuBLAS workspace: what PyTorch cannot allocate of a card
CHUNKED_BELOW_GIB = 16     # smaller cards (11-12 GB) prefill in chunks: less memory, slower
PREFILL_CHUNK = 4096       # tokens per prefill chunk on those cards (a 224p window has ~25k)
BACKENDS = ("cudnn", "flash", "efficient", "math")
# Pascal chips with full-rate fp16 (GP100; GP10B of 6.2 too): the 7.x plan's fp16 compute suits them.
FAST_FP16_PASCAL = ((6, 0), (6, 2))
# The worker's memory per window (weights, prefill activations, KV cache of one 224p window) is the model
# family's: WEIGHTS_GIB, ACTIVATIONS_GIB, KV_GIB in llava_soccer/families/<family>.py.
DEQUANTIZE_FROM_GIB = 64  # NF4 weights dequantized once on 8.0+ cards this large (14 GiB of bf16 + 16 windows)
FP8_CAPABILITY = (8, 9)   # FP8 tensor cores: Ada (8.9), Hopper (9.0) and later


@dataclasses.dataclass(frozen=True)
class Plan:
    """What runs on this GPU, decided once before the model loads and never changed after: what the
    self-checks of the optional paths find in a process belongs to the engine (llava_soccer/engine.py)."""
    gpu: str                       # the card's name ("cpu" without one)
    capability: str | None         # "7.5"
    memory_gib: float | None       # the card's memory
    assumed: bool                  # planned for --assume-gpu, not for the card it runs on
    quantization: str
    compute_dtype: str             # matrix products: bfloat16 / float16 / float32
    storage_dtype: str             # weights outside NF4, activations, KV cache
    prefill_attention: tuple       # SDPA backends, in the order tried
    prefill_chunk: int | None      # tokens per prefill chunk; None = the whole prompt at once
    decode_attention: str          # triton / sdpa
    fused_kernels: bool
    nf4_weights: str | None        # nf4 only: packed (dequantized per product) / dequantized (bf16 once)
    cuda_graphs: bool
    batch_size_estimate: int       # what --batch-size auto should reach at 224p (the worker's BatchSize decides)
    memory_cap_gib: float | None   # what this process may allocate (assumed or shared GPUs only)
    shared_by: int = 1             # workers sharing the card: memory_gib is this worker's share
    warnings: tuple = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def line(self, batch_size="auto") -> str:
        """One line for the log; batch_size: the --batch-size setting (the worker's BatchSize owns the size)."""
        notes = [f"1/{self.shared_by} of the card, shared by {self.shared_by} workers"] if self.shared_by > 1 else []
        notes += ["assumed"] if self.assumed else []
        notes += [f"memory capped at {self.memory_cap_gib:g} GiB"] if self.memory_cap_gib else []
        cc = f" (compute capability {self.capability}, {self.memory_gib:g} GiB{''.join(', ' + n for n in notes)})" \
            if self.capability else ""
        chunk = f"chunks of {self.prefill_chunk} tokens" if self.prefill_chunk else "whole"
        weights = f" ({self.nf4_weights} weights)" if self.nf4_weights else ""
        return (f"plan for {self.gpu}{cc}: {self.quantization}{weights}, {self.compute_dtype} compute, "
                f"{self.storage_dtype} storage; prefill attention {'>'.join(self.prefill_attention)}, prefill {chunk}; "
                f"decode attention {self.decode_attention}; fused kernels {_yes(self.fused_kernels)}; "
                f"CUDA graphs {_yes(self.cuda_graphs)}; batch size {batch_size}"
                + (f" (~{self.batch_size_estimate} at 224p)" if batch_size == "auto" else ""))


def _yes(flag):
    return "yes" if flag else "no"


def parse_assume(value: str):
    """'7.5' or '7.5,24' -> ((7, 5), 24.0 or None); ValueError with a message naming the format."""
    m = re.fullmatch(r"\s*(\d+)\.(\d)\s*(?:,\s*(\d+(?:\.\d+)?)\s*)?", value or "")
    if not m or not 3 <= int(m[1]) <= 20:
        raise ValueError(f"{value!r} is not CC[,GIB], e.g. 7.5,24 (compute capability 7.5, 24 GiB)")
    if m[3] is not None and not 1 <= float(m[3]) <= 4096:
        raise ValueError(f"{value!r}: the memory must be 1 to 4096 GiB, e.g. 7.5,24")
    return (int(m[1]), int(m[2])), float(m[3]) if m[3] is not None else None


def detect(device: str):
    """(name, (major, minor), memory GiB) of the device's GPU, None for the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch
    props = torch.cuda.get_device_properties(device)
    return props.name, (props.major, props.minor), props.total_memory / 2**30


def _card(s, real):
    """(name, compute capability, GiB, assumed) of the card planned for: s.assume_gpu's, else `real`'s, else
    the CPU's (None, None)."""
    if s.assume_gpu:
        cc, gib = parse_assume(s.assume_gpu)
        typical = TYPICAL.get(cc, (f"GPU {cc[0]}.{cc[1]}", 16))
        article = "an" if typical[0][0] in "AEFHILMNORSX" else "a"  # an A100, an H100, a Titan V
        return (f"{article} {typical[0]}-class GPU" + (f" (on {real[0]})" if real else ""), cc,
                float(gib or typical[1]), True)
    if real:
        return (*real, False)
    return "cpu", None, None, False


def _explicit(s, cc, paths, warnings):
    """paths = (prefill backends, chunk, decode attention, fused, graphs) with the flags not "auto" in their
    place: explicit flags win over the plan."""
    backends, chunk, decode, fused, graphs = paths
    if s.attention != "auto":
        backends = [s.attention] + [b for b in BACKENDS if b != s.attention]
        if cc is not None and cc < (8, 0) and s.attention in ("cudnn", "flash"):
            warnings.append(f"--attention {s.attention} needs compute capability 8.0+; PyTorch will use the "
                            "next backend in the list")
    if s.prefill_chunk != "auto":
        chunk = int(s.prefill_chunk) or None
    if s.decode_attention != "auto":
        decode = s.decode_attention
    if s.fused_kernels != "auto":
        fused = s.fused_kernels == "yes"
    if s.cuda_graphs != "auto":
        graphs = s.cuda_graphs == "yes"
    return backends, chunk, decode, fused, graphs


def plan(s, real, family=None) -> Plan:
    """The plan for settings s (config.WorkerSettings) on `real` (detect()'s answer), or on s.assume_gpu, for
    the model family's memory and kernels (llava_soccer/families/; None: s.model's, families.of_model).
    Workers sharing one card (s.gpu_share) each plan as for a card of their share of its memory, so that
    the share decides what a card of that size would: packed NF4 weights, chunks, the batch size."""
    from .families import of_model
    from .generation import Generation
    family = family or of_model(s.model)
    name, cc, gib, assumed = _card(s, real)
    share = s.gpu_share if cc is not None else 1
    if share > 1:
        gib /= share
    warnings = []
    quant = s.quantization
    modern = cc is None or cc >= (8, 0)  # (CPU: nf4 keeps bf16 compute)
    pascal = cc is not None and cc < (7, 0) and cc not in FAST_FP16_PASCAL  # fp16 arithmetic at 1/64 rate
    nf4 = "bfloat16" if modern else "float32" if pascal else "float16"
    compute = {"nf4": nf4, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "bfloat16"}[quant]
    if cc is None:  # CPU: PyTorch's own kernels
        backends, decode, fused, graphs = ["math"], "sdpa", False, False
    else:
        if compute == "bfloat16" and not modern:
            warnings.append(f"--quantization {quant} on compute capability {cc[0]}.{cc[1]}: bf16 has no hardware "
                            "support before 8.0, so PyTorch emulates it, several times slower; nf4 or fp16 is faster")
        if compute == "float16" and pascal:
            warnings.append(f"--quantization fp16 on compute capability {cc[0]}.{cc[1]}: fp16 arithmetic runs at "
                            "1/64 rate on Pascal; nf4 (fp32 compute) is faster")
        backends = list(BACKENDS) if modern else ["efficient", "math"]
        decode, fused, graphs = ("triton" if modern else "sdpa"), modern, True
    if quant == "fp8" and (cc is None or cc < FP8_CAPABILITY):  # every caller (worker, bench, tests) refuses alike
        where = f"{name} has compute capability {cc[0]}.{cc[1]}" if cc else "there is no GPU here"
        raise InputError(f"--quantization fp8 needs FP8 tensor cores (compute capability {FP8_CAPABILITY[0]}."
                         f"{FP8_CAPABILITY[1]}+: Ada, Hopper, Blackwell) and {where}: use nf4 (the default) or bf16")
    if quant == "fp8" and not family.FP8:
        raise InputError(f"--quantization fp8: this pipeline has no FP8 layers for {family.NAME} models ({s.model}): "
                         f"use nf4 (the default) or bf16")
    storage = "float16" if compute == "float32" and quant == "nf4" and cc is not None else compute
    chunk = PREFILL_CHUNK if gib is not None and gib < CHUNKED_BELOW_GIB else None
    nf4_weights = None
    if quant == "nf4":
        nf4_weights = "dequantized" if cc is not None and modern and gib >= DEQUANTIZE_FROM_GIB else "packed"
        if s.nf4_weights != "auto":
            nf4_weights = s.nf4_weights
        if nf4_weights == "dequantized" and compute != storage:
            warnings.append(f"--nf4-weights dequantized: {compute} weights would not fit beside {storage} activations "
                            f"on compute capability {cc[0]}.{cc[1]}; the weights stay packed")
            nf4_weights = "packed"

    backends, chunk, decode, fused, graphs = _explicit(s, cc, (backends, chunk, decode, fused, graphs), warnings)
    fused = fused and family.FUSED_KERNELS  # (the kernels are written for one family's modules: fused.py)
    if cc is None and (decode == "triton" or fused or graphs):
        warnings.append("no GPU: the GPU paths asked for (Triton decode attention, CUDA graphs, fused kernels) are "
                        "tried; those that fail their self-check fall back to PyTorch's kernels")
    weights = family.WEIGHTS_GIB["bf16" if nf4_weights == "dequantized" else quant]
    activations, kv = family.ACTIVATIONS_GIB, family.KV_GIB
    cap = round(gib - CONTEXT_GIB, 2) if real and (assumed or share > 1) else None  # each process has its context
    usable = (gib - CONTEXT_GIB) if gib else 0
    # the fast decoder prefills one window at a time: a window more adds its KV cache; generate() prefills the
    # batch at once: a window more adds its activations too (worker.BatchSize measures by the same rule)
    fits = ((usable - weights - activations) // kv if Generation.from_settings(s, family).fast
            else (usable - weights) // (activations + kv))
    estimate = max(1, min(s.max_batch_size, int(fits)))
    if gib and usable < weights + activations + kv:
        warnings.append(f"{gib:g} GiB is less than one 224p window needs with --quantization {quant} "
                        f"(~{weights + activations + kv:.0f} GiB): expect OOM; use nf4 and --visual-tokens "
                        "reduced")
    return Plan(gpu=name, capability=f"{cc[0]}.{cc[1]}" if cc else None, memory_gib=round(gib, 1) if gib else None,
                assumed=assumed, quantization=quant, compute_dtype=compute, storage_dtype=storage,
                prefill_attention=tuple(backends), prefill_chunk=chunk, decode_attention=decode, fused_kernels=fused,
                nf4_weights=nf4_weights, cuda_graphs=graphs, batch_size_estimate=estimate,
                memory_cap_gib=cap, shared_by=share, warnings=tuple(warnings))


def apply_memory(plan, device):
    """On a GPU: expandable segments, so freed blocks of the 25k-token prefill are reused rather than
    fragmenting the cache (unless PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF is set;
    https://pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf);
    and on a GPU larger than the assumed one, the allocator capped at what that card leaves."""
    import os

    import torch
    if not str(device).startswith("cuda"):
        return
    if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    if plan.memory_cap_gib is not None:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, plan.memory_cap_gib / total), device)


def torch_build_problem(capability, arch_list, torch_version, cuda_version):
    """None if this torch has kernels for a GPU of `capability` ((major, minor)), else one line
    naming the fix. A cubin sm_XY runs on X.Z for Z >= Y; PTX compute_XY is compiled for any
    newer GPU by the driver (https://docs.nvidia.com/cuda/cuda-c-programming-guide/#binary-compatibility)."""
    major, minor = capability
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not m:
            continue
        built = (int(m[2]), int(m[3]))
        same_major = m[1] == "sm" and built[0] == major and built[1] <= minor  # sm_XY runs on X.Y+ of one major
        if same_major or (m[1] == "compute" and built <= (major, minor)):  # PTX is compiled for newer ones
            return None
    return (f"torch {torch_version} (CUDA {cuda_version}) has no kernels for compute capability {major}.{minor} "
            f"(built for {' '.join(arch_list) or 'CPU only'}): run setup on a node with this GPU "
            f"(srun -p GPU --gres=gpu:1 bash setup_llava.sh), which installs a CUDA 12 build of torch for it")


def check_torch_build(device):
    """torch_build_problem() for the device's real GPU (never an assumed one); None on CPU."""
    real = detect(device)
    if real is None:
        return None
    import torch
    return torch_build_problem(real[1], torch.cuda.get_arch_list(), torch.__version__, torch.version.cuda)
