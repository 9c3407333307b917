"""The original pipeline's bisection ("last entry at or before the query"), with its exact step sequence.

On a sorted list it returns the index of the last entry ``<= item`` (the last of a run of equal entries), or 0
when ``item`` comes before every entry. On an unsorted list (the ``fp`` split, see :mod:`.directions`) it still
takes its fixed bisection steps, which is why a plain :func:`bisect.bisect_right` cannot replace it.
Mirrors ``utils.binary_index`` (and its copies) of the original.
"""
from __future__ import annotations

from typing import Sequence


def binary_index(values: Sequence[float], item: float) -> int:
    if len(values) == 0:
        return 0
    lo, hi = 0, len(values) - 1
    if item < values[lo]:
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        here = values[mid]
        if here < item:
            if values[mid + 1] > item:
                return mid
            lo = mid + 1
            if lo == hi and values[hi] > item:
                return mid
        elif here > item:
            hi = mid - 1
        else:
            # equal: walk to the last of the run
            if mid + 1 == len(values):
                return mid
            while values[mid + 1] == item:
                mid += 1
                if mid + 1 == len(values):
                    return mid
            return mid
    return hi
