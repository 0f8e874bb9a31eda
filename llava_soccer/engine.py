"""The engine: the loaded model and everything that runs it, in one owner.

    engine = Engine.load(model_id, plan, device, visual_tokens)   # its family's load(), then install()
    texts = engine.generate(engine.prepare(windows), Generation(max_new_tokens=256))

It holds the model and processor, its family (llava_soccer/families/: read from the checkpoint's
config.json, never from a flag), the plan it was made for (frozen: llava_soccer/gpus.py), and what
that plan meets at run time: the kernels installed into the model (install(): the one place where the
model is changed after loading), the fast decoder with its KV buffers and CUDA graph kept between
batches, and what the self-checks found (a failed optional path is dropped here, never in the plan).
The worker makes one per slice (worker.py); a benchmark makes its own and passes it in.
"""
import contextlib
import dataclasses
import logging
import math
import time

from . import decoding, families, scores
from .generation import Generation
from .settings import SOCCERNET_CLASSES

log = logging.getLogger("llava_worker")


class Engine:
    def __init__(self, model, processor, plan, on_logits=None):
        """on_logits: decoding.Decoder's seam (inside each decode step)."""
        self.model, self.processor, self.plan = model, processor, plan
        self.family = families.of_loaded(model)
        self.fused = False  # fused kernels installed (and passed their self-check)
        self.reset(on_logits)

    def reset(self, on_logits=None):
        """A fresh decoder: no buffers or graph kept, its optional paths checked again on first use."""
        self.decoder = decoding.Decoder(self.family, self.model, self.plan, on_logits)

    @classmethod
    def load(cls, model_id, plan, device, visual_tokens="full", family=None, **seams) -> "Engine":
        """family: the model's family module when the caller has read it (None: families.of_model)."""
        loaded = family.load(model_id, plan, device, visual_tokens) if family else families.load(
            model_id, plan, device, visual_tokens)
        engine = cls(*loaded, plan, **seams)
        engine.install()
        return engine

    def prepare(self, windows, pin=False) -> list[dict]:
        """The family's inputs (CPU tensors, pixels in the model's dtype; pin: page-locked, for a GPU) of
        windows [(frame_times, rgb_frames)], one dict per window: what answer() and generate() take."""
        return self.family.prepare(self.processor, windows, self.model.dtype, pin)

    def install(self):
        """The plan's changes to the loaded model, in order: fused kernels (self-checked on the bf16
        weights: with random weights FP8 rounding would drown the check), then FP8 layers. Again on the
        same model: the fused kernels follow this plan, FP8 layers stay."""
        from . import fused
        fused.remove(self.model)
        if self.plan.fused_kernels and self.family.FUSED_KERNELS:
            t0 = time.monotonic()
            self.fused = fused.install(self.model)
            if self.fused:
                log.info(f"fused kernels compiled and checked in {time.monotonic() - t0:.1f} s (more compile on "
                         f"the first window)")
        if self.plan.quantization == "fp8":
            from . import fp8
            fp8.convert(self.model)

    def paths(self) -> str:
        """What runs now, after the self-checks so far: one line for the log."""
        yes = {True: "yes", False: "no"}
        return (f"decode attention {self.decoder.attention}; CUDA graphs {yes[self.decoder.graphs]}; "
                f"fused kernels {yes[self.fused]}")

    def attention(self):
        """The plan's SDPA backends, in order, on a GPU (cuDNN first on 8.0+: faster than flash for the
        25k-token prefill on H100/H200; the memory-efficient kernel alone below 8.0)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        if self.model.device.type != "cuda":
            return contextlib.nullcontext()
        names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        return sdpa_kernel([names[b] for b in self.plan.prefill_attention], set_priority=True)

    def generate(self, windows, generation=None) -> list[str]:
        """The decoded answers to prepare()'s windows (answer() without scores)."""
        generation = dataclasses.replace(generation or Generation(), class_scores=False)
        return [a.text for a in self.answer(windows, generation)]

    def answer(self, windows, generation=None) -> list["Answer"]:
        """The answers to prepare()'s windows with each token's probability, P("None") and, with
        generation.class_scores, the 17 class scores (scores.py: one extra forward pass for the batch over the
        cache, a few nodes per window for P("None") alone, ~60 per label position with classes; a second pass
        only for an answer whose labels outgrow the spare slots). generation.fast: the Decoder (the same greedy
        answers as transformers', CUDA-graph decode); else model.generate on a left-padded batch (transformers'
        sampling: temperature, top-p and its default top-k 50); token probabilities are the model's own
        (before temperature and top-p). generation: Generation() (greedy, 256 new tokens, fast) when None."""
        import torch
        generation = generation or Generation()
        model, tokenizer = self.model, self.processor.tokenizer
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        fast, max_new_tokens = generation.fast, generation.max_new_tokens
        classes = SOCCERNET_CLASSES if generation.class_scores else ()  # P("None") always: a few nodes per window
        with torch.inference_mode(), self.attention():
            if fast:
                out = self.decoder.decode(windows, max_new_tokens, eos, tokenizer.pad_token_id,
                                          scores.tree_room(tokenizer, classes))
                ids, logprobs = out.ids, out.logprobs
            else:
                ids, logprobs, cache = self._generate(windows, generation, classes)
            answers = [_answer(tokenizer, row, lp, eos) for row, lp in zip(ids.tolist(), logprobs.tolist())]
            with torch.profiler.record_function("llava class scores"):
                prompts = [w["input_ids"][0].tolist() for w in windows]
                if fast:  # row r's answer ends before slot len(prompt) + len(answer); the trees go after it
                    free = [len(p) + len(a.ids) for p, a in zip(prompts, answers)]
                    slots = self.decoder.kept["kv"][0][0].shape[2]
                    rooms = [slots - f for f in free]
                else:
                    layer_kv, start, free, offsets = cache
                    rooms = [scores.tree_room(tokenizer, classes)] * len(answers)
                pieces = [scores.class_trees(tokenizer, p, a.ids, a.text, room, classes)
                          for p, a, room in zip(prompts, answers, rooms)]
                found = [{} for _ in answers]
                for k in range(max(map(len, pieces))):  # one pass, unless an answer wrote many labels
                    trees = [x[k][0] if k < len(x) else _idle() for x in pieces]
                    logits = (self.decoder.score_trees(trees, free) if fast
                              else decoding.score_trees(self.family, model, layer_kv, trees, start, free, offsets))
                    for got, x, row in zip(found, pieces, logits):
                        for name, value in (scores.branch_logprobs(row, x[k][1]) if k < len(x) else {}).items():
                            got[name] = max(got.get(name, -math.inf), value)
                for a, got in zip(answers, found):
                    a.none_prob, a.class_scores = scores.class_scores(got)
        return answers

    def _generate(self, windows, generation, classes):
        """(ids (b, n), log-probabilities (b, n), (layer_kv, start, free, offsets) for score_trees) from
        model.generate. Its cache is left-padded (row r's position p at slot start[r] + p; rotary position
        p + offsets[r], the family's, which left padding does not change); layer_kv gives each layer's with
        room for the trees after it (a copy, one layer at a time)."""
        import torch
        model, pad, family = self.model, self.processor.tokenizer.pad_token_id, self.family
        temperature, top_p = generation.temperature, generation.top_p
        offsets = [family.rope_offset(model, w) for w in windows]  # (without the vision tower)
        inputs = decoding.on_model(model, family.collate(self.processor, windows))
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        out = model.generate(**inputs, max_new_tokens=generation.max_new_tokens, pad_token_id=pad,
                             return_dict_in_generate=True, output_logits=True, **sampling)
        ids = out.sequences[:, inputs["input_ids"].shape[1]:]
        logprobs = torch.stack([decoding.chosen(logits, ids[:, j])[1] for j, logits in enumerate(out.logits)], 1)
        start = (inputs["attention_mask"] == 0).sum(1).tolist()
        layers, room = out.past_key_values.layers, scores.tree_room(self.processor.tokenizer, classes)

        def layer_kv(i):
            return tuple(torch.nn.functional.pad(x, (0, 0, 0, room)) for x in (layers[i].keys, layers[i].values))
        return ids, logprobs, (layer_kv, start, [layers[0].keys.shape[2]] * len(start), offsets)


def _idle():
    """A one-node tree for a row with nothing left to score in a pass: it sees its own key only."""
    return decoding.Tree(tokens=[0], positions=[0], parents=[-1], cache_len=[0])


@dataclasses.dataclass
class Answer:
    """One window's answer: its text, its tokens up to the end with their log-probabilities, and (when
    scored) P("None") and the 17 class scores."""
    text: str
    ids: list
    logprobs: list
    none_prob: float | None = None
    class_scores: dict | None = None

    def label_probs(self, tokenizer, spans) -> list:
        """The probability the model gave each label, at its span in the text (scores.label_probs)."""
        return scores.label_probs(tokenizer, self.ids, self.logprobs, self.text, spans)


def _answer(tokenizer, ids, logprobs, eos) -> Answer:
    """A row's Answer: its tokens before the first end token (pads after it are no answer)."""
    n = next((j for j, t in enumerate(ids) if t in eos), len(ids))
    return Answer(tokenizer.decode(ids[:n], skip_special_tokens=True), ids[:n], logprobs[:n])
