"""LLaVA-NeXT loading, the event prompt and batched generation.

The real Hugging Face classes run everywhere: on the cluster with the hub id, in tests with a
tiny checkpoint directory built by synthetic.py (same from_pretrained call).
"""
import contextlib
import dataclasses
import functools
import logging
import os
import types
import weakref
from pathlib import Path

from .gpus import for_device
from .jsonio import InputError, first_line
from .settings import DEFAULT_MODEL, FPS, SOCCERNET_CLASSES

# Imports go one way, model -> decoding; decoding is imported inside the functions that use it because it
# imports torch and transformers (seconds), which --help, --print-plan and a finished slice never need.

log = logging.getLogger("llava_worker")

QUESTION = (
    "These are {n} consecutive frames of a soccer match broadcast, {gap:g} seconds apart, numbered "
    "Frame 1 to Frame {n} with their time in the video. Which of these events happen in them: "
    + ", ".join(SOCCERNET_CLASSES) + "? "
    "For each event write one Python dict: {{'label': one of the event names above, 'team': 'home' or "
    "'away', 'confidence': a number from 0 to 1, 'frame': the number of the frame where it happens, "
    "'details': a few words}}. Answer with the dicts only, or None if none of these events happens."
)


def clock(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}"


def build_prompt(frame_times) -> str:
    """Mistral's [INST] format with each frame's number and time just before its image.

    The hub chat template would move every image to the front; keeping the number beside
    its image lets the model say WHEN (SoccerNet's tight metric forgives at most ~1 s).
    """
    frames = "".join(f"Frame {i} ({clock(t)}): <image>\n" for i, t in enumerate(frame_times, 1))
    return f"[INST] {frames}{QUESTION.format(n=len(frame_times), gap=1 / FPS)} [/INST]"


def pick_device(gpu_id: int) -> str:
    """The GPU this worker should use: the only one it sees when Slurm/CUDA_VISIBLE_DEVICES pins
    it, else the gpu_id-th of those visible; CPU when torch sees no GPU."""
    import torch
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{gpu_id % torch.cuda.device_count()}"


def check_model_source(model_id: str) -> None:
    """Fail in seconds, with one line, where from_pretrained would fail late or obscurely: a local
    path that does not exist ("Repo id must be in the form..."), or a hub model that is not cached
    on a node without network (minutes of retries). A hub id is "org/name"; anything else is a path."""
    import socket
    from urllib.parse import urlparse
    path = Path(model_id).expanduser()
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") != 1 or path.exists():
        if not path.is_dir():
            raise InputError(f"--model {model_id}: no such directory (a local checkpoint directory, or a hub id "
                             f"such as {DEFAULT_MODEL})")
        return
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return  # cached: from_pretrained needs no network (set HF_HUB_OFFLINE=1 to skip its update check)
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=5).close()
            return
        except OSError:
            pass
    why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached (no network on this node)"
    raise InputError(
        f"model {model_id} is not in the Hugging Face cache here "
        f"({os.environ.get('HF_HOME') or '~/.cache/huggingface'}) and {why}: "
        f"download it once where there is network (login node) into a shared HF_HOME: python -c \"from "
        f"huggingface_hub import snapshot_download; snapshot_download('{model_id}')\", then export the same HF_HOME "
        f"and HF_HUB_OFFLINE=1 before sbatch (README: Troubleshooting)")


def load(model_id: str, quantization: str, device: str, visual_tokens: str = "full", plan=None):
    """(model, processor); quantization nf4 = 4-bit NormalFloat (the seed's setting) computing in the
    plan's compute dtype (llava_soccer.gpus: bf16 on 8.0+ and CPU, fp16 on 7.x, fp32 on 6.x; default:
    the device's own plan), everything else stored in its storage dtype.

    visual_tokens="reduced" is the opt-in fast mode: each frame is seen as the 336x336 base view
    plus ONE high-resolution tile instead of LLaVA-NeXT's best grid of up to 2x2 tiles
    (image_grid_pinpoints = [[336, 336]]): 926 instead of 1,608 tokens per 224p frame.
    """
    import torch
    from transformers import BitsAndBytesConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-shard bars would flood the job log; we log the load time
    token = os.environ.get("HF_TOKEN") or None  # used, never printed
    kwargs = {"token": token, "device_map": {"": device}}
    plan = plan or for_device(device, quantization)
    compute, storage = getattr(torch, plan.compute_dtype), getattr(torch, plan.storage_dtype)
    kwargs["dtype"] = storage
    if quantization == "nf4":
        # bnb casts each layer's input to the compute dtype and its output back to the storage dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    processor = LlavaNextProcessor.from_pretrained(model_id, token=token)
    processor.tokenizer.padding_side = "left"  # batched generation appends on the right
    model = LlavaNextForConditionalGeneration.from_pretrained(model_id, **kwargs).eval()
    if quantization == "nf4" and plan.nf4_weights == "dequantized":
        dequantize_nf4(model)
    if quantization == "fp8":
        if plan.fused_kernels:  # their self-check on the bf16 weights: with random weights, FP8 rounding drowns it
            fuse_elementwise(model, True)
        to_fp8(model)
    if visual_tokens == "reduced":
        # Processor and model must agree on the grid, or the image token counts do not match.
        side = processor.image_processor.crop_size["height"]
        processor.image_processor.image_grid_pinpoints = [[side, side]]
        model.config.image_grid_pinpoints = [[side, side]]
    return model, processor


def dequantize_nf4(model):
    """Each bitsandbytes 4-bit linear layer becomes a plain one holding its NF4 weights dequantized
    once, in the layer's compute dtype: the tensor bitsandbytes would rebuild in every product of a
    prefill (F.linear on dequantize_4bit's output), so those products are the same, minus ~225
    dequantizations per forward (and per decode step, where they cost more than the products)."""
    import bitsandbytes as bnb
    import torch
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                        device="meta")
                plain.weight = torch.nn.Parameter(weight.to(child.compute_dtype), requires_grad=False)
                if child.bias is not None:
                    plain.bias = torch.nn.Parameter(child.bias.data.to(child.compute_dtype), requires_grad=False)
                setattr(parent, name, plain)
    torch.cuda.empty_cache()  # the packed weights just freed


FP8_MAX = 448.0  # the largest float8_e4m3fn


def _quantize_rows(x):
    """x (rows, k) -> (e4m3 values, float32 scale per row): each row scaled to the e4m3 range."""
    import torch
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


@functools.cache
def _fp8_rows_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(X, Y, S, stride_x, stride_y, n, MAX: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
        # one program per row, the whole row in registers: read once, written once
        row, cols = tl.program_id(0).to(tl.int64), tl.arange(0, BLOCK)
        ok = cols < n
        v = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        if GATED:  # gate | up side by side: Mistral's silu(gate) * up
            v = v * tl.sigmoid(v) * tl.load(X + row * stride_x + n + cols, mask=ok, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(v), 0), 1e-12) / MAX
        tl.store(Y + row * stride_y + cols, (v / scale).to(tl.float8e4nv), mask=ok)
        tl.store(S + row, scale)
    return kernel


def _fp8_rows(x, gated=False):
    """_quantize_rows(x) in one Triton kernel that reads each row once; gated: of silu(gate) * up for
    x = gate | up, Mistral's MLP middle, never written in bf16. (torch.compile's kernels for the same
    ran at ~30% of the H200's bandwidth: benchmarks/RESULTS.md, session 7.)"""
    import torch
    import triton
    x = x.contiguous()
    n = x.shape[1] // 2 if gated else x.shape[1]
    y = torch.empty((x.shape[0], n), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(n)
    _fp8_rows_kernel()[(x.shape[0],)](x, y, scale, x.stride(0), y.stride(0), n, MAX=FP8_MAX, GATED=gated,
                                      BLOCK=block, num_warps=8 if block <= 4096 else 16)
    return y, scale


@functools.cache
def _fp8_classes():
    """(FP8Linear, FP8MLP, SharedRows), made once per process."""
    import torch

    class SharedRows:
        """Quantizes an input once for the `readers` layers that all read that same tensor (q, k and v
        read one normed hidden state); dropped after the last of them."""

        def __init__(self, readers=1):
            self.readers, self.left, self.source, self.rows = readers, 0, None, None

        def __call__(self, x):
            if self.left == 0 or self.source() is not x:
                self.rows, self.source, self.left = _fp8_rows(x.reshape(-1, x.shape[-1])), weakref.ref(x), self.readers
            rows, self.left = self.rows, self.left - 1
            if self.left == 0:
                self.rows = self.source = None
            return rows

    class FP8Linear(torch.nn.Module):
        """y = x W^T in FP8 e4m3 on FP8 tensor cores (torch._scaled_mm): W scaled per output channel
        once, x per token (row); products accumulate in fp32, y comes out in bf16."""

        def __init__(self, weight, rows=None):
            super().__init__()
            w, scale = _quantize_rows(weight)
            self.weight_t = w.t()                    # (in, out), column-major, as _scaled_mm wants it
            self.scale_w = scale.t().contiguous()    # (1, out)
            self.rows = rows or SharedRows()

        def forward(self, x):
            return self.product(*self.rows(x), x.shape[:-1])

        def product(self, xq, scale_x, shape):
            y = torch._scaled_mm(xq, self.weight_t, scale_a=scale_x, scale_b=self.scale_w, out_dtype=torch.bfloat16)
            return y.reshape(*shape, y.shape[-1])

    class FP8MLP(torch.nn.Module):
        """MistralMLP in FP8: gate and up as one product (one quantization of x), then silu(gate) * up
        quantized in the same kernel that computes it, then down."""

        def __init__(self, mlp):
            super().__init__()
            self.gate_up = FP8Linear(torch.cat([mlp.gate_proj.weight.data, mlp.up_proj.weight.data]))
            self.down_proj = FP8Linear(mlp.down_proj.weight.data)

        def forward(self, x):
            gate_up = self.gate_up(x)
            return self.down_proj.product(*_fp8_rows(gate_up.reshape(-1, gate_up.shape[-1]), gated=True), x.shape[:-1])

    return FP8Linear, FP8MLP, SharedRows


def to_fp8(model):
    """The language model's linear layers in FP8 e4m3 (FP8Linear, FP8MLP): weights scaled per output
    channel, activations per token at run time, each input quantized once. The vision tower, the
    projector and lm_head stay in bf16. (torchao's float8 inference config, tried first, ran slower
    than bf16 here: benchmarks/RESULTS.md.) Mistral's layers have no biases."""
    import torch
    fp8_linear, fp8_mlp, shared_rows = _fp8_classes()
    for layer in model.model.language_model.layers:
        attn = layer.self_attn
        qkv = shared_rows(readers=3)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, fp8_linear(getattr(attn, name).weight.data, qkv))
        attn.o_proj = fp8_linear(attn.o_proj.weight.data)
        layer.mlp = fp8_mlp(layer.mlp)
    torch.cuda.empty_cache()  # the bf16 weights just freed


def prepare(processor, windows, dtype=None, pin=False):
    """Processor inputs (CPU tensors), one per window [(frame_times, rgb_frames)]: the fast decoder
    prefills each window alone; collate() batches them for transformers' generate.
    dtype: the pixels already in the model's dtype (bf16: half of fp32's 100 MB per window to copy to
    the GPU, rounded as the GPU would); pin: in page-locked memory, so that copy does not hold up the
    CPU (the worker prepares windows in its prefetch thread)."""
    inputs = [processor(images=frames, text=build_prompt(times), return_tensors="pt") for times, frames in windows]
    for window in inputs:
        if dtype is not None:
            window["pixel_values"] = window["pixel_values"].to(dtype)
        if pin:
            for key, value in window.items():
                window[key] = value.pin_memory()
    return inputs


def collate(processor, windows):
    """One left-padded batch out of prepare()'s per-window inputs."""
    import torch
    text = processor.tokenizer.pad([{k: w[k][0] for k in ("input_ids", "attention_mask")} for w in windows],
                                   padding=True, return_tensors="pt")
    return {**text, "pixel_values": torch.cat([w["pixel_values"] for w in windows]),
            "image_sizes": torch.cat([w["image_sizes"] for w in windows])}


def _attention(model, backends):
    """The plan's SDPA backends, in order, on a GPU (cuDNN first on 8.0+: faster than flash for the
    25k-token prefill on H100/H200; the memory-efficient kernel alone below 8.0)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if model.device.type != "cuda":
        return contextlib.nullcontext()
    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[b] for b in backends], set_priority=True)


@dataclasses.dataclass
class _Fused:
    """The fused kernels of this process: compiled and self-checked once, with the first model that asks
    (compiling the same functions again trips dynamo), then put into every model that asks."""
    tried: bool = False
    kernels: tuple | None = None  # (norm, gate, rope); None until compiled, or when that failed


_FUSED = _Fused()


def _rms_norm(x, weight, eps):  # MistralRMSNorm.forward's arithmetic, as a function of tensors
    import torch
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _silu_gate(gate, up):  # MistralMLP: act_fn(gate_proj(x)) * up_proj(x), act_fn = SiLU
    import torch.nn.functional as F
    return F.silu(gate) * up


def fuse_elementwise(model, on: bool) -> bool:
    """Run the RMSNorm, rotary-embedding and SiLU-gate arithmetic of this model's Mistral layers as
    fused torch.compile kernels (GPU only; the same operations in the same precision). Eager PyTorch
    runs each as 3-7 kernels that all read and write the whole 25k-token activation: fused, the NF4
    prefill's GPU time drops from 1.01 to 0.90 s on an H200 (benchmarks/RESULTS.md).
    Only this model's modules change (another model in the process keeps transformers' code);
    on=False restores them. Returns whether fused kernels are on: False, with a warning, when
    compiling fails."""
    import torch
    from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

    from . import decoding
    _unfuse(model)
    if not on:
        return False
    if not _FUSED.tried:
        _FUSED.tried = True
        # dynamic=None: sizes that vary (prompt length, batch) become symbolic, head sizes stay fixed
        norm, gate, rope = (torch.compile(f) for f in (_rms_norm, _silu_gate, apply_rotary_pos_emb))
        text, d = model.config.text_config, decoding.head_dim(model)
        x = torch.randn(1, 7, text.hidden_size, device=model.device, dtype=model.dtype)
        q, cos = torch.randn(1, text.num_attention_heads, 7, d, device=model.device, dtype=model.dtype), x[..., :d]
        plain = _lm_logits(model)
        try:  # compile now (Triton, a C compiler): a failure here must not fail every window later
            norm(x, x[0, 0], text.rms_norm_eps), gate(x, x), rope(q, q[:, :text.num_key_value_heads], cos, cos)
            _fuse(model, norm, gate, rope)
            error = decoding.relative_error(_lm_logits(model), plain)
            if not error <= decoding.SELF_CHECK_MAX_ERROR:
                raise ValueError(f"their logits differ from transformers' kernels' by {error:.1%}")
            log.info(f"fused kernels passed their self-check (logits within {error:.2%} of transformers' kernels')")
            _FUSED.kernels = norm, gate, rope
        except Exception as e:
            _unfuse(model)
            log.warning(f"⚠️ fused kernels failed their self-check on this GPU ({type(e).__name__}: {first_line(e)}); "
                        f"prefill runs transformers' own kernels, ~10% slower. --fused-kernels no skips this attempt")
    if _FUSED.kernels is None:
        return False
    _fuse(model, *_FUSED.kernels)
    return True


def _mistral_modules(model):
    """(module, kind) for the norms, MLPs and attentions of the model's language model."""
    from transformers.models.mistral import modeling_mistral as mistral
    kinds = {mistral.MistralRMSNorm: "norm", mistral.MistralMLP: "mlp", mistral.MistralAttention: "attention"}
    return [(m, kinds[type(m)]) for m in model.model.language_model.modules() if type(m) in kinds]


def _fuse(model, norm, gate, rope):
    """Give each of the model's Mistral modules its own forward (an instance's forward hides its class's).
    The forward holds its module weakly: a module referring to itself would keep a deleted model's
    memory (a GPU's worth) until Python's cycle collector runs."""
    from transformers.models.mistral import modeling_mistral as mistral
    # MistralAttention.forward calls its module's global apply_rotary_pos_emb: the same code, run with a
    # copy of those globals in which that name is the fused rope, changes it for this model alone
    eager = mistral.MistralAttention.forward
    attention = types.FunctionType(eager.__code__, {**eager.__globals__, "apply_rotary_pos_emb": rope},
                                   eager.__name__, eager.__defaults__, eager.__closure__)
    attention.__kwdefaults__ = eager.__kwdefaults__
    forwards = {"norm": lambda m, x: norm(x, m.weight, m.variance_epsilon),
                "mlp": lambda m, x: m.down_proj(gate(m.gate_proj(x), m.up_proj(x))),
                "attention": attention}
    for module, kind in _mistral_modules(model):
        module.forward = _weakly_bound(forwards[kind], module)


def _weakly_bound(forward, module):
    ref = weakref.ref(module)
    return lambda *args, **kwargs: forward(ref(), *args, **kwargs)


def _unfuse(model):
    for module, _ in _mistral_modules(model):
        module.__dict__.pop("forward", None)  # the class's forward again


def _lm_logits(model, tokens=64):
    """Logits of the language model over a fixed random prompt: the fused kernels' self-check."""
    import torch
    ids = torch.randint(0, model.config.text_config.vocab_size, (1, tokens),
                        generator=torch.Generator().manual_seed(0)).to(model.device)
    with torch.inference_mode():
        hidden = model.model.language_model(input_ids=ids).last_hidden_state
        return model.lm_head(hidden).float()


def generate(model, processor, windows, max_new_tokens=256, temperature=0.0, top_p=1.0, decoder="fast", plan=None):
    """The decoded answers to prepare()'s windows. decoder "fast": decoding.greedy (same greedy
    answers, CUDA-graph decode); "transformers", or any temperature > 0: model.generate on a
    left-padded batch (transformers' sampling: temperature, top-p and its default top-k 50).
    plan: llava_soccer.gpus.Plan (default: the one for the model's device)."""
    import torch

    from . import decoding
    plan = plan or for_device(str(model.device))
    with torch.inference_mode(), _attention(model, plan.prefill_attention):
        if decoder == "fast" and temperature == 0:
            eos = model.generation_config.eos_token_id
            ids = decoding.greedy(model, windows, max_new_tokens, eos if isinstance(eos, list) else [eos],
                                  processor.tokenizer.pad_token_id, plan)
        else:
            inputs = decoding.on_model(model, collate(processor, windows))
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
                "do_sample": False}
            out = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                 pad_token_id=processor.tokenizer.pad_token_id, **sampling)
            ids = out[:, inputs["input_ids"].shape[1]:]
    return processor.batch_decode(ids, skip_special_tokens=True)
