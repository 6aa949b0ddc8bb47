"""`gluon-tricks doctor`: is this machine ready to train, and if not, what to do.

Every line is OK, WARN (works, but not as intended) or FAIL (a run would fail), with
the fix. Checked: Python and the installed packages against the pins in setup.py,
which MXNet wheel is installed and what it was built with (CUDA, cuDNN, NCCL, the
distributed kvstore), the GPUs MXNet sees and their memory, every shared library
libmxnet.so needs and where it resolves, OpenMP threads, whether each table's data
and teacher files are present, and free disk. Exit status 1 when anything FAILs.
"""
from __future__ import annotations

import ast
import ctypes
import importlib.util
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from gluon_tricks import cuda_libs
from gluon_tricks.errors import first_line
from gluon_tricks.needs import data_missing, teacher_missing
from gluon_tricks.paths import cores as machine_cores, mxnet_home, recipes_root, runs_root

FEATURES = ("CUDA", "CUDNN", "NCCL", "DIST_KVSTORE")
MXNET_WHEELS = ("mxnet", cuda_libs.CUDA_WHEEL)
# Other copies of the libraries preload() takes from pip (a CUDA toolkit's lib64, a DL AMI's cuDNN).
COLLIDING_LIBS = ("libcudnn*.so.8*", "libcublas*.so.11*", "libnccl.so.2*", "libnvrtc*.so.11*")
PROJECT = Path(__file__).resolve().parent.parent


@dataclass
class Line:
    status: str  # OK | WARN | FAIL
    text: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.status:<4} {self.text}" + (f"  -> {self.fix}" if self.fix else "")


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a 64-bit little-endian ELF shared library (what `readelf -d`
    lists as NEEDED), read from its dynamic section without loading it."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        f.seek(shoff)
        sections = [struct.unpack_from("<IIQQQQIIQQ", f.read(shentsize)) for _ in range(shnum)]
        dynamic = next((s for s in sections if s[1] == 6), None)  # SHT_DYNAMIC
        if dynamic is None:
            return []
        strtab = sections[dynamic[6]]  # sh_link: the section holding the names
        f.seek(strtab[4])
        names = f.read(strtab[5])
        f.seek(dynamic[4])
        raw = f.read(dynamic[5])
    out = []
    for tag, value in struct.iter_unpack("<qQ", raw):
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED: an offset into the string table
            out.append(names[value:names.index(b"\0", value)].decode())
    return out


def mxnet_library() -> Path | None:
    """libmxnet.so of the installed MXNet, found without importing (and linking) it."""
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "libmxnet.so"
    return path if path.is_file() else None


def _loads(soname: str) -> str | None:
    """None if the dynamic linker finds `soname` (LD_LIBRARY_PATH, ld.so.cache), else why not."""
    try:
        ctypes.CDLL(soname)
        return None
    except OSError as e:
        return str(e)


def library_lines(lib: Path | None = None, loaded: dict | None = None) -> list[Line]:
    """Each library libmxnet.so needs: bundled in the wheel, loaded from a pip package by
    cuda_libs, or found by the system's dynamic linker; a FAIL with the fix otherwise."""
    lib = lib or mxnet_library()
    if lib is None:
        return [Line("FAIL", "MXNet is not installed", "pip install -e '.[cpu]' (or '.[gpu]' on a GPU machine)")]
    loaded = cuda_libs.LOADED if loaded is None else loaded
    pip_dist = {soname: dist for soname, dist, _ in cuda_libs.PIP_CUDA_LIBS}
    cuda = [n for n in elf_needed(lib) if n in pip_dist or n == cuda_libs.DRIVER_LIB]
    lines, system_missing = [], []
    for soname in elf_needed(lib):
        if (lib.parent / soname).is_file():
            continue  # the wheel's own copy (RPATH $ORIGIN)
        if soname in loaded:
            lines.append(Line("OK", f"{soname}: {loaded[soname]} (pip)"))
            continue
        why = cuda_libs.ERRORS.get(soname) or _loads(soname)
        if why is None:
            if soname in cuda:
                lines.append(Line("OK", f"{soname}: found by the system's dynamic linker"))
            continue
        if soname == cuda_libs.DRIVER_LIB:
            lines.append(Line("FAIL", f"{soname} (the NVIDIA driver) not found",
                              "install the NVIDIA driver (>= 520.61.05; `nvidia-smi` must work)"))
        elif soname in pip_dist:
            lines.append(Line("FAIL", f"{soname} not found ({why.splitlines()[0][:120]})",
                              f"pip install -e '.[gpu]' (brings {pip_dist[soname]}) or put a CUDA 11 "
                              "toolkit's lib64 on LD_LIBRARY_PATH"))
        else:
            system_missing.append(soname)
    if system_missing:
        lines.append(Line("FAIL", f"system libraries not found: {', '.join(system_missing)}",
                          "install them with the OS package manager (e.g. apt-get install libgomp1)"))
    if not cuda:
        lines.append(Line("OK", f"{lib.name}: CPU build, every library it needs resolves" if not system_missing
                          else f"{lib.name}: CPU build"))
    elif cuda_libs.cuda_wheel_installed() and _loads("libz.so.1") is not None:
        lines.append(Line("FAIL", "libz.so.1 not found (cuDNN's convolution library needs it)",
                          "apt-get install zlib1g"))
    return lines


def requirement_pins(setup_py: Path | None = None) -> tuple[str, list[str]]:
    """(python_requires, requirement strings) of gluon-tricks: from the installed metadata,
    else read (never executed) from setup.py, the one place pins live."""
    try:
        meta = metadata.metadata("gluon-tricks")
        if setup_py is None:
            return meta.get("Requires-Python", ""), list(metadata.requires("gluon-tricks") or [])
    except metadata.PackageNotFoundError:
        pass
    tree = ast.parse((setup_py or PROJECT / "setup.py").read_text())
    lists, python = {}, ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            lists[node.targets[0].id] = [ast.literal_eval(e) for e in node.value.elts]
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            python = ast.literal_eval(node.value)
    reqs = list(lists.get("CORE", []))
    for extra, var in (("cpu", "MXNET_CPU"), ("gpu", "MXNET_GPU")):
        reqs += [f'{r}; extra == "{extra}"' for r in lists.get(var, [])]
    return python, reqs


def pin_lines(python_requires: str, requirements: list[str], python_version: str | None = None,
              installed=None) -> list[Line]:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    def version_of(dist):
        if installed is not None:
            return installed.get(dist)
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    py = python_version or ".".join(map(str, sys.version_info[:3]))
    lines = []
    if python_requires and py not in SpecifierSet(python_requires):
        lines.append(Line("FAIL", f"Python {py} is outside {python_requires}",
                          f"create the venv with a Python {python_requires} (e.g. uv python install 3.11)"))
    else:
        lines.append(Line("OK", f"Python {py} ({python_requires or 'no pin'})"))
    wheels = [w for w in MXNET_WHEELS if version_of(w)]
    if len(wheels) > 1:
        lines.append(Line("FAIL", f"both {' and '.join(wheels)} are installed (they share one mxnet/ package)",
                          "pip uninstall -y mxnet mxnet-cu112, then pip install -e '.[gpu]' (or '.[cpu]')"))
    # The extra that was installed is the one whose MXNet wheel is present ([gpu] also brings
    # the CUDA libraries); the other extra and the test tools are not checked.
    extra = "gpu" if cuda_libs.CUDA_WHEEL in wheels else "cpu"
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        have = version_of(req.name)
        fix = f"pip install -e '.[{extra}]'" if req.marker is not None else "pip install -e ."
        if have is None:
            lines.append(Line("FAIL", f"{req.name} is not installed (needs {req.specifier})", fix))
        elif have not in req.specifier:
            lines.append(Line("FAIL", f"{req.name} {have} does not satisfy {req.specifier}", fix))
        else:
            lines.append(Line("OK", f"{req.name} {have} ({req.specifier})"))
    return lines


def mxnet_lines() -> list[Line]:
    """MXNet's build features and the GPUs it sees (imports MXNet: after the library lines)."""
    try:
        import mxnet as mx
    except Exception as e:  # an unresolved library surfaces as OSError, others as they come
        return [Line("FAIL", f"import mxnet failed: {first_line(e)}", "see the library lines above")]
    features = mx.runtime.Features()
    have = {f: features.is_enabled(f) for f in FEATURES}
    text = "MXNet build: " + ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in have.items())
    lines = []
    driver = nvidia_driver()
    if have["CUDA"]:
        lines.append(Line("OK" if all(have.values()) else "WARN", text))
    elif driver:
        lines.append(Line("WARN", text + f"; this machine has NVIDIA driver {driver} but the CPU wheel",
                          "make install MXNET_EXTRA=gpu (or pip uninstall -y mxnet && pip install -e '.[gpu]')"))
    else:
        lines.append(Line("OK", text + " (CPU wheel, no NVIDIA driver: runs use the CPU)"))
    if not have["DIST_KVSTORE"]:
        lines.append(Line("WARN", "no distributed kvstore: `gluon-tricks launch` cannot run", "use the PyPI wheel"))
    if driver:
        lines += driver_lines(driver, os.environ.get("MXNET_USE_FUSION"))
    if have["CUDA"]:
        n = mx.context.num_gpus()
        if n == 0:
            lines.append(Line("FAIL", "MXNet sees no GPU", "check `nvidia-smi` and CUDA_VISIBLE_DEVICES"))
        for i in range(n):
            free, total = mx.context.gpu_memory_info(i)
            lines.append(Line("OK", f"gpu:{i}: {total / 2**30:.1f} GB, {free / 2**30:.1f} GB free"))
    return lines


def convolution_lines(checks=None) -> list[Line]:
    """A small convolution, forward and backward, on each GPU MXNet sees in float32 and float16
    (the dtypes recipes train in), checked against numpy (devices.convolution_check); on the CPU
    wheel, on the CPU in float32. `checks`: (context, dtype) pairs instead."""
    import mxnet as mx

    from gluon_tricks.devices import convolution_check

    if checks is None:
        gpus = mx.context.num_gpus() if mx.runtime.Features().is_enabled("CUDA") else 0
        checks = [(mx.gpu(i), d) for i in range(gpus) for d in ("float32", "float16")] or [(mx.cpu(), "float32")]
    lines = []
    for ctx, dtype in checks:
        problem = convolution_check(ctx, dtype)
        lines.append(Line("OK", f"{ctx} {dtype}: a convolution's forward and backward agree with numpy") if problem is None
                     else Line("FAIL", problem, ("fix the library and driver FAIL lines above first; with none, check that device "
                                                  "(`nvidia-smi -q -d ECC`) or leave it out with CUDA_VISIBLE_DEVICES")))
    return lines


nvidia_driver = cuda_libs.nvidia_driver


def driver_lines(driver: str, use_fusion: str | None) -> list[Line]:
    """The driver against CUDA 11's floor and against the floor of MXNet's fused kernels
    (cuda_libs.FUSION_DRIVER); `use_fusion` is MXNET_USE_FUSION as this process sees it."""
    fix = "install NVIDIA driver >= 520.61.05 (any current one)"
    if cuda_libs.driver_version(driver) < cuda_libs.MIN_DRIVER:
        return [Line("FAIL", f"NVIDIA driver {driver} is older than CUDA 11 needs (450.80.02)", fix)]
    if cuda_libs.driver_version(driver) >= cuda_libs.FUSION_DRIVER:
        return [Line("OK", f"NVIDIA driver {driver} (>= 520.61.05)")]
    if use_fusion == "0":
        return [Line("WARN", f"NVIDIA driver {driver} < 520.61.05 cannot load MXNet's fused kernels "
                             "(NVRTC 11.8 PTX): MXNET_USE_FUSION=0, gluon-tricks turned fusion off (runs a little "
                             "slower)", fix)]
    return [Line("FAIL", f"NVIDIA driver {driver} < 520.61.05 cannot load MXNet's fused kernels (NVRTC 11.8 PTX) "
                         f"and MXNET_USE_FUSION={use_fusion}: the first hybridized forward fails",
                 fix + ", or unset MXNET_USE_FUSION (gluon-tricks then sets it to 0)")]


def colliding_libraries(ld_library_path: str) -> dict[str, list[str]]:
    """LD_LIBRARY_PATH directory -> its files named like a library preload() loads from pip."""
    import fnmatch

    out = {}
    for folder in filter(None, ld_library_path.split(":")):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        hits = [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in COLLIDING_LIBS)]
        if hits:
            out[folder] = hits
    return out


def ld_library_path_lines(env=None, pip_cuda: bool | None = None) -> list[Line]:
    """WARN for each LD_LIBRARY_PATH directory that holds another cuDNN 8, cuBLAS 11, NCCL 2 or
    NVRTC 11: dlopen looks there before the pip folders, so a library opened by name at run
    time (cuDNN's split libraries, NVRTC's builtins) can come from that copy unless preload()
    loaded the pip one first (it does, when gluon_tricks is imported before mxnet)."""
    env = os.environ if env is None else env
    if pip_cuda is None:
        pip_cuda = cuda_libs.cuda_wheel_installed() and env.get("GLUON_TRICKS_SYSTEM_CUDA") != "1"
    if not pip_cuda:
        return [Line("OK", "CUDA libraries are not loaded from pip here: nothing to collide with")]
    collisions = colliding_libraries(env.get("LD_LIBRARY_PATH", ""))
    if not collisions:
        return [Line("OK", "no other cuDNN 8, cuBLAS 11, NCCL 2 or NVRTC 11 on LD_LIBRARY_PATH")]
    return [Line("WARN", f"LD_LIBRARY_PATH directory {folder} holds {', '.join(names)}: other copies of the CUDA "
                         "libraries gluon-tricks loads from pip, mixed in if anything imports mxnet before gluon_tricks",
                 f"drop {folder} from LD_LIBRARY_PATH, or GLUON_TRICKS_SYSTEM_CUDA=1 to use that toolkit throughout")
            for folder, names in collisions.items()]


def omp_lines(env=None, cores: int | None = None) -> list[Line]:
    env = os.environ if env is None else env
    cores = cores or machine_cores()
    value = env.get("OMP_NUM_THREADS")
    if not value:
        return [Line("WARN", f"OMP_NUM_THREADS unset: MXNet uses half of the {cores} cores outside gluon-tricks",
                     f"export OMP_NUM_THREADS={cores} (gluon-tricks commands set it themselves)")]
    if not value.isdigit() or int(value) < 1:
        return [Line("FAIL", f"OMP_NUM_THREADS={value!r} is not a positive integer", f"export OMP_NUM_THREADS={cores}")]
    if int(value) > cores:
        return [Line("WARN", f"OMP_NUM_THREADS={value} exceeds the {cores} cores (threads fight for them)",
                     f"export OMP_NUM_THREADS={cores}")]
    return [Line("OK", f"OMP_NUM_THREADS={value} of {cores} cores")]


def table_lines(root: Path | None = None) -> list[Line]:
    from gluon_tricks.errors import UserError
    from gluon_tricks.tables import load_table, row_recipes, table_names

    root = root or recipes_root()
    try:
        import gluon_tricks.models  # noqa: F401  teacher_missing needs MXNet and GluonCV
    except Exception as e:  # a broken install: say so once, not once per table (probes 3.2, 3.4, 3.5)
        return [Line("FAIL", f"tables not checked: importing MXNet/GluonCV failed ({first_line(e, 160)})",
                     "fix the package and MXNet lines above, then run doctor again")]
    lines = []
    for name in table_names(root):
        try:
            table = load_table(root, name)
            if table.out_of_scope:
                continue
            missing, fixes = {}, []
            for row in table.rows:
                for recipe in row_recipes(row, 1, 1.0):
                    for files, fix in (data_missing(recipe.data), teacher_missing(recipe.distill)):
                        for f in files:
                            missing.setdefault(f, fix)
        except UserError as e:
            lines.append(Line("FAIL", f"table {name}: {e}"))
            continue
        except Exception as e:  # a table file of the wrong shape (probe 1.15) must not end doctor
            lines.append(Line("FAIL", f"table {name}: cannot check it ({e.__class__.__name__}: {first_line(e, 160)})"))
            continue
        if not missing:
            lines.append(Line("OK", f"table {name}: data and teachers present"))
            continue
        fixes = sorted({fix for fix in missing.values() if fix})
        lines.append(Line("WARN", f"table {name}: missing {', '.join(missing)}", "; ".join(fixes)))
    return lines


def layout_lines(name: str, overrides=(), root: Path | None = None) -> list[Line]:
    """Per row of table `name`: the devices and images per pass (BatchNorm group) a run gets on
    this machine with these overrides (--ctx, --set), against its paper's; WARN where they
    differ (another training, another result), with the setting that restores the paper's."""
    from gluon_tricks.devices import planned_layout
    from gluon_tricks.errors import UserError
    from gluon_tricks.identity import source_bn_group
    from gluon_tricks.tables import load_table, row_recipes

    table = load_table(root or recipes_root(), name)
    lines = []
    for row in table.rows:
        recipes = row_recipes(row, 1, 1.0, overrides)
        if not recipes:
            continue
        recipe = recipes[0]
        paper = source_bn_group(recipe)
        paper_text = f"paper {recipe.source.devices} x {paper:g}"
        try:
            layout = planned_layout(recipe)
        except UserError as e:
            lines.append(Line("FAIL", f"{name} {row.label!r}: {e}"))
            continue
        text = (f"{name} {row.label!r}: {layout.devices} device(s) x {layout.shares_text} images"
                + (f" in {layout.accumulation} passes of {layout.bn_group}" if layout.accumulation > 1 else "")
                + f" ({paper_text})")
        if layout.bn_group == paper:
            lines.append(Line("OK", text))
            continue
        if paper < layout.bn_group and paper == int(paper) and layout.device_batch % int(paper) == 0:
            fix = f"--set system.device_batch={int(paper):d} keeps the paper's BatchNorm group"
        else:
            n = recipe.source.devices
            fix = f"--ctx {'gpu:0' if n == 1 else f'gpu:0-{n - 1}'} (or auto) keeps the paper's BatchNorm group"
        lines.append(Line("WARN", text + f": BN group {layout.bn_group}, another result than the paper's", fix))
    return lines


def disk_lines(paths=None, warn_gb: float = 20.0, fail_gb: float = 1.0) -> list[Line]:
    """Free space where runs and MXNET_HOME live, and whether a file can be created there: a
    read-only mount with 73 GB free was 'OK' (probe 3.7)."""
    paths = paths or {"runs": runs_root(), "MXNET_HOME": mxnet_home()}
    lines = []
    for label, path in paths.items():
        probe = Path(path).resolve()
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free / 2**30
        status = "FAIL" if free < fail_gb else "WARN" if free < warn_gb else "OK"
        fix = "" if status == "OK" else ("free space or point it elsewhere (ImageNet RecordIO takes ~60-150 GB, "
                                          "each checkpoint one network plus optimizer state)")
        lines.append(Line(status, f"disk at {label} ({path}): {free:.0f} GB free", fix))
        why = not_writable(probe)
        if why:
            lines.append(Line("FAIL", f"{label} ({path}): cannot create files in {probe} ({why})",
                              f"make it writable or point {'--runs / GLUON_TRICKS_RUNS' if label == 'runs' else label} "
                              "to a writable directory"))
    return lines


def not_writable(directory: Path) -> str | None:
    """None if a file can be created (and deleted) in `directory`, else the reason: the
    permission bits do not tell (a read-only mount, root, ACLs), so this tries it."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".gluon-tricks-doctor-"):
            return None
    except OSError as e:
        return e.strerror or e.__class__.__name__


def run(out=print) -> int:
    sections = [
        ("Python and packages", lambda: pin_lines(*requirement_pins())),
        ("Libraries libmxnet.so needs", library_lines),
        ("Other CUDA libraries on LD_LIBRARY_PATH", ld_library_path_lines),
        ("MXNet and GPUs", mxnet_lines),
        ("A convolution on each device", convolution_lines),
        ("Threads", omp_lines),
        ("Tables: data and teacher files", table_lines),
        ("Disk", disk_lines),
    ]
    failed = False
    for title, check in sections:
        out(f"== {title}")
        try:
            lines = check()
        except Exception as e:  # doctor is for broken installs: a check that breaks is a FAIL line, never a traceback
            lines = [Line("FAIL", f"this check failed: {e.__class__.__name__}: {first_line(e, 160)}",
                          "fix the FAIL lines above first; if none, report it with this line")]
        for line in lines:
            out(str(line))
            failed |= line.status == "FAIL"
    return 1 if failed else 0
