"""gluon-tricks: Bag of Tricks (He et al., 2019) and its CIFAR-100 follow-up on MXNet + GluonCV.

This file is the one place where versions are pinned. The Makefile, CI and the
docs install through it (`pip install -e .[cpu,test]`); nothing else repeats a pin.
"""
from setuptools import find_packages, setup

# MXNet 1.9.1 imports only with numpy < 1.24 (np.bool was removed in 1.24; numpy 2
# removed more). opencv-python >= 4.12 requires numpy 2, so it is held below that.
CORE = [
    "numpy==1.23.5",
    "gluoncv==0.10.5.post0",
    "opencv-python>=4.8,<4.12",
    "matplotlib>=3.7,<3.11",
    "tqdm>=4.60",
]
# Exactly one MXNet build: the CPU wheel here, the CUDA 11.2 wheel on GPU machines.
MXNET_CPU = ["mxnet==1.9.1"]
MXNET_GPU = ["mxnet-cu112==1.9.1"]
TEST = ["pytest>=7", "hypothesis>=6.80"]

setup(
    name="gluon-tricks",
    version="0.1.0",
    description="Reproduce Bag of Tricks and the stitch-mixup CIFAR-100 follow-up on MXNet/GluonCV",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["gluon_tricks", "gluon_tricks.*"]),
    package_data={"gluon_tricks": ["data/cifar10_mini/*", "data/cifar100_mini/*", "paper_numbers/*.csv"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require={"cpu": MXNET_CPU, "gpu": MXNET_GPU, "test": TEST},
    entry_points={"console_scripts": ["gluon-tricks=gluon_tricks.cli:main"]},
)
