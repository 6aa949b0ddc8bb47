"""Any batch on any number of devices; the BatchNorm group as part of a run's identity.

CPU contexts stand in for GPUs: `cpu:0-7` is eight devices to MXNet's splitting and
kvstore code, which is where a p3.16xlarge's layout bugs live.
"""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_tricks.devices import HostReads
from gluon_tricks.engine import evaluate, train
from gluon_tricks.recipe import content_hash, recipe_from_dict


class ArrayStream:
    """A test stream over fixed arrays, in batches of `batch` (the last one shorter)."""

    def __init__(self, x, y, batch):
        self.x, self.y, self.batch = x, y, batch

    def batches(self):
        for i in range(0, len(self.y), self.batch):
            yield self.x[i:i + self.batch], self.y[i:i + self.batch]

    def __len__(self):
        return len(self.y)


def tiny_net():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, in_channels=3), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(21, in_units=4))
    return net


@pytest.mark.parametrize("devices", [4, 8])
def test_a_last_test_batch_smaller_than_the_device_count_scores_as_on_one_device(devices):
    # Food-101's 21-class test set: 5,250 images at batch 32 leave a last batch of 2. Here 66
    # images at batch 32: batches of 32, 32 and 2; 32 over 8 devices is even, 32 over 4 too,
    # and 2 is fewer images than devices (MXNet's split_and_load made empty slices of it).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(66, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 21, 66)
    net = tiny_net()
    net.initialize(mx.init.Xavier(), ctx=[mx.cpu(i) for i in range(devices)])
    net.hybridize(static_alloc=True)
    # the oracle: every image's top class on one device, counted in numpy
    scores = net(mx.nd.array(x, ctx=mx.cpu(0))).asnumpy()
    oracle1 = 100.0 * np.mean(scores.argmax(axis=1) == y)
    oracle5 = 100.0 * np.mean([label in np.argsort(-s)[:5] for s, label in zip(scores, y)])
    assert 0 < oracle1 < 100  # a test that can tell right from wrong

    for batch in (32, 10):  # 10 does not divide over 4 or 8 devices either: 10, 10, ..., 6
        top1, top5 = evaluate(net, ArrayStream(x, y, batch), [mx.cpu(i) for i in range(devices)], "float32",
                              HostReads())
        one1, one5 = evaluate(net, ArrayStream(x, y, batch), [mx.cpu(0)], "float32", HostReads())
        assert top1 == pytest.approx(one1) == pytest.approx(oracle1)
        assert top5 == pytest.approx(one5) == pytest.approx(oracle5)
