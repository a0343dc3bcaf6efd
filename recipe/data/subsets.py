"""A part of a training split that sees every class: ``class_balanced_subset`` and ``Subset``.

A split's first N examples are a poor subset where the split is sorted by class (``mnist5k``'s
are: its first 2,000 training examples are the digits 0–4 alone). ``class_balanced_subset``
draws N examples per class instead, each class's count in proportion to its share of the split
(largest remainders), the examples of a class by a permutation of a fixed seed: the same
subset for every run, whatever the run's seed, and one whose class balance is the split's
within one example per class. ``Subset`` reads it as a source of its own.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from recipe import checks
from recipe.data.datasets import read_examples

# The subset's draw: a seed of its own, so that the subset is the same for every run's seed.
SUBSET_SEED = 0


def class_balanced_subset(labels: np.ndarray, count: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """The positions of ``count`` examples of a split, drawn per class, in ascending order.

    Class ``c`` with ``n_c`` of the split's ``n`` examples gets ``count · n_c / n`` of them,
    rounded by largest remainders (ties to the smaller class label) so that they sum to
    ``count``; which of its examples, a permutation seeded by ``(seed, c)`` decides.

    >>> labels = np.repeat(np.arange(3), 4)  # sorted by class: 0 0 0 0 1 1 1 1 2 2 2 2
    >>> subset = class_balanced_subset(labels, 6)
    >>> np.bincount(labels[subset]).tolist(), bool(np.all(np.diff(subset) > 0))
    ([2, 2, 2], True)

    Args:
        labels: The label of each example of the split, in its order.
        count: How many to draw, in [1, len(labels)].
        seed: The draw's seed.

    Raises:
        ValueError: If ``count`` is out of range.
    """
    checks.check_positive_int("count", count)
    if count > len(labels):
        raise ValueError(f"count must be <= the {len(labels)} examples, got {count}")
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = count * sizes / len(labels)
    taken = np.floor(quotas).astype(np.int64)
    remainders = quotas - taken
    # Largest remainders first; a stable sort keeps ties in class order.
    for position in np.argsort(-remainders, kind="stable")[: count - int(taken.sum())]:
        taken[position] += 1
    chosen = [
        np.random.default_rng([seed, int(label)]).permutation(np.flatnonzero(labels == label))[
            :number
        ]
        for label, number in zip(classes, taken, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


class Subset(Sequence[dict[str, Any]]):
    """The examples of ``source`` at ``positions``, as a source: element ``i`` is
    ``source[positions[i]]``.

    >>> Subset([{"label": 5}, {"label": 6}, {"label": 7}], np.array([0, 2]))[1]
    {'label': 7}
    """

    def __init__(self, source: Sequence[dict[str, Any]], positions: np.ndarray) -> None:
        self._source, self._positions = source, np.asarray(positions)

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[int(self._positions[index])]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return read_examples(self._source, self._positions[np.asarray(indices, np.int64)])
