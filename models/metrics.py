"""Scores of predictions against labels, in numpy (None where a score is undefined)."""

from __future__ import annotations

import math

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Return the area under the ROC curve of `scores` for binary `labels` (1 positive).

    Rank-based (Mann-Whitney U): the chance that a random positive scores above a random
    negative, ties counting one half. None when only one class is present.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError("labels and scores must have one length")
    positives = int(np.count_nonzero(y == 1))
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based, ties averaged
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Return the share of `labels` matched by ``probabilities > 0.5`` (None when empty)."""
    y = np.asarray(labels).ravel()
    if len(y) == 0:
        return None
    return float(np.mean((np.asarray(probabilities).ravel() > 0.5) == (y == 1)))


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Return Pearson's correlation of `a` and `b` (None when either is constant)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0:
        return None
    return float(dx @ dy) / denominator


def mse(a: np.ndarray, b: np.ndarray) -> float | None:
    """Return the mean squared difference of `a` and `b` (None when empty)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    if len(x) == 0:
        return None
    return float(np.mean((x - np.asarray(b, dtype=np.float64).ravel()) ** 2))
