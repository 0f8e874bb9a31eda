"""The engine: the loaded model and everything that runs it, in one owner.

    engine = Engine.load(model_id, plan, device, visual_tokens)   # load, then install()
    texts = engine.generate(prompt.prepare(engine.processor, windows), max_new_tokens=256)

It holds the model and processor, the plan it was made for (frozen: llava_soccer/gpus.py), and what
that plan meets at run time: the kernels installed into the model (install(): the one place where the
model is changed after loading), the fast decoder with its KV buffers and CUDA graph kept between
batches, and what the self-checks found (a failed optional path is dropped here, never in the plan).
The worker makes one per slice (worker.py); a benchmark makes its own and passes it in.
"""
import contextlib
import logging
import time

from . import decoding, prompt

log = logging.getLogger("llava_worker")


class Engine:
    def __init__(self, model, processor, plan, on_logits=None):
        """on_logits: decoding.Decoder's seam (inside each decode step)."""
        self.model, self.processor, self.plan = model, processor, plan
        self.fused = False  # fused kernels installed (and passed their self-check)
        self.reset(on_logits)

    def reset(self, on_logits=None):
        """A fresh decoder: no buffers or graph kept, its optional paths checked again on first use."""
        self.decoder = decoding.Decoder(self.model, self.plan, on_logits)

    @classmethod
    def load(cls, model_id, plan, device, visual_tokens="full", **seams) -> "Engine":
        from . import loading
        engine = cls(*loading.load(model_id, plan, device, visual_tokens), plan, **seams)
        engine.install()
        return engine

    def install(self):
        """The plan's changes to the loaded model, in order: fused kernels (self-checked on the bf16
        weights: with random weights FP8 rounding would drown the check), then FP8 layers. Again on the
        same model: the fused kernels follow this plan, FP8 layers stay."""
        from . import fused
        fused.remove(self.model)
        if self.plan.fused_kernels:
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

    def generate(self, windows, max_new_tokens=256, temperature=0.0, top_p=1.0, decoder="fast") -> list[str]:
        """The decoded answers to prompt.prepare()'s windows. decoder "fast": the Decoder (the same greedy
        answers as transformers', CUDA-graph decode); "transformers", or any temperature > 0: model.generate
        on a left-padded batch (transformers' sampling: temperature, top-p and its default top-k 50)."""
        import torch
        model, tokenizer = self.model, self.processor.tokenizer
        with torch.inference_mode(), self.attention():
            if decoder == "fast" and temperature == 0:
                eos = model.generation_config.eos_token_id
                ids = self.decoder.greedy(windows, max_new_tokens, eos if isinstance(eos, list) else [eos],
                                          tokenizer.pad_token_id)
            else:
                inputs = decoding.on_model(model, prompt.collate(self.processor, windows))
                sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
                    "do_sample": False}
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
                ids = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(ids, skip_special_tokens=True)
