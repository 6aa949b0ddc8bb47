"""Zero-gamma (Bag of Tricks Sec. 3.1): every residual block starts as its shortcut.

Also the block walkers the rest of the project uses (`descendants`, `residual_blocks`)."""
from __future__ import annotations

from mxnet import init as mx_init
from mxnet.gluon import nn

def residual_blocks(net) -> list:
    """Every block that adds its branch to a shortcut: in GluonCV's zoo (CIFAR
    ResNet/ResNeXt, ResNet v1, v1b-d) the blocks with a `downsample` attribute (None when
    the shortcut is the identity), and MobileNet-V2's LinearBottlenecks whose
    `use_shortcut` is set (stride 1, same width). Inception and MobileNet v1 have none."""
    return [b for b in descendants(net) if hasattr(b, "downsample") or getattr(b, "use_shortcut", False)]


def last_batchnorm(block):
    """The last BatchNorm of a block's residual branch (outside its downsample shortcut):
    the one whose output is added to the shortcut."""
    shortcut = getattr(block, "downsample", None)
    branch = [b for b in descendants(block, skip=shortcut) if isinstance(b, nn.BatchNorm)]
    return branch[-1] if branch else None


def descendants(block, skip=None):
    """Every block below `block` (depth first), leaving out the subtree `skip`."""
    for child in block._children.values():
        if child is skip:
            continue
        yield child
        yield from descendants(child, skip)


def zero_gamma(net) -> list[str]:
    """Initialize gamma = 0 in the last BN of every residual block, so each block starts
    as its shortcut. Call before `net.initialize`; returns the parameter names set."""
    names = []
    for block in residual_blocks(net):
        bn = last_batchnorm(block)
        if bn is not None:
            bn.gamma.init = mx_init.Zero()
            names.append(bn.gamma.name)
    return names
