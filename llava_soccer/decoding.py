"""Greedy answers for a batch of windows: the same tokens as transformers' generate, less overhead.

    decoder = decoding.Decoder(model, plan)   # one per model and plan: the engine's (engine.py)
    ids = decoder.greedy(windows, max_new_tokens=256, eos=[2], pad=0)   # windows: family.prepare()

With 25k-token prompts, generate() spends ~60-100 ms per new token launching ~1,000 small kernels
from Python; here a token takes ~8 ms at batch 1 on an H200 (benchmarks/RESULTS.md):
1. Prefill: each window alone through the model's own forward (image features, language model).
   No padding, so attention stays on the causal fast path; prefill is compute-bound, so batching
   it gains nothing and only multiplies activation memory.
2. Its keys/values go straight into row i of one zeroed buffer per layer, with room for the answer.
3. Decode: one step per new token for the whole batch, built from the model's own modules
   (norms, projections, rotary embedding, MLP) in the decoder-layer order that every family here shares
   (input norm, attention, post-attention norm, MLP). Attention (attend)
   reads the buffer up to each row's own length; the query heads that share a key/value head
   are that head's queries, so the cache is never repeated (grouped-query attention).
   Shapes never change, so on a GPU the step is recorded once as a CUDA graph and each new token
   is one replay (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs); later batches of
   the same size reuse the buffers and the graph (Decoder.kept).
Memory: the first window's embeddings are made before a new KV buffer exists. On 11-12 GB cards
(a plan's prefill_chunk, llava_soccer/gpus.py) the vision tower also runs a few frames at a time (it
keeps all 25 layers' hidden states, 2.2 GB for a whole window) and the prompt goes through the
language model in chunks, each attending to the cache so far (causal_attention), so activations
scale with the chunk, not with the 25k-token prompt. Chunks cost time (~40% of the prefill on an
H100, whose cuDNN attention they cannot use), so larger cards prefill whole.
Self-checks: the Triton decode attention is checked as an operation, once per process per batch size
and dtype (check_attention: random inputs of the batch's real shapes against an fp32 reference, with a
tolerance of that dtype's rounding); the CUDA graph, on a decoder's first step, against the same step
run eagerly (logits within SELF_CHECK_MAX_ERROR). On an error or a larger difference it warns once and
keeps the plain path (Decoder.attention and .graphs say which runs; the plan, what was planned).
The phases are profiler ranges ("llava prefill", "llava graph capture"), free when no profiler runs.
This module knows no model family: the engine hands it the family module (llava_soccer/families/), whose
embed() gives a window's embeddings and positions, and whose rope_positions and apply_rotary_pos_emb rotate
the decode step's and the class-score trees' queries and keys (a text token at KV slot s has rotary
position s + its row's offset: 0 for LLaVA-NeXT, M-RoPE's delta for Qwen2.5-VL).
tests/test_worker.py checks that the answers equal generate()'s on random tiny checkpoints (CPU:
SDPA attention); on a GPU, benchmarks/bench_worker.py --decoder-check compares them on the real model.
"""
import contextlib
import dataclasses
import functools
import itertools
import logging
import math

import torch
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv

from .cli import first_line

log = logging.getLogger("llava_worker")
FRAMES_PER_VISION_CALL = 3
# Self-check: an optional path's logits may differ from the plain path's by this relative error
# (||a - b|| / ||b||). Measured on the full-size model with random weights, whose rounding errors
# grow layer to layer far more than a trained model's: 2.7% (Triton decode step vs SDPA) and 6.1%
# (fused kernels, 64 tokens through 32 layers) on an H100 (benchmarks/RESULTS.md, session 4);
# unrelated logits differ by ~140%. The largest single difference is no test: a near-tie moves one
# logit by 0.4 of 7 with nothing wrong. Under FP8 the whole model's noise reaches this threshold
# (18.8%-27.4% on the H100, issue 33): the decode attention is therefore checked alone (below).
SELF_CHECK_MAX_ERROR = 0.2
# The decode attention's self-check: max |kernel - fp32 reference| / max |reference| on inputs that are
# exact in both. The kernel rounds each softmax weight to the cache's dtype before the value product and
# rounds its output (bf16: 2^-9 relative each, fp16: 2^-12; fp32 inputs meet TF32 products: 2^-11), so a
# right kernel stays within a few of those; a wrong one (a slot missed, one read past a row's end) is off
# by O(1): the inputs make each row's last slot carry most of the weight and the slots after it poison.
ATTENTION_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 4e-3}
_attention_checked = {}  # (kernel, shape, dtype) -> None (passed) or the problem: once per process


def relative_error(logits, plain):
    """||logits - plain|| / ||plain|| in fp32; inf when logits has inf/NaN."""
    logits, plain = logits.float(), plain.float()
    if not bool(torch.isfinite(logits).all()):
        return float("inf")
    return ((logits - plain).norm() / plain.norm().clamp_min(1e-6)).item()


def attend(q, keys, values, positions, scale, kernel="sdpa"):
    """Attention of (b, kv heads, group, d) queries over the (b, kv heads, slots, d) keys and values
    at slots <= positions[row]. kernel "triton": split_kv_attention (GPU, compute capability 8.0+).
    "sdpa": PyTorch's SDPA with a mask, whose kernels give each (row, kv head) a single thread
    block to walk 25k slots: ~0.83 ms per layer at batch 8 on an H200 (benchmarks/RESULTS.md)."""
    if kernel == "triton":
        return split_kv_attention(q, keys, values, positions, scale)
    mask = (torch.arange(keys.shape[2], device=q.device) <= positions[:, None])[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


def causal_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Causal attention for one window's prefill (never padded, so attention_mask is not needed):
    the whole prompt (is_causal), or a chunk of queries against every key so far (the causal mask
    aligned to the last key). Keys/values are repeated for the query heads unless the allowed SDPA
    backends (flash, cuDNN: 8.0+) take grouped-query attention as it is; the memory-efficient
    kernel of 6.x/7.x GPUs does not."""
    native = not query.is_cuda or torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.cudnn_sdp_enabled()
    q_len, kv_len = query.shape[2], key.shape[2]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if q_len == kv_len and native:
        out = sdpa(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    else:
        key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
        mask = causal_lower_right(q_len, kv_len) if q_len != kv_len else None
        out = sdpa(query, key, value, attn_mask=mask, is_causal=mask is None, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def _causal(model):
    """The language model's attention is causal_attention inside (transformers builds no mask for it).
    Registering it is this package's one addition to transformers: by name, in its registry, here
    where it is used (nothing at import)."""
    AttentionInterface.register("llava_causal", causal_attention)
    config = model.model.language_model.config
    saved = config._attn_implementation
    config._attn_implementation = "llava_causal"
    try:
        yield
    finally:
        config._attn_implementation = saved


@functools.cache  # once per process: a new @triton.jit function would compile its kernels again
def _triton_kernel():
    """The Triton kernel of split_kv_attention, or None where Triton is missing (CPU-only torch)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def kernel(Q, K, V, POS, OUT, LSE, sqb, sqh, skb, skh, svb, svh, sob, soh, sos, slb, slh, sls, scale, chunk,
               G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        # one program: row b, kv head h, slots [s * chunk, (s + 1) * chunk) cut at POS[b] + 1
        b, h, s = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
        end = tl.minimum(s * chunk + chunk, tl.load(POS + b).to(tl.int32) + 1)
        g, d, n = tl.arange(0, GP), tl.arange(0, D), tl.arange(0, BLOCK)
        q = tl.load(Q + b * sqb + h * sqh + g[:, None] * D + d[None, :], mask=g[:, None] < G, other=0.0)
        m = tl.full([GP], float("-inf"), tl.float32)
        total = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for start in range(s * chunk, end, BLOCK):
            slot = start + n
            ok = slot < end
            k = tl.load(K + b * skb + h * skh + slot[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
            score = tl.where(ok[None, :], tl.dot(q, tl.trans(k)) * scale, float("-inf"))  # fp32, as flash
            m_new = tl.maximum(m, tl.max(score, 1))
            p = tl.exp(score - m_new[:, None])
            alpha = tl.exp(m - m_new)
            v = tl.load(V + b * svb + h * svh + slot[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            total = total * alpha + tl.sum(p, 1)
            m = m_new
        some = total > 0
        out = tl.where(some[:, None], acc / tl.where(some, total, 1.0)[:, None], 0.0)
        tl.store(OUT + b * sob + h * soh + s * sos + g[:, None] * D + d[None, :], out, mask=g[:, None] < G)
        tl.store(LSE + b * slb + h * slh + s * sls + g, tl.where(some, m + tl.log(total), float("-inf")),
                 mask=g < G)

    return kernel


def split_kv_attention(q, keys, values, positions, scale, block=64):
    """Flash-decoding (https://crfm.stanford.edu/2023/10/12/flashdecoding.html): the slots are cut
    into chunks so that rows x kv heads x chunks fill the GPU; each chunk's softmax partial (fp32)
    is combined by its log-sum-exp. Shapes depend only on the buffer, so it runs in a CUDA graph."""
    if not q.is_cuda or _triton_kernel() is None:
        raise RuntimeError("split_kv_attention needs a CUDA GPU and Triton")
    b, h, g, d = q.shape
    slots = keys.shape[2]
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    splits = max(1, min(-(-slots // block), -(-4 * sms // (b * h))))
    chunk = -(-slots // (splits * block)) * block
    splits = -(-slots // chunk)
    out = torch.empty((b, h, splits, g, d), device=q.device, dtype=torch.float32)
    lse = torch.empty((b, h, splits, g), device=q.device, dtype=torch.float32)
    q, keys, values = q.contiguous(), keys.contiguous(), values.contiguous()
    _triton_kernel()[(b, h, splits)](
        q, keys, values, positions, out, lse, q.stride(0), q.stride(1), keys.stride(0), keys.stride(1),
        values.stride(0), values.stride(1), out.stride(0), out.stride(1), out.stride(2), lse.stride(0),
        lse.stride(1), lse.stride(2), scale, chunk, G=g, GP=max(16, 1 << (g - 1).bit_length()), D=d, BLOCK=block)
    weights = torch.softmax(lse, dim=2)[..., None]
    return (weights * out).sum(2).to(q.dtype)


def attention_error(kernel, q_shape, slots, positions, dtype, scale, seed=0):
    """max |kernel(q, keys, values, positions, scale) - fp32 SDPA| / max |fp32 SDPA| on random inputs:
    q (b, kv heads, group, d) and keys/values (b, kv heads, slots, d) in dtype on positions' device. Row
    b's slot positions[b] (its new token) gets a key that takes about 3/4 of the softmax weight, so missing
    it shows; the slots after it get the same key and values of 50, so reading them shows."""
    b, heads, group, d = q_shape
    device = positions.device
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(q_shape, generator=g, device=device, dtype=torch.float32)
    keys = torch.randn((b, heads, slots, d), generator=g, device=device, dtype=dtype)
    values = torch.randn((b, heads, slots, d), generator=g, device=device, dtype=dtype)
    reference = []
    for row, end in enumerate(positions.tolist()):
        # q_i . strong = log(end + 1) + 1 on average over the group: e / (e + 1) of the weight
        aim = q[row].mean(1)  # (heads, d); q_i . aim ~ d / group
        strong = aim * ((math.log(end + 1) + 1) / (scale * d / group))
        keys[row, :, end:] = strong[:, None].to(dtype)
        values[row, :, end + 1:] = 50
        k, v = keys[row:row + 1, :, :end + 1].float(), values[row:row + 1, :, :end + 1].float()
        reference.append(torch.nn.functional.scaled_dot_product_attention(q[row:row + 1].to(dtype).float(), k, v,
                                                                          scale=scale))
    reference = torch.cat(reference)
    out = kernel(q.to(dtype), keys, values, positions, scale).float()
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    return ((out - reference).abs().max() / reference.abs().max()).item()


def check_attention(name, q_shape, slots, positions, dtype, scale, kernel=None) -> bool:
    """Is the decode attention kernel (default split_kv_attention) right on these shapes (the batch's:
    model heads, head dim, its cache lengths `positions`) in dtype? Checked once per process per kernel,
    batch shape and dtype; logs the verdict the first time (a warning when it fails)."""
    kernel = kernel or split_kv_attention
    key = (kernel, tuple(q_shape), dtype)
    if key not in _attention_checked:
        tolerance, at = ATTENTION_TOLERANCE[dtype], f"batch {q_shape[0]}, {str(dtype).removeprefix('torch.')}"
        try:
            error = attention_error(kernel, q_shape, slots, positions, dtype, scale)
            problem = None if error <= tolerance else (
                f"{at}: its output differs from an fp32 reference by {error:.2%} of the largest value, "
                f"more than {tolerance:.1%}")
        except Exception as e:
            problem = f"{at}: {type(e).__name__}: {first_line(e)}"
        _attention_checked[key] = problem
        if problem is None:
            log.info(f"{name} passed its self-check ({at}: within {error:.3%} of an fp32 reference, "
                     f"tolerance {tolerance:.1%})")
        else:
            log.warning(f"⚠️ {name} failed its self-check on this GPU ({problem}); using SDPA decode attention "
                        f"instead: same answers, slower")
    return _attention_checked[key] is None


class Step:
    """One new token for every row: (tokens (b,), positions (b,), offsets (b,)) -> logits (b, vocab).
    Writes each row's key/value at slot `positions`, then attends to slots <= it; rotates at rotary
    position positions + offsets (the family's rope_positions)."""

    def __init__(self, family, model, keys, values, attention="sdpa", on_logits=None):
        self.family, self.lm, self.head = family, model.model.language_model, model.lm_head
        self.keys, self.values, self.attention, self.on_logits = keys, values, attention, on_logits
        b, self.kv_heads, slots, self.head_dim = keys[0].shape
        self.rows, self.last_slot = torch.arange(b, device=keys[0].device), slots - 1

    def __call__(self, tokens, positions, offsets):
        b, d, rotate = tokens.shape[0], self.head_dim, self.family.apply_rotary_pos_emb
        # A finished row (position 0: it attends to slot 0 alone) writes its key/value into its last slot,
        # which no step of it reads: its prompt and answer stay intact for the class scores (score_trees).
        write = torch.where(positions == 0, self.last_slot, positions)
        h = self.lm.embed_tokens(tokens[:, None])
        cos, sin = self.lm.rotary_emb(h, self.family.rope_positions((positions + offsets)[:, None]))
        for layer, k_cache, v_cache in zip(self.lm.layers, self.keys, self.values):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, 1, -1, d).transpose(1, 2)
            k = attn.k_proj(x).view(b, 1, -1, d).transpose(1, 2)
            q, k = rotate(q, k, cos, sin)
            k_cache[self.rows, :, write] = k[:, :, 0]
            v_cache[self.rows, :, write] = attn.v_proj(x).view(b, -1, d)
            o = attend(q.reshape(b, self.kv_heads, -1, d), k_cache, v_cache, positions, attn.scaling,
                       self.attention)
            h = h + attn.o_proj(o.reshape(b, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.head(self.lm.norm(h))[:, -1]
        return self.on_logits(logits, positions) if self.on_logits else logits


def graphed(step, *inputs):
    """step(*inputs) recorded as a CUDA graph: returns run() -> logits, which replays it reading the
    current contents of the input tensors (tokens, positions, offsets: fill them in place)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the graph: lazy inits, cuBLAS workspaces
        step(*inputs)             # (writes the same key/value the first replay writes again)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        logits = step(*inputs)

    def run():
        graph.replay()
        return logits
    run.reads = step, inputs  # the graph reads their tensors' memory (step.rows too): keep them alive
    return run


class _Row(DynamicLayer):
    """A cache layer that writes one window's keys/values straight into row `row` of the decode
    buffers: no second copy of a 3.3 GB prompt cache at the memory peak."""

    def __init__(self, keys, values, row):
        super().__init__()
        self.buffers, self.row = (keys, values), row

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        m = n + key_states.shape[-2]
        for buffer, new in zip(self.buffers, (key_states, value_states)):
            buffer[self.row, :, n:m] = new[0]
        self.keys, self.values = (buffer[self.row:self.row + 1, :, :m] for buffer in self.buffers)
        return self.keys, self.values


def on_model(model, inputs):
    """Processor inputs on the model's device, the pixels in its dtype (from pinned memory: asynchronously)."""
    moved = {k: v.to(model.device, non_blocking=True) for k, v in inputs.items()}
    moved["pixel_values"] = moved["pixel_values"].to(model.dtype)
    return moved


def head_dim(model):
    """Size of one attention head of the language model (Mistral's config may leave head_dim unset; Qwen2's has
    no such field)."""
    text = model.config.text_config
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def kv_shape(model, rows, slots):
    """The shape of one layer's key (or value) buffer: (rows, kv heads, slots, head dim)."""
    return rows, model.config.text_config.num_key_value_heads, slots, head_dim(model)


def kv_bytes(model, tokens, room):
    """prefill()'s KV buffers for one window of `tokens` prompt tokens and `room` new ones."""
    _, heads, slots, d = kv_shape(model, 1, tokens + room)
    return 2 * model.config.text_config.num_hidden_layers * heads * slots * d * model.dtype.itemsize


def prefill(family, model, windows, room, chunk=None, kept=None):
    """Each window alone through the model (family.embed, then the language model): (first greedy tokens (b,),
    their log-probabilities (b,), prompt lengths (b,),
    [keys, values]: per layer a (b, kv heads, longest prompt + room, head dim) buffer, zeros past
    each prompt (not empty: masked slots still meet the kernel, and 0 * NaN would be NaN),
    rotary offsets (b,): the rotary position of the token at slot s is s + offset (family.embed's)).
    chunk: prefill the prompt in chunks of that many tokens, the vision tower a few frames at a
    time (None: all at once). The first window's embeddings are made before a new buffer exists:
    the vision tower's peak and the cache's never add up.
    kept (dict, or None): the buffers are the previous batch's when their shape is the same (see Decoder)."""
    lengths = [w["input_ids"].shape[1] for w in windows]
    shape = kv_shape(model, len(windows), max(lengths) + room)
    first_embedded = family.embed(model, on_model(model, windows[0]), chunk)
    kv = _zeroed_buffers(model, shape, {} if kept is None else kept)
    first, offsets = [], []
    for i, window in enumerate(windows):
        embeds, position_ids, offset = first_embedded if i == 0 else family.embed(model, on_model(model, window),
                                                                                   chunk)
        first_embedded = None
        first.append(last_logits(model, embeds, Cache(layers=[_Row(k, v, i) for k, v in zip(*kv)]), chunk,
                                 position_ids))
        offsets.append(offset)
        del embeds, position_ids
    tokens, logprobs = chosen(torch.cat(first))
    device = model.device
    return tokens, logprobs, torch.tensor(lengths, device=device), kv, torch.tensor(offsets, device=device)


def chosen(logits, tokens=None):
    """(tokens, their log-probabilities in fp32) of logits (b, vocab): the greedy ones unless tokens are given."""
    tokens = logits.argmax(-1) if tokens is None else tokens
    return tokens, logits.float().log_softmax(-1).gather(-1, tokens[:, None])[:, 0]


def _zeroed_buffers(model, shape, kept):
    """[keys, values]: per layer a zeroed buffer of `shape`. When kept holds buffers of that shape,
    they are zeroed and given again (so a decode graph recorded on them can replay); otherwise kept
    is emptied first (the old buffers and their graph freed before new ones take their memory)."""
    if kept.get("shape") == shape:
        for buffer in itertools.chain(*kept["kv"]):
            buffer.zero_()
        return kept["kv"]
    kept.clear()
    layers = model.config.text_config.num_hidden_layers
    kept["kv"] = [[torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in range(layers)] for _ in "kv"]
    kept["shape"] = shape
    return kept["kv"]


def last_logits(model, embeds, cache, chunk=None, position_ids=None):
    """Logits (1, vocab) after one window's prompt (its family's embed()), prefilled in chunks of `chunk`
    tokens (None: at once) with causal_attention; its keys and values go into `cache`. position_ids: the
    embed()'s (..., n), sliced per chunk on their last dimension (None: the language model's own 0..n-1)."""
    step = chunk or embeds.shape[1]
    with _causal(model):
        for start in range(0, embeds.shape[1], step):
            where = {} if position_ids is None else {"position_ids": position_ids[..., start:start + step]}
            hidden = model.model.language_model(inputs_embeds=embeds[:, start:start + step], past_key_values=cache,
                                                use_cache=True, **where).last_hidden_state
    return model.lm_head(hidden[:, -1])


class _Lagged:
    """Has every row finished? Asked after each step, answered one step late on a GPU: the flag of
    step i is read once step i + 1 is queued, so the GPU never waits for the CPU between steps
    (a synchronous check leaves it idle while Python launches the next step). call(done, i) -> the
    step at which every row had finished, or None; the caller drops the outputs of later steps."""

    def __init__(self, device):
        self.gpu = device.type == "cuda"
        if self.gpu:
            self.flags = torch.zeros(2, dtype=torch.bool, pin_memory=True)
            self.marks = [torch.cuda.Event(), torch.cuda.Event()]

    def __call__(self, done, i):
        if not self.gpu:
            return i if bool(done.all()) else None
        self.flags[i % 2].copy_(done.all(), non_blocking=True)
        self.marks[i % 2].record()
        if i == 0:
            return None
        self.marks[(i - 1) % 2].synchronize()
        return i - 1 if bool(self.flags[(i - 1) % 2]) else None


def _checked(name, make, plain, instead):
    """make() builds an optional path's step (a callable -> logits). Returns it if it runs and,
    when plain logits are given (the first use: the eager step's), agrees with them within SELF_CHECK_MAX_ERROR;
    otherwise warns once and returns None (the caller uses the plain path)."""
    try:
        run = make()
        if plain is None:
            return run
        error = relative_error(run(), plain)
        if error <= SELF_CHECK_MAX_ERROR:
            log.info(f"{name} passed its self-check (logits within {error:.2%} of the eager step's)")
            return run
        problem = f"its logits differ from the eager step's by {error:.1%}"
    except Exception as e:
        problem = f"{type(e).__name__}: {first_line(e)}"
    log.warning(f"⚠️ {name} failed its self-check on this GPU ({problem}); using {instead} instead: "
                f"same answers, slower")
    return None


@dataclasses.dataclass
class Tree:
    """Tokens scored as continuations of one row's cached text: node j is token tokens[j] at position
    positions[j]; it sees the cache's positions [0, cache_len[j]), its ancestors (parents[j]; -1 for a
    root) and itself, never a sibling branch (llava_soccer/scores.py builds them)."""
    tokens: list
    positions: list
    parents: list
    cache_len: list

    def add(self, token, parent=-1, position=None, cache_len=None) -> int:
        """A node for token under parent (one position after it, seeing the same cache), or a root at
        position seeing cache_len positions; returns its index."""
        self.tokens.append(int(token))
        self.positions.append(self.positions[parent] + 1 if parent >= 0 else position)
        self.parents.append(parent)
        self.cache_len.append(self.cache_len[parent] if parent >= 0 else cache_len)
        return len(self.tokens) - 1

    def lineages(self) -> list:
        """Each node's ancestors and itself."""
        out = []
        for j, parent in enumerate(self.parents):
            out.append((out[parent] if parent >= 0 else []) + [j])
        return out


def tree_bias(trees, start, free, slots, group, dtype, device):
    """score_trees' attention bias (rows, 1, group x nodes, slots): 0 where a node sees a slot, -inf where
    not; row r's cache position p is slot start[r] + p, its node j's own key is at slot free[r] + j. Its
    rows repeat the nodes' once per query head of a group (score_trees' query layout); the last dimension's
    stride is a multiple of 16, as the memory-efficient kernel wants (else it copies it in every call).
    Padding nodes (past a smaller tree) see their own key only."""
    n, wide = max(len(t.tokens) for t in trees), -(-slots // 16) * 16
    lo, hi = torch.zeros(len(trees), n, dtype=torch.long), torch.zeros(len(trees), n, dtype=torch.long)
    own = torch.eye(n, dtype=torch.bool).repeat(len(trees), 1, 1)  # padding nodes: themselves
    for r, tree in enumerate(trees):
        k = len(tree.tokens)
        lo[r, :k], hi[r, :k] = start[r], start[r] + torch.tensor(tree.cache_len)
        own[r, :k, :k] = False
        pairs = [(j, a) for j, line in enumerate(tree.lineages()) for a in line]
        own[r, [j for j, _ in pairs], [a for _, a in pairs]] = True
    slot = torch.arange(wide, device=device)
    seen = (slot >= lo.to(device)[..., None]) & (slot < hi.to(device)[..., None])
    at = torch.tensor(free, device=device)[:, None, None] + torch.arange(n, device=device)
    seen.scatter_(2, at.expand(len(trees), n, n), own.to(device))
    bias = torch.zeros((len(trees), 1, group, n, wide), dtype=dtype, device=device)
    bias.masked_fill_(~seen[:, None, None], float("-inf"))
    return bias.view(len(trees), 1, group * n, wide)[..., :slots]


def score_trees(family, model, layer_kv, trees, start, free, offsets):
    """Logits (rows, nodes, vocab) of the token after each node of each row's tree (padded to the largest;
    model dtype), in one forward pass of the model's own modules over every row (in the decoder-layer
    order, as Step): the weights are read once for the batch, the cache is attended in place. A node's
    rotary position is its tree position + offsets[row] (family.rope_positions; prefill's offsets).
    layer_kv(i) -> (keys, values) of layer i: (rows, kv heads, slots, head dim), row r's position p at
    slot start[r] + p; the pass writes row r's node j's key/value at slot free[r] + j (past every cached
    slot a node sees; tree_bias). The query heads that share a key/value head are that head's queries
    (grouped-query attention: queries (rows, kv heads, group x nodes), keys as they are)."""
    lm, d, device = model.model.language_model, head_dim(model), model.device
    rows, n = len(trees), max(len(t.tokens) for t in trees)

    def padded(lists):
        return torch.tensor([list(x) + [0] * (n - len(x)) for x in lists], device=device)
    h = lm.embed_tokens(padded(t.tokens for t in trees))
    rotary = padded(t.positions for t in trees) + torch.as_tensor(offsets, device=device)[:, None]
    cos, sin = lm.rotary_emb(h, family.rope_positions(rotary))
    group = model.config.text_config.num_attention_heads // model.config.text_config.num_key_value_heads
    at = torch.tensor(free, device=device)[:, None] + torch.arange(n, device=device)  # (rows, nodes)
    rows_at, bias = torch.arange(rows, device=device)[:, None], None
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(rows, n, -1, d).transpose(1, 2)
        k = attn.k_proj(x).view(rows, n, -1, d).transpose(1, 2)
        q, k = family.apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = layer_kv(i)
        if bias is None:
            if max(free) + n > keys.shape[2]:
                raise RuntimeError(f"class-score trees of {n} nodes need slots up to {max(free) + n}, the cache "
                                   f"has {keys.shape[2]}: give the decoder more spare slots (scores.tree_room)")
            bias = tree_bias(trees, start, free, keys.shape[2], group, h.dtype, device)
        keys[rows_at, :, at] = k.transpose(1, 2)
        values[rows_at, :, at] = attn.v_proj(x).view(rows, n, -1, d)
        heads = keys.shape[1]
        o = torch.nn.functional.scaled_dot_product_attention(
            q.reshape(rows, heads, group * n, d), keys, values, attn_mask=bias, scale=attn.scaling)
        h = h + attn.o_proj(o.view(rows, heads, group, n, d).permute(0, 3, 1, 2, 4).reshape(rows, n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(lm.norm(h))


@dataclasses.dataclass
class Decoded:
    """A batch's greedy answers: token ids (b, n) (pad after a row's end) and each token's log-probability
    where it was chosen (b, n, fp32; 0 after the end)."""
    ids: torch.Tensor
    logprobs: torch.Tensor


class Decoder:
    """The fast greedy decoder of one model under one plan, and the state it keeps between batches.

    attention, graphs: the decode attention kernel and CUDA graphs in use: the plan's, until the first
    batch's self-check drops an optional one that fails (checked: it has run).
    kept: the last batch's KV buffers, step inputs and decode step (its CUDA graph): the windows of one
    video have one prompt length, so batches of one size reuse them (recording a graph costs 0.15-0.35 s
    per batch on an H200, benchmarks/RESULTS.md session 7).
    on_logits: (logits (b, vocab), positions (b,)) -> logits, applied inside each decode step (so in its
    CUDA graph: tensor operations only); a seam for benchmarks (benchmarks/bench_worker.py ends random
    answers at set lengths with it)."""

    def __init__(self, family, model, plan, on_logits=None):
        self.family, self.model, self.chunk, self.on_logits = family, model, plan.prefill_chunk, on_logits
        self.attention, self.graphs, self.checked = plan.decode_attention, plan.cuda_graphs, False
        self.kept = {}

    def greedy(self, windows, max_new_tokens, eos, pad):
        """Token ids (b, n), n <= max_new_tokens, of the greedy answers to windows (a list of one
        window's processor inputs each). Like generate(), a finished row is filled with `pad` and
        decoding stops when every row has produced one of the `eos` ids."""
        return self.decode(windows, max_new_tokens, eos, pad).ids

    def decode(self, windows, max_new_tokens, eos, pad, spare=0) -> "Decoded":
        """greedy()'s answers with each token's log-probability; the KV buffers keep every row's prompt and
        answer until the next batch, with `spare` more slots per row (score_trees reads and writes them)."""
        try:
            return self._greedy(windows, max_new_tokens, eos, pad, spare)
        except BaseException:
            self.kept.clear()  # an OOM or error may leave them half-written; the caller may retry smaller
            raise

    def _greedy(self, windows, max_new_tokens, eos, pad, spare):
        with torch.profiler.record_function("llava prefill"):
            tokens, logprob, positions, kv, offsets = prefill(self.family, self.model, windows,
                                                              max_new_tokens + spare, self.chunk, self.kept)
        self.kept["offsets"] = offsets
        eos = torch.tensor(eos, device=tokens.device)
        out, logprobs, done = [tokens], [logprob], torch.isin(tokens, eos)
        if max_new_tokens == 1 or bool(done.all()):
            return Decoded(torch.stack(out, 1), torch.stack(logprobs, 1))
        step_in, run = self._step(kv, tokens, positions, offsets)
        all_done = _Lagged(done.device)
        for i in range(max_new_tokens - 1):
            tokens, logprob = chosen(run())
            tokens, logprob = torch.where(done, pad, tokens), torch.where(done, 0.0, logprob)
            done |= torch.isin(tokens, eos)
            out.append(tokens)
            logprobs.append(logprob)
            step_in[0].copy_(tokens)
            # A finished row's step attends to slot 0 only: its answer is over (pad from now on), and
            # reading its 25k cached keys would cost as much as a running row's (the decode step is bound
            # by reading the KV cache). Real answers end early: "None" is two tokens.
            step_in[1].copy_(torch.where(done, 0, step_in[1] + 1))
            finished = all_done(done, i)
            if finished is not None:
                del out[finished + 2:], logprobs[finished + 2:]  # the steps queued after every row had finished
                break
        return Decoded(torch.stack(out, 1), torch.stack(logprobs, 1))

    def score_trees(self, trees, free):
        """score_trees() of each row's tree on the last batch's KV buffers (row r's answer ends before slot
        free[r]; decode()'s spare slots after it take the trees' keys and values)."""
        keys, values = self.kept["kv"]
        return score_trees(self.family, self.model, lambda i: (keys[i], values[i]), trees, [0] * len(trees), free,
                           self.kept["offsets"])

    def _step(self, kv, tokens, positions, offsets):
        """(step inputs (tokens, positions, offsets), run() -> logits): the previous batch's step (and graph)
        when it ran on these same buffers with the same paths, else a new one (_decode_step)."""
        kept, paths = self.kept, (self.attention, self.graphs)
        if kept.get("paths") == paths:  # (prefill emptied kept when it made new buffers)
            for kept_in, new in zip(kept["step_in"], (tokens, positions, offsets)):
                kept_in.copy_(new)
            return kept["step_in"], kept["run"]
        step_in = (tokens.clone(), positions.clone(), offsets.clone())
        run = self._decode_step(kv, step_in)
        kept.update(paths=(self.attention, self.graphs), step_in=step_in, run=run)
        return step_in, run

    def _decode_step(self, kv, step_in):
        """run() -> logits of one decode step for the whole batch, with the decode attention kernel and
        CUDA graph in use. The kernel is checked on this batch's shapes (check_attention: once per process
        per batch size and dtype); the graph, on its first use, against the same step run eagerly."""
        model, hook = self.model, self.on_logits
        if self.attention != "sdpa":
            keys = kv[0][0]
            b, heads, slots, d = keys.shape
            group = model.config.text_config.num_attention_heads // heads
            scale = model.model.language_model.layers[0].self_attn.scaling
            if not check_attention(f"{self.attention} decode attention", (b, heads, group, d), slots, step_in[1],
                                   keys.dtype, scale):
                self.attention = "sdpa"
        step = Step(self.family, model, *kv, self.attention, hook)
        run = None
        if self.graphs:
            eager = None if self.checked else step(*step_in)
            with torch.profiler.record_function("llava graph capture"):
                run = _checked("CUDA-graph decoding", lambda: graphed(step, *step_in), eager, "eager decode steps")
            self.graphs = run is not None
        self.checked = True
        return run or (lambda: step(*step_in))
