"""Loading a model, whatever its family: where it comes from (hub id or directory, checked in seconds),
from_pretrained's arguments for the plan's dtypes and quantization, NF4 weights dequantized once where
the plan says so.

    model, processor = families.load("llava-hf/llava-v1.6-mistral-7b-hf", plan, "cuda:0")  # its family's load()

The family's classes come from its module (llava_soccer/families/); the real Hugging Face classes run
everywhere: on the cluster with the hub id, in tests with a tiny checkpoint directory built by synthetic.py
(the same from_pretrained call). What is changed in the model after loading (fused kernels, FP8 layers) is
the engine's (engine.py).
"""
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from .cli import InputError
from .settings import DEFAULT_MODEL


def pick_device(gpu_id: int) -> str:
    """The GPU this worker should use: the only one it sees when Slurm/CUDA_VISIBLE_DEVICES pins
    it, else the gpu_id-th of those visible; CPU when torch sees no GPU. A CPU build of torch sees none: that is
    known from its version (2.x+cpu) without loading it, seconds that --print-plan need not wait."""
    if "torch" not in sys.modules and cpu_build_of_torch():
        return "cpu"
    import torch
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{gpu_id % torch.cuda.device_count()}"


def cpu_build_of_torch() -> bool:
    """The installed torch is a CPU build (its version ends in +cpu); False when unknown (not installed)."""
    try:
        return importlib.metadata.version("torch").endswith("+cpu")
    except importlib.metadata.PackageNotFoundError:
        return False


def is_local(model_id: str) -> bool:
    """A checkpoint directory rather than a hub id: a hub id is "org/name" that names no existing path."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") != 1 or Path(model_id).expanduser().exists()


def check_model_source(model_id: str) -> None:
    """Fail in seconds, with one line, where from_pretrained would fail late or obscurely: a local
    path that does not exist ("Repo id must be in the form..."), or a hub model that is not cached
    on a node without network (minutes of retries)."""
    import socket
    from urllib.parse import urlparse
    if is_local(model_id):
        if not Path(model_id).expanduser().is_dir():
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


class _NoKernelsCommunity(logging.Filter):
    """bitsandbytes (0.50) warns at import, on every machine whose CPU has AVX512-BF16, GPU nodes too, that
    it could not load its optional CPU NF4 kernel ("Failed to load CPU gemm_4bit_forward from
    kernels-community: No module named 'kernels'"): once per worker, 4 lines per video that ask for nothing
    (a CPU run then takes its pure-PyTorch path, as without AVX512-BF16). Dropped; its other lines stay."""

    def filter(self, record):
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


def quiet_bitsandbytes():
    """Installs the filter above on the logger that writes the line, before bitsandbytes is imported."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _NoKernelsCommunity) for f in logger.filters):
        logger.addFilter(_NoKernelsCommunity())


def from_pretrained_kwargs(plan, device: str) -> dict:
    """from_pretrained's arguments for plan (llava_soccer.gpus.Plan), whatever the model family: its
    quantization nf4 = 4-bit NormalFloat (the seed's setting) computing in the plan's compute dtype (bf16 on
    8.0+ and CPU, fp16 on 7.x, fp32 on 6.x), everything else stored in its storage dtype; fp8 loads bf16
    weights (the engine converts them). "token": HF_TOKEN, for the processor's from_pretrained too."""
    import torch
    from transformers import BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-shard bars would flood the job log; we log the load time
    token = os.environ.get("HF_TOKEN") or None  # used, never printed
    kwargs = {"token": token, "device_map": {"": device}, "dtype": getattr(torch, plan.storage_dtype)}
    if plan.quantization == "nf4":
        quiet_bitsandbytes()
        # bnb casts each layer's input to the compute dtype and its output back to the storage dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, plan.compute_dtype))
    return kwargs


def after_load(model, plan) -> None:
    """What the plan does to any family's model once loaded: NF4 weights dequantized where it says so."""
    if plan.quantization == "nf4" and plan.nf4_weights == "dequantized":
        dequantize_nf4(model)


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
