"""One-to-one matching of two event lists: same label, times within a tolerance.

Used to compare two models (compare_counts.py) and predictions against ground truth
(evaluate_soccernet.py). The matching is a MAXIMUM one: as many pairs as possible, each
event in at most one pair. Among the maximum matchings it takes one with the smallest total
time difference, so close pairs are preferred when that costs no pair.

Why a sweep over time order is exact: two events can pair only when they are at most
`tolerance` apart on one time line. If a1 <= a2 and b1 <= b2 and both crossed pairs
(a1, b2), (a2, b1) are within tolerance, then so are (a1, b1) and (a2, b2) (b1 <= b2 <=
a1 + tol and b1 >= a2 - tol >= a1 - tol; symmetrically for a2, b2), and |a1 - b1| +
|a2 - b2| <= |a1 - b2| + |a2 - b1|. So some best matching pairs the k-th matched event of a
with the k-th matched event of b in time order, and a dynamic program over the two sorted
lists (skip an a, skip a b, or pair them) finds it. The lists are cut where two consecutive
times (of either list) are more than `tolerance` apart, as no pair can cross such a gap, so
the program runs on small blocks: O(sum of block sizes squared).
"""
from .settings import TIME_EPS


def match(a, b, tolerance, key=lambda e: e["label"]):
    """Pairs (i, j) of a[i], b[j] with equal key and |time difference| <= tolerance, sorted.

    A maximum one-to-one matching (the most pairs possible); among those, the one with the
    smallest sum of |time differences|.
    """
    groups = {}
    for i, e in enumerate(a):
        groups.setdefault(key(e), ([], []))[0].append((float(e["time"]), i))
    for j, e in enumerate(b):
        k = key(e)
        if k in groups:
            groups[k][1].append((float(e["time"]), j))
    pairs = []
    for ta, tb in groups.values():
        if ta and tb:
            pairs += _match_sorted(sorted(ta), sorted(tb), tolerance + TIME_EPS)
    return sorted(pairs)


def _match_sorted(ta, tb, limit):
    """Best matching of two time-sorted lists of (time, index); see the module docstring."""
    merged = sorted([(t, 0, n) for n, (t, _) in enumerate(ta)] + [(t, 1, n) for n, (t, _) in enumerate(tb)])
    pairs, block = [], ([], [])
    for k, (t, side, n) in enumerate(merged):
        block[side].append(n)
        if k + 1 == len(merged) or merged[k + 1][0] - t > limit:
            if block[0] and block[1]:
                pairs += _match_block([ta[n] for n in block[0]], [tb[n] for n in block[1]], limit)
            block = ([], [])
    return pairs


def _match_block(ta, tb, limit):
    """Order-preserving matching of two sorted lists: most pairs, then least total |dt|."""
    n, m = len(ta), len(tb)
    # row[j] = (pairs, -total |dt|) of the best matching of ta[:i] with tb[:j]; move[i][j] says
    # how it was reached (1 skip ta[i-1], 2 skip tb[j-1], 3 pair them). Only one row of values is kept.
    up, move = [(0, 0.0)] * (m + 1), [bytes(m + 1)]
    for i in range(1, n + 1):
        row, how, t = [(0, 0.0)] * (m + 1), bytearray(m + 1), ta[i - 1][0]
        for j in range(1, m + 1):
            v, h = up[j], 1                      # ta[i-1] left unmatched
            if row[j - 1] > v:
                v, h = row[j - 1], 2             # tb[j-1] left unmatched
            dt = abs(t - tb[j - 1][0])
            if dt <= limit:
                c, s = up[j - 1]
                if (c + 1, s - dt) > v:
                    v, h = (c + 1, s - dt), 3    # pair them
            row[j], how[j] = v, h
        up = row
        move.append(how)
    pairs, i, j = [], n, m
    while i and j:
        h = move[i][j]
        if h == 3:
            pairs.append((ta[i - 1][1], tb[j - 1][1]))
            i, j = i - 1, j - 1
        elif h == 2:
            j -= 1
        else:
            i -= 1
    return pairs
