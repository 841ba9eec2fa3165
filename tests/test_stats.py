"""tasks.stats (the one statistics home) and storage.stats (split-half counts in SQL):
every statistic cross-checked against scipy / numpy written here, on data with ties."""

from __future__ import annotations

from fractions import Fraction

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from scipy import special
from scipy import stats as st

from memscore.storage import stats as sql_stats
from memscore.tasks import stats


def _tied(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 12, n).astype(float)  # heavy ties
    y = np.round(0.5 * x + rng.normal(0, 3, n))  # ties too
    return x, y


@pytest.mark.parametrize("n,seed", [(40, 1), (300, 2), (2000, 3)])
def test_point_estimates_and_p_values_match_scipy(n, seed):
    x, y = _tied(n, seed)
    out = stats.correlate(x, y, bootstrap=0)
    rho, p_rho = st.spearmanr(x, y)
    r, p_r = st.pearsonr(x, y)
    tau, p_tau = st.kendalltau(x, y, method="asymptotic")
    assert out["n"] == n
    assert out["spearman"]["rho"] == pytest.approx(rho, abs=1e-12)
    assert out["pearson"]["r"] == pytest.approx(r, abs=1e-12)
    assert out["kendall"]["tau"] == pytest.approx(tau, abs=1e-12)
    assert out["spearman"]["p_value"] == pytest.approx(p_rho, rel=1e-6, abs=1e-300)
    assert out["pearson"]["p_value"] == pytest.approx(p_r, rel=1e-6, abs=1e-300)
    assert out["kendall"]["p_value"] == pytest.approx(p_tau, rel=1e-6, abs=1e-300)


@pytest.mark.parametrize("n", [4, 5, 6])
def test_small_n_gets_exact_permutation_p_values(n):
    """At n = 4 a perfect rank correlation has p = 2/24, not the t distribution's 0."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x + rng.normal(0, 0.5, n)
    out = stats.correlate(x, y, bootstrap=0)
    for key, fn in (("pearson", lambda b: st.pearsonr(x, b)[0]), ("spearman", lambda b: st.spearmanr(x, b)[0]),
                    ("kendall", lambda b: st.kendalltau(x, b)[0])):
        ref = st.permutation_test((y,), fn, permutation_type="pairings", vectorized=False, n_resamples=np.inf)
        assert out[key]["p_value"] == pytest.approx(ref.pvalue, abs=1e-12), key
    perfect = stats.correlate(np.arange(4.0), np.arange(4.0) * 2, bootstrap=0)
    assert perfect["spearman"]["rho"] == 1.0
    assert perfect["spearman"]["p_value"] == pytest.approx(2 / 24)  # hand count: 2 of 24 pairings as extreme


def test_degenerate_cases_are_null_with_a_reason():
    const = stats.correlate(np.ones(10), np.arange(10.0), bootstrap=20)
    for key, stat in (("spearman", "rho"), ("pearson", "r"), ("kendall", "tau")):
        assert const[key][stat] is None and "constant" in const[key]["reason"]
    assert const["spearman"]["ci_low"] is None and const["spearman"]["usable_resamples"] == 0
    two = stats.correlate(np.array([1.0, 2.0]), np.array([2.0, 3.0]), bootstrap=10)
    assert two["spearman"]["rho"] is None and two["pearson"]["r"] is None  # not 1.000 beside "undefined"
    assert "only 2 image(s)" in two["spearman"]["reason"] and two["spearman"]["p_value"] is None


def test_every_bootstrap_resample_matches_scipy_on_the_same_draws():
    """Each resample's Spearman (re-ranked, ties averaged) and Pearson equal scipy's on the
    explicit resample rng.integers(0, n, n) of numpy's default_rng(seed)."""
    x, y = _tied(250, 5)
    seed, resamples = 11, 6
    got = stats.bootstrap(len(x), lambda w: {"s": stats.weighted_spearman(stats.Ranker(x), stats.Ranker(y), w),
                                             "p": stats.weighted_pearson(x, y, w)}, resamples=resamples, seed=seed)
    rng = np.random.default_rng(seed)
    for b in range(resamples):
        index = rng.integers(0, len(x), len(x))
        assert got["s"][b] == pytest.approx(st.spearmanr(x[index], y[index])[0], abs=1e-10)
        assert got["p"][b] == pytest.approx(st.pearsonr(x[index], y[index])[0], abs=1e-10)


def test_bootstrap_draws_are_uniform_and_independent():
    """Chi-square: over many resamples each image is drawn equally often, and is in a
    resample with probability 1 - (1 - 1/n)^n independently of its value (the old SQL
    generator put the lowest-scored image into every resample)."""
    n, resamples = 500, 500  # b < n for every resample: the old generator's draw k == b was image 0 every time
    counts = np.array(list(stats.resample_counts(n, resamples, seed=0)))
    assert counts.shape == (resamples, n) and (counts.sum(axis=1) == n).all()
    totals = counts.sum(axis=0)
    assert st.chisquare(totals).pvalue > 1e-3  # expected resamples * n / n each
    inclusion = (counts > 0).sum(axis=0)
    p = 1 - (1 - 1 / n) ** n
    chi2 = (((inclusion - resamples * p) ** 2) / (resamples * p * (1 - p))).sum()
    assert st.chi2.sf(chi2, n) > 1e-3
    assert inclusion.max() < resamples  # no image is in every resample
    # position k of resample b is not tied to b: the draw matrix is not symmetric
    rng = np.random.default_rng(0)
    draws = np.array([rng.integers(0, n, n) for _ in range(n)])
    assert not (draws == draws.T).all() and len(set(np.diag(draws))) > 1


def test_intervals_match_scipy_bootstrap_with_an_outlier():
    """1,000 unrelated images and one influential low outlier: the percentile intervals agree
    with scipy.stats.bootstrap(method="percentile") within Monte Carlo error."""
    rng = np.random.default_rng(3)
    x = np.append(rng.normal(size=1000), -12.0)
    y = np.append(rng.normal(size=1000), -6.0)
    out = stats.correlate(x, y, bootstrap=1000, seed=0)  # the default: every resample b < n (the old generator's
    # draw k == b put the outlier into all of them: [0.05, 0.26] where scipy gives [-0.02, 0.22])

    def pearson_vec(a, b, axis=-1):
        a = a - a.mean(axis=axis, keepdims=True)
        b = b - b.mean(axis=axis, keepdims=True)
        return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))

    ref = st.bootstrap((x, y), pearson_vec, paired=True, vectorized=True, n_resamples=10000, method="percentile",
                       random_state=1).confidence_interval
    assert out["pearson"]["ci_low"] == pytest.approx(ref.low, abs=0.02)
    assert out["pearson"]["ci_high"] == pytest.approx(ref.high, abs=0.02)
    assert out["pearson"]["usable_resamples"] == 1000
    rs = st.bootstrap((x, y), lambda a, b: st.spearmanr(a, b)[0], paired=True, vectorized=False, n_resamples=1000,
                      method="percentile", random_state=2).confidence_interval
    assert out["spearman"]["ci_low"] == pytest.approx(rs.low, abs=0.02)
    assert out["spearman"]["ci_high"] == pytest.approx(rs.high, abs=0.02)


def test_bootstrap_is_reproducible_and_order_free():
    rng = np.random.default_rng(7)
    x = rng.normal(size=500)
    y = x + rng.normal(size=500)
    a = stats.correlate(x, y, bootstrap=300, seed=1)
    b = stats.correlate(x, y, bootstrap=300, seed=1)
    c = stats.correlate(x, y, bootstrap=300, seed=2)
    perm = rng.permutation(500)
    d = stats.correlate(x[perm], y[perm], bootstrap=300, seed=1)
    assert a == b == d  # the same pairs in another order: the same numbers
    assert a["spearman"]["ci_low"] != c["spearman"]["ci_low"]
    for key, stat in (("spearman", "rho"), ("pearson", "r")):
        assert a[key]["ci_low"] < a[key][stat] < a[key]["ci_high"]
    # train/compare's helper gives the same interval for the same predictions
    low, high = stats.bootstrap_spearman(x[perm], y[perm], n=300, seed=1)
    assert (low, high) == (a["spearman"]["ci_low"], a["spearman"]["ci_high"])


def test_usable_resamples_are_counted():
    """A resample drawing only tied values has no correlation: it is left out and counted."""
    x = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    y = np.array([0.1, 0.4, 0.2, 0.3, 0.9])
    out = stats.correlate(x, y, bootstrap=400, seed=0)
    rng = np.random.default_rng(0)
    usable = sum(1 for _ in range(400) if np.ptp(x[rng.integers(0, 5, 5)]) > 0)  # hand count of the same draws
    assert out["spearman"]["usable_resamples"] == usable < 400


def test_paired_difference_matches_a_paired_scipy_bootstrap():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=400)
    human = truth + rng.normal(0, 0.7, 400)
    good, worse = truth + rng.normal(0, 0.5, 400), truth + rng.normal(0, 1.2, 400)
    res = stats.analyse_models({"good": good, "worse": worse}, human, resamples=1500, seed=0)
    d = res["comparisons"][0]["spearman_difference"]
    expected = st.spearmanr(good, human)[0] - st.spearmanr(worse, human)[0]
    assert d["difference"] == pytest.approx(expected, abs=1e-12)
    ref = st.bootstrap((good, worse, human), lambda a, b, h: st.spearmanr(a, h)[0] - st.spearmanr(b, h)[0],
                       paired=True, vectorized=False, n_resamples=1500, method="percentile",
                       random_state=5).confidence_interval
    assert d["ci_low"] == pytest.approx(ref.low, abs=0.02) and d["ci_high"] == pytest.approx(ref.high, abs=0.02)
    assert d["p_value"] < 0.01 and d["usable_resamples"] == 1500
    # the per-model intervals are those of one model alone (the same draws)
    alone = stats.correlate(good, human, bootstrap=1500, seed=0)
    assert res["models"]["good"]["spearman"]["rho"] == alone["spearman"]["rho"]
    same = stats.analyse_models({"a": good, "b": good.copy()}, human, resamples=200, seed=0)
    assert same["comparisons"][0]["spearman_difference"]["difference"] == 0.0
    assert same["comparisons"][0]["spearman_difference"]["p_value"] == 1.0


def test_p_value_helpers_match_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (10.0, 0.5, 0.9), (150.0, 0.5, 0.999), (2.0, 3.0, 0.01)]:
        assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)
    assert stats.correlation_p_value(0.0, 10) == pytest.approx(1.0)
    assert stats.correlation_p_value(1.0, 10) == 0.0
    assert stats.spearman_brown(0.5) == pytest.approx(2 * 0.5 / 1.5)
    assert stats.spearman_brown(None) is None
    assert stats.noise_ceiling(0.64) == pytest.approx(0.8) and stats.noise_ceiling(-0.1) is None


def _simulate_counts(participants: int, images: int, seen: float, seed: int, alpha=4.0, beta=3.0):
    rng = np.random.default_rng(seed)
    memorability = rng.beta(alpha, beta, images)
    part = np.repeat(np.arange(participants), images)
    img = np.tile(np.arange(images), participants)
    keep = rng.random(part.size) < seen
    part, img = part[keep], img[keep]
    hit = (rng.random(part.size) < memorability[img]).astype(np.int64)
    fa = (rng.random(part.size) < 0.1).astype(np.int64)
    table = pa.table({"participant": [f"p{p}" for p in part], "image": [f"i{i}" for i in img],
                      "hit": hit, "miss": 1 - hit, "fa": fa, "cr": 1 - fa})
    return table, memorability


def test_split_half_matches_a_numpy_recomputation():
    table, _ = _simulate_counts(40, 150, 0.5, seed=3)
    con = duckdb.connect()
    con.register("c", table)
    splits, seed = 4, 9
    images = [f"i{i}" for i in range(150)]
    for measure in ("hit_rate", "corrected_recognition"):
        halves = sql_stats.split_halves(con, "c", images, measure=measure, splits=splits, seed=seed)
        res = stats.split_half_summary(halves)
        assign = sql_stats.split_assignment(sorted({f"p{i}" for i in range(40)}), splits, seed).to_pydict()
        half = {(s, p): h for s, p, h in zip(assign["s"], assign["participant"], assign["half"])}
        d = table.to_pydict()
        part, img = np.array(d["participant"]), np.array([int(i[1:]) for i in d["image"]])
        cols = {k: np.array(d[k], dtype=float) for k in ("hit", "miss", "fa", "cr")}
        rhos, rs = [], []
        for s in range(splits):
            a = np.array([half[(s, p)] for p in part])
            assert sum(1 for p in set(part) if half[(s, p)] == 0) == 20
            m = []
            for h in (0, 1):
                agg = {k: np.bincount(img[a == h], weights=v[a == h], minlength=150) for k, v in cols.items()}
                with np.errstate(invalid="ignore", divide="ignore"):
                    hr = agg["hit"] / (agg["hit"] + agg["miss"])
                # corrected recognition from exact fractions, so that equal differences tie in the ranks
                crr = np.array([float(Fraction(int(h), int(h + mi)) - Fraction(int(f), int(f + c)))
                                if h + mi > 0 and f + c > 0 else np.nan
                                for h, mi, f, c in zip(agg["hit"], agg["miss"], agg["fa"], agg["cr"])])
                m.append(hr if measure == "hit_rate" else crr)
            ok = np.isfinite(m[0]) & np.isfinite(m[1])
            rhos.append(st.spearmanr(m[0][ok], m[1][ok])[0])
            rs.append(st.pearsonr(m[0][ok], m[1][ok])[0])
        assert res["splits"] == res["splits_usable"] == splits and res["participants"] == 40
        assert res["spearman_mean"] == pytest.approx(np.mean(rhos), abs=1e-10)
        assert res["spearman_sd"] == pytest.approx(np.std(rhos, ddof=1), abs=1e-10)
        assert res["pearson_mean"] == pytest.approx(np.mean(rs), abs=1e-10)
        assert res["spearman_brown"] == pytest.approx(2 * np.mean(rhos) / (1 + np.mean(rhos)))
        assert len(set(np.round(rhos, 12))) == splits  # the splits differ


def test_splits_are_independent_random_halves():
    """Each participant lands in half A of about half the splits, and two splits agree on
    about half the participants (the old hash put every split near one of two partitions)."""
    people = [f"p{i:03d}" for i in range(200)]
    t = sql_stats.split_assignment(people, 400, seed=0).to_pydict()
    half = np.array(t["half"]).reshape(400, 200)
    assert (half == 0).sum(axis=1).tolist() == [100] * 400
    share = (half == 0).mean(axis=0)
    assert st.chisquare((half == 0).sum(axis=0)).pvalue > 1e-3 and 0.4 < share.mean() < 0.6
    agree = (half[:-1] == half[1:]).mean(axis=1)  # consecutive splits
    assert 0.45 < agree.mean() < 0.55 and agree.max() < 0.8


def test_split_half_recovers_a_known_reliability_and_a_perfect_model_reaches_the_ceiling():
    """Hit rates of K Bernoulli trials around a true memorability m: the expected
    correlation of two halves is var(m) / (var(m) + E[m(1-m)] / K_half); a model that
    knows m correlates sqrt(reliability) with the full measure, i.e. 1.0 of the noise ceiling."""
    participants, images, seen, alpha, beta = 200, 400, 0.4, 4.0, 3.0
    table, m = _simulate_counts(participants, images, seen, seed=21, alpha=alpha, beta=beta)
    con = duckdb.connect()
    con.register("c", table)
    names = [f"i{i}" for i in range(images)]
    halves = sql_stats.split_halves(con, "c", names, splits=25, seed=0)
    res = stats.split_half_summary(halves)
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    noise = (mean * (1 - mean) - var) / (participants / 2 * seen)
    expected_half = var / (var + noise)
    expected_full = var / (var + noise / 2)
    assert res["pearson_mean"] == pytest.approx(expected_half, abs=0.04)
    assert res["pearson_brown"] == pytest.approx(expected_full, abs=0.03)
    assert res["spearman_brown"] == pytest.approx(expected_full, abs=0.04)
    assert 0 < res["spearman_sd"] < 0.05
    again = stats.split_half_summary(sql_stats.split_halves(con, "c", names, splits=25, seed=0))
    assert again == res
    d = table.to_pydict()
    img = np.array([int(i[1:]) for i in d["image"]])
    human = np.bincount(img, weights=d["hit"], minlength=images) / np.bincount(img, minlength=images)
    out = stats.analyse_models({"truth": m}, human, halves=halves, resamples=200, seed=0)
    nc = out["noise_ceiling"]["pearson"]
    assert nc["ceiling"] == pytest.approx(np.sqrt(expected_full), abs=0.02)
    frac = out["models"]["truth"]["fraction_of_noise_ceiling"]
    assert frac["pearson"]["value"] == pytest.approx(1.0, abs=0.05)  # was 1.12 - 1.24 as rho / Spearman-Brown
    assert frac["spearman"]["value"] == pytest.approx(1.0, abs=0.06)
    assert frac["pearson"]["ci_low"] < 1.0 < frac["pearson"]["ci_high"]
    assert frac["pearson"]["usable_resamples"] == 200


def test_split_half_with_too_few_images_is_unusable():
    halves = stats.SplitHalves(a=np.array([[0.1, 0.5], [0.2, 0.3]]), b=np.array([[0.2, 0.4], [0.1, 0.9]]),
                               participants=4, measure="hit_rate", seed=0)
    res = stats.split_half_summary(halves)
    assert res["splits_usable"] == 0 and res["spearman_mean"] is None and "fewer than 3" in res["reason"]
