"""The event prompt and the processor inputs of a window: what the model is asked, and how.

    inputs = prompt.prepare(processor, [(frame_times, rgb_frames)])   # one processor input per window
    batch = prompt.collate(processor, inputs)                          # left-padded, for generate()
"""
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


