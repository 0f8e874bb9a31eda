"""Token probabilities and class scores (llava_soccer/scores.py, decoding.score_trees) against the model's
own forward, for every model family (a tiny random checkpoint of each, biased to answer "None" now and then):
one extra pass over each window's cache gives the log-probabilities that plain forward passes of
prompt + prefix + class give, at batch 1 and 3, with rows that finished early and prompts of different
lengths (left padding in generate's batch), for the fast decoder and transformers' generate: in fp32 to
1e-5 of their size (fp32's own rounding over a 3.5k-token forward moves a sum of ~10 log-probabilities near
-50 by ~1e-5), in fp64 to 1e-6 (the stored scores' 8 significant digits); token probabilities are
generate's own. Qwen2.5-VL's text after the images sits at M-RoPE positions slot + rope_delta: a tree scored
at its slots would be caught here."""
import math

import numpy as np
import pytest
import torch

from conftest import load_engine
from llava_soccer import families, scores
from llava_soccer.families import qwen2_5_vl
from llava_soccer.generation import Generation
from llava_soccer.settings import SOCCERNET_CLASSES

pytestmark = pytest.mark.slow
# each family's tiny checkpoint (init_std: answers that differ window by window; none_prob: P("None"))
@pytest.fixture(scope="module", params=families.ALL, ids=lambda f: f.NAME)
def checkpoint(request, tmp_path_factory):
    return request.param.build_checkpoint(tmp_path_factory.mktemp(request.param.NAME) / "r", "tiny", seed=11,
                                          init_std=0.2, none_prob=0.01)


def loaded(checkpoint):
    """Qwen's windows at visual_tokens reduced (112 tokens a frame, not 256): its vision tower runs again in every
    plain forward of the reference, and the scoring does not depend on the image token count."""
    return load_engine(checkpoint, visual_tokens="reduced" if "qwen" in checkpoint.parent.name else "full")


@pytest.fixture(scope="module")
def engine(checkpoint):
    return loaded(checkpoint)


@pytest.fixture(scope="module")
def engine64(checkpoint):
    engine = loaded(checkpoint)
    engine.model.double()
    return engine


def windows(engine, starts, frames=(4, 4, 4)):
    """The family's inputs of windows at `starts` of frames[i] random frames each: fewer frames, a shorter
    prompt."""
    rng = np.random.default_rng(3)
    return engine.prepare([([t + 0.2 * i for i in range(f)], [rng.integers(0, 255, (224, 398, 3), dtype=np.uint8)
                                                               for _ in range(f)]) for t, f in zip(starts, frames)])


def assert_scores(engine, window, answer, class_scores=True):
    """The answer's P(None) and class scores are plain forward passes' (scores.reference: every label
    position, each class's name then any token that closes it), with the (1 - P(None)) factor. Returns
    scores.reference's log-probabilities."""
    tok = engine.processor.tokenizer
    found = scores.reference(scores.plain_forward(engine.model, window), tok, answer.ids, answer.text,
                             SOCCERNET_CLASSES if class_scores else ())
    none = math.exp(found[scores.NONE])
    assert 1e-3 < none < 0.1  # the biased checkpoint's: a missing (1 - P(None)) factor shows
    rel, tol = (0, 1e-6) if engine.model.dtype == torch.float64 else (1e-5, 0)
    assert math.log(answer.none_prob) == pytest.approx(math.log(none), rel=rel, abs=tol)
    if not class_scores:
        assert answer.class_scores is None
        return found
    assert set(answer.class_scores) == set(SOCCERNET_CLASSES)
    for name in SOCCERNET_CLASSES:
        assert answer.class_scores[name] > 0
        assert math.log(answer.class_scores[name]) == pytest.approx(math.log(1 - none) + found[name],
                                                                    rel=rel, abs=tol), name
    return found


@pytest.mark.parametrize("decoder,batch,dtype,frames", [
    ("fast", 1, "fp32", (4,)), ("fast", 3, "fp32", (4, 4, 4)), ("transformers", 1, "fp32", (4,)),
    ("transformers", 3, "fp32", (4, 4, 4)), ("fast", 3, "fp64", (2, 2, 2)),  # fp64: its tolerance, not the length
    ("fast", 3, "fp32", (3, 4, 2)), ("transformers", 3, "fp32", (3, 4, 2))])  # prompts of 3 lengths: left padding
def test_one_pass_class_scores_are_the_models_own_log_probabilities(request, checkpoint, batch, decoder, dtype,
                                                                   frames):
    engine = request.getfixturevalue("engine64" if dtype == "fp64" else "engine")
    inputs = windows(engine, [0.0, 2.0, 4.0][:batch], frames)
    assert len({w["input_ids"].shape[1] for w in inputs}) == len(set(frames))
    eos = engine.model.generation_config.eos_token_id
    free = engine.answer(inputs, Generation(10, decoder=decoder, class_scores=False))
    if batch > 1:  # an end token row 0 says early: it finishes while the others run on
        k, end = next((k, t) for k, t in enumerate(free[0].ids) if k > 0 and t not in free[0].ids[:k]
                      and any(t not in a.ids[:k + 2] for a in free[1:]))
        engine.model.generation_config.eos_token_id = end
    try:
        answers = engine.answer(inputs, Generation(10, decoder=decoder))
    finally:
        engine.model.generation_config.eos_token_id = eos
    if batch > 1:
        assert len(answers[0].ids) == k and max(len(a.ids) for a in answers) > k + 1
    for window, answer in zip(inputs, answers):
        assert_scores(engine, window, answer)


FORCED = "{'label': 'Foul', 'team': 'home'}, {'label': 'Yellow card', 'team': 'home'}, {'label': 'Corner'}"


def test_every_label_the_answer_wrote_is_scored_after_its_own_prefix(engine):
    """The decoder's on_logits seam makes the first row's answer three dicts (after the model's own first
    token): every class is scored after the answer's own text up to each label's opening quote (read from the
    cache that decoding wrote), the window's score the largest; they equal plain forward passes. Its tree
    does not fit the spare slots after that answer in one piece, so the batch takes a second pass; the
    second row's answer (random) is scored after the prompt's format in the same passes."""
    tok = engine.processor.tokenizer
    forced = tok(FORCED, add_special_tokens=False)["input_ids"]
    start = {}

    def force(logits, positions):
        b = len(positions)
        start.setdefault(b, positions.clone())
        step = (positions - start[b]).clamp(0, len(forced) - 1)  # a finished row (position 0): any
        wanted = torch.where(torch.arange(logits.shape[1])[None] == torch.tensor(forced)[step][:, None], 1e4, -1e4)
        return torch.where(torch.arange(b)[:, None] == 0, wanted, logits)

    engine.reset(force)
    try:
        inputs = windows(engine, [0.0, 2.0])
        answers = engine.answer(inputs, Generation(len(forced) + 1))
        slots = engine.decoder.kept["kv"][0][0].shape[2]
    finally:
        engine.reset()
    assert FORCED in answers[0].text and "label" not in answers[1].text
    prompt_ids = inputs[0]["input_ids"][0].tolist()
    anchors = scores.label_anchors(tok, answers[0].ids, answers[0].text)
    assert len(anchors) == 3
    room = slots - len(prompt_ids) - len(answers[0].ids)
    assert len(scores.class_trees(tok, prompt_ids, answers[0].ids, answers[0].text, room)) == 2
    every = [assert_scores(engine, window, answer) for window, answer in zip(inputs, answers)][0]
    # the largest is at a later label for some class: scoring the first label alone would be caught
    p, prefix, _ = anchors[0]
    first = scores.reference(scores.plain_forward(engine.model, inputs[0]), tok, answers[0].ids[:p], prefix)
    assert any(every[c] > first[c] + 0.1 for c in SOCCERNET_CLASSES)


def test_none_prob_is_recorded_without_class_scores(engine):
    inputs = windows(engine, [0.0, 2.0])
    for decoder in ("fast", "transformers"):
        for window, answer in zip(inputs, engine.answer(inputs, Generation(6, decoder=decoder, class_scores=False))):
            assert_scores(engine, window, answer, class_scores=False)


def test_token_probabilities_are_generates_own(engine):
    """Each answer token's probability is what generate(output_scores=True) reports for it (greedy), and a
    label's probability is the product over the tokens that spell it."""
    inputs = windows(engine, [0.0, 2.0])
    answers = engine.answer(inputs, Generation(12, class_scores=False))
    tok = engine.processor.tokenizer
    for window, answer in zip(inputs, answers):
        with torch.inference_mode():
            out = engine.model.generate(**window, max_new_tokens=12, do_sample=False, output_scores=True,
                                        return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        ids = out.sequences[0, window["input_ids"].shape[1]:].tolist()
        assert ids[:len(answer.ids)] == answer.ids
        theirs = [float(s[0].float().log_softmax(-1)[t]) for s, t in zip(out.scores, ids)]
        np.testing.assert_allclose(answer.logprobs, theirs[:len(answer.ids)], atol=1e-5)
        # tokens a to b - 1 (from 3, at least 5) spell these characters (the model may write <pad>); a and b where
        # a character begins (a byte-level vocabulary splits one over tokens: its first bytes decode to "\ufffd")
        ends = scores.Decodes(tok, answer.ids)
        whole = [k for k in range(3, len(answer.ids) + 1) if ends.text(k) == answer.text[:ends.end(k)]]
        a = whole[0]
        b = next(k for k in whole if k >= a + 5)
        span = [ends.end(a), ends.end(b)]
        assert answer.text[span[0]:span[1]].strip()
        (prob,) = answer.label_probs(tok, [span])
        assert prob == pytest.approx(math.exp(sum(theirs[a:b])), rel=1e-5)
        assert answer.label_probs(tok, [None, [5, 5], [0, len(answer.text) + 1]]) == [None, None, None]


def test_the_reference_reads_the_image_tokens_id_in_an_answer_as_text(engine):
    """A random model can write the image token's id (one did on the H100, 2026-12-07): the reference runs the
    answer through the cache as generate() does, where one pass over prompt + answer counted it as one more
    image placeholder and raised. Row k predicts token k of before + tokens whatever the split."""
    window = windows(engine, [0.0], (2,))[0]
    text = engine.processor.tokenizer("{'label': 'Foul'", add_special_tokens=False)["input_ids"]
    forward = scores.plain_forward(engine.model, window)
    whole = forward([], text)
    rows = forward([], text + [engine.model.config.image_token_id] + text)
    assert rows.shape[0] == 2 * len(text) + 2 and torch.isfinite(rows).all()
    torch.testing.assert_close(rows[:len(text) + 1], whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(forward(text[:3], text[3:]), whole[3:], rtol=0, atol=1e-5)


def test_a_label_spelled_over_split_characters_counts_every_byte_token():
    """Qwen's byte-level vocabulary writes "é" as two tokens, and the first already decodes to "\ufffd": a label
    ending in such a character has the probability of every token of its bytes, the last one's included."""
    tok = qwen2_5_vl._tokenizer(None)
    text = "{'label': 'Arrêté', 'team': 'home'}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text
    logprobs = [math.log(0.5)] * len(ids)
    start = text.index("Arr")
    (prob,) = scores.label_probs(tok, ids, logprobs, text, [[start, start + len("Arrêté")]])
    assert prob == 0.5 ** len("Arrêté".encode())
