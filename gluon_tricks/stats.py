"""How far apart two rows of seeds are: the difference of their means with a confidence interval
from Welch's t (unequal variances), so a table shows which of its steps exceed seed noise.

Welch (1947): for samples a (n_a values, variance s_a^2) and b, the difference of the means
has standard error se = sqrt(s_a^2/n_a + s_b^2/n_b) and, approximately, t-distributed error
with the Welch-Satterthwaite degrees of freedom
df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)); the interval is
mean_b - mean_a +- t_{(1+level)/2, df} * se.

Paired (`paired_difference`): where both rows ran the same seeds and a seed fixes what the rows
share (here the initial weights, the image order and the augmentation: data/streams.py makes
every random draw a function of seed, epoch and step), the per-seed differences d_i = b_i - a_i
remove that shared part of the seed noise; the interval is mean(d) +- t_{(1+level)/2, n-1} *
sd(d) / sqrt(n) (Student's paired t).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    """mean(b) - mean(a), with its interval [low, high] at `level` and Welch's df (None when
    both rows have no spread: then the interval is the difference itself)."""
    diff: float
    low: float
    high: float
    df: float | None
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly on one side of 0: the step is larger than its seed noise."""
        return self.low > 0 or self.high < 0


def welch_difference(a: list[float], b: list[float], level: float = 0.95) -> Difference | None:
    """The difference of b's mean from a's with its Welch interval; None when either has fewer
    than 2 values (no spread to estimate)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t  # deferred: only tables that show differences need it

    diff = statistics.fmean(b) - statistics.fmean(a)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, diff, diff, None, level)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(t.ppf((1 + level) / 2, df)) * se
    return Difference(diff, diff - half, diff + half, df, level)


def pooled_std(*groups: list[float]) -> float:
    """The seed standard deviation pooled over groups: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return float("nan")
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1) / dof)


def paired_difference(a: dict, b: dict, level: float = 0.95) -> Difference | None:
    """The mean over the seeds in both `a` and `b` (seed -> value) of b[seed] - a[seed], with its
    paired t interval (df = n - 1); None with fewer than 2 shared seeds."""
    diffs = [b[s] - a[s] for s in sorted(set(a) & set(b))]
    if len(diffs) < 2:
        return None
    from scipy.stats import t

    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    if se == 0:
        return Difference(mean, mean, mean, None, level)
    half = float(t.ppf((1 + level) / 2, len(diffs) - 1)) * se
    return Difference(mean, mean - half, mean + half, len(diffs) - 1, level)
