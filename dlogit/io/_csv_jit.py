"""A Numba parser for the common numeric CSV: decimal fields, one separator byte, no quotes.

It writes the feature columns straight into a C-contiguous float64 ``X`` (no table, no column copy),
the label and a weights column into their own arrays, and counts the rows as it goes. Every value is
correctly rounded (the nearest double to the decimal, ties to even: what ``float()`` gives, and what
pyarrow gives): a field of at most 19 significant digits with an exponent of at most 22 in size and a
mantissa below 2**53 is exact in one multiply or divide; other fields take Eisel and Lemire's method (a
192-bit product with a power of five, truncated), which decides the rounding unless the product lies
too near a halfway point -- then, as for anything unusual (more digits, a subnormal or overflowing
value, a quote, a space, a missing field, text), the kernel stops with a status and the caller reads
the data the slower way, which gives today's values and messages.

The kernels release the GIL: the caller runs several on parts of one buffer at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; without it the pyarrow path reads
    numba = None  # type: ignore[assignment]

#: status codes of :func:`parse_rows` (``OK`` or where and why it stopped)
OK, SLOW = 0, 1
_Q_MIN, _Q_MAX = -342, 308
#: what a column is: a feature (its index in X, >= 0), skipped, the label, the weights
SKIP, LABEL, WEIGHTS = -1, -2, -3


def _powers_of_five() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(high, low, e)``: for each q in [-342, 308], ``floor(5**q * 2**(127 - e))`` as two 64-bit words,
    where ``e = floor(log2(5**q))`` (the top bit of the 128-bit number is set). Truncated, never rounded
    up: the true power lies in [T, T + 1)."""
    n = _Q_MAX - _Q_MIN + 1
    hi = np.empty(n, np.uint64)
    lo = np.empty(n, np.uint64)
    ex = np.empty(n, np.int64)
    mask = (1 << 64) - 1
    for k, q in enumerate(range(_Q_MIN, _Q_MAX + 1)):
        if q >= 0:
            p = 5 ** q
            e = p.bit_length() - 1
            t = p << (127 - e) if e <= 127 else p >> (e - 127)
        else:
            d = 5 ** (-q)
            # 5**q = 1/d: e = floor(log2(1/d)) = -ceil(log2(d)) (d is odd and > 1: never a power of two)
            e = -d.bit_length()
            t = (1 << (127 - e)) // d
        assert t >> 127 == 1
        hi[k], lo[k], ex[k] = t >> 64, t & mask, e
    return hi, lo, ex


_HI, _LO, _E5 = _powers_of_five()
_FIVE = np.array([5 ** k for k in range(28)], np.uint64)
_TEN = np.array([10.0 ** k for k in range(23)])  # exact: every 10**k, k <= 22, is a double


_POW2 = np.array([2.0 ** e for e in range(-1074, 972)])  # exact: 2**e for every normal result's e


def _jit(fn):  # type: ignore[no-untyped-def]
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(nogil=True, cache=True)(fn)


if numba is not None:
    try:  # an LLVM ctlz
        from numba.cpython.unsafe.numbers import leading_zeros as _leading_zeros

        @numba.njit(nogil=True, cache=True)
        def _clz(w):  # type: ignore[no-untyped-def]
            return _leading_zeros(w)  # type: ignore[call-arg]
    except ImportError:  # pragma: no cover - another numba: a binary search
        _leading_zeros = None  # type: ignore[assignment]
if numba is None or _leading_zeros is None:  # pragma: no cover
    @_jit
    def _clz(w):  # type: ignore[no-untyped-def]
        n = 0
        for b in (32, 16, 8, 4, 2, 1):
            if w >> np.uint64(64 - b) == np.uint64(0):
                w = w << np.uint64(b)
                n += b
        return n


@_jit
def _mul64(a, b):  # type: ignore[no-untyped-def]
    """The 128-bit product of two uint64 as (high, low)."""
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a0, a1 = a & m32, a >> s32
    b0, b1 = b & m32, b >> s32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    mid = (p00 >> s32) + (p01 & m32) + (p10 & m32)
    lo = (p00 & m32) | ((mid & m32) << s32)
    hi = p11 + (p01 >> s32) + (p10 >> s32) + (mid >> s32)
    return hi, lo


@_jit
def _to_double(w, q, hi_t, lo_t, e5_t):  # type: ignore[no-untyped-def]
    """The double nearest ``w * 10**q`` (``w`` a nonzero uint64), and whether it was decided (False:
    the caller takes the slow path)."""
    if w <= np.uint64(1 << 53) and -22 <= q <= 22:  # exact operands: one correctly rounded operation
        v = float(w)
        if q >= 0:
            return v * _TEN[q], True
        return v / _TEN[-q], True
    if q == 0:
        return float(w), True  # an integer: uint64 -> double rounds correctly
    if -27 <= q < 0:
        p5 = _FIVE[-q]
        if w % p5 == np.uint64(0):  # w / 10**k = (w / 5**k) / 2**k exactly: one rounding, then exact
            v = float(w // p5)  # rounded once; times 2**q: exact unless it leaves the normal range
            if v >= 2.0 ** -1021:
                return v * _POW2[q + 1074], True
            return 0.0, False
    if q < _Q_MIN or q > _Q_MAX:
        return 0.0, False
    lz = int(_clz(w))
    x = w << np.uint64(lz)  # normalized: top bit set
    k = q - _Q_MIN
    a1, a0 = _mul64(x, hi_t[k])
    b1, b0 = _mul64(x, lo_t[k])
    mid = a0 + b1
    hi = a1 + (np.uint64(1) if mid < a0 else np.uint64(0))
    # the true product is (hi, mid, b0) + something below x in the lowest word
    upper = int(hi >> np.uint64(63))
    shift = np.uint64(9 + upper)
    m54 = hi >> shift
    below = hi & ((np.uint64(1) << shift) - np.uint64(1))
    full = (np.uint64(1) << shift) - np.uint64(1)
    exact = 0 <= q <= 55  # 5**q has at most 128 bits: the table holds it exactly, the product is exact
    if not exact and below == full and mid == np.uint64(0xFFFFFFFFFFFFFFFF):
        return 0.0, False  # a carry from the unknown part could change the kept bits
    r = m54 & np.uint64(1)
    m = (m54 + r) >> np.uint64(1)
    if r == np.uint64(1) and below == np.uint64(0) and mid == np.uint64(0):
        if not exact:
            return 0.0, False  # at or next to a halfway point
        if b0 == np.uint64(0) and (m & np.uint64(1)) == np.uint64(1):
            m -= np.uint64(1)  # exactly halfway: to even
    exp2 = 2 + int(shift) + q + e5_t[k] - lz
    if m == np.uint64(1 << 53):
        m = np.uint64(1 << 52)
        exp2 += 1
    biased = exp2 + 52 + 1023
    if biased < 1 or biased > 2046:
        return 0.0, False  # subnormal, zero or overflow
    return float(np.int64(m)) * _POW2[exp2 + 1074], True  # m < 2**53, the product exact


@_jit
def count_rows(buf, start, stop):  # type: ignore[no-untyped-def]
    """Rows (non-empty lines) of ``buf[start:stop]``, ``start`` a line start: the lines' first bytes
    that are not a newline (a branch-free loop the compiler vectorizes)."""
    if stop <= start:
        return 0
    n = 1 if buf[start] != 10 else 0
    for i in range(start + 1, stop):
        n += np.int64(buf[i - 1] == 10) & np.int64(buf[i] != 10)
    return n


@_jit
def parse_rows(buf, start, stop, sep, role, is_int, X, row0, y_f, y_i, wts, hi_t, lo_t, e5_t):  # type: ignore[no-untyped-def]
    """Parse ``buf[start:stop]`` (whole lines) into rows ``row0, row0+1, ...`` of ``X`` (and ``y_f`` or
    ``y_i``, ``wts``). ``role[j]``: column j's index in X, or SKIP, LABEL, WEIGHTS; ``is_int[j]``: the
    column is read as integers (a feature then as their doubles, the label into ``y_i``). Returns ``(status,
    rows)``; status ``SLOW`` where a field is not a plain decimal number this parser decides."""
    ncol = role.size
    i = start
    row = row0
    while i < stop:
        c = buf[i]
        if c == 10:  # an empty line: no row
            i += 1
            continue
        if row >= X.shape[0]:
            return SLOW, row - row0
        for j in range(ncol):
            rj = role[j]
            if rj == SKIP:
                while i < stop and buf[i] != sep and buf[i] != 10:
                    if buf[i] == 34:
                        return SLOW, row - row0
                    i += 1
            elif is_int[j]:
                neg = False
                if i < stop and buf[i] == 45:
                    neg = True
                    i += 1
                iv = 0
                nd = 0
                while i < stop and 48 <= buf[i] <= 57:
                    iv = iv * 10 + (buf[i] - 48)
                    nd += 1
                    i += 1
                if nd == 0 or nd > 18:
                    return SLOW, row - row0
                if neg:
                    iv = -iv
                if rj == LABEL:
                    y_i[row] = iv
                else:
                    X[row, rj] = float(iv)
            else:
                neg = False
                if i < stop:
                    c = buf[i]
                    if c == 45:
                        neg = True
                        i += 1
                    elif c == 43:
                        i += 1
                w = np.uint64(0)
                first = i
                while i < stop:
                    d = np.int64(buf[i]) - 48
                    if d < 0 or d > 9:
                        break
                    w = w * np.uint64(10) + np.uint64(d)
                    i += 1
                digits = i - first
                q = 0
                if i < stop and buf[i] == 46:
                    i += 1
                    frac = i
                    while i < stop:
                        d = np.int64(buf[i]) - 48
                        if d < 0 or d > 9:
                            break
                        w = w * np.uint64(10) + np.uint64(d)
                        i += 1
                    q = frac - i
                    digits += i - frac
                if digits == 0:
                    return SLOW, row - row0
                if digits > 19:  # leading zeros add nothing to w: only 19 significant digits fit
                    z = 0
                    for k in range(first, i):
                        if buf[k] == 48:
                            z += 1
                        elif buf[k] != 46:
                            break
                    if digits - z > 19:
                        return SLOW, row - row0
                if i < stop and (buf[i] == 101 or buf[i] == 69):
                    i += 1
                    eneg = False
                    if i < stop and (buf[i] == 45 or buf[i] == 43):
                        eneg = buf[i] == 45
                        i += 1
                    e = 0
                    ed = 0
                    while i < stop and 48 <= buf[i] <= 57:
                        if e < 100000:
                            e = e * 10 + (buf[i] - 48)
                        ed += 1
                        i += 1
                    if ed == 0:
                        return SLOW, row - row0
                    q += -e if eneg else e
                if w == np.uint64(0):
                    v = 0.0
                else:
                    v, ok = _to_double(w, q, hi_t, lo_t, e5_t)
                    if not ok:
                        return SLOW, row - row0
                if neg:
                    v = -v
                if rj >= 0:
                    X[row, rj] = v
                elif rj == LABEL:
                    y_f[row] = v
                else:
                    wts[row] = v
            # the field ends here: at the separator (more fields to come) or the line's end
            if j < ncol - 1:
                if i >= stop or buf[i] != sep:
                    return SLOW, row - row0
                i += 1
            else:
                if i < stop and buf[i] == 13:
                    i += 1
                if i < stop:
                    if buf[i] != 10:
                        return SLOW, row - row0
                    i += 1
        row += 1
    return OK, row - row0


def ready() -> bool:
    """Whether Numba's on-disk cache holds the parser: then its first use in a process loads it (a
    fraction of a second) rather than compiling it (seconds)."""
    try:
        return all(os.path.exists(f._cache._cache_file._index_path) for f in (count_rows, parse_rows))
    except AttributeError:  # pragma: no cover - another Numba's cache layout: compiled where first used
        return True


_compiling: list[Any] = []


def compile_in_background() -> None:
    """Fill the cache in a low-priority process of its own (once per process that asks): the reads
    meanwhile take the pyarrow path, the next ones the parser."""
    if _compiling:
        return
    cmd = [sys.executable, "-c", ("import os\nif hasattr(os, 'nice'): os.nice(10)\n"
           "import dlogit.io._csv_jit as j\nj.warm()")]
    try:
        _compiling.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))
    except OSError:  # pragma: no cover - no process to spare: the parser compiles where first used
        _compiling.append(None)


def warm() -> None:
    """Compile (or load) the parser: one call of each kernel on a line of text."""
    buf = np.frombuffer(b"1.5,2\n", np.uint8)
    X = np.empty((1, 1))
    none = np.empty(0)
    count_rows(buf, 0, buf.size)
    parse_rows(buf, 0, buf.size, 44, np.array([0, LABEL]), np.array([False, True]), X, 0, none,
               np.empty(1, np.int64), none, _HI, _LO, _E5)
