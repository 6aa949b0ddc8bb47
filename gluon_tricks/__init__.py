"""gluon-tricks: the Bag of Tricks and its CIFAR-100 follow-up as small composable pieces.

Data flows one way: recipe -> data + model + tricks -> engine -> run directory
-> tables and plots.
"""
__version__ = "0.1.0"

# Before anything imports mxnet: the CUDA 11 libraries from pip, for the GPU wheel (cuda_libs.py).
from gluon_tricks.cuda_libs import preload as _preload_cuda_libs  # noqa: E402

_preload_cuda_libs()
