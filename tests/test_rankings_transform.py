"""The score transform of the token and class rankings (issue 30, 4): the official evaluator sweeps 200 fixed
thresholds in [0, 1], so the values of the scores count, not only their order. Called directly here, on
predictions whose scores crowd near 0 (products of probabilities): the same order gives another number when the
scores are divided by 100; through rankings.mapped both come back near the number of the order alone."""
import contextlib
import io
import json
import random

import pytest
from SoccerNet.Evaluation.ActionSpotting import evaluate
from SoccerNet.Evaluation.utils import EVENT_DICTIONARY_V2

from llava_soccer import rankings

GAME = "league/season/game"


@pytest.mark.parametrize("ranking", ["token", "class"])
def test_the_transform_is_fixed_strictly_increasing_and_spreads_both_ends(ranking):
    grid = [0.0, 1e-20, 1e-8, 1e-6, 1e-3, 0.1, 0.5, 0.9, 0.999, 0.9999999, 0.99999999, 1.0]
    values = [rankings.mapped(s, ranking) for s in grid]
    assert values[0] == 0 and values[-1] == 1 and values[grid.index(0.5)] == 0.5
    assert all(a < b for a, b in zip(values, values[1:]))  # never clipped: the order is kept exactly
    # one of the official evaluator's thresholds is 1/199 wide: each decade below 1e-3 and above 0.999 keeps
    # thresholds between its values (raw, 1e-6 and 1e-3 share the first one; 0.9999999 and 0.99999999 the last)
    assert values[grid.index(1e-6)] == pytest.approx(0.0307, abs=1e-4)
    assert values[grid.index(0.9)] == pytest.approx(0.6340, abs=1e-4)
    assert values[grid.index(0.99999999)] - values[grid.index(0.9999999)] > 1 / 199
    assert rankings.SCORE_TRANSFORMS[ranking] == {"name": "tempered odds", "k": 4.0,
                                                  "formula": "1 / (1 + ((1 - s) / s) ** (1 / k))"}
    assert rankings.mapped(0.9, "confidence") == 0.9  # the written confidence is left as written


def official(tmp_path, gt, predictions, score):
    """The official at-5 s mAP over the classes present (the evaluator's mean of 17, x 17 / present)."""
    labels, preds = tmp_path / "labels" / GAME, tmp_path / f"preds_{len(list(tmp_path.iterdir()))}" / GAME
    labels.mkdir(parents=True, exist_ok=True)
    preds.mkdir(parents=True)
    (labels / "Labels-v2.json").write_text(json.dumps({"annotations": gt}))
    (preds / "results_spotting.json").write_text(json.dumps({"predictions": [
        {"label": c, "position": str(round(t * 1000)), "half": "1", "confidence": repr(score(i, s))}
        for i, (t, c, s) in enumerate(predictions)]}))
    with contextlib.redirect_stderr(io.StringIO()):
        r = evaluate(str(labels.parents[2]), str(preds.parents[2]), split=None, version=2, framerate=2, metric="at5",
                     dataset=None, EVENT_DICTIONARY=EVENT_DICTIONARY_V2)
    present = len({a["label"] for a in gt})
    return float(r["a_mAP"]) * 17 / present


@pytest.mark.slow  # the official evaluator, five times (~8 s)
def test_crowded_scores_lose_the_official_number_and_the_transform_recovers_it(tmp_path):
    """docs/evaluation.md's worked example, at 5 s: per class 12 events, 80% found with class-score-like
    products 1e-3-0.5, 30 false ones 1e-6-0.03."""
    rng = random.Random(0)
    gt, predictions = [], []
    for c in ("Goal", "Corner", "Foul", "Throw-in"):
        for _ in range(12):
            t = rng.uniform(30, 2700)
            gt.append({"gameTime": f"1 - {int(t) // 60:02d}:{int(t) % 60:02d}", "label": c,
                       "position": str(int(t * 1000)), "visibility": "visible"})
            if rng.random() < 0.8:
                predictions.append((t + rng.uniform(-2, 2), c, 10 ** rng.uniform(-3, -0.3)))
        predictions += [(rng.uniform(30, 2700), c, 10 ** rng.uniform(-6, -1.5)) for _ in range(30)]
    order = sorted(range(len(predictions)), key=lambda i: predictions[i][2])
    rank = {i: (r + 1) / len(predictions) for r, i in enumerate(order)}  # the order alone, evenly spread
    got = {name: official(tmp_path, gt, predictions, score) for name, score in {
        "s": lambda i, s: s, "s/100": lambda i, s: s / 100,
        "mapped s": lambda i, s: rankings.mapped(s, "class"),
        "mapped s/100": lambda i, s: rankings.mapped(s / 100, "class"),
        "order": lambda i, s: rank[i]}.items()}
    assert got["s/100"] < got["s"] - 0.1 < got["order"] - 0.15  # the same order, three numbers: values count
    for name in ("mapped s", "mapped s/100"):
        assert got[name] == pytest.approx(got["order"], abs=0.02), name
