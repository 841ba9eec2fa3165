"""The one home of memscore's statistics: correlations, p-values, bootstrap
intervals, paired model comparisons, split-half reliability and the noise ceiling.

Everything here works on NumPy arrays of per-image values (one entry per image);
``analyze``, ``compare`` and ``train``'s validation all call it, so the same
predictions get the same Spearman and the same interval wherever they are
reported. Reading, matching and aggregating trials happen in DuckDB before
(:mod:`memscore.tasks.analyze`, :mod:`memscore.storage.human`); nothing here
touches files or SQL.

Definitions (see docs/analysis.md for the formulas and references):

- Spearman's rho is Pearson's r of average ranks (ties share the mean rank), as
  ``scipy.stats.spearmanr``; Kendall's tau-b with the tie-corrected asymptotic
  p-value, as ``scipy.stats.kendalltau(method="asymptotic")``.
- p-values are two-sided: for n <= :data:`EXACT_MAX_N` exact, over all n!
  pairings (a permutation test); above it Student's t with n - 2 degrees of
  freedom (Pearson, Spearman) or the normal approximation (Kendall).
- Bootstrap: resample b draws n images uniformly with replacement from
  ``numpy.random.default_rng(seed)`` (``rng.integers(0, n, n)``, resample after
  resample); each statistic is recomputed on the resample (Spearman re-ranks it)
  and the interval is the percentile interval of the usable (finite) values.
  Every statistic of one call (several models, their differences, the noise
  ceiling) uses the same draws: a paired bootstrap.
- Split-half: per random split of participants the per-image measure of half A
  is correlated with half B across images; the mean over usable splits is the
  split-half r; Spearman-Brown ``2r / (1 + r)`` is the reliability of the full
  measure; the noise ceiling is its square root, the highest correlation any
  model can expect with the (noisy) human measure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EXACT_MAX_N = 9  # exact permutation p-values up to n! = 362,880 pairings
MIN_PAIRS = 3  # fewer pairs: correlations are undefined (2 points are always perfectly correlated)


# ---------------------------------------------------------------------------
# point estimates


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties get their average rank (as ``scipy.stats.rankdata``)."""
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two equal-length arrays; NaN when undefined (fewer than 2 values or a constant)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    return float(np.clip(np.dot(da, db) / math.sqrt(np.dot(da, da) * np.dot(db, db)), -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when undefined."""
    if len(a) < 2:
        return float("nan")
    return pearson(rankdata(a), rankdata(b))


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(tau-b, S) of two arrays: S = concordant - discordant pairs. O(n^2) time, in row blocks."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    s = 0.0
    block = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        dx = np.sign(x[start:stop, None] - x[None, :])
        dy = np.sign(y[start:stop, None] - y[None, :])
        s += float((dx * dy).sum())
    s /= 2.0  # every pair counted twice
    tot = n * (n - 1) / 2.0
    tx = _tie_sums(x)
    ty = _tie_sums(y)
    if n < 2 or tot == tx[0] or tot == ty[0]:
        return float("nan"), s
    return float(np.clip(s / math.sqrt(tot - tx[0]) / math.sqrt(tot - ty[0]), -1.0, 1.0)), s


def _tie_sums(v: np.ndarray) -> tuple[float, float, float]:
    """sum t(t-1)/2, sum t(t-1)(t-2), sum t(t-1)(2t+5) over tie groups of size t."""
    _, counts = np.unique(v, return_counts=True)
    c = counts[counts > 1].astype(np.float64)
    return float((c * (c - 1) / 2).sum()), float((c * (c - 1) * (c - 2)).sum()), float((c * (c - 1) * (2 * c + 5)).sum())


def kendall_asymptotic_p(x: np.ndarray, y: np.ndarray, s: float) -> float | None:
    """Two-sided p of Kendall's S with the tie-corrected variance (normal approximation)."""
    n = len(x)
    if n < 3:
        return None
    xtie, x0, x1 = _tie_sums(np.asarray(x, dtype=np.float64))
    ytie, y0, y1 = _tie_sums(np.asarray(y, dtype=np.float64))
    m = n * (n - 1.0)
    var = (m * (2 * n + 5) - x1 - y1) / 18 + (2 * xtie * ytie) / m + x0 * y0 / (9 * m * (n - 2))
    return normal_two_sided_p(s / math.sqrt(var)) if var > 0 else None


# ---------------------------------------------------------------------------
# p-values (scalar special functions; no scipy at run time)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def correlation_p_value(r: float | None, n: int) -> float | None:
    """Two-sided p-value of a correlation r over n pairs (Student's t, n-2 df),
    as ``scipy.stats.pearsonr`` and ``spearmanr`` report it; None when undefined."""
    if r is None or not math.isfinite(r) or n < 3:
        return None
    if abs(r) >= 1.0:
        return 0.0
    df = n - 2
    t2 = r * r * df / (1.0 - r * r)
    return min(1.0, max(0.0, betainc(df / 2.0, 0.5, df / (df + t2))))


def normal_two_sided_p(z: float) -> float:
    """Two-sided p of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def exact_p_values(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Exact two-sided permutation p-values of Pearson, Spearman and Kendall over all n!
    pairings of y with x (n <= :data:`EXACT_MAX_N`): twice the smaller share of pairings
    whose statistic is at or beyond the observed one (as ``scipy.stats.permutation_test``
    with ``permutation_type="pairings"``, every permutation, ``alternative="two-sided"``)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n > EXACT_MAX_N:
        raise ValueError(f"exact p-values need n <= {EXACT_MAX_N}")
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    out: dict[str, float | None] = {}

    def corr_rows(a: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
        da = a - a.mean()
        db = b_rows - b_rows.mean(axis=1, keepdims=True)
        return (db @ da) / np.sqrt((da @ da) * (db * db).sum(axis=1))

    for name, a, b in (("pearson", x, y), ("spearman", rankdata(x), rankdata(y))):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            out[name] = None
            continue
        out[name] = _two_sided(corr_rows(a, b[perms]))
    i, j = np.triu_indices(n, 1)
    sx = np.sign(x[i] - x[j])
    if np.all(sx == 0) or np.ptp(y) == 0:
        out["kendall"] = None
    else:
        yp = y[perms]
        s_all = (np.sign(yp[:, i] - yp[:, j]) * sx).sum(axis=1)
        out["kendall"] = _two_sided(s_all)
    return out


def _two_sided(null: np.ndarray) -> float:
    """2 * the smaller tail share of the null distribution at the observed value (null[0],
    the identity pairing), at most 1, as ``scipy.stats.permutation_test``'s two-sided p."""
    observed = null[0]
    tol = 1e-12 * max(1.0, abs(observed))
    low = np.mean(null <= observed + tol)
    high = np.mean(null >= observed - tol)
    return float(min(1.0, 2 * min(low, high)))


# ---------------------------------------------------------------------------
# the bootstrap


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Per resample, how often each of n images was drawn (n uniform draws with
    replacement, ``numpy.random.default_rng(seed).integers(0, n, n)`` per resample)."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


class Ranker:
    """Re-ranks one variable inside any weighted resample in O(n): a resample is a
    vector of draw counts (weights), and a drawn image's average rank is the count of
    draws with smaller values plus (ties + 1) / 2, as ranking the resample itself."""

    def __init__(self, values: np.ndarray) -> None:
        _, inverse = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
        self.group = inverse.reshape(-1)
        self.groups = int(self.group.max()) + 1 if len(self.group) else 0

    def ranks(self, weights: np.ndarray) -> np.ndarray:
        counts = np.bincount(self.group, weights=weights, minlength=self.groups)
        return (np.cumsum(counts) - (counts - 1) / 2.0)[self.group]


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Pearson's r of the sample holding each (x_i, y_i) w_i times; NaN when a side is constant."""
    used = w > 0
    if used.sum() < 2 or np.ptp(x[used]) == 0 or np.ptp(y[used]) == 0:
        return float("nan")
    total = w.sum()
    dx = x - np.dot(w, x) / total
    dy = y - np.dot(w, y) / total
    sxx, syy = np.dot(w, dx * dx), np.dot(w, dy * dy)
    return float(np.clip(np.dot(w, dx * dy) / math.sqrt(sxx * syy), -1.0, 1.0))


def weighted_spearman(rx: Ranker, ry: Ranker, w: np.ndarray) -> float:
    """Spearman's rho of the weighted sample (each image repeated w_i times, re-ranked)."""
    return weighted_pearson(rx.ranks(w), ry.ranks(w), w)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """The percentile interval of the finite values (linear interpolation, as ``numpy.percentile``)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return _num(low), _num(high)


def bootstrap(n: int, statistic: Callable[[np.ndarray], Mapping[str, float]], *, resamples: int = 1000,
              seed: int = 0) -> dict[str, np.ndarray]:
    """Each statistic over ``resamples`` bootstrap resamples of n images, all on the same draws.

    ``statistic(weights)`` gets a float array of n draw counts (summing to n) and returns
    named values (NaN where undefined on that resample). Returns name -> array of
    ``resamples`` values."""
    values: dict[str, list[float]] = {}
    for weights in resample_counts(n, resamples, seed):
        for name, value in statistic(weights).items():
            values.setdefault(name, []).append(value)
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def bootstrap_spearman(pred: np.ndarray, target: np.ndarray, n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho, resampling images (NaN, NaN when undefined).

    The same draws and re-ranking as ``memscore analyze`` (:func:`correlate`): the same
    predictions give the same interval."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if len(pred) < MIN_PAIRS or n <= 0:
        return float("nan"), float("nan")
    order = canonical_order(target, [pred])
    pred, target = pred[order], target[order]
    rx, ry = Ranker(pred), Ranker(target)
    values = bootstrap(len(pred), lambda w: {"s": weighted_spearman(rx, ry, w)}, resamples=n, seed=seed)["s"]
    low, high = percentile_interval(values, level)
    return (float("nan") if low is None else low), (float("nan") if high is None else high)


def canonical_order(human: np.ndarray, scores: Sequence[np.ndarray]) -> np.ndarray:
    """The order in which images enter the bootstrap: by human value, then by each model's
    score (a stable lexicographic sort). Draw k of a resample indexes this order, so the
    intervals depend on the (human, score) pairs only, not on file order or image ids:
    ``compare``, ``train`` and ``analyze`` give the same interval for the same predictions."""
    return np.lexsort([*reversed([np.asarray(s, dtype=np.float64) for s in scores]),
                       np.asarray(human, dtype=np.float64)])


def bootstrap_p_value(values: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of "the statistic is 0": twice the smaller share of
    usable resamples at or below / at or above 0, with the (count + 1) / (B + 1) rule so
    that it is never 0 (the percentile interval at level 1 - p just reaches 0)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    b = len(values)
    below = (np.count_nonzero(values <= 0) + 1) / (b + 1)
    above = (np.count_nonzero(values >= 0) + 1) / (b + 1)
    return _num(min(1.0, 2 * min(below, above)))


# ---------------------------------------------------------------------------
# correlations of models with human data


def _num(value: Any) -> float | None:
    """A finite float rounded to 12 significant digits, or None."""
    if value is None:
        return None
    value = float(value)
    return float(f"{value:.12g}") if math.isfinite(value) else None


def undefined_reason(x: np.ndarray, y: np.ndarray, what: tuple[str, str] = ("model scores", "human scores")) -> str | None:
    """Why a correlation of x and y is undefined, or None when it is defined."""
    n = len(x)
    if n < MIN_PAIRS:
        return f"only {n} image(s): a correlation needs at least {MIN_PAIRS}"
    if np.ptp(x) == 0:
        return f"the {what[0]} are constant ({_num(x[0])} for every image)"
    if np.ptp(y) == 0:
        return f"the {what[1]} are constant ({_num(y[0])} for every image)"
    return None


def point_correlations(x: np.ndarray, y: np.ndarray, *, kendall_max_n: int = 10_000) -> dict[str, Any]:
    """Spearman, Pearson (and Kendall up to ``kendall_max_n`` images) with two-sided p-values.

    Returns {"n", "spearman": {rho, p_value, p_method, reason}, "pearson": {r, ...},
    "kendall": {tau, p_value, p_method} or None}; undefined values are None with the reason."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    reason = undefined_reason(x, y)
    out: dict[str, Any] = {"n": n}
    if reason is not None:
        out["spearman"] = {"rho": None, "p_value": None, "p_method": None, "reason": reason}
        out["pearson"] = {"r": None, "p_value": None, "p_method": None, "reason": reason}
        out["kendall"] = {"tau": None, "p_value": None, "p_method": None, "reason": reason} if n <= kendall_max_n else None
        return out
    rho, r = spearman(x, y), pearson(x, y)
    exact: dict[str, float | None] = {}
    if n <= EXACT_MAX_N:
        exact = exact_p_values(x, y)
        method = f"exact permutation (all {math.factorial(n)} pairings)"
        p_rho, p_r = exact["spearman"], exact["pearson"]
    else:
        method = "Student's t, n - 2 df"
        p_rho, p_r = correlation_p_value(rho, n), correlation_p_value(r, n)
    out["spearman"] = {"rho": _num(rho), "p_value": _num(p_rho), "p_method": method, "reason": None}
    out["pearson"] = {"r": _num(r), "p_value": _num(p_r), "p_method": method, "reason": None}
    out["kendall"] = None
    if n <= kendall_max_n:
        tau, s = kendall_tau_b(x, y)
        if n <= EXACT_MAX_N:
            p_tau, k_method = exact["kendall"], method
        else:
            p_tau, k_method = kendall_asymptotic_p(x, y, s), "normal approximation, tie-corrected"
        out["kendall"] = {"tau": _num(tau), "p_value": _num(p_tau), "p_method": k_method,
                          "reason": None if math.isfinite(tau) else "tied throughout"}
    return out


@dataclass
class SplitHalves:
    """Per split s and image i the human measure of half A and half B (NaN where a half
    has no observation of the image): arrays of shape (splits, images), images in the
    order of the model arrays they are judged with; ``participants`` in all halves."""

    a: np.ndarray
    b: np.ndarray
    participants: int
    measure: str
    seed: int


def split_half_correlations(halves: SplitHalves, weights: np.ndarray | None = None,
                            rankers: Sequence[tuple[Ranker, Ranker]] | None = None,
                            only: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per split: (Spearman, Pearson, images used) of half A vs half B over the images
    defined in both halves (each image weighted by ``weights``, a bootstrap resample;
    default 1). A split with fewer than :data:`MIN_PAIRS` images or a constant half gives
    NaN, as does a split not in ``only`` (default: all)."""
    splits, n = halves.a.shape
    w0 = np.ones(n) if weights is None else weights
    rho, r, used = np.full(splits, np.nan), np.full(splits, np.nan), np.zeros(splits)
    for s in (range(splits) if only is None else only):
        valid = np.isfinite(halves.a[s]) & np.isfinite(halves.b[s])
        w = w0 * valid
        used[s] = np.count_nonzero(w > 0)
        if used[s] < MIN_PAIRS:
            continue
        a, b = np.where(valid, halves.a[s], 0.0), np.where(valid, halves.b[s], 0.0)
        if rankers is None:
            ra, rb = Ranker(a), Ranker(b)
        else:
            ra, rb = rankers[s]
        r[s] = weighted_pearson(a, b, w)
        rho[s] = weighted_pearson(ra.ranks(w), rb.ranks(w), w)
    return rho, r, used


def spearman_brown(r: float | None, factor: float = 2.0) -> float | None:
    """Spearman-Brown prophecy: reliability of a measure ``factor`` times as long as one with reliability r."""
    if r is None or not math.isfinite(r) or (1.0 + (factor - 1.0) * r) == 0:
        return None
    return factor * r / (1.0 + (factor - 1.0) * r)


def noise_ceiling(reliability: float | None) -> float | None:
    """sqrt(reliability): the correlation a perfect model can expect with a measure of
    that reliability (attenuation); None when the reliability is not positive."""
    if reliability is None or not math.isfinite(reliability) or reliability <= 0:
        return None
    return math.sqrt(min(reliability, 1.0))


def _ceiling_from_split(r: float) -> float:
    sb = spearman_brown(r)
    c = noise_ceiling(sb)
    return float("nan") if c is None else c


CEILING_SPLITS_PER_RESAMPLE = 5


def analyse_models(scores: Mapping[str, np.ndarray], human: np.ndarray, *, halves: SplitHalves | None = None,
                   resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                   kendall_max_n: int = 10_000,
                   ceiling_splits_per_resample: int = CEILING_SPLITS_PER_RESAMPLE) -> dict[str, Any]:
    """Everything about several models judged on the same n images, on one set of bootstrap draws.

    ``scores``: model name -> array (n,) of its scores; ``human``: array (n,); ``halves``:
    split halves of the same n images (trial data) or None. Returns::

        {"n", "models": {name: {spearman, pearson, kendall, fraction_of_noise_ceiling}},
         "comparisons": [{a, b, spearman_difference, pearson_difference}],
         "split_half": {...} or None, "noise_ceiling": {...} or None, "bootstrap": {...}}

    Intervals are percentile intervals at ``confidence``; each one says how many resamples
    were usable. The fraction of the noise ceiling and its interval are computed per
    resample (model correlation / ceiling on the same draws). To bound the time, resample b
    recomputes the split-half mean on ``ceiling_splits_per_resample`` of the splits, taken in
    rotation (b * k, ..., b * k + k - 1 modulo the number of splits), so every split serves
    equally often; the point estimates use every split."""
    names = list(scores)
    order = canonical_order(human, [scores[k] for k in names])
    human = np.asarray(human, dtype=np.float64)[order]
    n = len(human)
    xs = {k: np.asarray(v, dtype=np.float64)[order] for k, v in scores.items()}
    if halves is not None:
        halves = SplitHalves(a=halves.a[:, order], b=halves.b[:, order], participants=halves.participants,
                             measure=halves.measure, seed=halves.seed)
    points = {k: point_correlations(x, human, kendall_max_n=kendall_max_n) for k, x in xs.items()}
    out: dict[str, Any] = {"n": n, "models": {}, "comparisons": [], "split_half": None, "noise_ceiling": None}
    sh_summary = None
    if halves is not None:
        sh_summary = split_half_summary(halves)
        out["split_half"] = sh_summary
        out["noise_ceiling"] = {
            "convention": "noise ceiling = sqrt(Spearman-Brown(mean split-half r)); fraction = model r / noise ceiling",
            "spearman": _ceiling_entry(sh_summary["spearman_mean"], sh_summary.get("reason")),
            "pearson": _ceiling_entry(sh_summary["pearson_mean"], sh_summary.get("reason")),
        }
    boot: dict[str, np.ndarray] = {}
    usable = n >= MIN_PAIRS and resamples > 0
    if usable:
        human_rank = Ranker(human)
        model_rank = {k: Ranker(x) for k, x in xs.items()}
        split_rankers = None
        if halves is not None:
            split_rankers = [(Ranker(np.where(np.isfinite(halves.a[s]), halves.a[s], 0.0)),
                              Ranker(np.where(np.isfinite(halves.b[s]), halves.b[s], 0.0)))
                             for s in range(halves.a.shape[0])]

        step = [0]
        n_splits = halves.a.shape[0] if halves is not None else 0
        k_splits = max(1, min(ceiling_splits_per_resample, n_splits)) if n_splits else 0

        def statistic(w: np.ndarray) -> dict[str, float]:
            b = step[0]
            step[0] += 1
            values: dict[str, float] = {}
            hr = human_rank.ranks(w)
            for k in names:
                values[f"{k}\0spearman"] = weighted_pearson(model_rank[k].ranks(w), hr, w)
                values[f"{k}\0pearson"] = weighted_pearson(xs[k], human, w)
            if halves is not None:
                only = sorted({(b * k_splits + j) % n_splits for j in range(k_splits)})
                rho_s, r_s, _ = split_half_correlations(halves, w, split_rankers, only)
                for key, per in (("spearman", rho_s), ("pearson", r_s)):
                    ok = per[np.isfinite(per)]
                    ceiling = _ceiling_from_split(float(ok.mean())) if len(ok) else float("nan")
                    values[f"\0ceiling\0{key}"] = ceiling
                    for k in names:
                        values[f"{k}\0fraction\0{key}"] = values[f"{k}\0{key}"] / ceiling
            return values

        boot = bootstrap(n, statistic, resamples=resamples, seed=seed)
    for k in names:
        entry = points[k]
        for key, stat in (("spearman", "rho"), ("pearson", "r")):
            _add_interval(entry[key], boot.get(f"{k}\0{key}") if entry[key][stat] is not None else None,
                          confidence, resamples)
        if halves is not None:
            entry["fraction_of_noise_ceiling"] = {
                key: _fraction_entry(entry[key][stat], out["noise_ceiling"][key]["ceiling"],
                                     boot.get(f"{k}\0fraction\0{key}"), confidence, resamples)
                for key, stat in (("spearman", "rho"), ("pearson", "r"))}
        out["models"][k] = entry
    if halves is not None:
        for key in ("spearman", "pearson"):
            ceiling = out["noise_ceiling"][key]
            if ceiling["ceiling"] is not None:
                _add_interval(ceiling, boot.get(f"\0ceiling\0{key}"), confidence, resamples)
    for a, b in itertools.combinations(names, 2):
        comp: dict[str, Any] = {"a": a, "b": b, "n": n}
        for key, stat in (("spearman", "rho"), ("pearson", "r")):
            va, vb = points[a][key][stat], points[b][key][stat]
            d: dict[str, Any] = {"difference": None, "ci_low": None, "ci_high": None, "p_value": None,
                                 "usable_resamples": 0, "reason": None}
            if va is None or vb is None:
                d["reason"] = points[a][key]["reason"] or points[b][key]["reason"]
            else:
                d["difference"] = _num(va - vb)
                if usable:
                    diff = boot[f"{a}\0{key}"] - boot[f"{b}\0{key}"]
                    d["ci_low"], d["ci_high"] = percentile_interval(diff, confidence)
                    d["p_value"] = bootstrap_p_value(diff)
                    d["usable_resamples"] = int(np.isfinite(diff).sum())
                    d["p_method"] = "paired bootstrap (same draws for both models)"
                else:
                    d["reason"] = "no bootstrap resamples"
            comp[f"{key}_difference"] = d
        out["comparisons"].append(comp)
    out["bootstrap"] = {"resamples": resamples, "confidence": confidence, "seed": seed,
                        "method": "percentile, images resampled with replacement (numpy default_rng(seed))"}
    return out


def _add_interval(entry: dict[str, Any], values: np.ndarray | None, confidence: float, resamples: int) -> None:
    """ci_low, ci_high, se and usable_resamples of ``entry`` from the bootstrap values (None when none)."""
    entry["ci_low"] = entry["ci_high"] = entry["se"] = None
    entry["usable_resamples"] = 0
    entry["resamples"] = resamples
    if values is None or not len(values):
        return
    finite = values[np.isfinite(values)]
    entry["ci_low"], entry["ci_high"] = percentile_interval(finite, confidence)
    entry["se"] = _num(finite.std(ddof=1)) if len(finite) > 1 else None
    entry["usable_resamples"] = int(len(finite))


def _ceiling_entry(split_r: float | None, reason: str | None) -> dict[str, Any]:
    reliability = spearman_brown(split_r)
    ceiling = noise_ceiling(reliability)
    if split_r is None:
        why = reason or "no usable split"
    elif ceiling is None:
        why = f"the split-half correlation {split_r:.3f} is not positive: no noise ceiling"
    else:
        why = None
    return {"split_half_r": _num(split_r), "reliability": _num(reliability), "ceiling": _num(ceiling), "reason": why}


def _fraction_entry(value: float | None, ceiling: float | None, boot: np.ndarray | None, confidence: float,
                    resamples: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"value": None, "reason": None}
    if value is None or ceiling is None:
        entry["reason"] = "the model correlation is undefined" if value is None else "the noise ceiling is undefined"
        _add_interval(entry, None, confidence, resamples)
        return entry
    entry["value"] = _num(value / ceiling)
    _add_interval(entry, boot, confidence, resamples)
    return entry


def split_half_summary(halves: SplitHalves) -> dict[str, Any]:
    """Mean (sd, min, max) of the per-split Spearman and Pearson, their Spearman-Brown
    reliabilities, and how many splits were usable (at least 3 images defined in both halves)."""
    rho, r, used = split_half_correlations(halves)
    ok = np.isfinite(rho) & np.isfinite(r)
    splits = int(halves.a.shape[0])
    k = int(ok.sum())
    summary: dict[str, Any] = {
        "splits": splits, "splits_usable": k, "participants": halves.participants,
        "images_mean": float(used[ok].mean()) if k else 0.0,
        "spearman_mean": _num(rho[ok].mean()) if k else None,
        "spearman_sd": _num(rho[ok].std(ddof=1)) if k > 1 else None,
        "spearman_min": _num(rho[ok].min()) if k else None,
        "spearman_max": _num(rho[ok].max()) if k else None,
        "pearson_mean": _num(r[ok].mean()) if k else None,
        "pearson_sd": _num(r[ok].std(ddof=1)) if k > 1 else None,
        "measure": halves.measure, "seed": halves.seed, "reason": None,
    }
    summary["spearman_brown"] = _num(spearman_brown(summary["spearman_mean"]))
    summary["pearson_brown"] = _num(spearman_brown(summary["pearson_mean"]))
    if not k:
        summary["reason"] = (f"no usable split: every split had fewer than {MIN_PAIRS} images observed in both "
                             f"halves or a constant half" if splits else "no splits requested")
    return summary


def correlate(x: np.ndarray, y: np.ndarray, *, bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
              kendall_max_n: int = 10_000) -> dict[str, Any]:
    """Spearman and Pearson with p-values and percentile bootstrap intervals, and Kendall
    for one model: :func:`analyse_models` with one model (the same draws)."""
    res = analyse_models({"model": x}, y, resamples=bootstrap, seed=seed, confidence=confidence,
                         kendall_max_n=kendall_max_n)
    return {"n": res["n"], **{k: v for k, v in res["models"]["model"].items()}}


__all__ = [
    "EXACT_MAX_N", "MIN_PAIRS", "Ranker", "SplitHalves", "analyse_models", "betainc", "bootstrap",
    "bootstrap_p_value", "bootstrap_spearman", "correlate", "correlation_p_value", "exact_p_values",
    "kendall_tau_b", "noise_ceiling", "pearson", "percentile_interval", "point_correlations", "rankdata",
    "resample_counts", "spearman", "spearman_brown", "split_half_correlations", "split_half_summary",
    "weighted_pearson", "weighted_spearman",
]
