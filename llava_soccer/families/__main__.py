"""python -m llava_soccer.families tag [MODEL]: the family TAG of MODEL (default: the model the worker runs,
LLAVA_MODEL or settings.DEFAULT_MODEL), the name of its files: submit_llava.sh reads it once before anything
starts. Exit 2 with one line when no family runs the model."""
import os
import sys

from ..cli import InputError, log_safe
from ..settings import model_in_use
from . import tag_of


def main(argv) -> int:
    if argv[:1] != ["tag"] or len(argv) > 2:
        print("usage: python -m llava_soccer.families tag [MODEL]", file=sys.stderr)
        return 2
    model = model_in_use(argv[1] if len(argv) == 2 else None)
    try:
        print(tag_of(model))
    except InputError as e:
        named = len(argv) == 1 and os.environ.get("LLAVA_MODEL")  # the variable, not a flag, gave the model
        print(log_safe(f"{e} (LLAVA_MODEL)" if named else e, 1000), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
