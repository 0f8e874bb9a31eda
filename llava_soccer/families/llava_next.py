"""LLaVA-NeXT (llava-v1.6-mistral-7b-hf): everything this pipeline knows about that model family.

    model, processor = llava_next.load(model_id, plan, "cuda:0")
    inputs = llava_next.prepare(processor, [(frame_times, rgb_frames)])   # one dict per window
    embeds, position_ids, offset = llava_next.embed(model, decoding.on_model(model, inputs[0]))

Its language model is Mistral: 1-D rotary positions (position = KV slot, offset 0), layers without
biases, so the fused kernels (fused.py) and FP8 layers (fp8.py) apply. Torch and transformers are
imported inside the functions: the plan (gpus.py) reads this module's constants in milliseconds.
Its tiny and full-size random checkpoints: build_checkpoint (synthetic.make_checkpoint's, the first family's).
"""
from ..prompt import QUESTION, clock
from ..settings import DEFAULT_MODEL, FPS

NAME = "llava_next"                 # recorded in made_by
TAG = "llava"                       # in file names: final_predictions_llava_video_N.json, ...
MODEL_TYPES = ("llava_next",)       # config.json model_type
NAME_HINTS = ("llava",)  # parts of a hub id's name (lower-cased): its family before it is downloaded
DEFAULT_ID = DEFAULT_MODEL
# The worker's memory per window, for the plan's batch-size estimate (224p, measured on the device's
# H100/H200; benchmarks/RESULTS.md): weights, prefill activations, KV cache of one window.
WEIGHTS_GIB = {"nf4": 4.2, "bf16": 14.2, "fp16": 14.2, "fp32": 28.4, "fp8": 7.9}  # fp8: LM linears only
ACTIVATIONS_GIB = 1.0
KV_GIB = 3.1
FUSED_KERNELS = True                # fused.py's kernels are Mistral's modules'
FP8 = True                          # fp8.convert: Mistral's linear layers have no biases
FAST_DECODER = True                 # decoding.Decoder runs it (generation.Generation.fast)


def __getattr__(name):
    """apply_rotary_pos_emb: Mistral's (q, k, cos, sin), imported with transformers on first use."""
    if name == "apply_rotary_pos_emb":
        from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb
        return apply_rotary_pos_emb
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(model_id: str, plan, device: str, visual_tokens: str = "full"):
    """(model, processor) for plan (llava_soccer.gpus.Plan): loading.from_pretrained_kwargs's dtypes and
    quantization, then the NF4 weights dequantized where the plan says so.

    visual_tokens="reduced" is the opt-in fast mode: each frame is seen as the 336x336 base view
    plus ONE high-resolution tile instead of LLaVA-NeXT's best grid of up to 2x2 tiles
    (image_grid_pinpoints = [[336, 336]]): 926 instead of 1,608 tokens per 224p frame.
    """
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    from .. import loading
    kwargs = loading.from_pretrained_kwargs(plan, device)
    processor = LlavaNextProcessor.from_pretrained(model_id, token=kwargs["token"])
    processor.tokenizer.padding_side = "left"  # batched generation appends on the right
    model = LlavaNextForConditionalGeneration.from_pretrained(model_id, **kwargs).eval()
    loading.after_load(model, plan)
    if visual_tokens == "reduced":
        # Processor and model must agree on the grid, or the image token counts do not match.
        side = processor.image_processor.crop_size["height"]
        processor.image_processor.image_grid_pinpoints = [[side, side]]
        model.config.image_grid_pinpoints = [[side, side]]
    return model, processor


def build_prompt(frame_times) -> str:
    """Mistral's [INST] format with each frame's number and time just before its image.

    The hub chat template would move every image to the front; keeping the number beside
    its image lets the model say WHEN (SoccerNet's tight metric forgives at most ~1 s).
    """
    frames = "".join(f"Frame {i} ({clock(t)}): <image>\n" for i, t in enumerate(frame_times, 1))
    return f"[INST] {frames}{QUESTION.format(n=len(frame_times), gap=1 / FPS)} [/INST]"


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


def embed(model, window, chunk=None):
    """(input embeddings (1, n, hidden) of one window (processor inputs on the model's device), image tokens
    replaced by image features; None: positions 0..n-1; offset 0). A chunked prefill (chunk: tokens per
    chunk) is a small card's: its vision tower sees decoding.FRAMES_PER_VISION_CALL frames at a time."""
    import torch

    from ..decoding import FRAMES_PER_VISION_CALL
    inner = model.model
    ids = window["input_ids"]
    embeds = inner.get_input_embeddings()(ids)
    pixels, sizes = window["pixel_values"], window["image_sizes"]
    step = FRAMES_PER_VISION_CALL if chunk else len(pixels)
    features = torch.cat([f for i in range(0, len(pixels), step)
                          for f in inner.get_image_features(pixels[i:i + step], sizes[i:i + step]).pooler_output])
    mask = inner.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=features)
    return embeds.masked_scatter(mask, features.to(embeds.dtype)), None, 0


def rope_offset(model, window) -> int:
    """embed()'s offset without running the vision tower (the generate() path's): always 0."""
    return 0


def rope_positions(positions):
    """Mistral's rotary embedding takes the 1-D positions as they are."""
    return positions


def build_checkpoint(out_dir, size="tiny", answer=None, **kw):
    """A random checkpoint of this family laid out as the hub's: synthetic.make_checkpoint (its arguments)."""
    from ..synthetic import make_checkpoint
    return make_checkpoint(out_dir, size, answer, **kw)
