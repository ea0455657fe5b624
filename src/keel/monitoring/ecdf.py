"""A sorted window against a sorted reference in one merge pass: the KS statistic's two
sides and the Wasserstein-1 distance, the same quantities :mod:`keel.monitoring.drift`
computes with NumPy from the window's ranks in the reference.

Written as a loop compiled with numba (when installed: the ``ml`` extra) because both arrays
are sorted: one pass that walks them together costs O(n + m) with no gather, where the NumPy
path pays a binary search per window value and a dozen full-length temporaries (about 45 of
a column's 60 ms at a million rows). Without numba, :func:`kernel` answers ``None`` and the
NumPy path runs.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

__all__ = ["kernel"]


def _ks_wasserstein_py(
    ref: np.ndarray, prefix: np.ndarray, centre: float, cur: np.ndarray
) -> tuple[float, float, float]:
    """``(above, below, area)`` for sorted ``ref`` (n) and sorted ``cur`` (m): KS's
    max(F_ref - F_cur) just below a window value and max(F_cur - F_ref) at one, and the area
    between the two CDFs. Each stretch between window values is integrated as in
    ``drift._wasserstein``: F_cur is flat there, F_ref crosses that level once, at a
    reference value, and the integral of F_ref comes from the running sums ``prefix``."""
    n, m = len(ref), len(cur)
    above = -np.inf
    below = -np.inf
    area = 0.0
    # The stretch before the first window value: F_cur = 0 from min(ref[0], cur[0]).
    a = min(ref[0], cur[0])
    ka = 0
    level = 0
    r = 0  # reference values < the current window value
    i = 0
    while i <= m:
        if i < m:
            v = cur[i]
            j = i + 1
            while j < m and cur[j] == v:
                j += 1
            while r < n and ref[r] < v:
                r += 1
            ref_below = r
            ru = r
            while ru < n and ref[ru] == v:
                ru += 1
            ref_upto = ru
            b = v
            kb = ref_upto
            # KS at this distinct value (the expressions drift._ks evaluates).
            up = ref_below / n - i / m
            if up > above:
                above = up
            dn = j / m - ref_upto / n
            if dn > below:
                below = dn
        else:
            j = m
            b = max(ref[n - 1], cur[m - 1])
            kb = n
        # The stretch [a, b) at level / m: F_ref >= level / m from the s-th reference value.
        s = -((-level * n) // m)
        sm1 = max(s - 1, 0)
        cross = ref[sm1]
        if cross <= a or s == 0:
            c, kc = a, ka
        elif cross >= b:
            c, kc = b, kb
        else:
            c, kc = cross, sm1
        ga = ka * (a - centre) - prefix[ka]
        gb = kb * (b - centre) - prefix[kb]
        gc = kc * (c - centre) - prefix[kc]
        # The same operations in the same order as the NumPy path, stretch by stretch.
        area += (c + c - a - b) * level / m + ((-2.0 * gc + ga) + gb) / n
        if i == m:
            break
        a, ka, level = b, kb, j
        i = j
    return above, below, area


@cache
def kernel() -> Any:
    """The merge compiled by numba (once per process, cached on disk), or ``None`` without
    numba."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True)(_ks_wasserstein_py)
