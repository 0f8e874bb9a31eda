"""Token probabilities and class scores (llava_soccer/scores.py, decoding.score_trees) against the model's
own forward: one extra pass over each window's cache gives the log-probabilities that plain forward
passes of prompt + prefix + class give, at batch 1 and 3, with rows that finished early, for the fast
decoder and transformers' generate: in fp32 to 1e-5 of their size (fp32's own rounding over a 3.5k-token
forward moves a sum of ~10 log-probabilities near -50 by ~1e-5), in fp64 to 1e-6 (the stored scores'
8 significant digits); token probabilities are generate's own."""
import math

import numpy as np
import pytest
import torch

from conftest import load_engine
from llava_soccer import prompt, scores, synthetic
from llava_soccer.settings import SOCCERNET_CLASSES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    ckpt = synthetic.make_checkpoint(tmp_path_factory.mktemp("scores") / "r", "tiny", seed=11, init_std=0.2)
    return load_engine(ckpt)


@pytest.fixture(scope="module")
def engine64(tmp_path_factory):
    ckpt = synthetic.make_checkpoint(tmp_path_factory.mktemp("scores64") / "r", "tiny", seed=11, init_std=0.2)
    engine = load_engine(ckpt)
    engine.model.double()
    return engine


def windows(processor, starts, dtype=torch.float32, frames=(4, 4, 4)):
    """Windows at `starts` of frames[i] frames each: fewer frames, a shorter prompt."""
    rng = np.random.default_rng(3)
    inputs = prompt.prepare(processor, [([t + 0.2 * i for i in range(f)], [rng.integers(
        0, 255, (224, 398, 3), dtype=np.uint8) for _ in range(f)]) for t, f in zip(starts, frames)], dtype)
    return inputs


def forward_logprob(model, window, answer_ids, continuation):
    """log P(continuation | prompt + answer_ids) from the model's own forward over the whole sequence."""
    ids = torch.tensor([window["input_ids"][0].tolist() + list(answer_ids) + list(continuation)])
    with torch.inference_mode():
        logits = model(input_ids=ids, pixel_values=window["pixel_values"], image_sizes=window["image_sizes"],
                       attention_mask=torch.ones_like(ids)).logits[0].double().log_softmax(-1)
    start = ids.shape[1] - len(continuation)
    return sum(float(logits[start + j - 1, t]) for j, t in enumerate(continuation))


def expected(engine, window, answer):
    """(P(None), {class: score}) from plain forward passes, with the prefix rule of scores.class_tree."""
    tok = engine.processor.tokenizer
    none = math.exp(forward_logprob(engine.model, window, [], tok("None", add_special_tokens=False)["input_ids"]))
    m = scores._LABEL_KEY.search(answer.text)
    decodes = scores.Decodes(tok, answer.ids)
    p = decodes.first_ending_after(m.end() - 1) if m else 0
    if m and decodes.end(p) == m.end():
        prefix_ids, prefix, quote = answer.ids[:p], answer.text[:m.end()], m[2]
    else:
        prefix_ids, prefix, quote = tok(scores.FORMAT_PREFIX, add_special_tokens=False)["input_ids"], \
            scores.FORMAT_PREFIX, "'"
    out = {}
    for name in SOCCERNET_CLASSES:
        cont = scores._continuation(tok, prefix, name + quote)
        out[name] = (1 - none) * math.exp(forward_logprob(engine.model, window, prefix_ids, cont))
    return none, out


def assert_scores(engine, window, answer):
    none, classes = expected(engine, window, answer)
    rel, tol = (0, 1e-6) if engine.model.dtype == torch.float64 else (1e-5, 0)
    assert math.log(answer.none_prob) == pytest.approx(math.log(none), rel=rel, abs=tol)
    assert set(answer.class_scores) == set(SOCCERNET_CLASSES)
    for name in SOCCERNET_CLASSES:
        assert answer.class_scores[name] > 0
        assert math.log(answer.class_scores[name]) == pytest.approx(math.log(classes[name]), rel=rel, abs=tol), name


@pytest.mark.parametrize("decoder,batch,dtype,frames", [
    ("fast", 1, "fp32", (4,)), ("fast", 3, "fp32", (4, 4, 4)), ("transformers", 1, "fp32", (4,)),
    ("transformers", 3, "fp32", (4, 4, 4)), ("fast", 3, "fp64", (4, 4, 4)),
    ("fast", 3, "fp32", (3, 4, 2)), ("transformers", 3, "fp32", (3, 4, 2))])  # prompts of 3 lengths: left padding
def test_one_pass_class_scores_are_the_models_own_log_probabilities(request, batch, decoder, dtype, frames):
    engine = request.getfixturevalue("engine64" if dtype == "fp64" else "engine")
    inputs = windows(engine.processor, [0.0, 2.0, 4.0][:batch], engine.model.dtype, frames)
    assert len({w["input_ids"].shape[1] for w in inputs}) == len(set(frames))
    eos = engine.model.generation_config.eos_token_id
    free = engine.answer(inputs, 10, decoder=decoder, class_scores=False)
    if batch > 1:  # an end token row 0 says early: it finishes while the others run on
        k, end = next((k, t) for k, t in enumerate(free[0].ids) if k > 0 and t not in free[0].ids[:k]
                      and any(t not in a.ids[:k + 2] for a in free[1:]))
        engine.model.generation_config.eos_token_id = end
    try:
        answers = engine.answer(inputs, 10, decoder=decoder)
    finally:
        engine.model.generation_config.eos_token_id = eos
    if batch > 1:
        assert len(answers[0].ids) == k and max(len(a.ids) for a in answers) > k + 1
    for window, answer in zip(inputs, answers):
        assert_scores(engine, window, answer)


def test_an_answer_that_wrote_a_dict_is_scored_after_its_own_prefix(engine):
    """The decoder's on_logits seam makes the first row's answer "{'label': 'Foul'..." (after the model's own
    first token): its classes are scored after its own text up to the label's opening quote, read from the
    cache that decoding wrote, and equal plain forward passes over prompt + that prefix + class; the second
    row's answer (random) is scored after the prompt's format in the same pass (a larger tree)."""
    tok = engine.processor.tokenizer
    forced = tok("{'label': 'Foul', 'team': 'home'}", add_special_tokens=False)["input_ids"]
    start = {}

    def force(logits, positions):
        b = len(positions)
        start.setdefault(b, positions.clone())
        step = (positions - start[b]).clamp(max=len(forced) - 1)
        wanted = torch.where(torch.arange(logits.shape[1])[None] == torch.tensor(forced)[step][:, None], 1e4, -1e4)
        return torch.where(torch.arange(b)[:, None] == 0, wanted, logits)

    engine.reset(force)
    try:
        inputs = windows(engine.processor, [0.0, 2.0])
        answers = engine.answer(inputs, len(forced) + 1)
    finally:
        engine.reset()
    assert answers[0].text.endswith("{'label': 'Foul', 'team': 'home'}")
    assert "label" not in answers[1].text
    sizes = []
    for window, answer in zip(inputs, answers):
        tree, _ = scores.class_tree(tok, window["input_ids"][0].tolist(), answer.ids, answer.text)
        own = tree.parents[len(tok("None", add_special_tokens=False)["input_ids"])] == -1  # its own prefix: a root
        assert own == (answer is answers[0])
        sizes.append(len(tree.tokens))
        assert_scores(engine, window, answer)
    assert sizes[0] < sizes[1]


def test_token_probabilities_are_generates_own(engine):
    """Each answer token's probability is what generate(output_scores=True) reports for it (greedy), and a
    label's probability is the product over the tokens that spell it."""
    inputs = windows(engine.processor, [0.0, 2.0])
    answers = engine.answer(inputs, 12, class_scores=False)
    tok = engine.processor.tokenizer
    for window, answer in zip(inputs, answers):
        with torch.inference_mode():
            out = engine.model.generate(**window, max_new_tokens=12, do_sample=False, output_scores=True,
                                        return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        ids = out.sequences[0, window["input_ids"].shape[1]:].tolist()
        assert ids[:len(answer.ids)] == answer.ids
        theirs = [float(s[0].float().log_softmax(-1)[t]) for s, t in zip(out.scores, ids)]
        np.testing.assert_allclose(answer.logprobs, theirs[:len(answer.ids)], atol=1e-5)
        # the character tokenizer: token k spells character k, so characters 3-7 are tokens 3-7
        assert tok.decode(answer.ids[:3], skip_special_tokens=True) == answer.text[:3]
        (prob,) = answer.label_probs(tok, [[3, 8]])
        assert prob == pytest.approx(math.exp(sum(theirs[3:8])), rel=1e-5)
        assert answer.label_probs(tok, [None, [5, 5], [0, len(answer.text) + 1]]) == [None, None, None]
