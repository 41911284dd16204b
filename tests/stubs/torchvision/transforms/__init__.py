"""See `tests/stubs/torchvision/__init__.py`."""
