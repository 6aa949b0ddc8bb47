"""`gluon-tricks doctor` and the pip CUDA library loader, on real ELF files built here.

No GPU and no CUDA library exists on this machine, so fake ones are compiled with gcc
under the soname and folder layout of NVIDIA's pip packages (nvidia/<part>/lib/<soname>);
a fake libmxnet.so links them by soname the way the mxnet-cu112 wheel does.
"""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mxnet as mx
import pytest

from gluon_tricks import cuda_libs, doctor, needs
from gluon_tricks.doctor import Line, elf_needed, library_lines, omp_lines, pin_lines, requirement_pins

ROOT = Path(__file__).resolve().parent.parent
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("readelf") is None,
                               reason="needs gcc and readelf")


def _so(path: Path, soname: str, code: str, links=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.with_suffix(".c")
    src.write_text(code)
    # -Wl,--no-as-needed keeps every -l as a NEEDED entry; no rpath: only preloading can resolve them
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(path), str(src), f"-Wl,-soname,{soname}", "-Wl,--no-as-needed"]
    for lib in links:
        cmd += [f"-L{lib.parent}", f"-l:{lib.name}"]
    subprocess.run(cmd, check=True, capture_output=True)
    src.unlink()
    return path


@pytest.fixture(scope="module")
def fake_cuda(tmp_path_factory):
    """site/nvidia/... as the pip packages lay it out, plus a libmxnet.so that needs them."""
    base = tmp_path_factory.mktemp("fakecuda")
    site = base / "site"
    cudart = _so(site / "nvidia/cuda_runtime/lib/libcudart.so.11.0", "libcudart.so.11.0",
                 "int cudaRuntimeVersion(void) { return 11080; }")
    lt = _so(site / "nvidia/cublas/lib/libcublasLt.so.11", "libcublasLt.so.11", "int lt(void) { return 7; }")
    cublas = _so(site / "nvidia/cublas/lib/libcublas.so.11", "libcublas.so.11",
                 "int lt(void); int cublas(void) { return lt() * 100; }", links=[lt])
    driver = _so(base / "linkonly/libcuda.so.1", "libcuda.so.1", "int cuInit(int f) { return 0; }")
    bundled = _so(base / "wheel/mxnet/libopenblas.so.0", "libopenblas.so.0", "int blas(void) { return 1; }")
    body = textwrap.dedent("""
        int cudaRuntimeVersion(void); int cublas(void);
        int probe(void) { return cudaRuntimeVersion() + cublas(); }
    """)
    without_driver = _so(base / "nodriver/libmxnet.so", "libmxnet.so", body, links=[cudart, cublas])
    full = _so(base / "wheel/mxnet/libmxnet.so", "libmxnet.so", body, links=[bundled, cudart, cublas, driver])
    return {"site": site, "lib": full, "lib_no_driver": without_driver, "cudart": cudart, "cublas": cublas}


def _readelf_needed(path):
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@needs_gcc
def test_elf_needed_equals_readelf(fake_cuda):
    real = doctor.mxnet_library()  # the installed wheel's 100+ MB library
    for path in (real, fake_cuda["lib"]):
        assert elf_needed(path) == _readelf_needed(path) and elf_needed(path)
    assert elf_needed(fake_cuda["lib"]) == ["libopenblas.so.0", "libcudart.so.11.0", "libcublas.so.11",
                                            "libcuda.so.1", "libc.so.6"]


def _load_in_fresh_process(lib, site, order=None):
    script = textwrap.dedent(f"""
        import ctypes, json, sys
        from gluon_tricks import cuda_libs
        out = {{}}
        try:
            ctypes.CDLL({str(lib)!r})
            out["before"] = "loaded"
        except OSError as e:
            out["before"] = str(e)
        if {order!r} == "reversed":
            cuda_libs.PIP_CUDA_LIBS.reverse()
        out["preloaded"] = list(cuda_libs.preload(search_path=[{str(site)!r}], force=True))
        out["errors"] = list(cuda_libs.ERRORS)
        try:
            out["probe"] = ctypes.CDLL({str(lib)!r}).probe()
        except OSError as e:
            out["probe"] = str(e)
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@needs_gcc
def test_preload_lets_the_linker_resolve_pip_libraries(fake_cuda):
    got = _load_in_fresh_process(fake_cuda["lib_no_driver"], fake_cuda["site"])
    assert "libcudart.so.11.0: cannot open shared object file" in got["before"]  # nothing on the linker's path
    assert got["preloaded"] == ["libcudart.so.11.0", "libcublasLt.so.11", "libcublas.so.11"]
    assert got["errors"] == [] and got["probe"] == 11080 + 7 * 100
    # dependencies first matters: cuBLAS cannot load before cuBLASLt (no rpath in these fakes)
    got = _load_in_fresh_process(fake_cuda["lib_no_driver"], fake_cuda["site"], order="reversed")
    assert "libcublas.so.11" in got["errors"] and isinstance(got["probe"], str)


def test_preload_does_nothing_for_the_cpu_wheel(tmp_path):
    assert not cuda_libs.cuda_wheel_installed()  # this machine runs the CPU wheel
    assert cuda_libs.preload(search_path=[str(tmp_path)]) == {}


def test_pip_packages_cover_every_cuda_soname_of_the_wheel():
    """The sonames `readelf -d` lists for mxnet-cu112 1.9.1's libmxnet.so (docs/gpu.md) besides
    the driver are exactly those preload() knows, each from one nvidia-*-cu11 package."""
    wheel_needs = {"libcudart.so.11.0", "libcublas.so.11", "libcufft.so.10", "libcurand.so.10", "libcusolver.so.11",
                   "libnvrtc.so.11.2", "libnvToolsExt.so.1", "libcudnn.so.8", "libnccl.so.2"}
    known = {soname for soname, _, _ in cuda_libs.PIP_CUDA_LIBS}
    # besides: cuBLAS's own dependency, and what cuDNN and NVRTC open by name at run time
    assert wheel_needs <= known and known - wheel_needs == {"libcublasLt.so.11", "libnvrtc-builtins.so.11.8",
                                                            *CUDNN_SPLIT_NEEDS}
    assert all(dist.startswith("nvidia-") and dist.endswith("-cu11") for _, dist, _ in cuda_libs.PIP_CUDA_LIBS)


@needs_gcc
def test_library_lines_name_the_package_or_the_driver(fake_cuda):
    lines = library_lines(fake_cuda["lib"], loaded={})
    text = "\n".join(map(str, lines))
    assert [ln.status for ln in lines] == ["FAIL", "FAIL", "FAIL"], text
    assert "libcudart.so.11.0 not found" in text and "nvidia-cuda-runtime-cu11" in text
    assert "nvidia-cublas-cu11" in text and "libcuda.so.1 (the NVIDIA driver) not found" in text
    assert "libopenblas" not in text  # bundled next to libmxnet.so
    loaded = {"libcudart.so.11.0": str(fake_cuda["cudart"]), "libcublas.so.11": str(fake_cuda["cublas"])}
    lines = library_lines(fake_cuda["lib"], loaded=loaded)
    assert [ln.status for ln in lines] == ["OK", "OK", "FAIL"]
    assert "(pip)" in str(lines[0]) and "driver" in str(lines[2])


def test_cpu_wheel_libraries_resolve():
    lines = library_lines()
    assert [ln.status for ln in lines] == ["OK"] and "CPU build" in lines[0].text


PINS = ["numpy==1.23.5", "tqdm>=4.60", 'mxnet==1.9.1; extra == "cpu"', 'mxnet-cu112==1.9.1; extra == "gpu"',
        'pytest>=7; extra == "test"']


def test_pins_against_installed_versions():
    good = {"numpy": "1.23.5", "tqdm": "4.66.0", "mxnet": "1.9.1"}
    lines = pin_lines(">=3.11,<3.12", PINS, "3.11.7", installed=good)
    assert {ln.status for ln in lines} == {"OK"} and len(lines) == 4  # python, numpy, tqdm, the one mxnet wheel
    lines = pin_lines(">=3.11,<3.12", PINS, "3.12.1", installed=dict(good, numpy="1.24.0"))
    bad = [str(ln) for ln in lines if ln.status == "FAIL"]
    assert len(bad) == 2 and "Python 3.12.1 is outside >=3.11,<3.12" in bad[0] and "numpy 1.24.0" in bad[1]
    lines = pin_lines(">=3.11,<3.12", PINS, "3.11.7", installed=dict(good, **{"mxnet-cu112": "1.9.1"}))
    assert any(ln.status == "FAIL" and "both mxnet and mxnet-cu112" in ln.text for ln in lines)
    gpu_pins = PINS + ['nvidia-cudnn-cu11==8.9.6.50; extra == "gpu"']
    lines = pin_lines(">=3.11,<3.12", gpu_pins, "3.11.7", installed=good)  # CPU wheel: CUDA pins not checked
    assert {ln.status for ln in lines} == {"OK"} and len(lines) == 4
    gpu = {"numpy": "1.23.5", "tqdm": "4.66.0", "mxnet-cu112": "1.9.1"}
    lines = pin_lines(">=3.11,<3.12", gpu_pins, "3.11.7", installed=gpu)
    assert [ln.text for ln in lines if ln.status == "FAIL"] == ["nvidia-cudnn-cu11 is not installed (needs ==8.9.6.50)"]
    lines = pin_lines(">=3.11,<3.12", PINS, "3.11.7", installed={"mxnet": "1.9.1"})
    assert [ln.text for ln in lines if ln.status == "FAIL"] == ["numpy is not installed (needs ==1.23.5)",
                                                                "tqdm is not installed (needs >=4.60)"]


def test_pins_are_read_from_setup_py_without_running_it(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text(textwrap.dedent("""
        raise SystemExit("never executed")
        CORE = ["numpy==1.2.3", "gluoncv==9"]
        MXNET_CPU = ["mxnet==7"]
        MXNET_GPU = ["mxnet-cu112==7"]
        TEST = ["pytest"]
        setup(python_requires=">=3.11,<3.12", install_requires=CORE)
    """))
    python, reqs = requirement_pins(setup)
    assert python == ">=3.11,<3.12"
    assert reqs == ["numpy==1.2.3", "gluoncv==9", 'mxnet==7; extra == "cpu"', 'mxnet-cu112==7; extra == "gpu"']


def test_omp_lines():
    assert omp_lines({}, 8)[0].status == "WARN" and "OMP_NUM_THREADS=8" in omp_lines({}, 8)[0].fix
    assert omp_lines({"OMP_NUM_THREADS": "0"}, 8)[0].status == "FAIL"
    assert omp_lines({"OMP_NUM_THREADS": "lots"}, 8)[0].status == "FAIL"
    assert omp_lines({"OMP_NUM_THREADS": "64"}, 8)[0].status == "WARN"
    assert omp_lines({"OMP_NUM_THREADS": "8"}, 8) == [Line("OK", "OMP_NUM_THREADS=8 of 8 cores")]


def test_table_lines_list_missing_data_and_teachers(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "home"))
    rec = tmp_path / "rec"
    t = tmp_path / "recipes" / "t"
    t.mkdir(parents=True)
    (t / "a.toml").write_text(f'[data]\ndataset = "recordio"\nroot = "{rec}"\naugment = "bot"\n')
    (t / "b.toml").write_text('extends = "a.toml"\n[distill]\nteacher = "resnet152_v1d:cfe0220d"\n')
    (t / "table.toml").write_text('title = "T"\n[[rows]]\nlabel = "a"\nrecipe = "a.toml"\n'
                                  '[[rows]]\nlabel = "b"\nrecipe = "b.toml"\n')
    (line,) = doctor.table_lines(tmp_path / "recipes")
    assert line.status == "WARN" and "gluon-tricks prepare" in line.fix
    assert f"{rec}/{{train.rec,train.idx,val.rec,val.idx}}" in line.text  # classes.txt: optional (im2rec)
    assert f"{tmp_path}/home/models/resnet152_v1d-cfe0220d.params" in line.text
    rec.mkdir()
    for name in ("train.rec", "train.idx", "val.rec", "val.idx"):
        (rec / name).write_bytes(b"")
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "resnet152_v1d-cfe0220d.params").write_bytes(b"")
    assert doctor.table_lines(tmp_path / "recipes") == [Line("OK", "table t: data and teachers present")]


def test_doctor_and_training_read_the_same_folders_with_a_literal_tilde(tmp_path, monkeypatch):
    """MXNET_HOME=~/data reaches the process unexpanded when the shell quotes it: doctor, the
    CIFAR reader, the ImageNet-style readers and the zoo weights all mean $HOME/data (as
    GluonCV's model store does), not a folder named '~' in the working directory."""
    import gluon_tricks.data.cifar as cifar
    from gluon_tricks.data import make_streams
    from gluon_tricks.errors import UserError
    from gluon_tricks.models import zoo_weights_file
    from gluon_tricks.recipe import recipe_from_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MXNET_HOME", "~/data")
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "data"
    r = recipe_from_dict({"data": {"dataset": "cifar100"}})
    assert needs.data_missing(r.data)[0] == [f"{home}/datasets/cifar100/ (cifar100)"]
    downloads = []
    monkeypatch.setattr(cifar, "_download", lambda root, name: downloads.append(root))  # no internet here
    with pytest.raises(UserError, match="no cifar100 training files"):
        make_streams(r)
    assert downloads == [home / "datasets" / "cifar100"]
    for dataset in ("recordio", "imagefolder"):
        r = recipe_from_dict({"data": {"dataset": dataset, "augment": "bot", "image_size": 32}})
        missing = needs.data_missing(r.data)[0]
        assert missing and all(m.startswith(f"{home}/datasets/imagenet/") for m in missing), missing
        with pytest.raises(UserError, match=f"{home}/datasets/imagenet/"):
            make_streams(r)
    spec = recipe_from_dict({"distill": {"teacher": "resnet152_v1d:cfe0220d"}}).distill
    expected = home / "models" / "resnet152_v1d-cfe0220d.params"
    assert needs.teacher_missing(spec)[0] == [str(expected)] and zoo_weights_file("resnet152_v1d", "cfe0220d") == expected
    assert not (tmp_path / "~").exists()


def test_disk_lines(tmp_path):
    assert doctor.disk_lines({"x": tmp_path / "not" / "yet"})[0].text.startswith("disk at x")
    assert doctor.disk_lines({"x": tmp_path}, warn_gb=1e9, fail_gb=0)[0].status == "WARN"
    assert doctor.disk_lines({"x": tmp_path}, warn_gb=1e9, fail_gb=1e8)[0].status == "FAIL"


def test_doctor_command(capsys):
    from gluon_tricks.cli import main

    status = main(["doctor"])
    out = capsys.readouterr().out.splitlines()
    assert all(line.split(" ", 1)[0] in ("==", "OK", "WARN", "FAIL") for line in out)
    assert status == (1 if any(line.startswith("FAIL") for line in out) else 0)
    cuda = mx.runtime.Features().is_enabled("CUDA")
    assert any(line.startswith(("OK   MXNet build", "WARN MXNet build")) and f"CUDA {'yes' if cuda else 'no'}" in line
               and "DIST_KVSTORE" in line for line in out)
    assert any(line.startswith("OK   table demo: data and teachers present") for line in out)
    if not cuda:  # the CPU wheel: the convolution check runs on the CPU
        assert "OK   cpu(0) float32: a convolution's forward and backward agree with numpy" in out


def test_convolution_check_on_each_device_against_numpy():
    """Two CPU contexts stand in for two GPUs: both agree with the numpy oracle, in float32 and
    float64; float16, which the CPU wheel cannot multiply, is a FAIL line with MXNet's reason
    and a fix, and the engine's kept error does not come back at the next wait."""
    lines = doctor.convolution_lines([(mx.cpu(0), "float32"), (mx.cpu(1), "float64"), (mx.cpu(1), "float16")])
    assert [l.status for l in lines] == ["OK", "OK", "FAIL"]
    assert lines[1].text == "cpu(1) float64: a convolution's forward and backward agree with numpy"
    assert lines[2].text == "a convolution on cpu(1) in float16 failed: MXNetError: FP16 gemm on cpu not implemented!"
    assert "CUDA_VISIBLE_DEVICES" in lines[2].fix
    mx.nd.waitall()  # raises if the failed operation's error were still kept


def test_convolution_check_reports_a_wrong_result(monkeypatch):
    """A device that computes, but wrongly, is named with what is wrong: the output 1% off; the
    output right but its weight gradient 1% off. 1e-5 off passes float32's tolerance (1e-4)."""
    from gluon_tricks.devices import convolution_check

    real = mx.nd.Convolution

    def off_gradient(*a, **k):  # forward value unchanged, gradient x 1.01
        y = real(*a, **k)
        return y + 0.01 * y - (0.01 * y).detach()

    monkeypatch.setattr(mx.nd, "Convolution", lambda *a, **k: real(*a, **k) * 1.01)
    assert convolution_check(mx.cpu()).startswith("a convolution on cpu(0) in float32 computes a wrong output (off by 1.0e-02")
    monkeypatch.setattr(mx.nd, "Convolution", off_gradient)
    assert convolution_check(mx.cpu()).startswith("a convolution on cpu(0) in float32 computes a wrong weight gradient "
                                                  "(off by 1.0e-02")
    monkeypatch.setattr(mx.nd, "Convolution", lambda *a, **k: real(*a, **k) * 1.00001)
    assert convolution_check(mx.cpu()) is None


# `unzip -l` of nvidia-cudnn-cu11 8.9.6.50 (the pin in setup.py) lists these files under
# nvidia/cudnn/lib/ besides libcudnn.so.8, and `readelf -d` gives each one's NEEDED entries
# among them; nvidia-cuda-nvrtc-cu11 11.8.89 has libnvrtc-builtins.so.11.8 in nvidia/cuda_nvrtc/lib/.
CUDNN_SPLIT_NEEDS = {
    "libcudnn_ops_infer.so.8": [],
    "libcudnn_ops_train.so.8": ["libcudnn_ops_infer.so.8"],
    "libcudnn_cnn_infer.so.8": ["libcudnn_ops_infer.so.8"],
    "libcudnn_cnn_train.so.8": ["libcudnn_ops_infer.so.8", "libcudnn_ops_train.so.8", "libcudnn_cnn_infer.so.8"],
    "libcudnn_adv_infer.so.8": ["libcudnn_ops_infer.so.8"],
    "libcudnn_adv_train.so.8": ["libcudnn_ops_infer.so.8", "libcudnn_ops_train.so.8", "libcudnn_adv_infer.so.8"],
}


def test_cudnn_split_libraries_and_nvrtc_builtins_preload_after_what_they_need():
    order = [soname for soname, _, _ in cuda_libs.PIP_CUDA_LIBS]
    folder = {soname: (dist, part) for soname, dist, part in cuda_libs.PIP_CUDA_LIBS}
    for lib, needs in CUDNN_SPLIT_NEEDS.items():
        assert folder[lib] == ("nvidia-cudnn-cu11", "cudnn")
        assert all(order.index(n) < order.index(lib) for n in needs), (lib, needs)
        # the shim and what every cuDNN library needs (cuBLAS, NVRTC: RUNPATH ../../cublas/lib) come first
        assert order.index("libcudnn.so.8") < order.index(lib)
        assert order.index("libcublas.so.11") < order.index(lib) and order.index("libnvrtc.so.11.2") < order.index(lib)
    assert folder["libnvrtc-builtins.so.11.8"] == ("nvidia-cuda-nvrtc-cu11", "cuda_nvrtc")


def test_pip_lib_dirs_find_the_split_libraries_in_the_wheel_layout(tmp_path):
    for soname, _, part in cuda_libs.PIP_CUDA_LIBS:
        (tmp_path / "nvidia" / part / "lib").mkdir(parents=True, exist_ok=True)
        (tmp_path / "nvidia" / part / "lib" / soname).write_bytes(b"")
    found = cuda_libs.pip_lib_dirs([str(tmp_path)])
    assert list(found) == [soname for soname, _, _ in cuda_libs.PIP_CUDA_LIBS]
    assert found["libcudnn_adv_train.so.8"] == tmp_path / "nvidia/cudnn/lib/libcudnn_adv_train.so.8"


def test_doctor_warns_about_other_cuda_libraries_on_ld_library_path(tmp_path):
    toolkit, other = tmp_path / "cuda-11.4" / "lib64", tmp_path / "cuda-12" / "lib64"
    for folder, names in ((toolkit, ["libcudnn.so.8", "libcudnn_cnn_infer.so.8.2.4", "libcublasLt.so.11",
                                     "libnvrtc-builtins.so.11.4", "libnccl.so.2.11.4", "libcufft.so.10"]),
                          (other, ["libcudnn.so.9", "libcublas.so.12", "libnvrtc.so.12"])):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"")
    env = {"LD_LIBRARY_PATH": f"{other}::{toolkit}:{tmp_path / 'missing'}"}
    (line,) = doctor.ld_library_path_lines(env, pip_cuda=True)
    assert line.status == "WARN" and str(toolkit) in line.text and str(toolkit) in line.fix
    for name in ("libcudnn.so.8", "libcudnn_cnn_infer.so.8.2.4", "libcublasLt.so.11", "libnvrtc-builtins.so.11.4",
                 "libnccl.so.2.11.4"):
        assert name in line.text
    assert "libcufft" not in line.text and str(other) not in line.text  # not a collision: CUDA 12, cuDNN 9
    assert [ln.status for ln in doctor.ld_library_path_lines({"LD_LIBRARY_PATH": str(other)}, pip_cuda=True)] == ["OK"]
    assert [ln.status for ln in doctor.ld_library_path_lines(env, pip_cuda=False)] == ["OK"]  # the host's CUDA is meant


def test_driver_floor_is_the_one_of_nvrtc_11_8_ptx():
    """MXNet's fused kernels are NVRTC 11.8 PTX: the driver of CUDA 11.8 (520.61.05) or later loads it."""
    assert doctor.driver_lines("535.183.01", None)[0].status == "OK"
    assert doctor.driver_lines("520.61.05", None)[0].status == "OK"
    assert doctor.driver_lines("450.80.01", None)[0].status == "FAIL"
    (line,) = doctor.driver_lines("470.57.02", "0")
    assert line.status == "WARN" and "MXNET_USE_FUSION=0" in line.text and "520.61.05" in line.fix
    (line,) = doctor.driver_lines("515.65.01", "1")
    assert line.status == "FAIL" and "MXNET_USE_FUSION=1" in line.text


def test_preload_turns_fusion_off_below_the_driver_floor():
    env = {}
    assert cuda_libs.fusion_off_below_floor("515.65.01", env) and env == {"MXNET_USE_FUSION": "0"}
    env = {}
    assert not cuda_libs.fusion_off_below_floor("520.61.05", env) and env == {}
    assert not cuda_libs.fusion_off_below_floor(None, env) and env == {}
    env = {"MXNET_USE_FUSION": "1"}  # the user's explicit choice stays (doctor reports it as a FAIL)
    assert not cuda_libs.fusion_off_below_floor("470.57.02", env) and env == {"MXNET_USE_FUSION": "1"}
