"""Networks from the GluonCV model zoo, by name, and teachers for distillation.

ResNet tweaks map onto zoo names (GLUONCV-FACTS): resnet50_v1 (the paper's
ResNet-50), resnet50_v1b (ResNet-B), resnet50_v1c (ResNet-C), resnet50_v1d
(ResNet-D); resnet152_v1d is Bag of Tricks' teacher. Pretrained weights are
downloaded by GluonCV into $MXNET_HOME/models and checked by SHA1; a zoo source may
pin one published version as `name:tag` (GluonCV's short hash). Every pretrained
network is loaded onto the run's contexts.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import init as mx_init

from gluon_tricks.errors import UserError, first_line, shown
from gluon_tricks.paths import mxnet_home
from gluon_tricks.recipe import parse_teacher
from gluon_tricks.tricks.zero_gamma import descendants, zero_gamma


def zoo_names() -> list[str]:
    from gluoncv.model_zoo import get_model_list

    return sorted(get_model_list())


def _check_zoo_name(name: str) -> None:
    if name not in zoo_names():
        close = [n for n in zoo_names() if name.split("_")[0] in n][:8]
        raise UserError(f"unknown model {name!r}; GluonCV zoo names like it: {', '.join(close) or 'none'}"
                        " (gluoncv.model_zoo.get_model_list() has them all)")


def _get(name: str, **kwargs):
    from gluoncv.model_zoo import get_model

    _check_zoo_name(name)
    try:
        return get_model(name, **kwargs)
    except TypeError as e:
        raise UserError(f"model {name!r} does not accept {sorted(kwargs)} ({e})") from None


def zoo_weights_file(name: str, tag: str | None = None) -> Path:
    """Where GluonCV's model store keeps (and looks for) a zoo network's weights:
    $MXNET_HOME/models/<name>-<short sha1>.params, the hash being the tag or the zoo's current one."""
    from gluoncv.model_zoo import model_store

    if tag is None:
        try:
            tag = model_store.short_hash(name)
        except ValueError:
            raise UserError(f"GluonCV publishes no pretrained weights for {name!r}; "
                            "use a .params file (distill.teacher_model names its architecture)") from None
    return mxnet_home() / "models" / f"{name}-{tag}.params"


# Copies of GluonCV's published weights that a data directory ($GLUON_TRICKS_DATA/pretrained/)
# may hold for an offline machine, by zoo weights: (file name, SHA-256). The file is a third
# party's `get_model(name, pretrained=True).save_parameters(...)`: the same weights re-saved with
# structural names, so its bytes (and SHA-1) are not the zoo file's (its README: provenance,
# and 93.85% on the cifar10-mini test images with CIFAR's mean/std).
PRETRAINED_COPIES = {
    "cifar_resnet20_v1:121e1579": ("cifar_resnet20_v1-cifar10.params",
                                   "65262d4d86129673da1d9321d97b8b6be534fead9fdfc1d864e498f30c33bba9"),
}


def pretrained_copy(source: str) -> Path | None:
    """The data directory's copy of a zoo name's (or name:tag's) weights, when it holds one
    whose SHA-256 is the one listed in PRETRAINED_COPIES; else None."""
    from gluon_tricks.paths import data_dir
    from gluon_tricks.identity import teacher_identity

    root = data_dir()
    known = PRETRAINED_COPIES.get(teacher_identity({"teacher": source, "teacher_recipe": ""})) if root else None
    if known is None:
        return None
    path = root / "pretrained" / known[0]
    if not path.is_file():
        return None
    from gluon_tricks.atomic import sha256_file

    if sha256_file(path) != known[1]:
        raise UserError(f"{shown(path)}: SHA-256 is not that of the listed copy of {source}'s weights; the copy is "
                        "damaged: copy it again, or unset GLUON_TRICKS_DATA to download GluonCV's own file")
    return path


def _copy_hint(name: str, tag: str | None) -> str:
    """Where a data directory can supply these weights offline, if PRETRAINED_COPIES lists a copy."""
    from gluon_tricks.identity import teacher_identity

    known = PRETRAINED_COPIES.get(teacher_identity({"teacher": f"{name}:{tag}" if tag else name, "teacher_recipe": ""}))
    return f", or set GLUON_TRICKS_DATA to a data directory holding pretrained/{known[0]}" if known else ""


def _pretrained(source: str, ctx, **kwargs):
    """A zoo network with its published weights, loaded straight onto every context of the
    run (GluonCV's default is cpu(0), which a GPU run cannot use); a one-line error naming
    the file GluonCV expected when the weights cannot be had (offline machine, unknown tag)."""
    parsed = parse_teacher(source)
    name, tag = parsed.zoo_name, parsed.tag
    _check_zoo_name(name)
    expected = zoo_weights_file(name, tag)
    try:
        return _get(name, pretrained=tag or True, ctx=ctx, **kwargs)
    except UserError:
        raise
    except Exception as e:  # network failures surface as several unrelated exception types
        why = first_line(e, 160)
        fetch = f"get_model('{name}', pretrained={repr(tag) if tag else True})"
        state = "is missing" if not expected.exists() else "has another SHA1 (partial download or other version)"
        raise UserError(
            f"pretrained weights of {source!r} could not be loaded ({e.__class__.__name__}: {why}); "
            f"{expected} {state} (GluonCV's cache, $MXNET_HOME/models): on a machine with internet run "
            f"python -c \"from gluoncv.model_zoo import get_model; {fetch}\" and copy that file here, "
            "or use a local .params file" + _copy_hint(name, tag)
        ) from None


def supports_last_gamma(name: str) -> bool:
    return name.startswith("resnet") and name.rsplit("_", 1)[-1] in {"v1b", "v1c", "v1d", "v1e", "v1s"}


def output_layer_name(net) -> str:
    for attr in ("output", "fc", "classifier"):
        if hasattr(net, attr):
            return attr
    raise UserError(f"{type(net).__name__}: no output layer named output/fc/classifier to replace")


def output_classes(net) -> int | None:
    """Units of the network's output layer (GluonCV nets keep no `classes` attribute)."""
    layer = getattr(net, output_layer_name(net))
    dense = [b for b in ([layer] + list(descendants(layer))) if isinstance(b, mx.gluon.nn.Dense)]
    return dense[-1]._units if dense else None


def build_model(recipe, classes: int, ctx):
    """The recipe's network, initialized (Xavier by default, as in both papers) and cast."""
    m = recipe.model
    kwargs = {}
    # The v1b family (B/C/D tweaks) zero-inits its last BN itself; other nets get ours.
    own_zero_gamma = m.zero_gamma and not supports_last_gamma(m.name)
    if m.zero_gamma and not own_zero_gamma:
        kwargs["last_gamma"] = True
    if m.pretrained:
        net = _pretrained(m.name, ctx, **kwargs)
        if output_classes(net) != classes:
            # Fine-tuning (the Food-101 tutorial): a fresh output layer for our classes.
            attr = output_layer_name(net)
            with net.name_scope():
                setattr(net, attr, mx.gluon.nn.Dense(classes))
            getattr(net, attr).initialize(mx_init.Xavier(), ctx=ctx)
    else:
        net = _get(m.name, classes=classes, **kwargs)
        if own_zero_gamma and not zero_gamma(net):  # the definition needs a residual shortcut
            print(f"note: model.zero_gamma does nothing for {m.name}: it has no residual blocks", file=sys.stderr)
        initializer = mx_init.Xavier(magnitude=2) if m.init == "msra" else mx_init.Xavier()
        net.initialize(initializer, ctx=ctx)
    if m.dtype != "float32":
        net.cast(m.dtype)
    return net


def check_params_file(path: Path, what: str = "teacher") -> None:
    """A one-line error naming `path` and what is wrong with it unless it is a complete MXNet
    .params file: not MXNet's format at all, or cut short (MXNet itself only says "Invalid
    NDArray file format", which a later load would blame on the architecture)."""
    size = path.stat().st_size
    with open(path, "rb") as f:  # every nd.save file starts with MXNet's list magic 0x112
        magic = f.read(8)
    if magic != (0x112).to_bytes(8, "little"):
        raise UserError(f"{what} {shown(path)} is not an MXNet .params file ({size:,} bytes, it does not start "
                        "with MXNet's NDArray-list header); give the .params file itself, or export one with "
                        "gluon-tricks export")
    try:
        mx.nd.load(str(path))
    except mx.MXNetError as e:
        raise UserError(f"{what} {shown(path)} is not a complete MXNet .params file ({size:,} bytes; MXNet: "
                        f"{first_line(e)}): it is truncated or damaged; copy or export it again") from None


def load_teacher(spec, classes: int, ctx, dtype: str = "float32"):
    """A teacher by zoo name (its pretrained weights) or from a .params file of
    `spec.teacher_model`, in `dtype`. Checks that it predicts the same number of classes."""
    if dtype == "float16" and any(c.device_type == "cpu" for c in ctx):
        raise UserError("distill.teacher_dtype = \"float16\" needs GPU contexts: the MXNet CPU build has no "
                        "float16 matrix multiply; leave it unset on the CPU")
    src = spec.teacher
    parsed = parse_teacher(src)
    path = parsed.path
    if path is not None:
        if not path.is_file():
            how = (f"train {spec.teacher_recipe} and export its run there (gluon-tricks export RUN_DIR {src})"
                   if spec.teacher_recipe else "give an existing .params file, or a zoo name, in distill.teacher")
            raise UserError(f"teacher file {shown(path)} not found; {how}")
        if not spec.teacher_model:
            raise UserError(f"teacher {shown(path)} is a .params file: set distill.teacher_model to its "
                            "architecture, e.g. cifar_resnext29_16x64d")
        check_params_file(path)
        net = _get(spec.teacher_model, classes=classes)
        try:
            net.load_parameters(str(path), ctx=ctx)
        except (AssertionError, mx.MXNetError, ValueError, KeyError, RuntimeError) as e:
            # Gluon names the parameter: missing in the file (another architecture) or of
            # another shape (another class count).
            raise UserError(f"teacher {shown(path)} does not match {spec.teacher_model} with {classes} classes "
                            f"({first_line(e)}); check distill.teacher_model and the dataset's classes") from None
    else:
        copy = pretrained_copy(src)
        if copy is not None:  # the data directory's copy: no download, the same weights
            net = _get(parsed.zoo_name)
            check_params_file(copy)
            net.load_parameters(str(copy), ctx=ctx)
        else:
            net = _pretrained(src, ctx)
        out = output_classes(net)
        if out is not None and out != classes:
            raise UserError(f"teacher {src!r} predicts {out} classes but the dataset has {classes}; "
                            "train a teacher on this dataset (teacher/) and pass its .params file")
    # Never trained: no gradient buffers (for ResNeXt-29 16x64d in fp32, 270 MB per GPU).
    net.collect_params().setattr("grad_req", "null")
    if dtype != "float32":
        net.cast(dtype)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def count_flops(net, size: int = 224, ctx=None) -> int:
    """Multiply-adds of conv and dense layers for one image of size x size, counted from
    the shapes seen in a forward pass (Bag of Tricks Table 5 counts FLOPs this way)."""
    from mxnet.gluon import nn

    total = [0]

    def conv_hook(block, inputs, output):
        w = block.weight.shape  # (out, in/groups, kh, kw)
        total[0] += int(np.prod(output.shape[2:])) * w[0] * w[1] * w[2] * w[3]

    def dense_hook(block, inputs, output):
        total[0] += int(np.prod(block.weight.shape))

    handles = [b.register_forward_hook(conv_hook if isinstance(b, nn.Conv2D) else dense_hook)
               for b in descendants(net) if isinstance(b, (nn.Conv2D, nn.Dense))]
    net(mx.nd.zeros((1, 3, size, size), ctx=ctx or mx.cpu()))
    for h in handles:
        h.detach()
    return total[0]


def count_params(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values())
