"""The generation settings of a run, built once from the worker's settings: how many tokens, greedy or
sampled, which decoder, with or without class scores.

    generation = Generation.from_settings(cfg)     # cfg: config.WorkerSettings
    answers = engine.answer(windows, generation)

`fast` is the one rule for when the fast decoder (decoding.Decoder) runs: the engine's choice, the GPU
plan's batch estimate (worker.BatchSize) and made_by (provenance.made_by) all read it.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    decoder: str = "fast"       # "fast" (decoding.Decoder) or "transformers" (model.generate)
    class_scores: bool = True

    @property
    def fast(self) -> bool:
        """The fast greedy decoder runs: --decoder fast, greedy. Sampling (temperature > 0) always runs
        transformers' generate(), whatever --decoder says."""
        return self.decoder == "fast" and not self.temperature

    @classmethod
    def from_settings(cls, cfg, family=None) -> "Generation":
        """cfg's settings; a family without a fast decoder (its FAST_DECODER False) decodes with transformers'
        generate(), and says so (decoder "transformers")."""
        decoder = cfg.decoder if getattr(family, "FAST_DECODER", True) else "transformers"
        return cls(cfg.max_new_tokens, cfg.temperature, cfg.top_p, decoder, cfg.class_scores)
