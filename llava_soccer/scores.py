"""Scores that rank events: each event's token probability, and for every window a score for each of the
17 classes, from the model's own probabilities (the written confidence is a few round numbers).

    tree, branches = scores.class_tree(tokenizer, prompt_ids, answer_ids, text)   # what to score, per window
    logits = decoding.score_trees(model, layer_kv, trees, start, free)            # one pass for the batch
    none_prob, class_scores = scores.class_scores(logits[row], branches)
    probs = scores.label_probs(tokenizer, answer_ids, answer_logprobs, text, [e["label_span"] for e in events])

Class score = P(not "None") x P(class | prefix): the class name as the continuation of the text the model
writes before a label (its own answer's, up to the first label's opening quote, when it wrote one; else
the format the prompt asks for, FORMAT_PREFIX), followed by the closing quote, tokenised in context. Each
continuation sees the prompt and the prefix, not the others (decoding.Tree). P("None") is the probability
of the answer's opening tokens spelling "None".
"""
import functools
import math
import re

from .settings import SOCCERNET_CLASSES

NONE = "None"
FORMAT_PREFIX = "{'label': '"  # what the prompt (prompt.QUESTION) asks the model to write before a label
_LABEL_KEY = re.compile(r"""(['"])label\1\s*:\s*(['"])""")


class Decodes:
    """len(tokenizer.decode(ids[:k])) for each k, decoded once per k asked: where each token's text ends."""

    def __init__(self, tokenizer, ids):
        self.tokenizer, self.ids, self.known = tokenizer, list(ids), {0: 0}

    def end(self, k) -> int:
        if k not in self.known:
            self.known[k] = len(self.tokenizer.decode(self.ids[:k], skip_special_tokens=True))
        return self.known[k]

    def first_ending_after(self, char) -> int:
        """The smallest k whose text ends after `char` (len(ids) if none): token k - 1 holds that char."""
        lo, hi = 0, len(self.ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.end(mid + 1) > char:
                hi = mid
            else:
                lo = mid + 1
        return lo + 1 if lo < len(self.ids) else len(self.ids)


@functools.lru_cache(maxsize=4096)  # the same prefix and names come back every window: tokenise them once
def _ids(tokenizer, text) -> tuple:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def _continuation(tokenizer, prefix_text, text) -> tuple:
    """The tokens of `text` after prefix_text, tokenised in context (as the model would write them)."""
    base, joint = _ids(tokenizer, prefix_text), _ids(tokenizer, prefix_text + text)
    return joint[len(base):] if joint[:len(base)] == base else _ids(tokenizer, text)


def _chain(tree, anchor, tokens):
    """Nodes for tokens[:-1] chained under node `anchor` (the last token needs no node: nothing follows it);
    returns (anchor, tokens, their nodes)."""
    nodes, parent = [], anchor
    for t in tokens[:-1]:
        nodes.append(parent := tree.add(t, parent))
    return anchor, list(tokens), nodes


def class_tree(tokenizer, prompt_ids, answer_ids, text, classes=SOCCERNET_CLASSES):
    """(decoding.Tree, {"None" or class: (anchor node, tokens, nodes)}) for one answered window: prompt_ids
    its prompt's tokens, answer_ids the answer's tokens up to its end (their keys and values are cached
    after the prompt's), text their decoded text."""
    from .decoding import Tree
    n = len(prompt_ids)
    tree = Tree(tokens=[], positions=[], parents=[], cache_len=[])
    tree.add(prompt_ids[-1], position=n - 1, cache_len=n - 1)  # node 0: the prompt's last token, re-run
    branches = {NONE: _chain(tree, 0, _ids(tokenizer, NONE))}
    decodes, m = Decodes(tokenizer, answer_ids), _LABEL_KEY.search(text)
    p = decodes.first_ending_after(m.end() - 1) if m else 0
    if m and 0 < p <= len(answer_ids) and decodes.end(p) == m.end():  # its own prefix, cached: re-run its last token
        prefix, quote = text[:m.end()], m[2]
        anchor = tree.add(answer_ids[p - 1], position=n + p - 1, cache_len=n + p - 1)
    else:  # no label written (None, prose) or a prefix that ends inside a token: the prompt's format
        prefix, quote = FORMAT_PREFIX, "'"
        _, _, nodes = _chain(tree, 0, _ids(tokenizer, prefix) + (None,))
        anchor = nodes[-1]
    for name in classes:
        branches[name] = _chain(tree, anchor, _continuation(tokenizer, prefix, name + quote))
    return tree, branches


def tree_room(tokenizer, classes=SOCCERNET_CLASSES) -> int:
    """Slots to keep free after each answer for its class-score tree (decoding.score_trees writes the
    tree's keys there): twice the nodes of a tree after FORMAT_PREFIX (an answer's own prefix needs fewer;
    its continuations, tokenised in another context, may take a few more)."""
    return 2 * len(class_tree(tokenizer, [0], [], "", classes)[0].tokens)


def branch_logprobs(logits, branches) -> dict:
    """{name: log P(the branch's tokens | its anchor's text)} from one row of score_trees' logits (nodes,
    vocab), normalised in fp64 (sums of ~10 stay exact) and read from the device in one gather (not one
    small read per token)."""
    pairs = [(node, token) for anchor, tokens, nodes in branches.values()
             for node, token in zip([anchor, *nodes], tokens)]
    nodes, ids = [n for n, _ in pairs], [t for _, t in pairs]
    lse = logits.double().logsumexp(-1)
    values = iter((logits[nodes, ids].double() - lse[nodes]).tolist())
    return {name: math.fsum(next(values) for _ in tokens) for name, (_, tokens, _) in branches.items()}


def class_scores(logits, branches, digits=8):
    """(P("None"), {class: P(not None) x P(class | prefix)}) from one row of score_trees' logits, rounded to
    `digits` significant digits."""
    found = branch_logprobs(logits, branches)
    none = math.exp(found[NONE])
    scores = {name: (1 - none) * math.exp(value) for name, value in found.items() if name != NONE}
    return _round(none, digits), {k: _round(v, digits) for k, v in scores.items()}


def _round(x, digits):
    return float(f"{x:.{digits}g}")


def label_probs(tokenizer, ids, logprobs, text, spans, digits=8):
    """The probability the model gave each label: for each span ([start, end] of a label as written in `text`,
    the parser's events' "label_span"), the product over the tokens that spell text[start:end]; None where
    there is no span or it is not a non-empty part of text.

    The span is where the parser found the label's value, never a search for its text: a search after the
    previous label can land in that event's details ("details": "Corner flag nearby" before a Corner)."""
    decodes, out = Decodes(tokenizer, ids), []
    for span in spans:
        start, end = span if isinstance(span, (list, tuple)) and len(span) == 2 else (0, 0)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            out.append(None)
            continue
        first, last = decodes.first_ending_after(start), decodes.first_ending_after(end - 1)
        out.append(_round(math.exp(sum(float(lp) for lp in logprobs[first - 1:last])), digits))
    return out
