"""Correlation statistics in DuckDB SQL: Spearman, Pearson, Kendall, bootstrap
intervals, split-half consistency.

Every function takes a DuckDB connection and the name (or parenthesised SQL) of a
relation, and does the row work in SQL where the data lie:

- Spearman is Pearson's r of average ranks (ties get the mean of the positions
  they occupy: ``(rank() + count(*)) / 2`` over the same window).
- Kendall's tau-b comes from a pairwise self-join (O(n^2), so it is computed only
  up to ``kendall_max_n`` images) with the tie-corrected asymptotic p-value, as
  ``scipy.stats.kendalltau(method="asymptotic")``.
- Bootstrap: resample ``b`` draws image ``mix(k, b, seed) % n`` for k < n
  (n draws with replacement, reproducible for a seed), re-ranks within each
  resample (``rank()`` and ``cume_dist()`` over dense ranks, or per value group
  for a variable with many ties) and takes percentile intervals with
  ``quantile_cont``. Resamples run in chunks of about 10M draws, one SQL
  statement each (a Python loop over chunks, not rows); the chunking does not
  change the numbers.
- Split-half: participant ``p`` goes to half A of split ``s`` when its
  ``mix(p, s, seed)`` is in the lower half of that split's participants; the
  per-image counts of both halves for all splits come out of one aggregate pass
  (a bit mask per participant; the four counts packed into one BIGINT), then
  each split is correlated across images.

Only the two-sided p-values are computed in Python, from the final statistic
(Student's t via the regularised incomplete beta function; the normal
distribution for Kendall). Nothing here loops over rows or participants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb

# Per-image measures computable from hit / miss / false-alarm / correct-rejection counts.
MEASURES: dict[str, str] = {
    "hit_rate": "{hit} / nullif({hit} + {miss}, 0)",
    "false_alarm_rate": "{fa} / nullif({fa} + {cr}, 0)",
    "corrected_recognition": "{hit} / nullif({hit} + {miss}, 0) - {fa} / nullif({fa} + {cr}, 0)",
    "miss_rate": "{miss} / nullif({hit} + {miss}, 0)",
}
MEASURE_ALIASES = {
    "hr": "hit_rate",
    "far": "false_alarm_rate",
    "fa_rate": "false_alarm_rate",
    "cr": "corrected_recognition",
    "crr": "corrected_recognition",
    "corrected_hit_rate": "corrected_recognition",
}


def canonical_measure(name: str) -> str:
    """The canonical name of a count-derived measure, or ValueError."""
    key = name.strip().lower().replace("-", "_")
    key = MEASURE_ALIASES.get(key, key)
    if key not in MEASURES:
        known = ", ".join([*MEASURES, *MEASURE_ALIASES])
        raise ValueError(f"unknown human measure {name!r} (known: {known})")
    return key


def measure_sql(measure: str, hit: str = "hit", miss: str = "miss", fa: str = "fa", cr: str = "cr") -> str:
    """SQL expression of ``measure`` over count columns (doubles; NULL where undefined)."""
    cast = {k: f"({v})::DOUBLE" for k, v in dict(hit=hit, miss=miss, fa=fa, cr=cr).items()}
    return "(" + MEASURES[canonical_measure(measure)].format(**cast) + ")"


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
    as scipy.stats.pearsonr and spearmanr report it."""
    if r is None or not math.isfinite(r) or n < 3:
        return None
    if abs(r) >= 1.0:
        return 0.0
    df = n - 2
    t2 = r * r * df / (1.0 - r * r)
    return min(1.0, max(0.0, betainc(df / 2.0, 0.5, df / (df + t2))))


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def spearman_brown(r: float | None, factor: float = 2.0) -> float | None:
    """Spearman-Brown prophecy: reliability of a test ``factor`` times as long."""
    if r is None or not math.isfinite(r) or (1.0 + (factor - 1.0) * r) == 0:
        return None
    return factor * r / (1.0 + (factor - 1.0) * r)


# ---------------------------------------------------------------------------
# point estimates and bootstrap


def _clean(relation: str, x: str, y: str) -> str:
    return (
        f"SELECT ({x})::DOUBLE AS x, ({y})::DOUBLE AS y FROM {relation} "
        f"WHERE ({x}) IS NOT NULL AND ({y}) IS NOT NULL AND isfinite(({x})::DOUBLE) AND isfinite(({y})::DOUBLE)"
    )


def _num(value: Any) -> float | None:
    """A finite float rounded to 12 significant digits (parallel aggregation may
    change the last bits between runs; results stay identical for a seed), or None."""
    if value is None:
        return None
    value = float(value)
    return float(f"{value:.12g}") if math.isfinite(value) else None


def point_estimates(con: duckdb.DuckDBPyConnection, relation: str, x: str = "x", y: str = "y") -> dict[str, Any]:
    """n, Spearman rho (average ranks) and Pearson r of two columns."""
    row = con.sql(
        f"""
        WITH d AS ({_clean(relation, x, y)}),
        r AS (
            SELECT x, y,
                   (rank() OVER wx + count(*) OVER wx) / 2.0 AS rx,
                   (rank() OVER wy + count(*) OVER wy) / 2.0 AS ry
            FROM d WINDOW wx AS (ORDER BY x), wy AS (ORDER BY y)
        )
        SELECT count(*), corr(rx, ry), corr(x, y) FROM r
        """
    ).fetchall()[0]
    n = int(row[0])
    return {"n": n, "spearman": _num(row[1]) if n >= 2 else None, "pearson": _num(row[2]) if n >= 2 else None}


def kendall_tau(con: duckdb.DuckDBPyConnection, relation: str, x: str = "x", y: str = "y") -> dict[str, Any]:
    """Kendall's tau-b with the tie-corrected asymptotic two-sided p-value (O(n^2) pairs)."""
    row = con.sql(
        f"""
        WITH d AS (SELECT row_number() OVER (ORDER BY x, y) AS i, x, y FROM ({_clean(relation, x, y)})),
        pairs AS (SELECT sum(sign(a.x - b.x) * sign(a.y - b.y))::DOUBLE AS s FROM d a JOIN d b ON a.i < b.i),
        tx AS (SELECT count(*)::DOUBLE AS c FROM d GROUP BY x HAVING count(*) > 1),
        ty AS (SELECT count(*)::DOUBLE AS c FROM d GROUP BY y HAVING count(*) > 1)
        SELECT (SELECT count(*) FROM d), (SELECT s FROM pairs),
               (SELECT coalesce(sum(c * (c - 1) / 2), 0) FROM tx),
               (SELECT coalesce(sum(c * (c - 1) * (c - 2)), 0) FROM tx),
               (SELECT coalesce(sum(c * (c - 1) * (2 * c + 5)), 0) FROM tx),
               (SELECT coalesce(sum(c * (c - 1) / 2), 0) FROM ty),
               (SELECT coalesce(sum(c * (c - 1) * (c - 2)), 0) FROM ty),
               (SELECT coalesce(sum(c * (c - 1) * (2 * c + 5)), 0) FROM ty)
        """
    ).fetchall()[0]
    n = int(row[0])
    s = float(row[1] or 0.0)
    xtie, x0, x1, ytie, y0, y1 = (float(v) for v in row[2:])
    tot = n * (n - 1) / 2.0
    if n < 2 or tot == xtie or tot == ytie:
        return {"tau": None, "p_value": None, "n": n}
    tau = s / math.sqrt(tot - xtie) / math.sqrt(tot - ytie)
    p = None
    if n > 2:
        m = n * (n - 1.0)
        var = (m * (2 * n + 5) - x1 - y1) / 18 + (2 * xtie * ytie) / m + x0 * y0 / (9 * m * (n - 2))
        p = normal_two_sided_p(s / math.sqrt(var)) if var > 0 else None
    return {"tau": max(-1.0, min(1.0, tau)), "p_value": p, "n": n}


def mix_sql(item: str, stream: str, seed: int) -> str:
    """A well-mixed 64-bit hash of (item, stream, seed).

    DuckDB's multi-argument ``hash(a, b, c)`` combines the parts by XOR, so
    ``hash(seed, b, k) % n`` would draw the same pattern, shifted, in every
    resample; hashing the XOR of the item's hash and the stream's hash again
    mixes all bits."""
    return f"hash(xor(hash({item}), hash({int(seed)}, {stream})))"


def ranked_pairs_sql(relation: str, x: str, y: str) -> str:
    """(pos, x, y, gx, gy): the pairs numbered in (x, y) order, with dense ranks of x and y."""
    return f"""SELECT (row_number() OVER (ORDER BY x, y) - 1)::BIGINT AS pos, x, y,
                      dense_rank() OVER (ORDER BY x)::INTEGER AS gx, dense_rank() OVER (ORDER BY y)::INTEGER AS gy
               FROM ({_clean(relation, x, y)})"""


def _bootstrap_base(relation: str, x: str, y: str, resamples: int | tuple[int, int], seed: int,
                    pairs: str | None, n: int) -> str:
    """CTEs d (pos, x, y, gx, gy) and draws (b, pos): n draws with replacement for each
    resample b in range(resamples) (or in [start, stop)). ``pairs`` names a table
    holding :func:`ranked_pairs_sql` already; ``n`` is its row count (a literal: DuckDB
    runs ``range()`` with a subquery argument far slower)."""
    start, stop = (0, resamples) if isinstance(resamples, int) else resamples
    d = f"SELECT * FROM {pairs}" if pairs else ranked_pairs_sql(relation, x, y)
    return f"""
        d AS ({d}),
        draws AS (
            SELECT r.b::INTEGER AS b, ({mix_sql("k.k", "r.b", seed)} % {int(n)})::BIGINT AS pos
            FROM range({int(start)}, {int(stop)}) r(b), range({int(n)}) k(k)
        )"""


def bootstrap_spearman_sql(relation: str, x: str, y: str, resamples: int | tuple[int, int], seed: int,
                           grouped: tuple[bool, bool], pairs: str | None, n: int) -> str:
    """SQL giving one row per resample: (b, spearman), re-ranking every resample.

    Only the dense ranks gx, gy travel through the windows. A draw's mid-rank is
    (rank() + n * cume_dist()) / 2 over its resample (first and last position of
    its tie group; every resample has exactly n draws). A variable with many ties
    (``grouped``) is ranked per (resample, value) group instead, mid-rank =
    cumulative count - (count - 1) / 2; when only one of the two is grouped, the
    cross products come from per-group sums (no join back), else it is joined back."""
    ranks, joins, windows = {}, [], []
    for var, use_groups in (("x", grouped[0]), ("y", grouped[1])):
        if use_groups:
            joins.append(f"JOIN r{var} USING (b, g{var})")
            ranks[var] = f"r{var}.r{var}"
        else:
            windows.append(f"w{var} AS (PARTITION BY b ORDER BY g{var})")
            ranks[var] = f"(rank() OVER w{var} + round(cume_dist() OVER w{var} * {int(n)})) / 2.0"
    group_ctes = "".join(
        f"c{var} AS (SELECT b, g{var}, count(*) AS c FROM s GROUP BY b, g{var}), "
        f"r{var} AS (SELECT b, g{var}, sum(c) OVER (PARTITION BY b ORDER BY g{var}) - (c - 1) / 2.0 AS r{var} FROM c{var}), "
        for var, use_groups in (("x", grouped[0]), ("y", grouped[1])) if use_groups
    )
    window = f"WINDOW {', '.join(windows)}" if windows else ""
    if grouped[0] != grouped[1]:
        # one variable windowed (w), the other grouped (g): no join back. Per (b, g-value)
        # group: count c, sum and sum of squares of the windowed ranks; then
        # sum(rw * rg) = sum over groups of rg * sum(rw), and corr from the sums.
        w, g = ("y", "x") if grouped[0] else ("x", "y")
        return f"""
        WITH {_bootstrap_base(relation, x, y, resamples, seed, pairs, n)},
        s AS (SELECT draws.b, d.g{w}, d.g{g} FROM draws JOIN d USING (pos)),
        rw AS (SELECT b, g{g}, (rank() OVER ww + round(cume_dist() OVER ww * {int(n)})) / 2.0 AS r
               FROM s WINDOW ww AS (PARTITION BY b ORDER BY g{w})),
        cg AS (SELECT b, g{g}, count(*) AS c, sum(r) AS sr, sum(r * r) AS srr FROM rw GROUP BY b, g{g}),
        rg AS (SELECT b, c, sr, srr, sum(c) OVER (PARTITION BY b ORDER BY g{g}) - (c - 1) / 2.0 AS q FROM cg),
        sums AS (SELECT b, sum(c)::DOUBLE AS m, sum(sr) AS sw, sum(srr) AS sww, sum(c * q) AS sg,
                        sum(c * q * q) AS sgg, sum(q * sr) AS swg FROM rg GROUP BY b)
        SELECT b, (m * swg - sw * sg) / sqrt((m * sww - sw * sw) * (m * sgg - sg * sg)) AS spearman FROM sums
        """
    return f"""
        WITH {_bootstrap_base(relation, x, y, resamples, seed, pairs, n)},
        s AS (SELECT draws.b, d.gx, d.gy FROM draws JOIN d USING (pos)),
        {group_ctes}
        ranked AS (SELECT s.b, {ranks['x']} AS rx, {ranks['y']} AS ry FROM s {' '.join(joins)} {window})
        SELECT b, corr(rx, ry) AS spearman FROM ranked GROUP BY b
    """


def bootstrap_pearson_sql(relation: str, x: str, y: str, resamples: int | tuple[int, int], seed: int,
                          pairs: str | None, n: int) -> str:
    """SQL giving one row per resample: (b, pearson), over the same draws as the Spearman."""
    return f"""
        WITH {_bootstrap_base(relation, x, y, resamples, seed, pairs, n)}
        SELECT b, corr(d.x, d.y) AS pearson FROM draws JOIN d USING (pos) GROUP BY b
    """


def bootstrap_sql(relation: str, x: str, y: str, resamples: int | tuple[int, int], seed: int,
                  grouped: tuple[bool, bool], n: int, pairs: str | None = None) -> str:
    """SQL giving one row per resample b: (b, spearman, pearson); n = the number of
    usable (x, y) pairs in relation."""
    return (f"SELECT b, s.spearman, p.pearson "
            f"FROM ({bootstrap_spearman_sql(relation, x, y, resamples, seed, grouped, pairs, n)}) s "
            f"JOIN ({bootstrap_pearson_sql(relation, x, y, resamples, seed, pairs, n)}) p USING (b)")


def tie_heavy(con: duckdb.DuckDBPyConnection, relation: str, x: str, y: str, ratio: float = 0.25) -> tuple[bool, bool]:
    """Whether x and y have at most ``ratio`` * n distinct values (ranked per value group in the bootstrap)."""
    row = con.sql(f"SELECT count(*), count(DISTINCT x), count(DISTINCT y) FROM ({_clean(relation, x, y)})").fetchall()[0]
    n = max(int(row[0]), 1)
    return (row[1] <= ratio * n, row[2] <= ratio * n)


def bootstrap_intervals(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    x: str = "x",
    y: str = "y",
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk_draws: int = 10_000_000,
) -> dict[str, Any]:
    """Percentile bootstrap intervals over images for Spearman and Pearson.

    The per-resample statistics are computed in chunks of resamples (each chunk
    one SQL statement over about ``chunk_draws`` draws); the chunking does not
    change the numbers."""
    lo, hi = (1.0 - confidence) / 2.0, 1.0 - (1.0 - confidence) / 2.0
    grouped = tie_heavy(con, relation, x, y)
    con.sql(f"CREATE OR REPLACE TEMP TABLE _boot_pairs AS {ranked_pairs_sql(relation, x, y)}")
    n = max(1, con.sql("SELECT count(*) FROM _boot_pairs").fetchall()[0][0])
    out: dict[str, Any] = {}
    # resamples go in chunks of about chunk_draws draws: the windows stay in memory;
    # Spearman and Pearson in separate statements (joined, DuckDB plans them far slower)
    step = max(1, chunk_draws // n)
    for name in ("spearman", "pearson"):
        con.sql(f"CREATE OR REPLACE TEMP TABLE _boot (b INTEGER, {name} DOUBLE)")
        for start in range(0, resamples, step):
            chunk = (start, min(resamples, start + step))
            sql = (bootstrap_spearman_sql(relation, x, y, chunk, seed, grouped, "_boot_pairs", n) if name == "spearman"
                   else bootstrap_pearson_sql(relation, x, y, chunk, seed, "_boot_pairs", n))
            con.sql(f"INSERT INTO _boot {sql}")
        row = con.sql(
            f"""SELECT quantile_cont({name}, {lo}), quantile_cont({name}, {hi}), count(*), stddev_samp({name})
            FROM _boot WHERE isfinite({name})"""
        ).fetchall()[0]
        out[name] = (_num(row[0]), _num(row[1]))
        out[f"{name}_se"] = _num(row[3])
        out[f"{name}_valid_resamples"] = int(row[2] or 0)
    out["valid_resamples"] = out["spearman_valid_resamples"]
    con.sql("DROP TABLE _boot")
    con.sql("DROP TABLE _boot_pairs")
    return out


def correlate(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    x: str = "x",
    y: str = "y",
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    kendall_max_n: int = 10_000,
) -> dict[str, Any]:
    """Spearman and Pearson with p-values and bootstrap intervals; Kendall when n is small enough."""
    point = point_estimates(con, relation, x, y)
    n = point["n"]
    out: dict[str, Any] = {
        "n": n,
        "spearman": {"rho": point["spearman"], "ci_low": None, "ci_high": None,
                     "p_value": correlation_p_value(point["spearman"], n)},
        "pearson": {"r": point["pearson"], "ci_low": None, "ci_high": None,
                    "p_value": correlation_p_value(point["pearson"], n)},
        "kendall": None,
    }
    if bootstrap > 0 and n >= 3:
        boot = bootstrap_intervals(con, relation, x, y, resamples=bootstrap, seed=seed, confidence=confidence)
        out["spearman"]["ci_low"], out["spearman"]["ci_high"] = boot["spearman"]
        out["pearson"]["ci_low"], out["pearson"]["ci_high"] = boot["pearson"]
        out["spearman"]["se"] = boot["spearman_se"]
        out["pearson"]["se"] = boot["pearson_se"]
    if 2 <= n <= kendall_max_n:
        k = kendall_tau(con, relation, x, y)
        out["kendall"] = {"tau": k["tau"], "p_value": k["p_value"]}
    return out


# ---------------------------------------------------------------------------
# split-half consistency


@dataclass
class SplitHalfResult:
    splits: int
    participants: int
    images_mean: float
    spearman_mean: float | None
    spearman_sd: float | None
    spearman_min: float | None
    spearman_max: float | None
    pearson_mean: float | None
    pearson_sd: float | None
    spearman_brown: float | None
    pearson_brown: float | None
    measure: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def split_assignment_sql(participants: str, splits: int, seed: int) -> str:
    """(s, participant, half) with half 0 for the first floor(P/2) participants of
    split s in the order of mix_sql(participant, s, seed)."""
    return f"""
        WITH p AS (SELECT DISTINCT participant FROM {participants}),
        np AS (SELECT count(*) AS n FROM p),
        ordered AS (
            SELECT s.s, p.participant,
                   row_number() OVER (PARTITION BY s.s ORDER BY {mix_sql("p.participant", "s.s", seed)}, p.participant) AS k
            FROM range({int(splits)}) s(s), p
        )
        SELECT s, participant, CASE WHEN k <= (SELECT n FROM np) // 2 THEN 0 ELSE 1 END AS half FROM ordered
    """


PACK_BITS = 15  # four counts share one BIGINT; per-image sums must stay below 2**15


def split_half_counts_sql(counts: str, splits: int, seed: int, packed: bool = True) -> str:
    """Per (s, image) the hit/miss/fa/cr counts of half A and half B.

    ``counts`` has columns participant, image, hit, miss, fa, cr (one row per
    participant and image). One aggregate pass per 64 splits: each participant
    carries a bit mask of the splits in which it is in half A, and half A's sum
    for split s is ``sum(value * bit_s(mask))``. With ``packed`` the four counts
    travel as one BIGINT (15 bits each: per-image totals must stay below 32768),
    one sum per split instead of four.
    """
    cols = ("hit", "miss", "fa", "cr")
    mask = f"((coalesce(m.mask, 0::UBIGINT) >> {{k}}::UBIGINT) & 1::UBIGINT)::BIGINT"
    parts = []
    for start in range(0, splits, 64):
        stop = min(splits, start + 64)
        masks = (
            f"SELECT participant, bit_or((1::UBIGINT << (s - {start})::UBIGINT)) FILTER (WHERE half = 0) AS mask "
            f"FROM assign WHERE s >= {start} AND s < {stop} GROUP BY participant"
        )
        if packed:
            value = " + ".join(f"({c}::BIGINT << {i * PACK_BITS})" for i, c in enumerate(cols))
            aggs = [f"sum(v * {mask.format(k=s - start)}) AS a_{s}" for s in range(start, stop)] + ["sum(v) AS a_all"]
            unnest = f"unnest(range({start}, {stop})) AS s, unnest([{', '.join(f'a_{s}' for s in range(start, stop))}]) AS a"
            unpack = ", ".join(
                f"((a >> {i * PACK_BITS}) & {2 ** PACK_BITS - 1})::BIGINT AS {c}_a, "
                f"((a_all >> {i * PACK_BITS}) & {2 ** PACK_BITS - 1})::BIGINT - ((a >> {i * PACK_BITS}) & {2 ** PACK_BITS - 1})::BIGINT AS {c}_b"
                for i, c in enumerate(cols)
            )
            parts.append(
                f"""SELECT s, image, {unpack}
                FROM (SELECT image, a_all::BIGINT AS a_all, {unnest.replace(' AS a', ' AS a_h')}
                      FROM (SELECT c.image, {', '.join(aggs)}
                            FROM (SELECT image, participant, {value} AS v FROM {counts}) c
                            LEFT JOIN ({masks}) m USING (participant) GROUP BY c.image)) t(image, a_all, s, a)"""
            )
            continue
        aggs = []
        lists = {}
        for col in cols:
            names = []
            for s in range(start, stop):
                aggs.append(f"sum({col} * {mask.format(k=s - start)}) AS {col}_a_{s}")
                names.append(f"{col}_a_{s}")
            aggs.append(f"sum({col}) AS {col}_all")
            lists[col] = names
        unnest = ", ".join(
            [f"unnest(range({start}, {stop})) AS s"]
            + [f"unnest([{', '.join(names)}]) AS {col}_a" for col, names in lists.items()]
        )
        parts.append(
            f"""SELECT s, image, {', '.join(f'{c}_a, {c}_all - {c}_a AS {c}_b' for c in lists)}
            FROM (SELECT image, {', '.join(f'{c}_all' for c in lists)}, {unnest}
                  FROM (SELECT c.image, {', '.join(aggs)}
                        FROM {counts} c LEFT JOIN ({masks}) m USING (participant) GROUP BY c.image))"""
        )
    return f"WITH assign AS ({split_assignment_sql(counts, splits, seed)}) " + " UNION ALL ".join(
        f"({p})" for p in parts
    )


def can_pack(con: duckdb.DuckDBPyConnection, counts: str) -> bool:
    """Whether every per-image total of hit/miss/fa/cr fits the packed representation."""
    row = con.sql(
        f"SELECT max(greatest(h, m, f, c)), min(least(h0, m0, f0, c0)) FROM (SELECT image, sum(hit) h, sum(miss) m, "
        f"sum(fa) f, sum(cr) c, min(hit) h0, min(miss) m0, min(fa) f0, min(cr) c0 FROM {counts} GROUP BY image)"
    ).fetchall()[0]
    return row[0] is None or (row[0] < 2 ** PACK_BITS and row[1] >= 0)


def split_half(
    con: duckdb.DuckDBPyConnection,
    counts: str,
    *,
    measure: str = "hit_rate",
    splits: int = 25,
    seed: int = 0,
) -> SplitHalfResult:
    """Split participants into random halves ``splits`` times; correlate the
    per-image measure of the two halves across images (Spearman and Pearson);
    Spearman-Brown corrects the mean correlation to the full sample size."""
    if splits < 1:
        raise ValueError("splits must be at least 1")
    ma = measure_sql(measure, "hit_a", "miss_a", "fa_a", "cr_a")
    mb = measure_sql(measure, "hit_b", "miss_b", "fa_b", "cr_b")
    per_split = con.sql(
        f"""
        WITH h AS ({split_half_counts_sql(counts, splits, seed, can_pack(con, counts))}),
        m AS (SELECT s, image, {ma} AS a, {mb} AS b FROM h),
        d AS (SELECT * FROM m WHERE a IS NOT NULL AND b IS NOT NULL AND isfinite(a) AND isfinite(b)),
        r AS (
            SELECT s, a, b,
                   (rank() OVER wa + count(*) OVER wa) / 2.0 AS ra,
                   (rank() OVER wb + count(*) OVER wb) / 2.0 AS rb
            FROM d WINDOW wa AS (PARTITION BY s ORDER BY a), wb AS (PARTITION BY s ORDER BY b)
        ),
        per AS (SELECT s, count(*) AS n, corr(ra, rb) AS rho, corr(a, b) AS r FROM r GROUP BY s)
        SELECT count(*), avg(n), avg(rho), stddev_samp(rho), min(rho), max(rho), avg(r), stddev_samp(r)
        FROM per WHERE isfinite(rho) AND isfinite(r)
        """
    ).fetchall()[0]
    participants = con.sql(f"SELECT count(DISTINCT participant) FROM {counts}").fetchall()[0][0]
    rho, r = _num(per_split[2]), _num(per_split[6])
    return SplitHalfResult(
        splits=int(per_split[0] or 0),
        participants=int(participants),
        images_mean=float(per_split[1] or 0.0),
        spearman_mean=rho,
        spearman_sd=_num(per_split[3]),
        spearman_min=_num(per_split[4]),
        spearman_max=_num(per_split[5]),
        pearson_mean=r,
        pearson_sd=_num(per_split[7]),
        spearman_brown=_num(spearman_brown(rho)),
        pearson_brown=_num(spearman_brown(r)),
        measure=canonical_measure(measure),
        seed=seed,
    )
