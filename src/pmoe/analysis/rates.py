"""Sample-complexity rates from accuracy curves: the training-set size at which a curve first reaches a target
(interpolated between grid points), the exponent of a power law fitted to such sizes (least squares on log-log), and
a percentile interval of that exponent from a bootstrap over seeds."""
from __future__ import annotations

import math
import random
import statistics
from typing import Sequence

Curves = dict[float, dict[int, list[float]]]  # x (e.g. n) -> N -> the seeds' accuracies


def samples_needed(samples: Sequence[int], accuracy: Sequence[float], target: float) -> float | None:
    """The N at which `accuracy` (one value per N of the ascending `samples`) first reaches `target`, linear in log N
    between the grid points around the crossing; None when it never does, or does at the first N already (the
    crossing then lies outside the grid)."""
    i = next((i for i, a in enumerate(accuracy) if a >= target), None)
    if not i:  # None (never) or 0 (below the grid)
        return None
    a0, a1, lo, hi = accuracy[i - 1], accuracy[i], math.log(samples[i - 1]), math.log(samples[i])
    return math.exp(lo + (target - a0) / (a1 - a0) * (hi - lo))


def log_log_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The least-squares slope b of log y = a + b log x (at least two distinct x)."""
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def needed_per_x(curves: Curves, target: float) -> dict[float, float | None]:
    """x -> `samples_needed` of the seeds' median accuracy curve at x (the median: one seed whose initialisation
    never trains, as the CNN's with output weights of one sign, does not move it)."""
    return {x: samples_needed(sorted(c), [statistics.median(c[N]) for N in sorted(c)], target)
            for x, c in curves.items()}


def fit_rate(curves: Curves, target: float, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The exponent b of samples-needed ~ x^b over the x whose need lies inside the N grid (at least two), and its
    `level` percentile interval from `resamples` bootstrap draws, each resampling the seeds of every (x, N) with
    replacement (draws in which one of those x leaves the grid are dropped and counted). Returns {'exponent', 'ci',
    'points' (x -> N needed, None outside the grid), 'resamples' (draws kept)}; exponent and ci None with < 2 points."""
    points = needed_per_x(curves, target)
    inside = [x for x, v in points.items() if v is not None]
    if len(inside) < 2:
        return {"exponent": None, "ci": None, "points": points, "resamples": 0}
    rng, slopes = random.Random(seed), []
    for _ in range(resamples):
        draw = {x: {N: rng.choices(accs, k=len(accs)) for N, accs in curves[x].items()} for x in inside}
        need = needed_per_x(draw, target)
        if all(v is not None for v in need.values()):
            slopes.append(log_log_slope(inside, [need[x] for x in inside]))
    slopes.sort()
    ci = ([slopes[int((1 - level) / 2 * (len(slopes) - 1))], slopes[math.ceil((1 + level) / 2 * (len(slopes) - 1))]]
          if slopes else None)
    return {"exponent": log_log_slope(inside, [points[x] for x in inside]), "ci": ci, "points": points,
            "resamples": len(slopes)}
