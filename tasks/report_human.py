"""The report's model-vs-human section: ``memscore analyze``'s result, its figures and the gallery's human ranks.

The statistics are :func:`memscore.tasks.analyze.analyze_scores`'s (the code behind
``memscore analyze``), run on the same DEST, human data and options, so the page and
``memscore analyze --json`` agree. This module only reads that result (:func:`ceilings`,
:func:`fraction`: by key name, absent keys skipped), draws its figures
(:mod:`memscore.tasks.report_figures`) and looks up the human score and rank of the
gallery images in the analysis' ``joined`` table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from memscore.storage.human import lit
from memscore.tasks import report_data as data
from memscore.tasks import report_figures as figures
from memscore.tasks.analyze import analyze_scores
from memscore.tasks.report_options import ReportOptions

SCATTER_MAX_POINTS = 100_000


def with_changes(options: Any, **changes: Any) -> Any:
    """A copy of ``options`` (a dataclass or a pydantic model) with ``changes``."""
    if hasattr(options, "model_copy"):
        return options.model_copy(update=changes)
    return dataclasses.replace(options, **changes)


def pick_number(entry: Any, *keys: str) -> float | None:
    """The first of ``keys`` in ``entry`` (a dict) that holds a number; None otherwise."""
    if not isinstance(entry, dict):
        return None
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def ceilings(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The human ceiling rows of an analysis result, read by key name (absent keys are skipped):
    the mean split-half Spearman, its Spearman-Brown correction (the reliability) and the noise
    ceiling (sqrt of the reliability, docs/analysis.md) with its interval."""
    rows: list[dict[str, Any]] = []
    sh = result.get("split_half") or {}
    if pick_number(sh, "spearman_mean") is not None:
        rows.append({"label": "human split-half ρ (mean)", "short": "split-half", "value": sh["spearman_mean"],
                     "ci_low": None, "ci_high": None,
                     "note": f"{sh.get('splits')} splits of {sh.get('participants')} participants, "
                             f"sd {figures._fmt(sh.get('spearman_sd'))}"})
    if pick_number(sh, "spearman_brown") is not None:
        rows.append({"label": "Spearman-Brown corrected (reliability)", "short": "Spearman-Brown",
                     "value": sh["spearman_brown"], "ci_low": None, "ci_high": None,
                     "note": "split-half reliability of the full group"})
    noise = result.get("noise_ceiling")
    entry = noise.get("spearman") if isinstance(noise, dict) and isinstance(noise.get("spearman"), dict) else noise
    value = pick_number(entry, "ceiling", "value") if isinstance(entry, dict) else (
        float(noise) if isinstance(noise, (int, float)) else None)
    if value is not None:
        convention = noise.get("convention") if isinstance(noise, dict) else None
        rows.append({"label": "noise ceiling (√ reliability)", "short": "noise ceiling", "value": value,
                     "ci_low": pick_number(entry, "ci_low"), "ci_high": pick_number(entry, "ci_high"),
                     "note": str(convention or "the highest Spearman a model can expect")})
    return rows


def fraction(result: dict[str, Any]) -> dict[str, Any] | None:
    """The model's rho as a fraction of the ceiling: ``fraction_of_noise_ceiling.spearman`` (or the
    older ``fraction_of_ceiling``), as {value, ci_low, ci_high, label}; None when absent."""
    frac = result.get("fraction_of_noise_ceiling")
    entry = frac.get("spearman") if isinstance(frac, dict) else None
    value = pick_number(entry, "value")
    if value is not None:
        return {"value": value, "ci_low": pick_number(entry, "ci_low"), "ci_high": pick_number(entry, "ci_high"),
                "label": "model ρ / noise ceiling"}
    old = result.get("fraction_of_ceiling")
    if isinstance(old, (int, float)):
        return {"value": float(old), "ci_low": None, "ci_high": None, "label": "model ρ / Spearman-Brown ceiling"}
    return None


def analysed_sql(con: duckdb.DuckDBPyConnection, model: str) -> str:
    """SQL condition on ``joined j``: this model's rows of the images the analysis used (its
    ``analysed`` table when there is one, else every matched image)."""
    tables = {r[0] for r in con.sql("SELECT table_name FROM duckdb_tables() UNION ALL "
                                    "SELECT view_name FROM duckdb_views()").fetchall()}
    columns = set(con.sql("SELECT * FROM joined LIMIT 0").columns)
    cond = [f"j.model = {lit(model)}"] if "model" in columns else []
    if "analysed" in tables:
        cond.append("j.image IN (SELECT image FROM analysed)")
    return " AND ".join(cond) or "TRUE"


def shown_derived(expressions: list[str] | None, model: str) -> tuple[list[str] | None, list[str]]:
    """(the derived predictors the report's analysis can compute, notes on the ones dropped).

    The report analyses one model, so a derived predictor (``--derived``) that reads another
    model (``gap=resmem - falseresmem`` on a report of resmem) is left out, and said so."""
    from memscore.tasks.analysis_options import AnalysisError
    from memscore.tasks.derived import parse_derived

    kept: list[str] = []
    dropped: list[str] = []
    for text in expressions or []:
        try:
            parse_derived(text, [model])
            kept.append(text)
        except AnalysisError:
            dropped.append(text)
    notes = [(f"the report shows {model} only, so it leaves out the derived predictor(s) "
              f"{', '.join(repr(t) for t in dropped)} (see memscore analyze's output)")] if dropped else []
    return (kept or None), notes


def human_section(dest: str, model: str, options: ReportOptions, out: Path, gallery_paths: list[str],
                  scratch: str) -> tuple[dict[str, Any], list[dict], dict[str, tuple[float, int]], list[str]]:
    """(the analysis result, its figures, {gallery path: (human score, human rank)}, notes).

    The analysis runs with ``options.analysis`` and the report's model, group column, seed and
    storage options. Raises what :func:`memscore.tasks.analyze.analyze_scores` raises."""
    derived, notes = shown_derived(options.analysis.derived, model)
    aopts = with_changes(options.analysis, model=model, group_column=options.group_column, seed=options.seed,
                         storage_options=options.storage_options, derived=derived)
    con = data.connect(options.memory_limit, scratch)
    try:
        result = analyze_scores(dest, options.human, aopts, con=con)
        n = int(result.get("n") or 0)
        group_col = options.group_column if options.group_column and result.get("groups") else None
        cols = "j.score, j.human" + (f', j."{group_col}"::VARCHAR AS grp' if group_col else "")
        used = analysed_sql(con, model)  # the images the statistics used: after --min-observations
        sample = f" USING SAMPLE {SCATTER_MAX_POINTS} ROWS REPEATABLE ({options.seed})" if n > SCATTER_MAX_POINTS else ""
        if sample:
            notes.append(f"the scatter shows a random {SCATTER_MAX_POINTS:,} of the {n:,} analysed images")
        pairs = con.sql(f"SELECT {cols} FROM joined j WHERE {used}{sample}").fetchnumpy()
        ranks: dict[str, tuple[float, int]] = {}
        if gallery_paths:
            wanted = ", ".join(lit(p) for p in gallery_paths)
            for path, human, rank in con.sql(
                    f"SELECT score_image, human, rank FROM (SELECT j.score_image, j.human, rank() OVER "
                    f"(ORDER BY j.human DESC) AS rank FROM joined j WHERE {used}) "
                    f"WHERE score_image IN ({wanted})").fetchall():
                ranks[path] = (float(human), int(rank))
    finally:
        con.close()
    score_arr, human_arr = np.asarray(pairs["score"], float), np.asarray(pairs["human"], float)
    groups = np.asarray(pairs["grp"]).astype(str) if "grp" in pairs else None
    figs = []
    measure = str(result.get("human_measure") or "score")
    f = figures.scatter_figure(out, score_arr, human_arr, result, model, measure,
                               groups=groups if groups is not None and len(set(groups.tolist())) <= 10 else None)
    figs.append({**f, "title": "Model vs human, one point per matched image"})
    rows = ceilings(result)
    sp = result.get("spearman") or {}
    if rows and sp.get("rho") is not None:
        bars = [(f"{model} ρ", sp["rho"], sp.get("ci_low"), sp.get("ci_high"))]
        bars += [(c["short"], c["value"], c["ci_low"], c["ci_high"]) for c in rows]
        figs.append({**figures.ceiling_figure(out, bars), "title": "Model Spearman ρ beside the human ceiling"})
    if groups is not None and result.get("groups"):
        stats = [g for g in result["groups"] if g.get("spearman")]
        if stats:
            figs.append({**figures.group_scatter_figure(out, score_arr, human_arr, groups, stats),
                         "title": f"Model vs human per {options.group_column}"})
    return result, figs, ranks, notes
