"""Model families (issue 32). This file is the names branch's minimal stand-in: only what file names need, the
family TAG of a model (families/llava_next.py and qwen2_5_vl.py hold the rest; the seam's __init__.py replaces
this one at merge, keeping TAGS and tag_of).

    families.tag_of("Qwen/Qwen2.5-VL-7B-Instruct")   # "qwen2.5vl": final_predictions_qwen2.5vl_video_N.json
"""
import json
from pathlib import Path

from ..cli import InputError
from ..settings import DEFAULT_MODEL, DEFAULT_TAG

# config.json model_type -> the family's TAG, the model's name in every file name (settings.FINAL, LOCK, ...)
_TAG_OF_TYPE = {"llava_next": "llava", "qwen2_5_vl": "qwen2.5vl"}
TAGS = tuple(_TAG_OF_TYPE.values())
# a hub id not in the cache: its name says the family
_BY_NAME = (("qwen2.5-vl", "qwen2.5vl"), ("qwen2_5_vl", "qwen2.5vl"), ("llava", "llava"))


def tag_of(model_id: str) -> str:
    """The TAG of a model: its config.json's model_type (a checkpoint directory, or a hub id's cached config.json;
    no network), else its name; InputError (one line) naming the model and the supported families."""
    from ..loading import is_local
    if model_id == DEFAULT_MODEL:  # its config.json can only say llava_next: no look-up (status, submit start fast)
        return DEFAULT_TAG
    supported = ", ".join(f"{t} ({m})" for m, t in _TAG_OF_TYPE.items())
    path = Path(model_id).expanduser() / "config.json" if is_local(model_id) else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # a python without it (status_llava.py run by the system's): the name says
            try_to_load_from_cache = None
        cached = try_to_load_from_cache and try_to_load_from_cache(model_id, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is not None and path.is_file():
        try:
            model_type = json.loads(path.read_text()).get("model_type")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
            raise InputError(f"model {model_id}: cannot read {path} ({e}): download the model again") from None
        if model_type not in _TAG_OF_TYPE:
            raise InputError(f"model {model_id}: its config.json has model_type {model_type!r}, no model family of "
                             f"this pipeline (supported: {supported})")
        return _TAG_OF_TYPE[model_type]
    for part, tag in _BY_NAME:
        if part in model_id.lower():
            return tag
    where = f"no {path}" if path is not None else "not in the Hugging Face cache"
    raise InputError(f"model {model_id}: {where}, and its name says no model family of this pipeline "
                     f"(supported: {supported}): give a checkpoint of one of them")
