"""One-to-one matching of two event lists: same label, times within a tolerance.

Used to compare two models (compare_counts.py) and predictions against ground truth
(evaluate_soccernet.py). Pairs are taken closest in time first, so each event is matched
at most once and a near pair is never stolen by a far one.
"""


def match(a, b, tolerance, key=lambda e: e["label"]):
    """Pairs (i, j) of a[i], b[j] with equal key and |time difference| <= tolerance."""
    candidates = []
    by_key = {}
    for j, e in enumerate(b):
        by_key.setdefault(key(e), []).append(j)
    for i, e in enumerate(a):
        for j in by_key.get(key(e), ()):
            dt = abs(float(e["time"]) - float(b[j]["time"]))
            if dt <= tolerance + 1e-9:
                candidates.append((dt, i, j))
    candidates.sort()
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return sorted(pairs)
