"""gluon-tricks: Bag of Tricks (He et al., 2019) and its CIFAR-100 follow-up on MXNet + GluonCV.

This file is the one place where versions are pinned. The Makefile, CI and the
docs install through it (`pip install -e .[cpu,test]`); nothing else repeats a pin.
"""
from setuptools import find_namespace_packages, setup

# MXNet 1.9.1 imports only with numpy < 1.24 (np.bool was removed in 1.24; numpy 2
# removed more). opencv-python >= 4.12 requires numpy 2, so it is held below that.
CORE = [
    "numpy==1.23.5",
    "gluoncv==0.10.5.post0",
    "opencv-python>=4.8,<4.12",
    "matplotlib>=3.7,<3.11",
    "tqdm>=4.60",
    # Welch intervals of tables that show differences (gluon_tricks/stats.py). GluonCV installs
    # scipy already; 1.16 needs numpy >= 1.25, and 1.9 is the first with wheels for numpy 1.23.
    "scipy>=1.9,<1.16",
    # Python 3.11's tomllib is tomli 2.0.1. tomli >= 2.1 also parses TOML 1.1 (e.g. newlines in
    # inline tables), which tomllib rejects: capped so a recipe parses alike on every Python.
    'tomli>=2.0.1,<2.1; python_version < "3.11"',
]
# Exactly one MXNet build: the CPU wheel here, the CUDA 11.2 wheel on GPU machines.
MXNET_CPU = ["mxnet==1.9.1"]
# The CUDA 11 libraries libmxnet.so links against (its NEEDED list, read off the 1.9.1 wheel), from
# NVIDIA's pip packages, so a host needs only the driver; gluon_tricks.cuda_libs preloads them.
# cuDNN is held at 8.x: 9.x changes the soname to libcudnn.so.9.
MXNET_GPU = [
    "mxnet-cu112==1.9.1",
    "nvidia-cuda-runtime-cu11==11.8.89",
    "nvidia-cublas-cu11==11.11.3.6",
    "nvidia-cufft-cu11==10.9.0.58",
    "nvidia-curand-cu11==10.3.0.86",
    "nvidia-cusolver-cu11==11.4.1.48",
    "nvidia-cuda-nvrtc-cu11==11.8.89",
    "nvidia-nvtx-cu11==11.8.86",
    "nvidia-cudnn-cu11==8.9.6.50",
    "nvidia-nccl-cu11==2.21.5",
]
TEST = ["pytest>=7", "hypothesis>=6.80"]

setup(
    name="gluon-tricks",
    version="0.1.0",
    description="Reproduce Bag of Tricks and the stitch-mixup CIFAR-100 follow-up on MXNet/GluonCV",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # numpy 1.23.5 (above) has no wheels past Python 3.11; the recipe checks evaluate list[str]
    # annotations at run time, which needs 3.9.
    python_requires=">=3.9,<3.12",
    # namespace discovery: the mini sets' definition folders (no __init__.py) are part of the package
    packages=find_namespace_packages(include=["gluon_tricks", "gluon_tricks.*"], exclude=["*.__pycache__"]),
    # The mini sets' definitions (README, SHA256SUMS, class names), not their data: the data is
    # third-party and is found in $GLUON_TRICKS_DATA or cut from the official archive.
    package_data={"gluon_tricks": ["data/cifar10_mini/README.md", "data/cifar10_mini/SHA256SUMS",
                                   "data/cifar100_mini/README.md", "data/cifar100_mini/SHA256SUMS",
                                   "data/cifar100_mini/*_label_names.txt", "paper_numbers/*.csv"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require={"cpu": MXNET_CPU, "gpu": MXNET_GPU, "test": TEST},
    entry_points={"console_scripts": ["gluon-tricks=gluon_tricks.cli:main"]},
)
