"""The model family of a checkpoint (llava_soccer/families/): read from its config.json, never a flag; and the
one rule for when the fast decoder runs (generation.Generation.fast)."""
import json

import pytest

from llava_soccer import families, gpus, provenance, settings
from llava_soccer.cli import InputError
from llava_soccer.config import WorkerSettings
from llava_soccer.families import llava_next
from llava_soccer.generation import Generation


def test_a_checkpoint_directory_is_of_the_family_its_config_json_names(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next", "text_config": {}}))
    assert families.of_model(str(tmp_path)) is llava_next
    assert families.of_config({"model_type": "llava_next"}) is llava_next
    assert llava_next.NAME == "llava_next" and llava_next.TAG == "llava" and "llava_next" in llava_next.MODEL_TYPES


@pytest.mark.parametrize("config", [{"model_type": "idefics2"}, {"model_type": None}, {}, []])
def test_an_unknown_model_type_is_one_line_naming_it_and_the_supported_ones(config):
    with pytest.raises(InputError) as e:
        families.of_config(config)
    message = str(e.value)
    assert "\n" not in message and repr(config.get("model_type") if isinstance(config, dict) else None) in message
    assert all(name in message for name in families.FAMILIES)


def test_a_directory_without_config_json_or_with_a_broken_one_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"no config.json there"):
        families.of_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"cannot read .*config.json"):
        families.of_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3_v"}))
    with pytest.raises(InputError, match=r"model_type 'phi3_v', not a model family"):
        families.of_model(str(tmp_path))
    with pytest.raises(InputError, match=r"no such directory"):
        families.of_model(str(tmp_path / "missing"))


def test_a_hub_id_not_downloaded_is_known_by_its_default_id_or_its_name(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert families.of_model("llava-hf/llava-v1.6-mistral-7b-hf") is llava_next
    assert families.of_model("someone/my-llava-finetune") is llava_next
    with pytest.raises(InputError, match=r"someone/idefics: not in the Hugging Face cache.*supported"):
        families.of_model("someone/idefics")


@pytest.mark.parametrize("decoder,temperature,fast", [("fast", 0.0, True), ("fast", 0.7, False),
                                                       ("transformers", 0.0, False), ("transformers", 0.7, False)])
def test_the_fast_decoder_rule_is_one_and_the_plan_and_made_by_follow_it(decoder, temperature, fast):
    """Generation.fast decides; the plan's batch estimate (a window more adds its KV cache alone when the fast
    decoder prefills one window at a time, its activations too under generate()) and made_by read it."""
    args = WorkerSettings(model="/ckpt", quantization="nf4", assume_gpu="9.0,80", decoder=decoder,
                          temperature=temperature)
    assert Generation.from_settings(args, llava_next).fast is fast
    plan = gpus.plan(args, None, llava_next)
    made = provenance.made_by(args, plan, "p", {"path": "a.mkv"}, family=llava_next)
    assert made["decoder"] == ("fast" if fast else "transformers") and made["family"] == "llava_next"
    assert (made["decode_attention"] is not None) is fast
    usable = 80 - gpus.CONTEXT_GIB - llava_next.WEIGHTS_GIB["bf16"]  # dequantized NF4 on an 80 GiB 9.0 card
    per_window = llava_next.KV_GIB if fast else llava_next.KV_GIB + llava_next.ACTIVATIONS_GIB
    fits = (usable - llava_next.ACTIVATIONS_GIB) // llava_next.KV_GIB if fast else usable // per_window
    assert plan.batch_size_estimate == min(16, int(fits))


def test_a_family_without_a_fast_decoder_decodes_with_generate(monkeypatch):
    monkeypatch.setattr(llava_next, "FAST_DECODER", False)
    assert Generation.from_settings(WorkerSettings(decoder="fast")).fast is True
    assert Generation.from_settings(WorkerSettings(decoder="fast"), llava_next).fast is False


def test_an_older_made_by_without_family_is_llavas():
    args = WorkerSettings(model="/ckpt", quantization="nf4")
    new = provenance.made_by(args, gpus.plan(args, None, llava_next), "p", {"path": "a.mkv"}, family=llava_next)
    old = {k: v for k, v in new.items() if k != "family"}
    assert provenance.differences(old, new) == [] and provenance.run_key(old) == provenance.run_key(new)
    assert provenance.differences({**old, "family": "qwen2_5_vl"}, new) == ["family qwen2_5_vl -> llava_next"]


def test_the_default_models_tag_is_its_familys_and_every_family_has_its_own():
    """settings.DEFAULT_TAG (the path helpers' default: settings cannot import the families) is llava_next's TAG;
    no two families share a TAG, or their files would mix in one project."""
    assert families.tag_of(settings.DEFAULT_MODEL) == llava_next.TAG == settings.DEFAULT_TAG
    modules = {families.of_config({"model_type": t}) for t in families.FAMILIES}
    assert len({m.TAG for m in modules}) == len(modules) == len(families.TAGS)


@pytest.mark.parametrize("family", families.ALL, ids=lambda f: f.NAME)
def test_fp8_is_planned_for_a_family_with_fp8_layers_and_refused_in_one_line_otherwise(family, monkeypatch):
    """--quantization fp8 on an FP8 card: each family with FP8 layers (fp8.convert: both, Qwen's q/k/v biases
    kept) gets the fp8 plan and its weights' size; a family without them gets one line naming it and the fix."""
    args = WorkerSettings(model="/ckpt", quantization="fp8", assume_gpu="9.0,80")
    assert family.FP8 and gpus.plan(args, None, family).quantization == "fp8"
    monkeypatch.setattr(family, "FP8", False)
    with pytest.raises(InputError) as e:
        gpus.plan(args, None, family)
    assert "\n" not in str(e.value) and f"no FP8 layers for {family.NAME} models" in str(e.value)
    assert str(e.value).endswith("use nf4 (the default) or bf16")
