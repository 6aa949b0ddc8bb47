"""Label smoothing: the soft target distribution that replaces the one-hot label.

Two published forms (both with eps = 0.1 by default):
- "paper" (Bag of Tricks eq. 4): q_y = 1 - eps, q_i = eps / (K - 1) for i != y;
- "gluoncv" (the code that trained GluonCV's released models and that the
  follow-up paper ran): q_y = 1 - eps + eps/K, q_i = eps/K.
Both rows of every distribution sum to 1.
"""
from __future__ import annotations

import numpy as np


def smooth_targets(labels: np.ndarray, classes: int, eps: float = 0.0, form: str = "gluoncv") -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if form == "paper":
        on, off = 1.0 - eps, eps / (classes - 1)
    elif form == "gluoncv":
        on, off = 1.0 - eps + eps / classes, eps / classes
    else:
        raise ValueError(f"unknown label smoothing form {form!r}")
    out = np.full((len(labels), classes), off, dtype=np.float32)
    out[np.arange(len(labels)), labels] = on
    return out
