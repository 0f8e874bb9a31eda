"""LLaVA-NeXT loading, the event prompt and batched generation.

The real Hugging Face classes run everywhere: on the cluster with the hub id, in tests with a
tiny checkpoint directory built by synthetic.py (same from_pretrained call).
"""
import contextlib
import os

from .settings import FPS, SOCCERNET_CLASSES

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


def load(model_id: str, quantization: str, device: str, visual_tokens: str = "full"):
    """(model, processor); quantization nf4 = 4-bit NormalFloat with bf16 compute (the seed's setting).

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
    if quantization == "nf4":
        # bf16 compute: same range as the checkpoint's weights, no fp16 overflow, faster on Hopper.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[quantization]
    processor = LlavaNextProcessor.from_pretrained(model_id, token=token)
    processor.tokenizer.padding_side = "left"  # batched generation appends on the right
    model = LlavaNextForConditionalGeneration.from_pretrained(model_id, **kwargs).eval()
    if visual_tokens == "reduced":
        # Processor and model must agree on the grid, or the image token counts do not match.
        side = processor.image_processor.crop_size["height"]
        processor.image_processor.image_grid_pinpoints = [[side, side]]
        model.config.image_grid_pinpoints = [[side, side]]
    return model, processor


def prepare(processor, windows):
    """Processor inputs (CPU tensors) for a batch of windows [(frame_times, rgb_frames)]."""
    prompts = [build_prompt(times) for times, _ in windows]
    images = [f for _, frames in windows for f in frames]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


def _attention(kind):
    """SDPA backend order: "cudnn" tries cuDNN attention first (measured faster than flash for the
    25k-token prefill on H100/H200, FACTS.md); "auto" leaves PyTorch's own choice."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if kind == "auto" or not torch.cuda.is_available():
        return contextlib.nullcontext()
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def preallocated_cache(room: int):
    """A DynamicCache that does not copy itself at every new token.

    transformers' DynamicLayer appends with torch.cat, so each decode step re-copies the whole
    KV cache: ~3.3 GB per 25k-token window, i.e. ~26 GB per step at batch 8. Here the prefill's
    keys/values go into a buffer with `room` spare positions and each new token is written in
    place; attention still sees exactly the filled length (unlike StaticCache, which attends
    over its full padded length with a mask), so the answers are the same. Measured on an H200:
    1-2% faster than DynamicCache at batch 8 (benchmarks/RESULTS.md).
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            n = self.keys.shape[-2] if self.is_initialized else 0
            m = n + key_states.shape[-2]
            if n == 0 or m > self.buffers[0].shape[-2] or self.keys.data_ptr() != self.buffers[0].data_ptr():
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                old = (self.keys, self.values)
                self.buffers = [x.new_empty((*x.shape[:-2], m + room, x.shape[-1])) for x in (key_states, value_states)]
                for buf, x in zip(self.buffers, old if n else ()):
                    buf[..., :n, :].copy_(x)
            for buf, x in zip(self.buffers, (key_states, value_states)):
                buf[..., n:m, :].copy_(x)
            self.keys, self.values = (buf[..., :m, :] for buf in self.buffers)
            return self.keys, self.values

    cache = DynamicCache()
    cache.layer_class_to_replicate = PreallocatedLayer
    return cache


def generate(model, processor, inputs, max_new_tokens=256, temperature=0.0, top_p=1.0, cache="preallocated",
             attention="auto"):
    """The decoded answers of one prepared batch. cache: "preallocated" (see preallocated_cache),
    "dynamic" (transformers' default) or "static" (measured slower with 25k-token prompts:
    benchmarks/RESULTS.md)."""
    import torch
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False}
    with torch.inference_mode(), _attention(attention):
        kv = ({"past_key_values": preallocated_cache(max_new_tokens)} if cache == "preallocated" else
              {"cache_implementation": "static"} if cache == "static" else {})
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=processor.tokenizer.pad_token_id,
                             **kv, **sampling)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
