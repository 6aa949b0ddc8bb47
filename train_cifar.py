#!/usr/bin/env python3
"""Train a CIFAR recipe: `python train_cifar.py RECIPE [--set key=value ...]`.

The same as `gluon-tricks train RECIPE ...`; see README.md."""
import sys

from gluon_tricks.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
