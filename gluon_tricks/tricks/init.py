"""Initialization tricks of Bag of Tricks (Sec. 3.1): zero-gamma and no bias decay."""
from __future__ import annotations

import re

from mxnet import init as mx_init
from mxnet.gluon import nn

# Parameters that are not conv/dense weights: BN gamma/beta and every bias.
NO_DECAY_PATTERN = re.compile(r".*(_gamma|_beta|_bias)$")


def residual_blocks(net) -> list:
    """Every residual block: in GluonCV's zoo (CIFAR ResNet/ResNeXt, ResNet v1, v1b-d)
    these are exactly the blocks with a `downsample` attribute (None when the
    shortcut is the identity)."""
    return [b for b in descendants(net) if hasattr(b, "downsample")]


def last_batchnorm(block):
    """The last BatchNorm of a block's residual branch (outside its downsample shortcut):
    the one whose output is added to the shortcut."""
    shortcut = block.downsample
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


def no_bias_decay(net) -> list[str]:
    """wd_mult = 0 for biases and BN gamma/beta: weight decay only on conv and dense
    weights. Returns the names of the parameters it exempted."""
    names = []
    for name, p in net.collect_params().items():
        if NO_DECAY_PATTERN.match(name):
            p.wd_mult = 0.0
            names.append(name)
    return names
