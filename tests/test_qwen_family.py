"""Qwen2.5-VL as a model family (llava_soccer/families/qwen2_5_vl.py), on real tiny random checkpoints laid out as
the hub's: what the family hands the generic decoder (embeddings, M-RoPE positions, the offset of the text after the
prompt) equals the model's own forward passes, batches equal single windows, and no torchvision is needed."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import GOAL_ANSWER, ROOT, appended, cpu_plan
from llava_soccer import events, scores
from llava_soccer.families import qwen2_5_vl as qwen
from llava_soccer.prompt import clock
from llava_soccer.synthetic import frame_image

pytestmark = pytest.mark.slow


def window(n_frames, start=0.0, size=(398, 224)):
    """(frame_times, rgb frames) of a window of n_frames at 5 FPS from start."""
    return [start + i / 5 for i in range(n_frames)], [frame_image(int(start * 5) + i, *size) for i in range(n_frames)]


@pytest.fixture(scope="module")
def random_qwen(tmp_path_factory):
    return qwen.build_checkpoint(tmp_path_factory.mktemp("qwen") / "random", "tiny")


@pytest.fixture(scope="module")
def parrot_qwen(tmp_path_factory):
    return qwen.build_checkpoint(tmp_path_factory.mktemp("qwen") / "parrot", "tiny", answer=GOAL_ANSWER)


@pytest.fixture(scope="module")
def loaded(random_qwen):
    return qwen.load(str(random_qwen), cpu_plan("fp32"), "cpu")


def test_embed_gives_the_models_own_logits(loaded):
    """The language model over embed()'s embeddings and M-RoPE position ids gives model(**window)'s logits; the
    vision tower run a few frames at a time (chunk) gives the same embeddings."""
    model, processor = loaded
    [w] = qwen.prepare(processor, [window(4)])
    with torch.no_grad():
        embeds, position_ids, offset = qwen.embed(model, w)
        hidden = model.model.language_model(inputs_embeds=embeds, position_ids=position_ids).last_hidden_state
        assert position_ids.shape == (3, 1, w["input_ids"].shape[1]) and offset < 0  # images take fewer positions
        torch.testing.assert_close(model.lm_head(hidden), model(**w).logits, atol=1e-5, rtol=0)
        chunked, _, _ = qwen.embed(model, w, chunk=64)
        torch.testing.assert_close(chunked, embeds, atol=1e-6, rtol=0)


def test_text_after_the_prompt_rotates_at_slot_plus_offset(loaded):
    """What the generic decoder does: prefill with embed()'s positions into a cache, then each new token at KV
    slot s rotated with rope_positions(s + offset) through the language model's layers; its logits equal a plain
    forward pass over prompt + those tokens (where the model computes M-RoPE itself)."""
    model, processor = loaded
    [w] = qwen.prepare(processor, [window(3)])
    lm, tokens = model.model.language_model, processor.tokenizer("{'label': 'Goal'")["input_ids"]
    n = w["input_ids"].shape[1]
    with torch.no_grad():
        embeds, position_ids, offset = qwen.embed(model, w)
        cache = qwen_cache(model)
        lm(inputs_embeds=embeds, position_ids=position_ids, past_key_values=cache, use_cache=True)
        got = []
        for k, token in enumerate(tokens):
            h = lm.embed_tokens(torch.tensor([[token]]))
            cos_sin = lm.rotary_emb(h, qwen.rope_positions(torch.tensor([[n + k + offset]])))
            for layer in lm.layers:
                h = layer(h, attention_mask=None, position_embeddings=cos_sin, past_key_values=cache, use_cache=True)
            got.append(model.lm_head(lm.norm(h))[0, -1])
        want = model(**appended(w, tokens)).logits[0, n:]
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=0)


def qwen_cache(model):
    from transformers import DynamicCache
    return DynamicCache(config=model.config.text_config)


def greedy(model, w, steps):
    """Greedy tokens from plain forward passes over the window and what it wrote so far."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(**appended(w, out)).logits[0, -1].argmax()))
    return out


def test_a_left_padded_batch_answers_as_each_window_alone(loaded):
    """generate() over collate()'s left-padded batch (windows of different lengths and frame sizes) gives each row
    the tokens of that window alone, and those are plain greedy decoding: load() drops the hub's repetition
    penalty (1.05), which would make Qwen decode differently from LLaVA, the fast decoder and the scores."""
    model, processor = loaded
    windows = qwen.prepare(processor, [window(3), window(1, 4.0, (320, 180)), window(2, 8.0)])
    assert len({w["input_ids"].shape[1] for w in windows}) == 3
    steps = 6
    with torch.no_grad():
        batch = model.generate(**qwen.collate(processor, windows), max_new_tokens=steps, do_sample=False)
        alone = [model.generate(**w, max_new_tokens=steps, do_sample=False)[0, -steps:].tolist() for w in windows]
    assert batch[:, -steps:].tolist() == alone
    assert alone[0] == greedy(model, windows[0], steps)


def test_the_parrot_answers_its_text_in_nf4_on_cpu(parrot_qwen):
    """A tiny checkpoint built with an answer loads with from_pretrained(dir) in NF4 (bitsandbytes on CPU),
    generates exactly that text then <|im_end|>, and the project's parser reads it."""
    model, processor = qwen.load(str(parrot_qwen), cpu_plan("nf4"), "cpu")
    assert type(model.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    [w] = qwen.prepare(processor, [window(2)])
    with torch.no_grad():
        out = model.generate(**qwen.collate(processor, [w]), max_new_tokens=4, do_sample=False)
    tokens = out[0, w["input_ids"].shape[1]:].tolist()
    assert processor.tokenizer.decode(tokens[:1]) == GOAL_ANSWER
    assert tokens[1] in model.generation_config.eos_token_id
    found, ok = events.parse_raw(processor.tokenizer.decode(tokens, skip_special_tokens=True))
    assert ok and [e["label"] for e in found] == ["Goal"]


def test_the_checkpoint_is_laid_out_as_the_hubs(random_qwen, loaded):
    """config.json in the hub's flat layout, the hub's files, a byte-level tokenizer that spells any text and every
    class name (scores.check_spelling), Qwen's specials as single tokens, and a prompt equal to what the checkpoint's
    own chat template writes (frame texts and images in order, the default system turn, the assistant turn open)."""
    _, processor = loaded
    tok = processor.tokenizer
    names = {p.name for p in random_qwen.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
            "chat_template.json", "generation_config.json", "model.safetensors"} <= names
    config = json.loads((random_qwen / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and "hidden_size" in config and "text_config" not in config
    assert config["image_token_id"] == tok.convert_tokens_to_ids(qwen.IMAGE)
    assert all(len(tok(s, add_special_tokens=False)["input_ids"]) == 1 for s in qwen.SPECIALS)
    text = "Ünïcödé ⚽ {'label': 'Yellow->red card'}\n\t1:05.2"
    assert tok.decode(tok(text)["input_ids"]) == text
    scores.check_spelling(tok)
    times = [0.0, 0.2, 0.4]
    content = [part for i, t in enumerate(times, 1) for part in ({"type": "text", "text": f"Frame {i} ({clock(t)}): "},
                                                                 {"type": "image"}, {"type": "text", "text": "\n"})]
    question = qwen.build_prompt(times).split("<|vision_end|>\n")[-1].split("<|im_end|>")[0]
    template = json.loads((random_qwen / "chat_template.json").read_text())["chat_template"]
    rendered = tok.apply_chat_template([{"role": "user", "content": content + [{"type": "text", "text": question}]}],
                                       chat_template=template, tokenize=False, add_generation_prompt=True)
    assert rendered == qwen.build_prompt(times)


def test_visual_tokens(random_qwen):
    """The seed's bounds scale a 398x224 frame up to ~200k pixels (286 tokens); "reduced" keeps its own size
    (rounded to 28 px: 224x392, 112 tokens)."""
    per_frame = {}
    for mode in ("full", "reduced"):
        _, processor = qwen.load(str(random_qwen), cpu_plan("fp32"), "cpu", visual_tokens=mode)
        [w] = qwen.prepare(processor, [window(2)])
        per_frame[mode] = int(w["mm_token_type_ids"].sum()) // 2
    assert per_frame == {"full": 286, "reduced": 112}


def test_no_torchvision_needed(random_qwen):
    """load, prepare, embed and generate with torchvision made unimportable (it does not load beside the CPU torch
    here; Qwen2_5_VLProcessor would need it)."""
    code = f"""
import sys
sys.modules["torchvision"] = None  # import torchvision now raises ImportError
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
import torch
from conftest import cpu_plan
from llava_soccer.families import qwen2_5_vl as qwen
from llava_soccer.prompt import clock
from llava_soccer.synthetic import frame_image
model, processor = qwen.load({str(random_qwen)!r}, cpu_plan("fp32"), "cpu")
windows = qwen.prepare(processor, [([0.0, 0.2], [frame_image(0), frame_image(1)])], dtype=torch.float32)
with torch.no_grad():
    qwen.embed(model, windows[0])
    model.generate(**qwen.collate(processor, windows), max_new_tokens=2, do_sample=False)
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_the_full_size_is_qwen2_5_vl_7b():
    """The "full" config in the hub's flat layout builds Qwen2.5-VL-7B-Instruct's 8,292,166,656 parameters (its
    safetensors index: 16,584,333,312 bytes in bf16), in bf16 from the start (meta device: no memory)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    hub = qwen.hub_config("full", qwen._tokenizer(None))
    config = Qwen2_5_VLConfig(**{k: v for k, v in hub.items() if k not in ("architectures", "model_type")})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656 and model.dtype == torch.bfloat16
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
