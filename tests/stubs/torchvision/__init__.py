"""A stand-in for torchvision, for test processes where the real one cannot be imported.

spandrel imports torchvision for two architectures (LaMa, RestoreFormer) when it builds its
registry; the upscaler tests use neither (ESRGAN). PyPI's torchvision is built for PyPI's CUDA
torch and fails to import beside the CPU torch this project's CI installs ("operator
torchvision::nms does not exist"), and no CPU build can be installed here. So the tests put
this folder on the path only when `import torchvision` fails (tests/engine/conftest.py);
anything that would really use torchvision fails loudly (`transforms.functional`).
"""

__version__ = "0.0.0+stub"
