"""Human memory measures in DuckDB SQL: per-image measures from hit / miss / false-alarm /
correct-rejection counts, and the per-image counts of both halves of random participant
splits (the data side of split-half reliability).

The statistics themselves (correlations, p-values, bootstrap, Spearman-Brown, noise
ceiling) live in one place, :mod:`memscore.tasks.stats`, and work on the per-image
arrays these queries produce:

- :func:`measure_sql`: hit rate, false-alarm rate, corrected recognition, miss rate, d'
  (dprime; log-linear correction, :data:`DPRIME_CORRECTION`; its z-transform is the SQL
  function ``memscore_probit`` that :func:`register_measure_functions` adds to a connection).
- :func:`observations_sql`: how many trials enter an image's measure (its denominator).
- :func:`split_assignment`: participant p goes to half A of split s when it is among the
  first floor(P/2) of a uniform random permutation of the participants
  (``numpy.random.default_rng(seed).permutation``, one per split; independent splits).
- :func:`split_half_counts_sql`: per (split, image) the counts of both halves from one
  aggregate pass per 64 splits (a bit mask per participant; the four counts packed into
  one BIGINT).
"""

from __future__ import annotations

from statistics import NormalDist

import duckdb
import numpy as np
import pyarrow as pa

from memscore.tasks.stats import SplitHalves

# Per-image measures computable from hit / miss / false-alarm / correct-rejection counts.
MEASURES: dict[str, str] = {
    "hit_rate": "{hit} / nullif({hit} + {miss}, 0)",
    "false_alarm_rate": "{fa} / nullif({fa} + {cr}, 0)",
    # Rounded to 12 decimals like d' below: 3/10 - 1/10 and 4/10 - 2/10 are both 0.2, but not in
    # floating point (an ulp apart), and Spearman's ranks must see them as ties.
    "corrected_recognition": "round({hit} / nullif({hit} + {miss}, 0) - {fa} / nullif({fa} + {cr}, 0), 12)",
    "miss_rate": "{miss} / nullif({hit} + {miss}, 0)",
    # d' = z(H) - z(F), both rates with the log-linear correction (Hautus 1995), so that rates
    # of 0 and 1 stay finite; undefined (NULL) when the image has no target repeat or no first showing.
    # Rounded to 12 decimals: d'(H, F) = d'(1 - F, 1 - H) exactly, but not in floating point, and
    # Spearman's ranks must see such images as ties
    "dprime": "round(CASE WHEN {hit} + {miss} > 0 AND {fa} + {cr} > 0 THEN "
              "memscore_probit(({hit} + 0.5) / ({hit} + {miss} + 1)) - "
              "memscore_probit(({fa} + 0.5) / ({fa} + {cr} + 1)) END, 12)",
}
DPRIME_CORRECTION = ("d' = z(H) - z(F), z the inverse of the standard normal CDF, with the log-linear correction "
                     "(Hautus 1995): H = (hits + 0.5) / (hits + misses + 1), F = (false alarms + 0.5) / "
                     "(false alarms + correct rejections + 1), per image, so rates of 0 and 1 give finite values; rounded to 12 "
                     "decimals so that equal values tie in the ranks")
PROBIT_SQL = "memscore_probit"  # the SQL name of the standard normal quantile function (inverse CDF)
MEASURE_ALIASES = {
    "d'": "dprime",
    "d_prime": "dprime",
    "dp": "dprime",
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
    """SQL expression of ``measure`` over count columns (doubles; NULL where undefined).
    d' calls ``memscore_probit``: run :func:`register_measure_functions` on the connection first."""
    cast = {k: f"({v})::DOUBLE" for k, v in dict(hit=hit, miss=miss, fa=fa, cr=cr).items()}
    return "(" + MEASURES[canonical_measure(measure)].format(**cast) + ")"



# trials entering each measure's denominator (its per-image observation count)
OBSERVATIONS: dict[str, str] = {
    "hit_rate": "{hit} + {miss}",
    "false_alarm_rate": "{fa} + {cr}",
    "corrected_recognition": "least({hit} + {miss}, {fa} + {cr})",
    "miss_rate": "{hit} + {miss}",
    "dprime": "least({hit} + {miss}, {fa} + {cr})",
}


def register_measure_functions(con: duckdb.DuckDBPyConnection) -> None:
    """Add ``memscore_probit(p DOUBLE) -> DOUBLE`` (the standard normal quantile,
    :meth:`statistics.NormalDist.inv_cdf`; NULL in, NULL out) to ``con``, which
    :func:`measure_sql` of d' calls. Idempotent."""
    try:
        con.create_function(PROBIT_SQL, NormalDist().inv_cdf, ["DOUBLE"], "DOUBLE", side_effects=False)
    except duckdb.NotImplementedException as error:  # already added to this connection
        if "already created" not in str(error):
            raise


def observations_sql(measure: str, hit: str = "hit", miss: str = "miss", fa: str = "fa", cr: str = "cr") -> str:
    """SQL count of observations behind ``measure`` of one image: the trials in its
    denominator (repeats for the hit rate, first showings for the false-alarm rate, the
    smaller of the two for corrected recognition)."""
    cast = {k: f"({v})::BIGINT" for k, v in dict(hit=hit, miss=miss, fa=fa, cr=cr).items()}
    return "(" + OBSERVATIONS[canonical_measure(measure)].format(**cast) + ")"


# ---------------------------------------------------------------------------
# split-half counts


def split_assignment(participants: list[str], splits: int, seed: int) -> pa.Table:
    """(s, participant, half): in split s, half 0 holds the first floor(P/2) participants of a
    uniform random permutation (``numpy.random.default_rng(seed)``, one permutation per
    split, participants sorted first so that the file order does not matter)."""
    ordered = sorted(participants)
    rng = np.random.default_rng(seed)
    cut = len(ordered) // 2
    s_col, p_col, h_col = [], [], []
    for s in range(splits):
        perm = rng.permutation(len(ordered))
        half = np.ones(len(ordered), dtype=np.int8)
        half[perm[:cut]] = 0
        s_col += [s] * len(ordered)
        p_col += ordered
        h_col += half.tolist()
    return pa.table({"s": pa.array(s_col, pa.int64()), "participant": pa.array(p_col, pa.string()),
                     "half": pa.array(h_col, pa.int8())})


PACK_BITS = 15  # four counts share one BIGINT; per-image sums must stay below 2**15


def split_half_counts_sql(counts: str, assign: str, splits: int, packed: bool = True) -> str:
    """Per (s, image) the hit/miss/fa/cr counts of half A and half B.

    ``counts`` has columns participant, image, hit, miss, fa, cr (one row per
    participant and image); ``assign`` names a relation (s, participant, half) as
    :func:`split_assignment` gives. One aggregate pass per 64 splits: each participant
    carries a bit mask of the splits in which it is in half A, and half A's sum
    for split s is ``sum(value * bit_s(mask))``. With ``packed`` the four counts
    travel as one BIGINT (15 bits each: per-image totals must stay below 32768),
    one sum per split instead of four.
    """
    cols = ("hit", "miss", "fa", "cr")
    mask = "((coalesce(m.mask, 0::UBIGINT) >> {k}::UBIGINT) & 1::UBIGINT)::BIGINT"
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
    return f"WITH assign AS (SELECT * FROM {assign}) " + " UNION ALL ".join(
        f"({p})" for p in parts
    )


def can_pack(con: duckdb.DuckDBPyConnection, counts: str) -> bool:
    """Whether every per-image total of hit/miss/fa/cr fits the packed representation."""
    row = con.sql(
        f"SELECT max(greatest(h, m, f, c)), min(least(h0, m0, f0, c0)) FROM (SELECT image, sum(hit) h, sum(miss) m, "
        f"sum(fa) f, sum(cr) c, min(hit) h0, min(miss) m0, min(fa) f0, min(cr) c0 FROM {counts} GROUP BY image)"
    ).fetchall()[0]
    return row[0] is None or (row[0] < 2 ** PACK_BITS and row[1] >= 0)


def split_halves(
    con: duckdb.DuckDBPyConnection,
    counts: str,
    images: list[str],
    *,
    measure: str = "hit_rate",
    splits: int = 25,
    seed: int = 0,
) -> SplitHalves:
    """The per-image measure of both halves of ``splits`` random participant splits, as
    arrays (splits, len(images)) in the order of ``images`` (NaN where a half has no
    observation of an image, or an image of ``images`` has no counts).

    ``counts``: a relation (participant, image, hit, miss, fa, cr)."""
    if splits < 1:
        raise ValueError("splits must be at least 1")
    participants = [r[0] for r in con.sql(f"SELECT DISTINCT participant::VARCHAR FROM {counts}").fetchall()]
    con.register("_split_assign", split_assignment(participants, splits, seed))
    con.register("_split_images", pa.table({"image": pa.array(images, pa.string()),
                                             "i": pa.array(range(len(images)), pa.int64())}))
    register_measure_functions(con)
    ma = measure_sql(measure, "hit_a", "miss_a", "fa_a", "cr_a")
    mb = measure_sql(measure, "hit_b", "miss_b", "fa_b", "cr_b")
    try:
        rows = con.sql(
            f"""WITH h AS ({split_half_counts_sql(counts, "_split_assign", splits, can_pack(con, counts))})
            SELECT h.s, i.i, {ma} AS a, {mb} AS b FROM h JOIN _split_images i USING (image)"""
        ).fetchnumpy()
    finally:
        con.unregister("_split_assign")
        con.unregister("_split_images")
    a = np.full((splits, len(images)), np.nan)
    b = np.full((splits, len(images)), np.nan)
    s_idx, i_idx = rows["s"].astype(np.int64), rows["i"].astype(np.int64)
    a[s_idx, i_idx] = np.ma.filled(np.ma.asarray(rows["a"]).astype(np.float64), np.nan)
    b[s_idx, i_idx] = np.ma.filled(np.ma.asarray(rows["b"]).astype(np.float64), np.nan)
    return SplitHalves(a=a, b=b, participants=len(participants), measure=canonical_measure(measure), seed=seed)
