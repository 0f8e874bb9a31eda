"""Model families: each module here holds everything this pipeline knows about one kind of checkpoint
(its classes, prompt, inputs, embeddings, rotary positions, memory; docs/design.md#model-families).

    family = families.of_model("llava-hf/llava-v1.6-mistral-7b-hf")   # from its config.json, never a flag
    family.NAME, family.TAG                                             # "llava_next", "llava"

The family of a checkpoint is its config.json's model_type. Modules here import torch and transformers
only inside their functions, so the plan (--print-plan) picks a family in milliseconds.
"""
import importlib
import json
import pkgutil
from pathlib import Path

from ..cli import InputError
from ..settings import DEFAULT_MODEL


def _module(name):
    return importlib.import_module(f"{__name__}.{name}")


# Every module of this package is a family: a new family is one new module here, found by its MODEL_TYPES
# (config.json model_type -> module name); a hub id not in the cache is known by its NAME_HINTS (parts of its
# lower-cased name; what from_pretrained fetches decides in the end).
ALL = tuple(_module(m.name) for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))  # not __main__
FAMILIES = {t: m.__name__.rpartition(".")[2] for m in ALL for t in m.MODEL_TYPES}
_BY_NAME = tuple((hint, m.__name__.rpartition(".")[2]) for m in ALL for hint in m.NAME_HINTS)


def of_config(config: dict, model_id: str | None = None):
    """The family module of a parsed config.json (of model_id, named in the message); InputError (one line) for a
    model_type none supports."""
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        where = f"model {model_id}: its config.json has " if model_id else ""
        raise InputError(f"{where}model_type {model_type!r}, not a model family this pipeline runs (supported: "
                         f"{', '.join(sorted(FAMILIES))}): use one of those checkpoints, or add a family "
                         f"(docs/design.md#model-families)")
    return _module(FAMILIES[model_type])


def of_model(model_id: str):
    """The family of a checkpoint directory (its config.json) or a hub id (its cached config.json; no
    network): a hub id not cached yet is known by its DEFAULT_ID, else by its name."""
    from ..loading import check_model_source, is_local
    if is_local(model_id):
        check_model_source(model_id)  # no such directory: its one line
        path = Path(model_id).expanduser() / "config.json"
        if not path.is_file():
            raise InputError(f"--model {model_id}: no config.json there (a checkpoint directory holds the config.json, "
                             f"tokenizer and weights that save_pretrained writes)")
    elif model_id == DEFAULT_MODEL:  # its config.json can only say llava_next: no look-up (status, submit start fast)
        return _module("llava_next")
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # a python without it (status_llava.py run by the system's): the name says
            try_to_load_from_cache = None
        cached = try_to_load_from_cache and try_to_load_from_cache(model_id, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is not None:
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"--model {model_id}: cannot read {path} ({e}): download the model again") from None
        return of_config(config, model_id)
    for name in FAMILIES.values():
        try:
            module = _module(name)
        except ModuleNotFoundError as e:  # a family listed whose module this checkout lacks: not this model's
            if e.name != f"{__name__}.{name}":
                raise
            continue
        if module.DEFAULT_ID.lower() == model_id.lower():
            return module
    for part, name in _BY_NAME:
        if part in model_id.lower():
            return _module(name)
    raise InputError(f"--model {model_id}: not in the Hugging Face cache, and its name says no model family "
                     f"(supported: {', '.join(sorted(FAMILIES))}): download it first (README: Troubleshooting)")


def tag_of(model_id: str) -> str:
    """The TAG of model_id's family: the model's name in every file name (settings.FINAL, LOCK, ...). A checkpoint
    directory that does not exist (yet) is known by its name as a hub id is, so finished videos are still found;
    the worker then says the directory is missing."""
    from ..loading import is_local
    if is_local(model_id) and not Path(model_id).expanduser().exists():
        for part, name in _BY_NAME:
            if part in model_id.lower():
                return _module(name).TAG
    return of_model(model_id).TAG


def tag_or_default(model_id: str) -> str:
    """tag_of(model_id), or the default model's TAG where no family can be read (a folder that is not there): for
    what must be named before the model is checked (the worker's lock and partial, a failure note); the model's own
    check then stops the run with its line before anything is written under that name."""
    try:
        return tag_of(model_id)
    except InputError:
        return _module("llava_next").TAG


def load(model_id: str, plan, device: str, visual_tokens: str = "full"):
    """(model, processor) of model_id, loaded by its family (its load())."""
    return of_model(model_id).load(model_id, plan, device, visual_tokens)


def of_loaded(model):
    """The family of a loaded model."""
    return of_config(model.config.to_dict())


TAGS = tuple(m.TAG for m in ALL)  # every family's: the model names files carry
