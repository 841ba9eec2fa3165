"""The analysis library behind ``memscore analyze``: model scores beside human memory data.

:func:`analyze_scores` reads the scores (a memscore output folder, or any Parquet/CSV
with an id and one or more score columns; a folder may hold several models) and the
human data (:mod:`memscore.storage.human`) into one DuckDB connection, matches images
by path, file name or stem, applies ``min_observations``, and hands per-image arrays
to :mod:`memscore.tasks.stats` (the one statistics home): Spearman, Pearson and
Kendall with p-values and bootstrap intervals, paired differences between models, and
with trial data the split-half reliability, noise ceiling and each model's fraction of
it, all on the same images and the same bootstrap draws. :func:`run_analysis` adds the
files of ``--out``.

The parts: options and error (:mod:`~memscore.tasks.analysis_options`), reading scores
(:mod:`~memscore.tasks.model_scores`), matching (:mod:`~memscore.tasks.matching`), the
statistics (:mod:`~memscore.tasks.stats`), the text and Markdown summaries
(:mod:`~memscore.tasks.summary`) and the ``--out`` files
(:mod:`~memscore.tasks.analysis_outputs`); this module selects the images and ties them
together. Nothing here imports Prefect (the flow is :mod:`memscore.flows.analyze`).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import duckdb

from memscore.storage.human import Exclusion, HumanDataError, load_human
from memscore.storage.relations import lit, q
from memscore.storage.stats import DPRIME_CORRECTION, split_halves
from memscore.storage.uris import local_copy
from memscore.tasks.analysis_options import WARN_OBSERVATIONS, AnalysisError, AnalysisOptions
from memscore.tasks.analysis_outputs import check_writable, write_outputs
from memscore.tasks.derived import add_derived
from memscore.tasks.matching import match_images
from memscore.tasks.measure_table import measure_table, parse_measures
from memscore.tasks.model_scores import (
    ID_CANDIDATES,
    SCORE_CANDIDATES,
    _pick,
    load_scores,
    model_arrays,
    scores_relation_sql,
)
from memscore.tasks.stats import analyse_models

# ---------------------------------------------------------------------------
# the analysis


def select_images(con: duckdb.DuckDBPyConnection, models: list[str], options: AnalysisOptions, has_observations: bool,
                  warnings: list[str]) -> dict[str, Any]:
    """Temp table ``analysed`` (image, human, observations): the matched images every model
    scored, with at least ``options.min_observations`` observations; what was dropped and
    the observation counts are returned (and warned about)."""
    obs = "observations" if has_observations else "NULL::BIGINT"
    con.sql(f"""CREATE OR REPLACE TEMP TABLE common AS
        SELECT image, any_value(human) AS human, any_value({obs}) AS observations FROM joined
        GROUP BY image HAVING count(DISTINCT model) = {len(models)}""")
    matched = con.sql("SELECT count(DISTINCT image) FROM joined").fetchall()[0][0]
    common = con.sql("SELECT count(*) FROM common").fetchall()[0][0]
    info: dict[str, Any] = {"min_observations": options.min_observations, "warn_below": WARN_OBSERVATIONS,
                            "not_scored_by_every_model": int(matched - common)}
    if matched > common:
        warnings.append(f"{matched - common} matched image(s) lack a score of some model: every model is judged on "
                        f"the {common} image(s) all of them scored")
    if options.min_observations and not has_observations:
        raise AnalysisError("--min-observations needs per-image counts or trial data (this human data has no "
                            "observation counts)")
    if has_observations:
        row = con.sql(f"""SELECT min(observations), median(observations), max(observations),
            count(*) FILTER (WHERE observations < {int(options.min_observations)}),
            count(*) FILTER (WHERE observations >= {int(options.min_observations)}
                             AND observations < {WARN_OBSERVATIONS}) FROM common""").fetchall()[0]
        info.update(min=row[0], median=row[1], max=row[2], excluded=int(row[3]), below_warn=int(row[4]))
        if row[3]:
            warnings.append(f"dropped {row[3]} image(s) with fewer than {options.min_observations} observation(s) "
                            f"(--min-observations), from the model correlations and the split-half alike")
        if row[4]:
            warnings.append(f"{row[4]} image(s) rest on fewer than {WARN_OBSERVATIONS} observations each (fewest: "
                            f"{row[0]}); they weigh as much as any other image: consider --min-observations")
        cond = f"WHERE observations >= {int(options.min_observations)}"
    else:
        cond = ""
    con.sql(f"CREATE OR REPLACE TEMP TABLE analysed AS SELECT * FROM common {cond} ORDER BY image")
    info["images"] = int(con.sql("SELECT count(*) FROM analysed").fetchall()[0][0])
    return info


def analyze_scores(scores: str, human: str, options: AnalysisOptions | None = None, *,
                   con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
    """Everything ``memscore analyze`` reports, as a JSON-ready dict (keys: docs/analysis.md).

    Raises :class:`AnalysisError` (one line) on inputs that cannot be analysed as given."""
    options = (options or AnalysisOptions()).resolved()  # credentials named by storage_options_secret
    started = time.perf_counter()
    con = con or duckdb.connect()
    if options.bootstrap < 0 or options.splits < 0 or options.min_observations < 0:
        raise AnalysisError("--bootstrap, --splits and --min-observations must be zero or more")
    if not 0 < options.confidence < 1:
        raise AnalysisError("--confidence must be between 0 and 1")
    try:
        measures = parse_measures(options.human_measures)
    except ValueError as error:
        raise AnalysisError(str(error)) from None
    if len(measures) > 1 and options.human_column:
        raise AnalysisError("several human measures are computed from counts or trials; drop --human-column")
    if len(measures) > 1 and options.human_measure and options.human_measure != measures[0]:
        raise AnalysisError("give the measures once: human_measure or human_measures (the table's first measure)")
    # the first measure of the table fills the top-level keys, as --human-measure would
    primary_measure = measures[0] if measures else options.human_measure
    warnings: list[str] = []
    scores_info = load_scores(con, os.fspath(scores), options, warnings)
    exclusion = Exclusion(options.max_filler_fa, options.max_vigilance_miss)
    with tempfile.TemporaryDirectory(prefix="memscore-human-") as folder:
        try:  # human data in a bucket: a local copy (small), read like a local file
            local_human = local_copy(os.fspath(human), folder, options.storage_options)
        except Exception as error:  # noqa: BLE001 - not found, credentials, network
            raise AnalysisError(f"cannot read human data {human}: {error}") from error
        try:
            human_info = load_human(con, local_human, format=options.human_format,
                                    id_column=options.human_id_column or options.id_column,
                                    score_column=options.human_column, measure=primary_measure,
                                    exclusion=exclusion, empty_response=options.empty_response)
        except HumanDataError as error:  # name the URI the user gave, not the local copy
            raise AnalysisError(str(error).replace(local_human, os.fspath(human))) from None
    if local_human != os.fspath(human):
        human_info.path = os.fspath(human)
    warnings.extend(human_info.warnings)
    matched = match_images(con, options.match)
    if matched["n_unmatched_scores"] or matched["n_unmatched_human"]:
        warnings.append(f"unmatched: {matched['n_unmatched_scores']} scored image(s) not in the human data, "
                        f"{matched['n_unmatched_human']} human image(s) without a score")
    models = list(scores_info["models"])
    derived = add_derived(con, list(options.derived or []), models, warnings)
    models += [d.name for d in derived]
    selection = select_images(con, models, options, human_info.has_observations, warnings)
    images, human_values, model_values = model_arrays(con, models)
    halves = None
    if human_info.has_trials and options.splits > 0:
        # the ceiling over the analysed images only, as the models are judged on them
        halves = split_halves(con, "trial_counts", images, measure=human_info.measure, splits=options.splits,
                              seed=options.seed)
    stats = analyse_models(model_values, human_values, halves=halves, resamples=options.bootstrap,
                           seed=options.seed, confidence=options.confidence, kendall_max_n=options.kendall_max_n)
    _stat_warnings(stats, options, warnings)
    primary = stats["models"][models[0]]
    result: dict[str, Any] = {
        "scores": scores_info["path"],
        "human": human_info.path,
        "human_format": human_info.format,
        "human_measure": human_info.measure,
        "score_column": scores_info["score_column"],
        "id_column": scores_info["id_column"],
        "human_id_column": human_info.id_column,
        "count_columns": human_info.count_columns,
        "response_coding": human_info.response_coding,
        "order_source": human_info.order_source,
        "match": matched["match"],
        "n": stats["n"],
        "n_matched": matched["n"],
        "n_scores": scores_info["images"],
        "n_human": human_info.images,
        "n_unmatched_scores": matched["n_unmatched_scores"],
        "n_unmatched_human": matched["n_unmatched_human"],
        "unmatched_examples": matched["unmatched_examples"],
        "observations": selection,
        "model": models[0],
        "spearman": primary["spearman"],
        "pearson": primary["pearson"],
        "kendall": primary["kendall"],
        "models": [{"model": m, **stats["models"][m]} for m in models],
        "comparisons": stats["comparisons"],
        "bootstrap": stats["bootstrap"],
        "split_half": stats["split_half"],
        "noise_ceiling": stats["noise_ceiling"],
        "fraction_of_noise_ceiling": primary.get("fraction_of_noise_ceiling"),
        "participants": human_info.participants,
        "published_check": human_info.published_check,
        "groups": None,
        "warnings": warnings,
    }
    if derived:
        result["derived"] = [d.as_dict() for d in derived]
    if human_info.measure == "dprime" or "dprime" in measures:
        result["dprime_correction"] = DPRIME_CORRECTION
    if len(measures) > 1:
        result["human_measures"] = measures
        result["measure_table"] = measure_table(
            con, models, measures, options, has_trials=human_info.has_trials, human_format=human_info.format,
            primary={"measure": human_info.measure, "stats": stats,
                     "observations": {k: selection.get(k) for k in ("min", "median", "max", "min_observations")}
                     | {"excluded": selection.get("excluded", 0), "undefined": 0}},
            warnings=warnings)
    if options.group_column:
        result["groups"] = group_stats(con, options, models)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _stat_warnings(stats: dict[str, Any], options: AnalysisOptions, warnings: list[str]) -> None:
    """Warnings for undefined correlations, dropped bootstrap resamples and unusable splits."""
    n = stats["n"]
    for name, entry in stats["models"].items():
        label = f"{name}: " if len(stats["models"]) > 1 else ""
        reason = entry["spearman"].get("reason")
        if reason:
            warnings.append(f"{label}correlations are undefined: {reason}")
            continue
        for key in ("spearman", "pearson"):
            used = entry[key].get("usable_resamples", 0)
            if options.bootstrap and n >= 3 and used < options.bootstrap:
                warnings.append(f"{label}{key}: {options.bootstrap - used} of {options.bootstrap} bootstrap resamples "
                                f"were unusable (a constant side); the interval rests on {used}")
    sh = stats.get("split_half")
    if sh:
        if sh["splits_usable"] < sh["splits"]:
            warnings.append(f"split-half: {sh['splits'] - sh['splits_usable']} of {sh['splits']} splits were unusable "
                            f"(fewer than 3 images observed in both halves, or a constant half)")
        for key, entry in (stats.get("noise_ceiling") or {}).items():
            if isinstance(entry, dict) and entry.get("reason"):
                warnings.append(f"noise ceiling ({key}): {entry['reason']}")


def group_stats(con: duckdb.DuckDBPyConnection, options: AnalysisOptions,
                models: list[str] | None = None) -> list[dict[str, Any]]:
    """The same correlations within each value of the group column (loops over groups, not rows)."""
    models = models or [r[0] for r in con.sql("SELECT DISTINCT model FROM joined ORDER BY 1").fetchall()]
    columns = list(con.sql("SELECT * FROM joined LIMIT 0").columns)
    col = _pick(columns, options.group_column, (), "group", "the human data or the scores")
    con.sql(f"CREATE OR REPLACE TEMP TABLE _groups AS SELECT DISTINCT image, {q(col)}::VARCHAR AS g FROM joined "
            f"WHERE image IN (SELECT image FROM analysed)")
    groups = con.sql("SELECT g, count(DISTINCT image) FROM _groups GROUP BY 1 ORDER BY 1").fetchall()
    out = []
    for g, n in groups:
        cond = "g IS NULL" if g is None else f"g = {lit(g)}"
        entry: dict[str, Any] = {"group": g, "n": int(n)}
        if n >= options.min_group_size:
            _, human_values, model_values = model_arrays(
                con, models, cond=f"WHERE a.image IN (SELECT image FROM _groups WHERE {cond})")
            s = analyse_models(model_values, human_values, resamples=options.bootstrap, seed=options.seed,
                               confidence=options.confidence, kendall_max_n=options.kendall_max_n)
            first = s["models"][models[0]]
            entry.update(spearman=first["spearman"], pearson=first["pearson"], kendall=first["kendall"])
            if len(models) > 1:
                entry["models"] = [{"model": m, **s["models"][m]} for m in models]
                entry["comparisons"] = s["comparisons"]
        out.append(entry)
    return out


def run_analysis(scores: str, human: str, options: AnalysisOptions | None = None,
                 out_dir: str | None = None) -> dict[str, Any]:
    """:func:`analyze_scores`, plus the files of ``--out`` when out_dir is given (a local
    folder or a URI, written with ``options.storage_options``; checked writable first)."""
    options = (options or AnalysisOptions()).resolved()  # credentials named by storage_options_secret
    if out_dir:
        check_writable(out_dir, options.storage_options)
    con = duckdb.connect()
    try:
        result = analyze_scores(scores, human, options, con=con)
        if out_dir:
            result["outputs"] = write_outputs(con, result, out_dir, options.storage_options)
        return result
    finally:
        con.close()


__all__ = [
    "ID_CANDIDATES", "SCORE_CANDIDATES", "WARN_OBSERVATIONS", "AnalysisError", "AnalysisOptions", "analyze_scores",
    "check_writable", "group_stats", "load_scores", "match_images", "run_analysis", "scores_relation_sql",
    "select_images", "write_outputs",
]
