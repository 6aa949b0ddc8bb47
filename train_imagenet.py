#!/usr/bin/env python3
"""Train an ImageNet-style recipe (RecordIO or image folders):
`python train_imagenet.py bot/table6/cosine --ctx gpu:0-7 --set data.root=/data/imagenet`.

The same as `gluon-tricks train RECIPE ...`; see docs/imagenet.md."""
import sys

from gluon_tricks.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
