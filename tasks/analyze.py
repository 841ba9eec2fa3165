"""The analysis library behind ``memscore analyze``: model scores beside human memory data.

:func:`analyze_scores` reads the scores (a memscore output folder, or any Parquet/CSV
with an id and one or more score columns; a folder may hold several models) and the
human data (:mod:`memscore.storage.human`) into one DuckDB connection, matches images
by path, file name or stem, applies ``min_observations``, and hands per-image arrays
to :mod:`memscore.tasks.stats` (the one statistics home): Spearman, Pearson and
Kendall with p-values and bootstrap intervals, paired differences between models, and
with trial data the split-half reliability, noise ceiling and each model's fraction of
it, all on the same images and the same bootstrap draws. :func:`run_analysis` adds the
files of ``--out``; the text and Markdown summaries are in :mod:`memscore.tasks.summary`.
Nothing here imports Prefect (the flow is :mod:`memscore.flows.analyze`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from memscore.storage.human import Exclusion, HumanDataError, find_column, load_human
from memscore.storage.parts import duckdb_parts, list_parts
from memscore.storage.relations import MATCH_MODES, key_sql, lit, num, parquet_files_sql, q, table_file_sql
from memscore.storage.schema import SCORES_DIR
from memscore.storage.stats import split_halves
from memscore.storage.uris import Location, local_copy, open_location
from memscore.tasks.stats import analyse_models
from memscore.tasks.summary import summary_markdown

WARN_OBSERVATIONS = 5  # images with fewer observations than this are counted in a warning
SCORE_CANDIDATES = ("score", "resmem", "memorability", "prediction", "predicted", "pred", "mem_score", "memscore")
ID_CANDIDATES = ("path", "image_id", "image_name", "image", "filename")


class AnalysisError(HumanDataError):
    """Inputs that cannot be analysed as given; the message is one line."""


@dataclass
class AnalysisOptions:
    """Every option of ``memscore analyze`` (the CLI and the flow build one; defaults here only).

    ``score_column``: one column, several (a list, or names separated by commas), or None
    (the first of :data:`SCORE_CANDIDATES`); several columns, or several models in a
    memscore folder without ``model``, are compared pairwise. ``min_observations``: drop
    images whose measure rests on fewer trials (counts and trial data only; 0 keeps all).
    ``empty_response``: ``missing`` or ``no`` (trial data)."""

    id_column: str | None = None
    human_id_column: str | None = None
    score_column: str | list[str] | None = None
    human_column: str | None = None
    human_measure: str | None = None
    human_format: str = "auto"
    match: str = "auto"
    bootstrap: int = 1000
    splits: int = 25
    seed: int = 0
    confidence: float = 0.95
    group_column: str | None = None
    model: str | None = None
    max_filler_fa: float | None = 0.5
    max_vigilance_miss: float | None = 0.5
    kendall_max_n: int = 10_000
    min_group_size: int = 3
    min_observations: int = 0
    empty_response: str = "missing"
    storage_options: dict[str, Any] | None = None  # fsspec options for --scores, --human and --out URIs


# ---------------------------------------------------------------------------
# model scores


def scores_relation_sql(path: str, con: duckdb.DuckDBPyConnection | None = None,
                        storage_options: dict[str, Any] | None = None) -> str:
    """SQL reading model scores from a memscore folder, a Parquet/CSV file or a folder of Parquet files.

    A folder is read as ``memscore score`` writes it: the parts directly in its ``scores``
    subfolder (or in the folder itself when it has none), by :func:`storage.parts.list_parts`'s
    rule (``*.parquet``, no hidden or ``_`` names, no subfolders), alike for a local folder and
    a bucket. ``path`` may be a URI (``s3://``, ``gs://``, ...): its filesystem is registered with
    ``con`` (DuckDB reads through fsspec, fetching only the columns it needs).
    """
    if "://" in path and not path.startswith("file://"):
        return _remote_scores_relation_sql(path, con, storage_options)
    p = Path(path.removeprefix("file://"))
    if p.is_dir():
        location = open_location(str(p))
        folder = _scores_folder(location)
        files = list_parts(location, folder)
        if not files:
            raise AnalysisError(f"no Parquet files under {p / folder if folder else p} (expected a memscore output folder)")
        return parquet_files_sql(files)
    if not p.exists():
        raise AnalysisError(f"scores not found: {path}")
    return table_file_sql(path)


def _scores_folder(location: Location) -> str:
    """The folder of ``location`` holding the parts: ``scores`` in a memscore folder, else itself ("")."""
    return SCORES_DIR if location.fs.isdir(location.join(SCORES_DIR)) else ""


def _remote_scores_relation_sql(uri: str, con: duckdb.DuckDBPyConnection | None,
                                 storage_options: dict[str, Any] | None) -> str:
    if con is None:
        raise ValueError("reading scores from a URI needs the DuckDB connection to register its filesystem")
    location = open_location(uri, storage_options)
    try:
        if location.fs.isdir(location.root):
            folder = _scores_folder(location)
            files = duckdb_parts(con, location, folder)
            if not files:
                raise AnalysisError(f"no Parquet files under {location.full_uri(location.join(folder))} "
                                    "(expected a memscore output folder)")
            return parquet_files_sql(files)
        if not location.fs.isfile(location.root):
            raise AnalysisError(f"scores not found: {uri}")
    except AnalysisError:
        raise
    except Exception as error:  # noqa: BLE001 - credentials, network: one line for the user
        raise AnalysisError(f"cannot read scores {uri}: {error}") from error
    con.register_filesystem(location.fs)
    return table_file_sql(uri)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    """:func:`storage.human.find_column`, failing with :class:`AnalysisError`."""
    try:
        return find_column(columns, wanted, candidates, what, path)
    except HumanDataError as error:
        raise AnalysisError(str(error)) from None


def _score_columns(options: AnalysisOptions) -> list[str] | None:
    value = options.score_column
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    out = [part.strip() for name in names for part in str(name).split(",") if part.strip()]
    return out or None


def load_scores(con: duckdb.DuckDBPyConnection, path: str, options: AnalysisOptions, warnings: list[str]) -> dict[str, Any]:
    """Temp table ``model_scores`` (image, model, score, other columns but feature vectors):
    one row per image and model. A model is a value of the ``model`` column (all of them
    unless ``options.model``), or a score column when several are given."""
    rel = scores_relation_sql(path, con, options.storage_options)
    try:
        described = con.sql(f"DESCRIBE SELECT * FROM {rel}").fetchall()
    except duckdb.Error as error:
        raise AnalysisError(f"cannot read scores {path}: {str(error).splitlines()[0]}") from error
    columns = [r[0] for r in described]
    types = {r[0]: r[1] for r in described}
    id_col = _pick(columns, options.id_column, ID_CANDIDATES, "image id", path)
    wanted = _score_columns(options)
    if wanted is None:
        lower = {c.lower(): c for c in columns}
        score_col = next((lower[c] for c in SCORE_CANDIDATES if c in lower), None)
        if score_col is None:
            raise AnalysisError(f"{path}: no score column found (tried {', '.join(SCORE_CANDIDATES)}); use --score-column")
        score_cols = [score_col]
    else:
        score_cols = [_pick(columns, c, (), "score", path) for c in wanted]
        if len(set(score_cols)) != len(score_cols):
            raise AnalysisError(f"--score-column names a column twice ({', '.join(score_cols)})")
    where = []
    has_model = "model" in columns
    models: list[str] = []
    if has_model:
        models = [str(m[0]) for m in con.sql(f"SELECT DISTINCT model FROM {rel} WHERE model IS NOT NULL ORDER BY 1").fetchall()]
        if options.model is not None:
            where.append(f"model = {lit(options.model)}")
            if options.model not in models:
                raise AnalysisError(f"{path} has no scores of model {options.model!r} "
                                    f"(models: {', '.join(models)})")
            models = [options.model]
    elif options.model is not None:
        raise AnalysisError(f"{path} has no model column; drop --model")
    keep = [c for c in columns if c != id_col and c not in score_cols and c.lower() not in ("image", "score", "model")
            and not c.startswith("feat_") and "[" not in types[c]]
    extra = "".join(f", {q(c)}" for c in keep)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    selects = []
    for col in score_cols:
        if has_model:
            label = "model::VARCHAR" if len(score_cols) == 1 else f"model::VARCHAR || {lit(':' + col)}"
        else:
            label = lit(col)
        selects.append(f"SELECT {q(id_col)}::VARCHAR AS image, {label} AS model, "
                       f"{num(q(col), 'DOUBLE', types[col])} AS score{extra} FROM {rel} {cond}")
    con.sql("CREATE OR REPLACE TEMP TABLE model_staged AS " + " UNION ALL ".join(selects))
    row = con.sql("SELECT count(*), count(*) FILTER (WHERE image IS NULL), count(*) FILTER (WHERE image IS NOT NULL "
                  "AND (score IS NULL OR NOT isfinite(score))) FROM model_staged").fetchall()[0]
    if row[1]:
        warnings.append(f"scores: dropped {row[1]} row(s) without an image id")
    if row[2]:
        warnings.append(f"scores: dropped {row[2]} row(s) with a missing, non-numeric or NaN score")
    con.sql("CREATE OR REPLACE TEMP TABLE model_scores AS SELECT * FROM model_staged "
            "WHERE image IS NOT NULL AND score IS NOT NULL AND isfinite(score)")
    con.sql("DROP TABLE model_staged")
    n = con.sql("SELECT count(DISTINCT image) FROM model_scores").fetchall()[0][0]
    if not n:
        raise AnalysisError(f"{path}: no usable scores ({row[0]} row(s) read)")
    out = con.sql("SELECT count(*) FROM model_scores WHERE score < 0 OR score > 1").fetchall()[0][0]
    if out:
        warnings.append(f"scores: {out} score(s) outside [0, 1] (kept)")
    dup = con.sql("SELECT count(*), list(image ORDER BY image)[1:3] FROM (SELECT image FROM model_scores "
                  "GROUP BY image, model HAVING count(*) > 1)").fetchall()[0]
    if dup[0]:
        raise AnalysisError(f"{path}: {dup[0]} image id(s) appear more than once in the scores of one model "
                            f"(e.g. {', '.join(dup[1])}); choose an id column that is unique")
    names = [r[0] for r in con.sql("SELECT DISTINCT model FROM model_scores ORDER BY 1").fetchall()]
    return {"path": path, "id_column": id_col, "score_column": score_cols[0] if len(score_cols) == 1 else score_cols,
            "rows": int(row[0]), "images": int(n), "extra_columns": keep, "models": names}


# ---------------------------------------------------------------------------
# matching


def _match_counts(con: duckdb.DuckDBPyConnection, mode: str) -> dict[str, Any]:
    k = key_sql("image", mode)
    row = con.sql(
        f"""WITH s AS (SELECT DISTINCT image, {k} AS k FROM model_scores), h AS (SELECT image, {k} AS k FROM human)
        SELECT (SELECT count(DISTINCT k) FROM s WHERE k IN (SELECT k FROM h)),
               (SELECT count(*) - count(DISTINCT k) FROM s), (SELECT count(*) - count(DISTINCT k) FROM h),
               (SELECT list(image ORDER BY image)[1:2] FROM s WHERE k = (SELECT min(k) FROM s GROUP BY k
                 HAVING count(*) > 1 ORDER BY 1 LIMIT 1)),
               (SELECT list(image ORDER BY image)[1:2] FROM h WHERE k = (SELECT min(k) FROM h GROUP BY k
                 HAVING count(*) > 1 ORDER BY 1 LIMIT 1))"""
    ).fetchall()[0]
    return {"matched": int(row[0]), "dup_scores": int(row[1]), "dup_human": int(row[2]),
            "dup_examples": {"scores": list(row[3] or []), "human": list(row[4] or [])}}


def _shared_key_message(mode: str, c: dict[str, Any]) -> str:
    side = "scores" if c["dup_scores"] else "human data"
    example = c["dup_examples"]["scores" if c["dup_scores"] else "human"]
    what = {"name": "file name", "stem": "file name without extension", "path": "path"}[mode]
    return (f"by {what} {c['matched']} image(s) would match, but {c['dup_scores'] or c['dup_human']} image(s) of the "
            f"{side} share a {what} with another (e.g. {' and '.join(example)})")


def match_images(con: duckdb.DuckDBPyConnection, mode: str) -> dict[str, Any]:
    """Temp table ``joined`` (image, score_image, key, model, score, human, ...): one row per
    human image and model; ``auto`` takes the most specific of path, name, stem that
    matches the most images without ambiguity."""
    if mode == "auto":
        best, best_n, shared = None, 0, []
        for m in MATCH_MODES:
            c = _match_counts(con, m)
            if c["dup_scores"] or c["dup_human"]:
                if c["matched"]:
                    shared.append(_shared_key_message(m, c))
                continue
            if c["matched"] > best_n:
                best, best_n = m, c["matched"]
        if best is None:
            if shared:
                raise AnalysisError(f"--match auto found no unambiguous key: {'; '.join(shared)}; give ids that agree "
                                    f"as relative paths on both sides and use --match path, or make the names unique")
            raise AnalysisError("no image of the scores matches the human data by path, file name or stem "
                                "(check --id-column / --human-id-column)")
        mode = best
    elif mode not in MATCH_MODES:
        raise AnalysisError(f"unknown --match {mode!r} (choose from auto, {', '.join(MATCH_MODES)})")
    counts = _match_counts(con, mode)
    for side, n in (("scores", counts["dup_scores"]), ("human data", counts["dup_human"])):
        if n:
            raise AnalysisError(f"matching by {mode}: {n} image(s) of the {side} share a {mode} with another "
                                f"(e.g. {' and '.join(counts['dup_examples']['scores' if side == 'scores' else 'human'])}); "
                                f"match by a more specific key (--match path)")
    reserved = {"image", "human", "score", "score_image", "key", "model"}
    human_cols = [c for c in con.sql("SELECT * FROM human LIMIT 0").columns if c.lower() not in reserved]
    score_cols = [c for c in con.sql("SELECT * FROM model_scores LIMIT 0").columns
                  if c.lower() not in reserved and c.lower() not in {h.lower() for h in human_cols}]
    con.sql(
        f"""CREATE OR REPLACE TEMP TABLE joined AS
        SELECT h.image AS image, s.image AS score_image, {key_sql('h.image', mode)} AS key, s.model, s.score, h.human
               {''.join(f', h.{q(c)}' for c in human_cols)}{''.join(f', s.{q(c)}' for c in score_cols)}
        FROM human h JOIN model_scores s ON {key_sql('h.image', mode)} = {key_sql('s.image', mode)}"""
    )
    row = con.sql(
        f"""SELECT (SELECT count(DISTINCT image) FROM joined),
          (SELECT count(DISTINCT image) FROM model_scores WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT count(*) FROM human WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT list(DISTINCT image ORDER BY image)[1:3] FROM model_scores WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT list(image ORDER BY image)[1:3] FROM human WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined))"""
    ).fetchall()[0]
    if not row[0]:
        raise AnalysisError(f"no image of the scores matches the human data by {mode} "
                            f"(e.g. scores: {', '.join(row[3] or [])}; human: {', '.join(row[4] or [])})")
    return {"match": mode, "n": int(row[0]), "n_unmatched_scores": int(row[1]), "n_unmatched_human": int(row[2]),
            "unmatched_examples": {"scores": list(row[3] or []), "human": list(row[4] or [])}}


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


def _arrays(con: duckdb.DuckDBPyConnection, models: list[str], cond: str = "") -> tuple[list[str], np.ndarray,
                                                                                         dict[str, np.ndarray]]:
    """(images, human, {model: scores}) over ``analysed`` (optionally filtered), images in id order."""
    rows = con.sql(f"SELECT a.image, a.human FROM analysed a {cond} ORDER BY a.image").fetchall()
    images = [r[0] for r in rows]
    human = np.array([r[1] for r in rows], dtype=np.float64)
    scores = {}
    for m in models:
        got = dict(con.sql(f"SELECT image, score FROM joined WHERE model = {lit(m)} AND image IN "
                           f"(SELECT a.image FROM analysed a {cond})").fetchall())
        scores[m] = np.array([got[i] for i in images], dtype=np.float64)
    return images, human, scores


def analyze_scores(scores: str, human: str, options: AnalysisOptions | None = None, *,
                   con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
    """Everything ``memscore analyze`` reports, as a JSON-ready dict (keys: docs/analysis.md).

    Raises :class:`AnalysisError` (one line) on inputs that cannot be analysed as given."""
    options = options or AnalysisOptions()
    started = time.perf_counter()
    con = con or duckdb.connect()
    if options.bootstrap < 0 or options.splits < 0 or options.min_observations < 0:
        raise AnalysisError("--bootstrap, --splits and --min-observations must be zero or more")
    if not 0 < options.confidence < 1:
        raise AnalysisError("--confidence must be between 0 and 1")
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
                                    score_column=options.human_column, measure=options.human_measure,
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
    models = scores_info["models"]
    selection = select_images(con, models, options, human_info.has_observations, warnings)
    images, human_values, model_values = _arrays(con, models)
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
            _, human_values, model_values = _arrays(con, models, f"WHERE a.image IN (SELECT image FROM _groups WHERE {cond})")
            s = analyse_models(model_values, human_values, resamples=options.bootstrap, seed=options.seed,
                               confidence=options.confidence, kendall_max_n=options.kendall_max_n)
            first = s["models"][models[0]]
            entry.update(spearman=first["spearman"], pearson=first["pearson"], kendall=first["kendall"])
            if len(models) > 1:
                entry["models"] = [{"model": m, **s["models"][m]} for m in models]
                entry["comparisons"] = s["comparisons"]
        out.append(entry)
    return out


def write_outputs(con: duckdb.DuckDBPyConnection, result: dict[str, Any], out_dir: str,
                  storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """joined.parquet (per image), stats.json (``result`` with these paths as ``outputs``) and
    report.md under ``out_dir``: a local folder or an fsspec URI (``s3://``, ``gs://``, ...,
    opened with ``storage_options``). Returns the paths (URIs for a bucket)."""
    names = {"joined": "joined.parquet", "stats": "stats.json", "report": "report.md"}
    try:
        location, base = _open_out(out_dir, storage_options)
        if base is not None:
            paths = {key: os.path.join(base, name) for key, name in names.items()}
        else:
            paths = {key: location.full_uri(location.join(name)) for key, name in names.items()}
        stats = (json.dumps({**result, "outputs": paths}, indent=2, default=str) + "\n").encode()
        report = summary_markdown(result).encode()
        if base is not None:
            os.makedirs(os.path.dirname(paths["joined"]) or ".", exist_ok=True)
            con.sql(f"COPY (SELECT * FROM joined ORDER BY image) TO {lit(paths['joined'])} (FORMAT parquet)")
            Path(paths["stats"]).write_bytes(stats)
            Path(paths["report"]).write_bytes(report)
        else:  # DuckDB writes a local file, which goes up whole (as the text files do)
            with tempfile.TemporaryDirectory(prefix="memscore-analyze-") as folder:
                joined = os.path.join(folder, names["joined"])
                con.sql(f"COPY (SELECT * FROM joined ORDER BY image) TO {lit(joined)} (FORMAT parquet)")
                location.fs.put_file(joined, location.join(names["joined"]))
            location.fs.pipe_file(location.join(names["stats"]), stats)
            location.fs.pipe_file(location.join(names["report"]), report)
    except (OSError, ValueError, ImportError) as error:  # no such bucket, credentials, a file in the way
        raise AnalysisError(f"cannot write {out_dir}: {error}") from error
    except duckdb.Error as error:
        raise AnalysisError(f"cannot write {out_dir}: {str(error).splitlines()[0]}") from error
    return paths


def _open_out(out_dir: str, storage_options: dict[str, Any] | None) -> tuple[Location, str | None]:
    """The location of ``--out`` and, when it is local, its folder as a plain path (else None)."""
    location = open_location(out_dir, storage_options)
    if not location.is_local:
        return location, None
    return location, out_dir if "://" not in out_dir else location.root


def check_writable(out_dir: str, storage_options: dict[str, Any] | None = None) -> None:
    """Raise :class:`AnalysisError` now, before any statistics, if ``out_dir`` cannot be written.

    Writes and deletes an empty probe file there (a folder is created, as the
    outputs would create it), so a typo or a missing bucket costs seconds, not a
    finished bootstrap.
    """
    probe_name = f".memscore-write-probe-{uuid.uuid4().hex}"
    try:
        location, base = _open_out(out_dir, storage_options)
        if base is not None:
            os.makedirs(base, exist_ok=True)
            probe = Path(base) / probe_name
            probe.write_bytes(b"")
            probe.unlink()
        else:
            probe = location.join(probe_name)
            location.fs.pipe_file(probe, b"")
            location.fs.rm_file(probe)
    except (OSError, ValueError, ImportError) as error:  # no such bucket, credentials, a file in the way
        raise AnalysisError(f"cannot write {out_dir}: {error}") from error


def run_analysis(scores: str, human: str, options: AnalysisOptions | None = None,
                 out_dir: str | None = None) -> dict[str, Any]:
    """:func:`analyze_scores`, plus the files of ``--out`` when out_dir is given (a local
    folder or a URI, written with ``options.storage_options``; checked writable first)."""
    options = options or AnalysisOptions()
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
