"""tests/gpu/: tests that need a CUDA GPU. Each one here is marked `gpu` (so the default and fast
runs leave them out: `bash tests/run.sh -m gpu` runs them) and skips where torch sees no GPU."""
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    # pytest calls this hook of every conftest with all the session's items: keep to ours
    ours = [item for item in items if HERE in Path(item.path).resolve().parents]
    no_gpu = None
    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason="no CUDA GPU (torch.cuda.is_available() is False)")
    for item in ours:
        item.add_marker(pytest.mark.gpu)
        if no_gpu is not None:
            item.add_marker(no_gpu)
