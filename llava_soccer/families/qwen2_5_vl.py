"""Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct), the study's comparison model, as a model family (issue 32;
the interface: docs/design.md, "Model families").

Inputs are made from the tokenizer and Qwen2VLImageProcessorPil, not Qwen2_5_VLProcessor: in transformers
5.17 that processor insists on a video processor that imports torchvision, and PyPI's torchvision does not
load beside the CPU torch ("operator torchvision::nms does not exist"). Each frame is written as the processor
would: <|vision_start|> + <|image_pad|> x (t*h*w / merge_size^2 of its grid) + <|vision_end|>.

Positions are M-RoPE's: (3, b, n) ids (time, height, width) from the model's get_rope_index; every text token
after the images has three equal ids, its slot + rope_delta (embed()'s offset), so a decoder rotates slot s
with rope_positions(s + offset).
"""
import json
from pathlib import Path

from ..prompt import QUESTION, clock
from ..settings import FPS

NAME = "qwen2_5_vl"
TAG = "qwen2.5vl"
MODEL_TYPES = ("qwen2_5_vl",)
NAME_HINTS = ("qwen2.5-vl", "qwen2_5_vl")  # parts of a hub id's name (lower-cased): its family before it is downloaded
DEFAULT_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
# ESTIMATES from the architecture: 8.29e9 parameters, of which 1.09e9 in embed_tokens + lm_head (never quantized:
# bf16 in NF4 too); KV: 28 layers x 2 x 4 heads x 128 x 2 bytes = 56 KiB per token x ~5,100 tokens of a 224p
# window at the seed's pixel bounds. Measured so far (H100, benchmarks/RESULTS.md 2026-12-06): dequantized NF4
# (bf16 weights) peaked at 16.6 GiB at batch 1 and 21.9 GiB at batch 16 (~0.35 GiB a window); packed NF4 (the
# plan of cards under 64 GiB) at 6.7 GiB at batch 1, also under the Titan RTX plan; the seed's worker: 6.9 GiB.
# fp8: the language model's 6.5e9 linear weights in e4m3 (6.1 GiB) + vision tower, embeddings and head in bf16 (3.3)
WEIGHTS_GIB = {"nf4": 5.6, "bf16": 15.5, "fp16": 15.5, "fp32": 31.0, "fp8": 9.4}
ACTIVATIONS_GIB = 0.6
KV_GIB = 0.3
FUSED_KERNELS = False  # fused.py's kernels are Mistral's (no q/k/v biases)
FP8 = True  # fp8.convert: Qwen2's decoder layers are Mistral's shape, plus q/k/v biases (kept)

SYSTEM = "You are a helpful assistant."  # what Qwen's chat template writes when the messages have no system turn
IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"
FRAME = "<|vision_start|>" + IMAGE + "<|vision_end|>"  # one per frame; IMAGE is repeated per grid in prepare()
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", IMAGE, VIDEO]
# The seed's processor bounds (workers/qwen_split_worker.py): a 224p frame is scaled UP to ~200k pixels,
# 256 tokens per frame. "reduced": the frame at its own size (rounded to 28 px), 112 tokens per 398x224 frame.
PIXELS = {"full": (256 * 28 * 28, 480 * 28 * 28), "reduced": (56 * 56, 480 * 28 * 28)}


class Processor:
    """What prepare() needs: the tokenizer (left padding: generate() appends on the right) and the image
    processor. Its vision tower attends within each frame only, so frames can be processed separately."""

    def __init__(self, tokenizer, image_processor):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        tokenizer.padding_side = "left"


def load(model_id, plan, device, visual_tokens="full"):
    """(model, Processor) in the plan's dtypes: NF4 computes in plan.compute_dtype (the seed used fp16 compute;
    our plan picks it as for LLaVA), everything else is stored in plan.storage_dtype."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .. import loading
    kwargs = loading.from_pretrained_kwargs(plan, device)
    token = kwargs["token"]
    low, high = PIXELS[visual_tokens]
    # min/max_pixels, not size=: the hub's preprocessor_config.json has min_pixels/max_pixels, which __init__ writes
    # over size; a new size dict too: the class's default dict is shared, and __init__ writes into it
    images = Qwen2VLImageProcessorPil.from_pretrained(model_id, token=token, min_pixels=low, max_pixels=high,
                                                      size={"shortest_edge": low, "longest_edge": high})
    processor = Processor(AutoTokenizer.from_pretrained(model_id, token=token), images)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_id, **kwargs).eval()
    # The hub's generation_config.json asks for repetition_penalty 1.05, top_k 1, top_p 0.001: generate() would
    # then decode differently from LLaVA's runs and from the greedy decoder and scores. Both families decode the
    # same way: the engine's own settings only.
    g = model.generation_config
    g.repetition_penalty, g.top_k, g.top_p, g.temperature, g.do_sample = 1.0, None, None, None, False
    loading.after_load(model, plan)
    return model, processor


def build_prompt(frame_times) -> str:
    """Qwen's chat format (what its chat template writes, with its default system turn) around LLaVA's question,
    each frame's number and time just before its image, so the same parser reads both families' answers."""
    frames = "".join(f"Frame {i} ({clock(t)}): {FRAME}\n" for i, t in enumerate(frame_times, 1))
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{frames}"
            f"{QUESTION.format(n=len(frame_times), gap=1 / FPS)}<|im_end|>\n<|im_start|>assistant\n")


def prepare(processor, windows, dtype=None, pin=False):
    """Model inputs (CPU tensors), one dict per window [(frame_times, rgb_frames)]: input_ids, attention_mask,
    mm_token_type_ids (1 at image tokens: get_rope_index needs them, else text positions are silently 0..n-1),
    pixel_values, image_grid_thw. dtype, pin: as LLaVA's (pixels in the model's dtype, page-locked memory)."""
    import torch
    tok, images = processor.tokenizer, processor.image_processor
    image_id = tok.convert_tokens_to_ids(IMAGE)
    out = []
    for times, frames in windows:
        pixels = images(images=list(frames), return_tensors="pt")
        counts = (pixels["image_grid_thw"].prod(-1) // images.merge_size ** 2).tolist()
        parts = build_prompt(times).split(IMAGE)
        text = "".join(part + IMAGE * k for part, k in zip(parts, counts)) + parts[-1]
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if int((ids == image_id).sum()) != sum(counts):
            raise ValueError(f"the tokenizer does not read {IMAGE} as one token: not a Qwen2.5-VL tokenizer?")
        window = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": (ids == image_id).int(), **pixels}
        if dtype is not None:
            window["pixel_values"] = window["pixel_values"].to(dtype)
        out.append({k: v.pin_memory() for k, v in window.items()} if pin else window)
    return out


def collate(processor, inputs) -> dict:
    """One left-padded batch of prepare()'s windows for model.generate(**batch) (get_rope_index skips the pads)."""
    import torch
    width = max(w["input_ids"].shape[1] for w in inputs)

    def left(key, fill):
        return torch.cat([torch.nn.functional.pad(w[key], (width - w[key].shape[1], 0), value=fill) for w in inputs])
    return {"input_ids": left("input_ids", processor.tokenizer.pad_token_id),
            "attention_mask": left("attention_mask", 0), "mm_token_type_ids": left("mm_token_type_ids", 0),
            "pixel_values": torch.cat([w["pixel_values"] for w in inputs]),
            "image_grid_thw": torch.cat([w["image_grid_thw"] for w in inputs])}


def embed(model, window, chunk=None):
    """(input embeddings with the image features in place of the image tokens, the (3, 1, n) M-RoPE position
    ids of the prompt, offset = rope_delta: rope position minus slot of every text token after the prompt).
    chunk: the vision tower sees FRAMES_PER_VISION_CALL frames at a time (each frame attends only to itself)."""
    import torch

    from ..decoding import FRAMES_PER_VISION_CALL
    inner = model.model
    ids, grid, pixels = window["input_ids"], window["image_grid_thw"], window["pixel_values"]
    embeds = inner.get_input_embeddings()(ids)
    step = FRAMES_PER_VISION_CALL if chunk else len(grid)
    rows = grid.prod(-1).tolist()  # pixel_values rows (patches) per frame
    starts = [sum(rows[:i]) for i in range(len(rows) + 1)]
    features = torch.cat([f for i in range(0, len(grid), step) for f in inner.get_image_features(
        pixels[starts[i]:starts[min(i + step, len(grid))]], grid[i:i + step]).pooler_output])
    mask, _ = inner.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=features)
    return (embeds.masked_scatter(mask, features.to(embeds.dtype)), *_rope_index(model, window))


def rope_offset(model, window) -> int:
    """embed()'s offset without running the vision tower (the generate() path's): from the token ids and grids."""
    return _rope_index(model, window)[1]


def _rope_index(model, window):
    """(the (3, 1, n) M-RoPE position ids of the prompt, its rope_delta) from the model's get_rope_index."""
    position_ids, deltas = model.model.get_rope_index(
        window["input_ids"], mm_token_type_ids=window["mm_token_type_ids"], image_grid_thw=window["image_grid_thw"],
        attention_mask=window.get("attention_mask"))
    return position_ids, int(deltas.reshape(-1)[0])


def rope_positions(positions):
    """(b, n) positions of text tokens -> the (3, b, n) ids rotary_emb takes (a text token's three are equal)."""
    return positions[None].expand(3, -1, -1)


def apply_rotary_pos_emb(q, k, cos, sin):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb as rotate
    return rotate(q, k, cos, sin)


# --- synthetic checkpoints (python -m llava_soccer.synthetic checkpoint DIR --family qwen2_5_vl) ---
# Qwen2.5-VL-7B-Instruct's config.json numbers, in the hub's flat layout (text keys at the top).
_FULL = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, max_window_layers=28,
             sliding_window=32768, use_sliding_window=False, rope_theta=1000000.0, rms_norm_eps=1e-06,
             rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
             vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                                fullatt_block_indexes=[7, 15, 23, 31], window_size=112))
# Every Linear at least 64 in-features wide so bitsandbytes NF4 also runs on CPU; 2 KV heads for 4 query heads
# (grouped, as the real 4 for 28).
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=32768, max_window_layers=2, sliding_window=32768, use_sliding_window=False,
             rope_theta=1000000.0, rms_norm_eps=1e-06, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
             vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                                fullatt_block_indexes=[1], window_size=112))
SIZES = {"tiny": _TINY, "full": _FULL}
_VISION = dict(hidden_act="silu", in_chans=3, patch_size=14, spatial_merge_size=2, spatial_patch_size=14,
               temporal_patch_size=2, tokens_per_second=2)
# The hub's preprocessor_config.json (its own pixel bounds: load() replaces them with PIXELS)
PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
# The hub's chat_template.json (Qwen2-VL's template), so a checkpoint dir holds what the hub repository does.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")


def _tokenizer(answer):
    """Qwen2Tokenizer (Qwen's own pre-tokenizer) over the 256 byte-level symbols and no merges: it spells any
    text, one token per byte; then Qwen's specials, and the parrot's answer as one token."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tok = Qwen2Tokenizer(vocab={c: b for b, c in bytes_to_unicode().items()}, merges=[], eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", unk_token=None, errors="replace")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    if answer is not None:
        tok.add_tokens([AddedToken(answer, normalized=False, special=False)])
    return tok


def _wire_parrot(model, tokenizer, answer):
    """Greedy decoding after the prompt's last token (the "\\n" of "<|im_start|>assistant\\n") emits exactly
    `answer` (one token), then <|im_end|>: attention and MLP outputs are zero, so each position's hidden state is
    its own token's embedding; two tokens get a unit direction of their own that the head reads."""
    import torch
    tokens = (tokenizer.tokenize("\n")[0], answer, "<|im_end|>")
    newline, said, end = (tokenizer.convert_tokens_to_ids(t) for t in tokens)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for name, module in model.named_modules():
            if "language_model" in name and name.endswith(("self_attn.o_proj", "mlp.down_proj")):
                module.weight.zero_()
        emb[:, :2] = 0
        emb[newline], emb[said] = 0, 0
        emb[newline, 0] = emb[said, 1] = 1.0
        head.zero_()
        head[said, 0] = head[end, 1] = 10.0  # "\n" -> answer -> <|im_end|>


def _bias_none(model, tokenizer, none_prob):
    """Make a random model answer "None" with probability about none_prob (synthetic._bias_none's way): after the
    prompt's last token "\n" it writes "N" with that probability, then "o", "n", "e" almost surely. Each of those
    tokens' embedding is a large unit vector of its own that dominates its hidden state; the head reads the next
    token from it. Unlike LLaVA's, the other tokens keep their random head weights on the "\n" direction: in this
    vocabulary of ~260 bytes, a flat rest would make "N" (0.01 > 1/260) every window's greedy first token."""
    import torch
    ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c)[0]) for c in ("\n", "N", "o", "n", "e")]
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    hidden = emb.shape[1]
    with torch.no_grad():
        head[:, 1:len(ids)] = 0
        for k, token in enumerate(ids):
            emb[token] = 0
            emb[token, k] = 1000.0  # far larger than any layer adds: its hidden state keeps this direction
        rms = hidden ** 0.5  # the final norm makes that direction ~sqrt(hidden) long
        others = torch.cat([head[:ids[1], 0], head[ids[1] + 1:len(tokenizer), 0]]).double() * rms
        head[ids[1], 0] = float(others.logsumexp(0) + torch.tensor(none_prob / (1 - none_prob)).log()) / rms
        for k in range(1, len(ids) - 1):
            head[ids[k + 1], k] = 12.0 / rms  # "N" -> "o" -> "n" -> "e": e^12 against ~260 tokens


def hub_config(size, tokenizer, dtype="bfloat16", init_std=0.02) -> dict:
    """config.json of a `size` checkpoint in the hub's flat layout (text keys at the top), token ids the tokenizer's;
    init_std: the random weights' standard deviation (initializer_range, the vision tower's too)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    dims = SIZES[size]
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": init_std, "tie_word_embeddings": False,
            "use_cache": True, "torch_dtype": dtype, "vocab_size": len(tokenizer),  # full: dims say 152,064
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "image_token_id": ids[IMAGE], "video_token_id": ids[VIDEO],
            **dims, "vision_config": {**_VISION, **dims["vision_config"], "initializer_range": init_std}}


def build_checkpoint(out_dir, size="tiny", answer=None, seed=0, dtype="float32", device="cpu", init_std=0.02,
                     none_prob=None):
    """Save a random Qwen2.5-VL checkpoint laid out as the hub's (config.json in its flat layout, tokenizer files,
    preprocessor_config.json, chat_template.json, generation_config.json); return out_dir. "full" builds in
    `dtype` directly on `device` (bf16 on a GPU: ~17 GB there, no fp32 copy in CPU memory). init_std, none_prob:
    as synthetic.make_checkpoint's (the weights' spread; a random model that answers "None" with about that
    probability, tiny only)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-shard bars
    if answer is not None and size != "tiny":
        raise ValueError("--answer makes a tiny parrot checkpoint only (use --size tiny)")
    out_dir = Path(out_dir)
    tokenizer = _tokenizer(answer)
    hub = hub_config(size, tokenizer, dtype, init_std)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2_5_VLConfig(**{k: v for k, v in hub.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # the weights are made in dtype: no fp32 copy of a 7B model
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    if answer is not None:
        _wire_parrot(model, tokenizer, answer)
    if none_prob is not None:
        _bias_none(model, tokenizer, none_prob)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    (out_dir / "config.json").write_text(json.dumps(hub, indent=2) + "\n")  # the hub's flat layout, as downloaded
    # The hub's generation_config.json (its sampling settings included: load() overrides them, see there)
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], do_sample=True,
                     eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], repetition_penalty=1.05,
                     temperature=0.1, top_p=0.001, top_k=1).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    return out_dir
