"""Scores that rank events: each event's token probability, and for every window a score for each of the
17 classes, from the model's own probabilities (the written confidence is a few round numbers).

    pieces = scores.class_trees(tokenizer, prompt_ids, answer_ids, text, room)   # what to score, per window
    logits = decoding.score_trees(family, model, layer_kv, trees, start, free, offsets)  # one pass, the batch
    found = scores.branch_logprobs(logits[row], branches)                         # per piece; usually one
    none_prob, class_scores = scores.class_scores(found)
    probs = scores.label_probs(tokenizer, answer_ids, answer_logprobs, text, [e["label_span"] for e in events])

Class score of class c = P(not "None") x the largest, over the label positions of the answer, of
P(c | the answer up to that position): at every `'label': '` the answer wrote (its own text up to that
opening quote, already in the cache), or, when it wrote none (None, prose, a label that does not start on
a token boundary), after the format the prompt asks for (FORMAT_PREFIX). The maximum: a class the model
wrote second (a Yellow card after a Foul) gets the probability of writing it there, not first.
P(c | prefix) = P(the name's tokens, tokenised in context) x P(the next token begins with the closing
quote): the sum over every such token (end_tokens: Mistral writes "'Go', 'al', \"',\"" or "'}" at the end
of a dict, rarely a lone "'"). Those tokens never continue another name (no name holds a quote), so the
classes are disjoint events and names that share tokens ("Shots on/off target") share tree nodes.
Each continuation sees the prompt and its own prefix, not the others (decoding.Tree). P("None") is the
probability of the answer's opening tokens spelling "None"; recorded for every window, scores or not.
"""
import contextlib
import functools
import math
import re

from .settings import SOCCERNET_CLASSES

NONE = "None"
FORMAT_PREFIX = "{'label': '"  # what the prompt (prompt.QUESTION) asks the model to write before a label
_LABEL_KEY = re.compile(r"""(['"])label\1\s*:\s*(['"])""")


class Decodes:
    """tokenizer.decode(ids[:k]) for each k, decoded once per k asked: where each token's text ends."""

    def __init__(self, tokenizer, ids):
        self.tokenizer, self.ids, self.known = tokenizer, list(ids), {0: ""}

    def text(self, k) -> str:
        if k not in self.known:
            self.known[k] = self.tokenizer.decode(self.ids[:k], skip_special_tokens=True)
        return self.known[k]

    def end(self, k) -> int:
        return len(self.text(k))

    def written(self, k, text, end) -> int:
        """The smallest k' >= k after which text[:end] is written whole: a byte-level vocabulary splits a character
        over tokens, and its first bytes already decode to one replacement character ("\ufffd")."""
        while k < len(self.ids) and self.text(k)[:end] != text[:end]:
            k += 1
        return k

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


@functools.lru_cache(maxsize=16)
def end_tokens(tokenizer, quote) -> tuple:
    """Every token whose text, after a word, begins with `quote`: the ways the model can close a label
    ("'", "',", "'}", "'}]", ... in Mistral's vocabulary; " '" is no close). Once per tokenizer."""
    word = list(_ids(tokenizer, "a"))
    base = len(tokenizer.decode(word, skip_special_tokens=True))
    texts = tokenizer.batch_decode([word + [i] for i in range(len(tokenizer))], skip_special_tokens=True)
    return tuple(i for i, text in enumerate(texts) if text[base:].startswith(quote))


def check_spelling(tokenizer, classes=SOCCERNET_CLASSES):
    """Raise ValueError (one line) unless the tokenizer spells every class name after FORMAT_PREFIX as its
    own tokens and has tokens that close it: else class scores would be numbers of something else."""
    bad = [c for c in classes if tokenizer.decode(_continuation(tokenizer, FORMAT_PREFIX, c),
                                                  skip_special_tokens=True) != c]
    if bad or (classes and not end_tokens(tokenizer, "'")):
        raise ValueError(f"class scores: this tokenizer cannot spell {', '.join(bad) or 'a closing quote'} as "
                         f"tokens of its own (unknown characters?): run with --class-scores no")


def label_anchors(tokenizer, answer_ids, text) -> list:
    """[(p, prefix, quote)] for each `'label': '` the answer wrote whose opening quote ends its token p - 1
    (so its prefix text, answer_ids[:p], is in the cache), in order."""
    decodes, out = Decodes(tokenizer, answer_ids), []
    for m in _LABEL_KEY.finditer(text):
        p = decodes.first_ending_after(m.end() - 1)
        if 0 < p <= len(answer_ids) and decodes.end(p) == m.end():
            out.append((p, text[:m.end()], m[2]))
    return out


class _Part:
    """A piece of one window's tree and what to read from it: branches {name: [(pairs, end node, end tokens)]}
    with pairs [(node whose logits give the token, token)] (the product of their probabilities) and the end
    node after which one of the end tokens must come (None: no end)."""

    def __init__(self):
        from .decoding import Tree
        self.tree, self.branches, self.children = Tree([], [], [], []), {}, {}

    def chain(self, parent, tokens) -> list:
        """A node per token under parent, shared with a chain of the same tokens already there; [pairs]."""
        pairs = []
        for t in tokens:
            pairs.append((parent, t))
            if (parent, t) not in self.children:
                self.children[parent, t] = self.tree.add(t, parent)
            parent = self.children[parent, t]
        return pairs

    def label(self, tokenizer, anchor, prefix, quote, classes):
        """Every class after node `anchor` (the last token of prefix)."""
        for name in classes:
            pairs = self.chain(anchor, _continuation(tokenizer, prefix, name))
            end = self.children[pairs[-1]]
            self.branches.setdefault(name, []).append((pairs, end, end_tokens(tokenizer, quote)))

    def append(self, other):
        """other's nodes and branches after this one's (one tree for one pass)."""
        k, tree = len(self.tree.tokens), self.tree
        tree.tokens += other.tree.tokens
        tree.positions += other.tree.positions
        tree.parents += [p + k if p >= 0 else p for p in other.tree.parents]
        tree.cache_len += other.tree.cache_len
        for name, paths in other.branches.items():
            self.branches.setdefault(name, []).extend(
                ([(n + k, t) for n, t in pairs], end + k if end is not None else None, ends)
                for pairs, end, ends in paths)


def class_trees(tokenizer, prompt_ids, answer_ids, text, room, classes=SOCCERNET_CLASSES) -> list:
    """[(decoding.Tree, branches)] for one answered window, each tree at most `room` nodes (a larger tree
    is cut into several, one pass each; one always fits tree_room(): usually one in all): prompt_ids its
    prompt's tokens, answer_ids the answer's tokens up to its end (their keys and values cached after the
    prompt's), text their decoded text. classes=(): P("None") alone."""
    n, first = len(prompt_ids), _Part()
    first.tree.add(prompt_ids[-1], position=n - 1, cache_len=n - 1)  # node 0: the prompt's last token, re-run
    none = _ids(tokenizer, NONE)
    pairs = first.chain(0, none[:-1])  # its last token needs no node: nothing is read after it
    first.branches[NONE] = [(pairs + [(first.children[pairs[-1]] if pairs else 0, none[-1])], None, ())]
    anchors = label_anchors(tokenizer, answer_ids, text) if classes else []
    if classes and not anchors:  # no label written (None, prose) or one that starts inside a token
        nodes = first.chain(0, _ids(tokenizer, FORMAT_PREFIX))
        first.label(tokenizer, first.children[nodes[-1]], FORMAT_PREFIX, "'", classes)
    parts = [first]
    for p, prefix, quote in anchors:
        part = _Part()  # its own prefix, cached: re-run its last token
        part.tree.add(answer_ids[p - 1], position=n + p - 1, cache_len=n + p - 1)
        part.label(tokenizer, 0, prefix, quote, classes)
        if len(parts[-1].tree.tokens) + len(part.tree.tokens) > room:
            parts.append(_Part())
        parts[-1].append(part)
    return [(part.tree, part.branches) for part in parts]


def tree_room(tokenizer, classes=SOCCERNET_CLASSES) -> int:
    """Slots to keep free after each answer for its class-score tree (decoding.score_trees writes the
    tree's keys there): twice the nodes of a tree after FORMAT_PREFIX (one label of the answer's own needs
    fewer; its continuations, tokenised in another context, may take a few more). Raises ValueError where
    the tokenizer cannot spell the classes (check_spelling)."""
    check_spelling(tokenizer, classes)
    return 2 * len(class_trees(tokenizer, [0], [], "", 10 ** 9, classes)[0][0].tokens)


def branch_logprobs(logits, branches) -> dict:
    """{name: the largest log P(branch | its anchor's text) over its paths} from one row of score_trees'
    logits (nodes, vocab): a path's tokens, plus the log of the summed probability of its end tokens;
    normalised in fp64 (sums of ~10 stay exact) and read from the device in a few gathers (not one small
    read per token)."""
    import torch
    paths = [(name, path) for name, found in branches.items() for path in found]
    pairs = [pair for _, (pairs, _, _) in paths for pair in pairs]
    lse = logits.double().logsumexp(-1)
    values = iter((logits[[n for n, _ in pairs], [t for _, t in pairs]].double() - lse[[n for n, _ in pairs]]).tolist())
    ends = {}
    for ids in {ids for _, (_, end, ids) in paths if end is not None}:
        nodes = [end for _, (_, end, e) in paths if end is not None and e == ids]
        picked = logits[nodes][:, torch.tensor(ids, device=logits.device)].double().logsumexp(-1) - lse[nodes]
        ends[ids] = iter(picked.tolist())
    out = {}
    for name, (pairs, end, ids) in paths:
        value = math.fsum([next(values) for _ in pairs] + ([next(ends[ids])] if end is not None else []))
        out[name] = max(out.get(name, -math.inf), value)
    return out


def class_scores(found, digits=8):
    """(P("None"), {class: P(not None) x P(class | prefix)}, or None without classes) from branch_logprobs()
    (the largest of each name's over the window's trees), rounded to `digits` significant digits."""
    none = math.exp(found[NONE])
    scores = {name: (1 - none) * math.exp(value) for name, value in found.items() if name != NONE}
    return _round(none, digits), ({k: _round(v, digits) for k, v in scores.items()} or None)


def reference(forward, tokenizer, answer_ids, text, classes=SOCCERNET_CLASSES) -> dict:
    """branch_logprobs()'s values by plain forward passes, one per continuation (tests and
    benchmarks/bench_worker.py --scores-check compare the one-pass trees with it): forward(before, tokens)
    -> log-probabilities (len(tokens) + 1, vocab) after prompt + before + each prefix of tokens."""
    rows = forward([], _ids(tokenizer, NONE))
    found = {NONE: math.fsum(float(rows[j, t]) for j, t in enumerate(_ids(tokenizer, NONE)))}
    anchors = [(answer_ids[:p], prefix, quote) for p, prefix, quote in label_anchors(tokenizer, answer_ids, text)]
    for before, prefix, quote in anchors or [(_ids(tokenizer, FORMAT_PREFIX), FORMAT_PREFIX, "'")]:
        for name in classes:
            tokens = _continuation(tokenizer, prefix, name)
            rows = forward(before, tokens)
            ends = rows[len(tokens), list(end_tokens(tokenizer, quote))].double().logsumexp(-1)
            value = math.fsum([float(rows[j, t]) for j, t in enumerate(tokens)] + [float(ends)])
            found[name] = max(found.get(name, -math.inf), value)
    return found


def plain_forward(model, window, context=contextlib.nullcontext):
    """reference()'s forward from the model's own forward passes, run as generate() runs them: the window's
    inputs (any family's, on the model's device) with their images, then before + tokens as text through the
    cache. (In one pass over prompt + answer, an answer token that a random model wrote as the image token's
    id would count as an image placeholder.) context: the engine's attention choice."""
    import torch

    def forward(before, tokens):
        answer = torch.tensor([list(before) + list(tokens)], dtype=torch.long, device=model.device)
        with torch.inference_mode(), context():
            prompt = model(**window, use_cache=True, logits_to_keep=1)
            rows = [prompt.logits[0]]
            if answer.shape[1]:  # no attention mask: positions go on from the cache's length
                rows.append(model(input_ids=answer, past_key_values=prompt.past_key_values).logits[0])
        return torch.cat(rows)[-len(tokens) - 1:].double().log_softmax(-1)
    return forward


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
        first = decodes.first_ending_after(start)
        last = decodes.written(decodes.first_ending_after(end - 1), text, end)
        out.append(_round(math.exp(sum(float(lp) for lp in logprobs[first - 1:last])), digits))
    return out
