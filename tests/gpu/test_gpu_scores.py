"""Token probabilities, P("None") and class scores on the GPU plans, at their own dtypes (bf16; fp16 and the
memory-efficient attention of a 7.x card; NF4), against plain forward passes of the same loaded model:

    python -m pytest tests/gpu/test_gpu_scores.py -q        # on a GPU machine

A tiny random checkpoint biased so that P("None") is ~0.01 (a missing 1 - P(None) factor shows); one row
of the batch is forced to write three labels (every label position scored, after its own prefix).
"""
import math

import pytest
import torch

from llava_soccer import decoding, scores, synthetic
from llava_soccer.engine import Engine
from llava_soccer.generation import Generation
from llava_soccer.settings import SOCCERNET_CLASSES

from .test_gpu_paths import MODERN, plan, windows

FORCED = "{'label': 'Foul', 'team': 'home'}, {'label': 'Yellow card', 'team': 'home'}, {'label': 'Corner'}"
# bf16 keeps 8 bits of mantissa (0.4%), fp16 10: the one-pass tree and a plain forward round differently over
# a 2-layer model, ~1e-2 in a log-probability plus a few 1e-3 of its size (the character tokenizer spells a
# class in ~10 tokens: bf16 log-scores near -52 differed by up to 0.166 on the H100, 2026-12-06); a wrong
# prefix, position or end set moves a token's log-probability by units. A long decode drifts too: the 96th
# answer token's log-probability (-1.90) was 0.065 from the plain forward's in bf16.
LOG_TOLERANCE = 0.1
RELATIVE = 5e-3


def close(ours, theirs) -> bool:
    return abs(ours - theirs) < LOG_TOLERANCE + RELATIVE * abs(theirs)


@pytest.fixture(scope="module")
def none_checkpoint(tmp_path_factory):
    return synthetic.make_checkpoint(tmp_path_factory.mktemp("gpu") / "none", "tiny", seed=11, init_std=0.2,
                                     none_prob=0.01)


def forced_engine(ckpt, chosen, forced_ids):
    """An engine whose decoder makes row 0 write forced_ids (after the model's own first token)."""
    start, forced = {}, torch.tensor(forced_ids, device="cuda")  # made here: a CUDA graph cannot copy from the CPU

    def force(logits, positions):
        b = len(positions)
        start.setdefault(b, positions.clone())
        # A finished row's position is 0 (decoding.Step): clamp below too, or its step indexes out of bounds.
        step = (positions - start[b]).clamp(0, len(forced_ids) - 1)
        target = forced[step]
        wanted = torch.where(torch.arange(logits.shape[1], device=logits.device)[None] == target[:, None], 1e4, -1e4)
        return torch.where(torch.arange(b, device=logits.device)[:, None] == 0, wanted.to(logits.dtype), logits)
    return Engine.load(str(ckpt), chosen, "cuda", on_logits=force)


def plain_forward(engine, window):
    """scores.reference's forward: the loaded model's own forward passes over prompt + before + tokens."""
    return scores.plain_forward(engine.model, decoding.on_model(engine.model, window), engine.attention)


@pytest.mark.parametrize("quantization,assume", [("bf16", None), ("fp16", "7.0,12"), ("nf4", None)])
def test_scores_on_the_gpu_plans_are_plain_forward_passes(none_checkpoint, quantization, assume):
    if quantization == "bf16" and not MODERN:
        pytest.skip("bf16 plans need compute capability 8.0+")
    chosen = plan(quantization, assume_gpu=assume)
    from transformers import AutoTokenizer
    forced = AutoTokenizer.from_pretrained(str(none_checkpoint))(FORCED, add_special_tokens=False)["input_ids"]
    engine = forced_engine(none_checkpoint, chosen, forced)
    tok = engine.processor.tokenizer
    try:
        inputs = windows(engine.processor, 2)
        answers = engine.answer(inputs, Generation(len(forced) + 1))
        assert FORCED in answers[0].text and len(scores.label_anchors(tok, answers[0].ids, answers[0].text)) == 3
        for window, answer in zip(inputs, answers):
            forward = plain_forward(engine, window)
            found = scores.reference(forward, tok, answer.ids, answer.text)
            none = math.exp(found.pop(scores.NONE))
            assert 1e-3 < none < 0.1
            assert close(math.log(answer.none_prob), math.log(none))
            for name in SOCCERNET_CLASSES:
                expected = math.log(1 - none) + found[name]
                assert close(math.log(answer.class_scores[name]), expected), (name, quantization)
            if answer is answers[1]:  # its tokens' probabilities: the plain forward's (row 0's are forced)
                rows = forward([], answer.ids)
                pairs = [(j, lp, float(rows[j, t])) for j, (t, lp) in enumerate(zip(answer.ids, answer.logprobs))]
                assert all(close(lp, theirs) for _, lp, theirs in pairs), [p for p in pairs if not close(*p[1:])]
    finally:
        del engine
        torch.cuda.empty_cache()
