"""storage.stats: every statistic cross-checked against scipy on data with ties."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from scipy import special
from scipy import stats as st

from memscore.storage import stats


def _con(**columns) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("t", pa.table(columns))
    return con


def _tied(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 12, n).astype(float)  # heavy ties
    y = np.round(0.5 * x + rng.normal(0, 3, n))  # ties too
    return x, y


@pytest.mark.parametrize("n,seed", [(5, 0), (40, 1), (300, 2), (2000, 3)])
def test_point_estimates_and_p_values_match_scipy(n, seed):
    x, y = _tied(n, seed)
    con = _con(x=x, y=y)
    out = stats.correlate(con, "t", bootstrap=0)
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


def test_nulls_and_nans_are_ignored_and_degenerate_cases_are_none():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, np.inf, 5.0, 7.0])
    out = stats.correlate(_con(x=x, y=y), "t", bootstrap=0)
    keep = np.isfinite(x) & np.isfinite(y)
    assert out["n"] == 4
    assert out["spearman"]["rho"] == pytest.approx(st.spearmanr(x[keep], y[keep])[0])
    const = stats.correlate(_con(x=np.ones(10), y=np.arange(10.0)), "t", bootstrap=20)
    assert const["spearman"]["rho"] is None and const["pearson"]["r"] is None and const["kendall"]["tau"] is None
    two = stats.correlate(_con(x=np.array([1.0, 2.0]), y=np.array([2.0, 3.0])), "t", bootstrap=10)
    assert two["spearman"]["p_value"] is None and two["spearman"]["ci_low"] is None


@pytest.mark.parametrize("grouped", [(False, False), (True, False), (False, True), (True, True)])
def test_every_bootstrap_resample_matches_scipy(grouped):
    """Each resample's Spearman (re-ranked) and Pearson equal scipy's on the same draws."""
    x, y = _tied(250, 5)
    y = y + np.random.default_rng(0).normal(0, 0.01, y.size) if not grouped[1] else y
    con = _con(x=x, y=y)
    resamples, seed = 6, 11
    got = con.sql(stats.bootstrap_sql("t", "x", "y", resamples, seed, grouped, len(x)) + " ORDER BY b").fetchall()
    pairs = np.array(sorted(zip(x, y)))  # the SQL numbers images in (x, y) order
    n = len(pairs)
    draws = np.array(
        con.sql(f"SELECT {stats.mix_sql('k', 'b', seed)} % {n} FROM range({resamples}) r(b), range({n}) q(k) "
                f"ORDER BY b, k").fetchall(), dtype=np.int64
    )[:, 0].reshape(resamples, n)
    for b in range(resamples):
        xs, ys = pairs[draws[b], 0], pairs[draws[b], 1]
        assert got[b][1] == pytest.approx(st.spearmanr(xs, ys)[0], abs=1e-10)
        assert got[b][2] == pytest.approx(st.pearsonr(xs, ys)[0], abs=1e-10)
    # draws really are with replacement (about 63% distinct) and differ between resamples
    distinct = [len(set(row)) / n for row in draws]
    assert all(0.5 < d < 0.75 for d in distinct)
    assert len({tuple(row) for row in draws}) == resamples


def test_bootstrap_is_reproducible_for_a_seed_and_covers_the_estimate():
    rng = np.random.default_rng(7)
    x = rng.normal(size=500)
    y = x + rng.normal(size=500)
    con = _con(x=x, y=y)
    a = stats.correlate(con, "t", bootstrap=300, seed=1)
    b = stats.correlate(con, "t", bootstrap=300, seed=1)
    c = stats.correlate(con, "t", bootstrap=300, seed=2)
    assert a == b
    assert a["spearman"]["ci_low"] != c["spearman"]["ci_low"]
    for key, stat in (("spearman", "rho"), ("pearson", "r")):
        assert a[key]["ci_low"] < a[key][stat] < a[key]["ci_high"]
    # the interval agrees with scipy's percentile bootstrap within Monte Carlo error
    ref = st.bootstrap((x, y), lambda u, v: st.pearsonr(u, v)[0], paired=True, vectorized=False,
                       n_resamples=300, method="percentile", random_state=0).confidence_interval
    assert a["pearson"]["ci_low"] == pytest.approx(ref.low, abs=0.03)
    assert a["pearson"]["ci_high"] == pytest.approx(ref.high, abs=0.03)


def test_p_value_helpers_match_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (10.0, 0.5, 0.9), (150.0, 0.5, 0.999), (2.0, 3.0, 0.01)]:
        assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)
    assert stats.correlation_p_value(0.0, 10) == pytest.approx(1.0)
    assert stats.correlation_p_value(1.0, 10) == 0.0
    assert stats.spearman_brown(0.5) == pytest.approx(2 * 0.5 / 1.5)
    assert stats.spearman_brown(None) is None


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
    for measure in ("hit_rate", "corrected_recognition"):
        res = stats.split_half(con, "c", measure=measure, splits=splits, seed=seed)
        assign = con.sql(stats.split_assignment_sql("c", splits, seed)).to_arrow_table().to_pydict()
        half = {(s, p): h for s, p, h in zip(assign["s"], assign["participant"], assign["half"])}
        d = table.to_pydict()
        part, img = np.array(d["participant"]), np.array([int(i[1:]) for i in d["image"]])
        cols = {k: np.array(d[k], dtype=float) for k in ("hit", "miss", "fa", "cr")}
        rhos, rs = [], []
        for s in range(splits):
            a = np.array([half[(s, p)] for p in part])
            assert (a == 0).sum() > 0 and sorted(set(half[(s, p)] for p in set(part))) == [0, 1]
            assert sum(1 for p in set(part) if half[(s, p)] == 0) == 20
            m = []
            for h in (0, 1):
                agg = {k: np.bincount(img[a == h], weights=v[a == h], minlength=150) for k, v in cols.items()}
                with np.errstate(invalid="ignore", divide="ignore"):
                    hr = agg["hit"] / (agg["hit"] + agg["miss"])
                    far = agg["fa"] / (agg["fa"] + agg["cr"])
                m.append(hr if measure == "hit_rate" else hr - far)
            ok = np.isfinite(m[0]) & np.isfinite(m[1])
            rhos.append(st.spearmanr(m[0][ok], m[1][ok])[0])
            rs.append(st.pearsonr(m[0][ok], m[1][ok])[0])
        assert res.splits == splits and res.participants == 40
        assert res.spearman_mean == pytest.approx(np.mean(rhos), abs=1e-10)
        assert res.spearman_sd == pytest.approx(np.std(rhos, ddof=1), abs=1e-10)
        assert res.pearson_mean == pytest.approx(np.mean(rs), abs=1e-10)
        assert res.spearman_brown == pytest.approx(2 * np.mean(rhos) / (1 + np.mean(rhos)))
        assert len(set(np.round(rhos, 12))) == splits  # the splits differ


def test_split_half_recovers_a_known_reliability():
    """Hit rates of K Bernoulli trials around a true memorability m: the expected
    correlation of two halves is var(m) / (var(m) + E[m(1-m)] / K_half)."""
    participants, images, seen, alpha, beta = 200, 400, 0.4, 4.0, 3.0
    table, m = _simulate_counts(participants, images, seen, seed=21, alpha=alpha, beta=beta)
    con = duckdb.connect()
    con.register("c", table)
    res = stats.split_half(con, "c", splits=25, seed=0)
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    noise = (mean * (1 - mean) - var) / (participants / 2 * seen)
    expected_half = var / (var + noise)
    expected_full = var / (var + noise / 2)
    assert res.pearson_mean == pytest.approx(expected_half, abs=0.04)
    assert res.pearson_brown == pytest.approx(expected_full, abs=0.03)
    assert res.spearman_brown == pytest.approx(expected_full, abs=0.04)
    assert 0 < res.spearman_sd < 0.05
    again = stats.split_half(con, "c", splits=25, seed=0)
    assert again == res


def test_bootstrap_chunks_do_not_change_the_numbers():
    x, y = _tied(300, 8)
    con = _con(x=x, y=y)
    whole = stats.bootstrap_intervals(con, "t", resamples=40, seed=4, chunk_draws=10**9)
    chunked = stats.bootstrap_intervals(con, "t", resamples=40, seed=4, chunk_draws=1000)  # 3 resamples per chunk
    assert whole == chunked
    assert whole["valid_resamples"] == 40
