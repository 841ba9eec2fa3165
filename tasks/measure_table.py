"""The model x measure table of ``memscore analyze --human-measure a,b,...`` (or ``all``):
every model (and derived score) against every human measure computed from counts or
trials (hit rate, false-alarm rate, corrected recognition, d', miss rate).

Per measure: the images are those of the analysis (matched, scored by every model,
their human data read) on which this measure is defined and rests on at least
``min_observations`` trials of its own (so ``n`` may differ between measures); the
statistics are :func:`memscore.tasks.stats.analyse_models` (Spearman, Pearson, Kendall,
bootstrap intervals, paired differences) and, with trial data, the split-half
reliability, Spearman-Brown and noise ceiling of that measure
(:func:`memscore.storage.stats.split_halves`). Per-image counts have no participants
to split, so their ceiling is unavailable, with the reason.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from memscore.storage.stats import (
    DPRIME_CORRECTION,
    canonical_measure,
    measure_sql,
    observations_sql,
    register_measure_functions,
    split_halves,
)
from memscore.tasks.analysis_options import AnalysisError, AnalysisOptions
from memscore.tasks.model_scores import model_arrays
from memscore.tasks.stats import analyse_models

# ``--human-measure all``: miss_rate is left out (it is 1 - hit rate: the same correlations, sign flipped)
ALL_MEASURES = ("hit_rate", "false_alarm_rate", "corrected_recognition", "dprime")
DEFINITIONS = {
    "hit_rate": "hits / (hits + misses)",
    "false_alarm_rate": "false alarms / (false alarms + correct rejections)",
    "corrected_recognition": "hit rate - false-alarm rate",
    "miss_rate": "misses / (hits + misses)",
    "dprime": "z(corrected H) - z(corrected F)",
}
COUNTS_CEILING_REASON = ("per-image counts hold no participants to split in halves: the split-half reliability and "
                         "the noise ceiling need trial data (--human-format trials or bids)")


def parse_measures(text: str | list[str] | None) -> list[str]:
    """``hit_rate,dprime`` / a list / ``all`` as canonical measure names (aliases such as
    hr, far, crr, d' accepted; duplicates dropped). Raises ValueError on an unknown name."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    names = [p.strip() for part in parts for p in str(part).split(",") if p.strip()]
    out: list[str] = []
    for name in names:
        for m in (ALL_MEASURES if name.lower() == "all" else (canonical_measure(name),)):
            if m not in out:
                out.append(m)
    return out


def measure_fields(measures: list[str]) -> dict[str, list[str] | str | None]:
    """:class:`AnalysisOptions` fields for parsed ``measures`` (:func:`parse_measures`): one measure is
    ``human_measure`` (today's output), two or more ``human_measures`` (the model x measure table)."""
    return {"human_measure": measures[0] if len(measures) == 1 else None,
            "human_measures": measures if len(measures) > 1 else None}


def _measure_arrays(con: duckdb.DuckDBPyConnection, models: list[str], measure: str,
                    min_observations: int) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """(images, human, {model: scores}, observations) for ``measure`` over ``joined``."""
    con.sql(f"""CREATE OR REPLACE TEMP TABLE _measure AS
        SELECT image, any_value({measure_sql(measure)}) AS human, any_value({observations_sql(measure)}) AS observations
        FROM joined GROUP BY image HAVING count(DISTINCT model) = {len(models)}""")
    row = con.sql(f"""SELECT count(*) FILTER (WHERE human IS NULL OR NOT isfinite(human)),
        count(*) FILTER (WHERE human IS NOT NULL AND isfinite(human) AND observations < {int(min_observations)})
        FROM _measure""").fetchall()[0]
    con.sql(f"""CREATE OR REPLACE TEMP TABLE _measure AS SELECT * FROM _measure
        WHERE human IS NOT NULL AND isfinite(human) AND observations >= {int(min_observations)} ORDER BY image""")
    obs = con.sql("SELECT min(observations), median(observations), max(observations) FROM _measure").fetchall()[0]
    images, human, scores = model_arrays(con, models, "_measure")
    con.sql("DROP TABLE _measure")
    info = {"undefined": int(row[0]), "excluded": int(row[1]), "min": obs[0], "median": obs[1], "max": obs[2],
            "min_observations": int(min_observations)}
    return images, human, scores, info


def _entry(measure: str, models: list[str], stats: dict[str, Any], observations: dict[str, Any],
           ceiling_reason: str | None) -> dict[str, Any]:
    return {
        "measure": measure,
        "n": stats["n"],
        "observations": observations,
        "models": [{"model": m, **stats["models"][m]} for m in models],
        "comparisons": stats["comparisons"],
        "split_half": stats["split_half"],
        "noise_ceiling": stats["noise_ceiling"],
        "ceiling_unavailable": ceiling_reason,
    }


def measure_table(con: duckdb.DuckDBPyConnection, models: list[str], measures: list[str], options: AnalysisOptions,
                  *, has_trials: bool, human_format: str, primary: dict[str, Any] | None = None,
                  warnings: list[str] | None = None) -> dict[str, Any]:
    """The table as a JSON-ready dict: ``measures`` (names), ``models``, ``assumptions``
    (lines), ``dprime_correction`` (when d' is one of them) and ``rows``: per measure its
    ``n``, ``observations``, ``models[]`` (spearman, pearson, kendall,
    fraction_of_noise_ceiling), ``comparisons``, ``split_half``, ``noise_ceiling`` and
    ``ceiling_unavailable`` (the reason, or None).

    ``primary``: ``{"measure", "stats", "observations"}`` of the analysis already run on
    the first measure (same images, same draws), reused rather than recomputed."""
    if not any(c == "hit" for c in con.sql("SELECT * FROM joined LIMIT 0").columns):
        raise AnalysisError(f"several human measures need counts or trials; the human data was read as {human_format} "
                            f"(use --human-column for one ready score)")
    register_measure_functions(con)
    warnings = warnings if warnings is not None else []
    if has_trials and options.splits > 0:
        reason = None
    elif has_trials:
        reason = "--splits 0: no split halves were drawn"
    else:
        reason = COUNTS_CEILING_REASON
    rows = []
    for measure in measures:
        if primary is not None and measure == primary["measure"]:
            rows.append(_entry(measure, models, primary["stats"], primary["observations"], reason))
            continue
        images, human, scores, observations = _measure_arrays(con, models, measure, options.min_observations)
        if observations["undefined"]:
            warnings.append(f"{measure}: {observations['undefined']} image(s) have no defined {measure} (no target "
                            f"repeat or no first showing) and are left out of its row")
        if observations["excluded"]:
            warnings.append(f"{measure}: dropped {observations['excluded']} image(s) with fewer than "
                            f"{options.min_observations} observation(s) (--min-observations)")
        halves = None
        if has_trials and options.splits > 0 and images:
            halves = split_halves(con, "trial_counts", images, measure=measure, splits=options.splits, seed=options.seed)
        stats = analyse_models(scores, human, halves=halves, resamples=options.bootstrap, seed=options.seed,
                               confidence=options.confidence, kendall_max_n=options.kendall_max_n)
        for name, entry in stats["models"].items():
            if entry["spearman"].get("reason"):
                warnings.append(f"{measure} / {name}: correlations are undefined: {entry['spearman']['reason']}")
        rows.append(_entry(measure, models, stats, observations, reason))
    lines = [f"measures, per image from the {human_format}: " + "; ".join(f"{m} = {DEFINITIONS[m]}" for m in measures)]
    if "dprime" in measures:
        lines.append(DPRIME_CORRECTION)
    lines.append("each row is judged on the images scored by every model on which its measure is defined"
                 + (f" and rests on at least {options.min_observations} trials" if options.min_observations else ""))
    lines.append("noise ceiling: " + (reason or "per measure, from the same random participant split halves"))
    out: dict[str, Any] = {"measures": measures, "models": models, "assumptions": lines, "rows": rows}
    if "dprime" in measures:
        out["dprime_correction"] = DPRIME_CORRECTION
    return out


__all__ = ["ALL_MEASURES", "COUNTS_CEILING_REASON", "measure_table", "parse_measures"]
