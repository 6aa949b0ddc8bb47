"""model.zero_gamma applies wherever a block adds its branch to a shortcut, and says so
once where a network has no such block."""
import mxnet as mx
import numpy as np

from gluon_tricks.models import build_model
from gluon_tricks.recipe import recipe_from_dict


def net_for(name, zero_gamma=True):
    return build_model(recipe_from_dict({"model": {"name": name, "zero_gamma": zero_gamma}}), 10, [mx.cpu()])


def test_mobilenet_v2_shortcut_blocks_start_as_their_shortcut(capsys):
    net = net_for("mobilenetv2_0.25")
    x = mx.nd.random.normal(shape=(2, 3, 32, 32))
    net(x)
    blocks = [b for b in net.features._children.values() if getattr(b, "use_shortcut", False)]
    assert blocks
    seen = []
    for b in blocks:  # x + branch(x) with the branch's last BN gamma = 0 (and beta = 0): the block is x
        inp = mx.nd.random.normal(shape=(1, b.out[0]._in_channels or b.out[-2]._channels, 8, 8))
        with mx.autograd.predict_mode():
            out = b(inp)
        seen.append(float(mx.nd.abs(out - inp).max().asscalar()))
    assert max(seen) == 0.0, seen
    assert "zero_gamma" not in capsys.readouterr().err


def test_a_network_without_residual_blocks_says_so_once(capsys):
    net_for("mobilenet0.25")
    err = capsys.readouterr().err
    assert err.count("zero_gamma") == 1 and "mobilenet0.25" in err
    net_for("mobilenet0.25", zero_gamma=False)
    assert "zero_gamma" not in capsys.readouterr().err
