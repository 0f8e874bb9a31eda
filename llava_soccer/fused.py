"""Fused kernels for the Mistral layers (--fused-kernels, GPUs of compute capability 8.0+): RMSNorm,
rotary embedding and the SiLU gate as torch.compile'd functions, put into one model's modules.

    on = fused.install(model)   # compiled once per process, self-checked on this model; False: not installed
    fused.remove(model)         # transformers' own forwards again

Eager PyTorch runs each as 3-7 kernels that all read and write the whole 25k-token activation: fused,
the NF4 prefill's GPU time drops from 1.01 to 0.90 s on an H200 (benchmarks/RESULTS.md). Only the given
model's modules change (another model in the process keeps transformers' code). The engine
(engine.py) decides when; this module only knows how.
"""
import functools
import logging
import types
import weakref

import torch
from transformers.models.mistral import modeling_mistral as mistral

from .cli import first_line

log = logging.getLogger("llava_worker")


def rms_norm(x, weight, eps):  # MistralRMSNorm.forward's arithmetic, as a function of tensors
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def silu_gate(gate, up):  # MistralMLP: act_fn(gate_proj(x)) * up_proj(x), act_fn = SiLU
    return torch.nn.functional.silu(gate) * up


@functools.cache  # once per process: compiling the same functions again trips dynamo's recompile limit
def compiled():
    """(norm, gate, rope) compiled (lazily: the first call compiles); dynamic=None: sizes that vary
    (prompt length, batch) become symbolic, head sizes stay fixed."""
    return tuple(torch.compile(f) for f in (rms_norm, silu_gate, mistral.apply_rotary_pos_emb))


def install(model) -> bool:
    """Put the compiled kernels into this model, after checking that its logits stay within
    decoding.SELF_CHECK_MAX_ERROR (relative) of transformers' kernels'. False, with one warning, when
    compiling or the check fails (the model keeps transformers' kernels)."""
    from .decoding import SELF_CHECK_MAX_ERROR, head_dim, relative_error
    remove(model)
    norm, gate, rope = compiled()
    text, d = model.config.text_config, head_dim(model)
    x = torch.randn(1, 7, text.hidden_size, device=model.device, dtype=model.dtype)
    q, cos = torch.randn(1, text.num_attention_heads, 7, d, device=model.device, dtype=model.dtype), x[..., :d]
    plain = lm_logits(model)
    try:  # compile now (Triton, a C compiler): a failure here must not fail every window later
        norm(x, x[0, 0], text.rms_norm_eps), gate(x, x), rope(q, q[:, :text.num_key_value_heads], cos, cos)
        _fuse(model, norm, gate, rope)
        error = relative_error(lm_logits(model), plain)
        if not error <= SELF_CHECK_MAX_ERROR:
            raise ValueError(f"their logits differ from transformers' kernels' by {error:.1%}")
        log.info(f"fused kernels passed their self-check (logits within {error:.2%} of transformers' kernels')")
        return True
    except Exception as e:
        remove(model)
        log.warning(f"⚠️ fused kernels failed their self-check on this GPU ({type(e).__name__}: {first_line(e)}); "
                    f"prefill runs transformers' own kernels, ~10% slower. --fused-kernels no skips this attempt")
        return False


def _mistral_modules(model):
    """(module, kind) for the norms, MLPs and attentions of the model's language model."""
    kinds = {mistral.MistralRMSNorm: "norm", mistral.MistralMLP: "mlp", mistral.MistralAttention: "attention"}
    return [(m, kinds[type(m)]) for m in model.model.language_model.modules() if type(m) in kinds]


def _fuse(model, norm, gate, rope):
    """Give each of the model's Mistral modules its own forward (an instance's forward hides its class's).
    The forward holds its module weakly: a module referring to itself would keep a deleted model's
    memory (a GPU's worth) until Python's cycle collector runs."""
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


def remove(model):
    """The model's Mistral modules run their class's forward again."""
    for module, _ in _mistral_modules(model):
        module.__dict__.pop("forward", None)


def lm_logits(model, tokens=64):
    """Logits of the language model over a fixed random prompt: the fused kernels' self-check."""
    ids = torch.randint(0, model.config.text_config.vocab_size, (1, tokens),
                        generator=torch.Generator().manual_seed(0)).to(model.device)
    with torch.inference_mode():
        hidden = model.model.language_model(input_ids=ids).last_hidden_state
        return model.lm_head(hidden).float()
