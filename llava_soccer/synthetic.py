"""Offline stand-ins for the hub model and for match videos, built from the real classes.

No weights can be downloaded on the test machines, so tests, the README demo and the GPU
benchmark build a LLaVA-NeXT checkpoint here and load it with from_pretrained(dir), exactly
as the hub id is loaded:

    python -m llava_soccer.synthetic checkpoint DIR [--family llava_next|qwen2_5_vl] [--size tiny|tiny336|full]
                                                    [--answer TEXT]
    python -m llava_soccer.synthetic video FILE.mkv --seconds 60 [--fps 25]

A tiny checkpoint given --answer is a "parrot": its language model is wired as a bigram
table (attention and MLP outputs are zero, so each position sees only its own token) that
maps the prompt's last token "]" to one token holding the answer, then to </s>. generate()
then really returns that text, so tests check parsing and recording on real model output.
"""
import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .families import FAMILIES, of_config

# Real llava-v1.6-mistral-7b-hf numbers (its config.json); "tiny" keeps the shapes' logic.
_FULL = dict(
    text=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=8, vocab_size=32064),
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=336, projection_dim=768),
)
# Every Linear at least 64 wide, so bitsandbytes NF4 also runs on CPU (bitsandbytes 0.50.2: a 32-wide
# CLIP layer fails with "shape '[32, 0]' is invalid").
_TINY = dict(
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2),
    vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=64),  # image size: SIZES
)
# Image sizes: "tiny" 56 px, ~120 tokens per 224p frame (a 15-frame window ~1,800; the suite's windows cost a third
# of 112 px's); "tiny112" ~5,000 a window, past the 1080 Ti plan's 4,096-token prefill chunk; "tiny336" the hub
# model's 1,608 per frame.
SIZES = {"tiny": (_TINY, 56), "tiny112": (_TINY, 112), "tiny336": (_TINY, 336), "full": (_FULL, 336)}


def _tokenizer(answer):
    """A character-level BPE tokenizer with Mistral's specials plus <image> and <pad>."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127) if chr(c) != " "] + ["▁", "\n"]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Replace("▁", " ")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<image>", "<pad>"])
    if answer is not None:
        tok.add_tokens([AddedToken(answer, normalized=False, special=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def _wire_parrot(model, tokenizer, answer):
    """Make greedy decoding after the prompt's final "]" emit exactly `answer`, then </s>."""
    import torch
    emb = model.get_input_embeddings().weight
    vocab, hidden = emb.shape
    assert len(tokenizer) <= hidden, "one-hot embeddings need hidden_size >= vocabulary"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("]", answer, "</s>")}
    with torch.no_grad():
        emb.zero_()
        emb[:, :vocab] = torch.eye(vocab, dtype=emb.dtype)  # one-hot: token i -> unit vector i
        for name, module in model.named_modules():
            if "language_model" in name and name.endswith(("self_attn.o_proj", "mlp.down_proj")):
                module.weight.zero_()
        head = model.get_output_embeddings().weight
        head.zero_()
        head[ids[answer], ids["]"]] = 10.0  # "]" -> answer
        head[ids["</s>"], ids[answer]] = 10.0  # answer -> </s>


def _bias_none(model, tokenizer, none_prob):
    """Make a random model answer "None" with probability about none_prob: after the prompt's last "]" it
    writes "N" with that probability, then "o", "n", "e" almost surely (P(None) of a random model is ~1e-13,
    too small for a missing 1 - P(None) factor to show). Each of those tokens' embedding is a large unit
    vector of its own that dominates its hidden state; the head reads the next token from it, and no other
    token's logit does (their head weights there are zero)."""
    import torch
    chain = ["]", "N", "o", "n", "e"]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in chain]
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    hidden = emb.shape[1]
    with torch.no_grad():
        head[:, :len(chain)] = 0
        for k, token in enumerate(ids):
            emb[token] = 0
            emb[token, k] = 1000.0  # far larger than any layer adds (~10-100): its hidden state keeps this direction
        rms = hidden ** 0.5  # the final norm makes that direction ~sqrt(hidden) long
        vocab = len(tokenizer) - 1
        head[ids[1], 0] = float(np.log(none_prob * vocab / (1 - none_prob))) / rms  # "]" -> "N": none_prob
        for k in range(1, len(chain) - 1):
            head[ids[k + 1], k] = 12.0 / rms  # "N" -> "o" -> "n" -> "e": e^12 against ~100 tokens


def make_checkpoint(out_dir, size="tiny", answer=None, seed=0, dtype="float32", device="cpu", init_std=0.02,
                    none_prob=None):
    """Save a random LLaVA-NeXT checkpoint + processor to out_dir; return out_dir. none_prob: a random
    model that answers "None" with about that probability (tiny only)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    dims, image_size = SIZES[size]
    out_dir = Path(out_dir)
    tokenizer = _tokenizer(answer)
    scale = image_size / 336
    pinpoints = [[round(h * scale), round(w * scale)] for h, w in
                 [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]]
    text = MistralConfig(**{"vocab_size": len(tokenizer), **dims["text"]}, max_position_embeddings=32768,
                         rope_theta=1e6, sliding_window=None, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=init_std)
    vision = CLIPVisionConfig(**{**dims["vision"], "image_size": image_size}, patch_size=14, initializer_range=init_std)
    config = LlavaNextConfig(text_config=text, vision_config=vision,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", tie_word_embeddings=False,
                             image_seq_length=(image_size // 14) ** 2)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration(config).to(getattr(torch, dtype))
    if answer is not None:
        _wire_parrot(model, tokenizer, answer)
    if none_prob is not None:
        _bias_none(model, tokenizer, none_prob)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size},
                                              image_grid_pinpoints=pinpoints)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                       ).save_pretrained(out_dir)
    return out_dir


# --- videos: each frame carries its own index as a 16-bit barcode, so tests can check ---
# which frame the sampler returned after H.264 compression.
_BITS, _BAR_H = 16, 40


def frame_image(index: int, width=398, height=224) -> np.ndarray:
    """An RGB frame: green pitch, a ball moving across, the frame index as a barcode on top."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = (40, 140, 60)
    bar_w = width // _BITS
    for bit in range(_BITS):
        if index >> bit & 1:
            img[:_BAR_H, bit * bar_w:(bit + 1) * bar_w] = 255
        else:
            img[:_BAR_H, bit * bar_w:(bit + 1) * bar_w] = 0
    x = int((index * 3) % (width - 20))
    img[150:170, x:x + 20] = 255
    return img


def read_barcode(rgb: np.ndarray) -> int:
    """The frame index that frame_image() drew into rgb."""
    bar_w = rgb.shape[1] // _BITS
    row = rgb[_BAR_H // 2]
    return sum(1 << bit for bit in range(_BITS) if row[bit * bar_w + bar_w // 2].mean() > 127)


def make_video(path, seconds=60.0, fps="25", width=398, height=224):
    """Encode an H.264 video of barcoded frames with ffmpeg (libx264); fps may be "30000/1001"."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg not found: apt-get install ffmpeg")
    num, _, den = str(fps).partition("/")
    n_frames = int(round(seconds * float(num) / float(den or 1)))
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(n_frames):
        proc.stdin.write(frame_image(i, width, height).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed to write {path}")
    return Path(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("checkpoint", help="save a random checkpoint of a model family (LLaVA-NeXT by default)")
    c.add_argument("out_dir")
    c.add_argument("--family", choices=sorted(FAMILIES), default="llava_next",
                   help="the model family (llava_soccer/families/): its module's build_checkpoint")
    c.add_argument("--size", choices=sorted(SIZES), default="tiny")
    c.add_argument("--answer", default=None, help="text the model will answer every window with (tiny only)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    c.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is much faster for full)")
    v = sub.add_parser("video", help="encode a barcoded H.264 test video")
    v.add_argument("path")
    v.add_argument("--seconds", type=float, default=60.0)
    v.add_argument("--fps", default="25")
    v.add_argument("--size", default="398x224", help="WIDTHxHEIGHT")
    a = p.parse_args(argv)
    if a.what == "checkpoint":
        of_config({"model_type": a.family}).build_checkpoint(a.out_dir, a.size, a.answer, dtype=a.dtype,
                                                             device=a.device)
    else:
        size = a.size.split("x")
        if len(size) != 2 or not all(x.isdigit() and int(x) > 0 for x in size):
            p.error(f"--size {a.size!r}: use WIDTHxHEIGHT, e.g. 398x224")
        try:
            # ffmpeg cannot open a file in a folder that does not exist: it would exit and break our pipe
            Path(a.path).parent.mkdir(parents=True, exist_ok=True)
            make_video(a.path, a.seconds, a.fps, int(size[0]), int(size[1]))
        except BrokenPipeError:  # ffmpeg stopped reading the frames: its own line above says why
            p.exit(1, f"{p.prog} video: ffmpeg could not write {a.path} (see its line above)\n")
        except (OSError, RuntimeError) as e:  # a folder that cannot be made; ffmpeg missing or failing
            p.exit(1, f"{p.prog} video: {a.path}: {getattr(e, 'strerror', None) or e}\n")
    print(f"wrote {a.out_dir if a.what == 'checkpoint' else a.path}")


if __name__ == "__main__":
    main()
