# A package, so that this directory's conftest.py is imported as gpu.conftest and does not replace
# tests/conftest.py as the module `conftest` that the other test files import from.
