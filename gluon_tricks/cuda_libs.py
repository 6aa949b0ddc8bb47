"""CUDA 11 libraries for the mxnet-cu112 wheel, from pip, so a bare NVIDIA driver is enough.

`libmxnet.so` of mxnet-cu112 1.9.1 links these CUDA sonames dynamically (read from the
wheel with `readelf -d`; its RPATH is only `${ORIGIN}`, which holds OpenBLAS and
gfortran): libcudart.so.11.0, libcublas.so.11, libcufft.so.10, libcurand.so.10,
libcusolver.so.11, libnvrtc.so.11.2, libnvToolsExt.so.1, libcudnn.so.8, libnccl.so.2,
plus the driver's libcuda.so.1. NVIDIA's `nvidia-*-cu11` pip packages ship exactly these
sonames (every versioned symbol libmxnet.so imports was checked against them) under
`site-packages/nvidia/<part>/lib/`, a directory the dynamic linker never searches.

`preload()` opens them with RTLD_GLOBAL, dependencies first, before MXNet is imported:
the linker then satisfies libmxnet.so's NEEDED entries with the already-loaded objects
(it matches by soname), whatever LD_LIBRARY_PATH says. It does nothing for the CPU wheel,
when the pip packages are absent (the host's CUDA is used), or with
GLUON_TRICKS_SYSTEM_CUDA=1.
"""
from __future__ import annotations

import ctypes
import os
import sys
from importlib import metadata
from pathlib import Path

# (soname, pip distribution, folder under site-packages/nvidia), in load order: a library
# comes after the ones it needs (cuBLAS needs cuBLASLt; cuSOLVER needs cuBLAS; cuDNN 8.9
# needs cuBLAS and NVRTC, and its RPATH names nvrtc/lib where the package installs cuda_nvrtc/lib).
# libmxnet.so links only the first ten; the others are opened by name at run time, where
# dlopen searches LD_LIBRARY_PATH before the caller's RUNPATH ($ORIGIN): without the preload,
# another CUDA toolkit's cuDNN 8 or NVRTC builtins on LD_LIBRARY_PATH would be mixed in.
#  - libnvrtc-builtins.so.11.8: NVRTC opens it when MXNet compiles a fused kernel.
#  - cuDNN 8's six split libraries: the libcudnn.so.8 shim opens them on first use. Their
#    order is their NEEDED entries in nvidia-cudnn-cu11 8.9.6.50 (readelf -d): ops_infer needs
#    none, ops_train and cnn_infer and adv_infer need ops_infer, cnn_train needs ops_train and
#    cnn_infer, adv_train needs ops_train and adv_infer.
PIP_CUDA_LIBS = [
    ("libcudart.so.11.0", "nvidia-cuda-runtime-cu11", "cuda_runtime"),
    ("libcublasLt.so.11", "nvidia-cublas-cu11", "cublas"),
    ("libcublas.so.11", "nvidia-cublas-cu11", "cublas"),
    ("libcufft.so.10", "nvidia-cufft-cu11", "cufft"),
    ("libcurand.so.10", "nvidia-curand-cu11", "curand"),
    ("libcusolver.so.11", "nvidia-cusolver-cu11", "cusolver"),
    ("libnvrtc.so.11.2", "nvidia-cuda-nvrtc-cu11", "cuda_nvrtc"),
    ("libnvrtc-builtins.so.11.8", "nvidia-cuda-nvrtc-cu11", "cuda_nvrtc"),
    ("libnvToolsExt.so.1", "nvidia-nvtx-cu11", "nvtx"),
    ("libcudnn.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libcudnn_ops_infer.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libcudnn_ops_train.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libcudnn_cnn_infer.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libcudnn_cnn_train.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libcudnn_adv_infer.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libcudnn_adv_train.so.8", "nvidia-cudnn-cu11", "cudnn"),
    ("libnccl.so.2", "nvidia-nccl-cu11", "nccl"),
]
DRIVER_LIB = "libcuda.so.1"  # comes with the NVIDIA driver, never from pip
CUDA_WHEEL = "mxnet-cu112"
# CUDA 11 minor-version compatibility: any driver from 450.80.02 runs CUDA 11.x libraries.
MIN_DRIVER = (450, 80, 2)
# MXNet fuses pointwise ops of every hybridized GPU graph: NVRTC compiles them to PTX, which
# the driver JIT-compiles (cached_op.h, fused_op.cu in 1.9.1). NVRTC 11.8 writes PTX ISA 7.8,
# which only CUDA 11.8's driver (520.61.05) and later load; minor-version compatibility does
# not cover newer PTX. Below this driver preload() turns fusion off.
FUSION_DRIVER = (520, 61, 5)

# What preload() did in this process: soname -> path loaded, or soname -> error text.
LOADED: dict[str, str] = {}
ERRORS: dict[str, str] = {}
# Whether preload() first ran before mxnet was imported (None: it never ran). False means
# something imported mxnet (or gluoncv, which imports it) before gluon_tricks: too late.
RAN_BEFORE_MXNET: bool | None = None


def pip_lib_dirs(search_path=None) -> dict[str, Path]:
    """soname -> file, for every PIP_CUDA_LIBS entry found under a `nvidia/` folder of sys.path."""
    bases = [Path(entry or ".") / "nvidia" for entry in (search_path if search_path is not None else sys.path)]
    bases = [b for b in bases if b.is_dir()]
    found = {}  # in PIP_CUDA_LIBS order, i.e. load order
    for soname, _, folder in PIP_CUDA_LIBS:
        path = next((b / folder / "lib" / soname for b in bases if (b / folder / "lib" / soname).is_file()), None)
        if path is not None:
            found[soname] = path
    return found


def nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version, e.g. '535.183.01', or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    import re

    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def driver_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def fusion_off_below_floor(driver: str | None, env=None) -> bool:
    """Set MXNET_USE_FUSION=0 (unless the user set it) when `driver` cannot load NVRTC 11.8's
    PTX; True when fusion is off for that reason. MXNet reads the variable when it builds a
    hybridized graph, so setting it before training is enough."""
    env = os.environ if env is None else env
    if driver is None or driver_version(driver) >= FUSION_DRIVER:
        return False
    env.setdefault("MXNET_USE_FUSION", "0")
    return env["MXNET_USE_FUSION"] == "0"


def cuda_wheel_installed() -> bool:
    try:
        metadata.version(CUDA_WHEEL)
        return True
    except metadata.PackageNotFoundError:
        return False


def preload(search_path=None, force: bool = False) -> dict[str, str]:
    """Load the pip CUDA libraries (see the module docstring); returns soname -> path loaded.
    Never raises: a library that fails to load is recorded in ERRORS for `gluon-tricks doctor`,
    and `import mxnet` then reports what is missing."""
    global RAN_BEFORE_MXNET
    if RAN_BEFORE_MXNET is None:
        RAN_BEFORE_MXNET = "mxnet" not in sys.modules
    if not force:
        if os.environ.get("GLUON_TRICKS_SYSTEM_CUDA") == "1" or not cuda_wheel_installed():
            return {}
        if "mxnet" in sys.modules:  # too late: libmxnet.so is already linked
            return {}
        fusion_off_below_floor(nvidia_driver())
    for soname, path in pip_lib_dirs(search_path).items():
        if soname in LOADED:
            continue
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            LOADED[soname] = str(path)
        except OSError as e:
            ERRORS[soname] = str(e)
    return dict(LOADED)
