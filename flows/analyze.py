"""The ``analyze`` flow: model scores beside human memory data.

:func:`analyze_scores` is the plain function (no Prefect): it reads the scores (a
memscore output folder, or any Parquet/CSV with an id and a score column) and the
human data into one DuckDB connection, matches images by path, file name or
stem, and runs the SQL in :mod:`storage.stats`: Spearman and Pearson with
bootstrap intervals and p-values, Kendall's tau for up to 10,000 images,
split-half consistency with trial data, and the same per group when asked.
:func:`analyze` is the Prefect flow around it; it attaches the summary as a
Markdown artifact.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from memscore.storage.compact import current_rows_sql
from memscore.storage.human import MATCH_MODES, Exclusion, HumanDataError, find_column, key_sql, lit, load_human, num, q
from memscore.storage.parts import duckdb_parts, list_parts
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.stats import correlate, split_half
from memscore.storage.uris import Location, local_copy, open_location

SCORE_CANDIDATES = ("score", "resmem", "memorability", "prediction", "predicted", "pred", "mem_score", "memscore")
ID_CANDIDATES = ("path", "image_id", "image_name", "image", "filename")


class AnalysisError(HumanDataError):
    """Inputs that cannot be analysed as given; the message is one line."""


@dataclass
class AnalysisOptions:
    id_column: str | None = None
    human_id_column: str | None = None
    score_column: str | None = None
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
        return _parts_sql(files) if not folder else _current_sql(files, list_parts(location, ERRORS_DIR))
    if not p.exists():
        raise AnalysisError(f"scores not found: {path}")
    return _file_sql(path)


def _parts_sql(files: list[str]) -> str:
    """SQL reading the Parquet parts of a scores folder as one relation."""
    return f"read_parquet([{', '.join(lit(f) for f in files)}], union_by_name = true)"


def _current_sql(scores: list[str], errors: list[str], con: duckdb.DuckDBPyConnection | None = None) -> str:
    """SQL reading a memscore folder's scores: the current row of each (uri, model, weights) only
    (:func:`storage.compact.current_rows_sql`), so stale rows never look like duplicates. Parts
    without memscore's key and time columns (written by another tool) are read as they are."""
    try:
        described = (con or duckdb).sql(f"DESCRIBE SELECT * FROM {_parts_sql(scores)}").fetchall()
    except duckdb.Error:
        return _parts_sql(scores)  # load_scores reports what cannot be read
    if not {"uri", "model", "weights", "run_id", "scored_at"} <= {row[0] for row in described}:
        return _parts_sql(scores)
    return current_rows_sql(scores, errors, SCORES_DIR)


def _file_sql(path: str) -> str:
    """SQL reading one scores file: Parquet by its extension, else CSV (TSV by its extension)."""
    if path.lower().endswith((".parquet", ".pq")):
        return f"read_parquet({lit(path)})"
    delim = ", delim = '\\t'" if path.lower().endswith(".tsv") else ""
    return f"read_csv({lit(path)}, header = true, all_varchar = true{delim})"


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
            return _parts_sql(files) if not folder else _current_sql(files, duckdb_parts(con, location, ERRORS_DIR), con)
        if not location.fs.isfile(location.root):
            raise AnalysisError(f"scores not found: {uri}")
    except AnalysisError:
        raise
    except Exception as error:  # noqa: BLE001 - credentials, network: one line for the user
        raise AnalysisError(f"cannot read scores {uri}: {error}") from error
    con.register_filesystem(location.fs)
    return _file_sql(uri)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    """:func:`storage.human.find_column`, failing with :class:`AnalysisError`."""
    try:
        return find_column(columns, wanted, candidates, what, path)
    except HumanDataError as error:
        raise AnalysisError(str(error)) from None


def load_scores(con: duckdb.DuckDBPyConnection, path: str, options: AnalysisOptions, warnings: list[str]) -> dict[str, Any]:
    """Temp table ``model_scores`` (image, score, other columns but feature vectors)."""
    rel = scores_relation_sql(path, con, options.storage_options)
    try:
        described = con.sql(f"DESCRIBE SELECT * FROM {rel}").fetchall()
    except duckdb.Error as error:
        raise AnalysisError(f"cannot read scores {path}: {str(error).splitlines()[0]}") from error
    columns = [r[0] for r in described]
    types = {r[0]: r[1] for r in described}
    id_col = _pick(columns, options.id_column, ID_CANDIDATES, "image id", path)
    if options.score_column is None:
        lower = {c.lower(): c for c in columns}
        score_col = next((lower[c] for c in SCORE_CANDIDATES if c in lower), None)
        if score_col is None:
            raise AnalysisError(f"{path}: no score column found (tried {', '.join(SCORE_CANDIDATES)}); use --score-column")
    else:
        score_col = _pick(columns, options.score_column, (), "score", path)
    where = []
    if "model" in columns:
        models = con.sql(f"SELECT DISTINCT model FROM {rel} ORDER BY 1").fetchall()
        if options.model is not None:
            where.append(f"model = {lit(options.model)}")
            if (options.model,) not in models:
                raise AnalysisError(f"{path} has no scores of model {options.model!r} "
                                    f"(models: {', '.join(str(m[0]) for m in models)})")
        elif len(models) > 1:
            raise AnalysisError(f"{path} holds scores of several models ({', '.join(str(m[0]) for m in models)}); "
                                f"choose one with --model")
    elif options.model is not None:
        raise AnalysisError(f"{path} has no model column; drop --model")
    keep = [c for c in columns if c not in (id_col, score_col) and c.lower() not in ("image", "score")
            and not c.startswith("feat_") and "[" not in types[c]]
    extra = "".join(f", {q(c)}" for c in keep)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    con.sql(f"CREATE OR REPLACE TEMP TABLE model_staged AS SELECT {q(id_col)}::VARCHAR AS image, "
            f"{num(q(score_col), 'DOUBLE', types[score_col])} AS score{extra} FROM {rel} {cond}")
    row = con.sql("SELECT count(*), count(*) FILTER (WHERE image IS NULL), count(*) FILTER (WHERE image IS NOT NULL "
                  "AND (score IS NULL OR NOT isfinite(score))) FROM model_staged").fetchall()[0]
    if row[1]:
        warnings.append(f"scores: dropped {row[1]} row(s) without an image id")
    if row[2]:
        warnings.append(f"scores: dropped {row[2]} row(s) with a missing, non-numeric or NaN score")
    con.sql("CREATE OR REPLACE TEMP TABLE model_scores AS SELECT * FROM model_staged "
            "WHERE image IS NOT NULL AND score IS NOT NULL AND isfinite(score)")
    con.sql("DROP TABLE model_staged")
    n = con.sql("SELECT count(*) FROM model_scores").fetchall()[0][0]
    if not n:
        raise AnalysisError(f"{path}: no usable scores ({row[0]} row(s) read)")
    out = con.sql("SELECT count(*) FROM model_scores WHERE score < 0 OR score > 1").fetchall()[0][0]
    if out:
        warnings.append(f"scores: {out} score(s) outside [0, 1] (kept)")
    dup = con.sql("SELECT count(*), list(image ORDER BY image)[1:3] FROM (SELECT image FROM model_scores "
                  "GROUP BY image HAVING count(*) > 1)").fetchall()[0]
    if dup[0]:
        hint = "choose --model or an id column that is unique"
        if "uri" in columns and id_col != "uri":
            sources = con.sql(f"SELECT count(DISTINCT uri) FROM {rel} {cond}").fetchall()[0][0]
            images = con.sql("SELECT count(DISTINCT image) FROM model_scores").fetchall()[0][0]
            if sources > images:  # one path, several full URIs: several SOURCEs scored into one DEST
                hint = ("the folder holds several SOURCEs whose relative paths repeat (see the uri column); "
                        "score each SOURCE into its own DEST, or --id-column uri")
        raise AnalysisError(f"{path}: {dup[0]} image id(s) appear more than once in the scores "
                            f"(e.g. {', '.join(dup[1])}); {hint}")
    return {"path": path, "id_column": id_col, "score_column": score_col, "rows": int(row[0]), "images": int(n),
            "extra_columns": keep}


# ---------------------------------------------------------------------------
# matching


def _match_counts(con: duckdb.DuckDBPyConnection, mode: str) -> dict[str, int]:
    ks, kh = key_sql("image", mode), key_sql("image", mode)
    row = con.sql(
        f"""WITH s AS (SELECT {ks} AS k FROM model_scores), h AS (SELECT {kh} AS k FROM human)
        SELECT (SELECT count(DISTINCT k) FROM s WHERE k IN (SELECT k FROM h)),
               (SELECT count(*) - count(DISTINCT k) FROM s), (SELECT count(*) - count(DISTINCT k) FROM h)"""
    ).fetchall()[0]
    return {"matched": int(row[0]), "dup_scores": int(row[1]), "dup_human": int(row[2])}


def match_images(con: duckdb.DuckDBPyConnection, mode: str) -> dict[str, Any]:
    """Temp table ``joined`` (image, key, score, human, ...); ``auto`` takes the most
    specific of path, name, stem that matches the most images without ambiguity."""
    if mode == "auto":
        best, best_n = None, 0
        for m in MATCH_MODES:
            c = _match_counts(con, m)
            if c["dup_scores"] or c["dup_human"]:
                continue
            if c["matched"] > best_n:
                best, best_n = m, c["matched"]
        if best is None:
            raise AnalysisError("no image of the scores matches the human data by path, file name or stem "
                                "(check --id-column / --human-id-column)")
        mode = best
    elif mode not in MATCH_MODES:
        raise AnalysisError(f"unknown --match {mode!r} (choose from auto, {', '.join(MATCH_MODES)})")
    counts = _match_counts(con, mode)
    for side, n in (("scores", counts["dup_scores"]), ("human data", counts["dup_human"])):
        if n:
            raise AnalysisError(f"matching by {mode}: {n} image(s) of the {side} share a {mode} with another; "
                                f"match by a more specific key (--match path)")
    reserved = {"image", "human", "score", "score_image", "key"}
    human_cols = [c for c in con.sql("SELECT * FROM human LIMIT 0").columns if c.lower() not in reserved]
    score_cols = [c for c in con.sql("SELECT * FROM model_scores LIMIT 0").columns
                  if c.lower() not in reserved and c.lower() not in {h.lower() for h in human_cols}]
    con.sql(
        f"""CREATE OR REPLACE TEMP TABLE joined AS
        SELECT h.image AS image, s.image AS score_image, {key_sql('h.image', mode)} AS key, s.score, h.human
               {''.join(f', h.{q(c)}' for c in human_cols)}{''.join(f', s.{q(c)}' for c in score_cols)}
        FROM human h JOIN model_scores s ON {key_sql('h.image', mode)} = {key_sql('s.image', mode)}"""
    )
    row = con.sql(
        f"""SELECT (SELECT count(*) FROM joined),
          (SELECT count(*) FROM model_scores WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT count(*) FROM human WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT list(image ORDER BY image)[1:3] FROM model_scores WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT list(image ORDER BY image)[1:3] FROM human WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined))"""
    ).fetchall()[0]
    if not row[0]:
        raise AnalysisError(f"no image of the scores matches the human data by {mode} "
                            f"(e.g. scores: {', '.join(row[3] or [])}; human: {', '.join(row[4] or [])})")
    return {"match": mode, "n": int(row[0]), "n_unmatched_scores": int(row[1]), "n_unmatched_human": int(row[2]),
            "unmatched_examples": {"scores": list(row[3] or []), "human": list(row[4] or [])}}


# ---------------------------------------------------------------------------
# the analysis


def analyze_scores(scores: str, human: str, options: AnalysisOptions | None = None, *,
                   con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
    """Everything ``memscore analyze`` reports, as a JSON-ready dict."""
    options = options or AnalysisOptions()
    started = time.perf_counter()
    con = con or duckdb.connect()
    if options.bootstrap < 0 or options.splits < 0:
        raise AnalysisError("--bootstrap and --splits must be zero or more")
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
                                    score_column=options.human_column, measure=options.human_measure, exclusion=exclusion)
        except HumanDataError as error:  # name the URI the user gave, not the local copy
            raise HumanDataError(str(error).replace(local_human, os.fspath(human))) from None
    if local_human != os.fspath(human):
        human_info.path = os.fspath(human)
    warnings.extend(human_info.warnings)
    matched = match_images(con, options.match)
    if matched["n_unmatched_scores"] or matched["n_unmatched_human"]:
        warnings.append(f"unmatched: {matched['n_unmatched_scores']} scored image(s) not in the human data, "
                        f"{matched['n_unmatched_human']} human image(s) without a score")
    stats = correlate(con, "joined", "score", "human", bootstrap=options.bootstrap, seed=options.seed,
                      confidence=options.confidence, kendall_max_n=options.kendall_max_n)
    if stats["n"] < 3:
        warnings.append(f"only {stats['n']} matched image(s): correlations are undefined")
    result: dict[str, Any] = {
        "scores": scores_info["path"],
        "human": human_info.path,
        "human_format": human_info.format,
        "human_measure": human_info.measure,
        "score_column": scores_info["score_column"],
        "id_column": scores_info["id_column"],
        "human_id_column": human_info.id_column,
        "match": matched["match"],
        "n": stats["n"],
        "n_scores": scores_info["images"],
        "n_human": human_info.images,
        "n_unmatched_scores": matched["n_unmatched_scores"],
        "n_unmatched_human": matched["n_unmatched_human"],
        "unmatched_examples": matched["unmatched_examples"],
        "spearman": stats["spearman"],
        "pearson": stats["pearson"],
        "kendall": stats["kendall"],
        "bootstrap": {"resamples": options.bootstrap, "confidence": options.confidence, "seed": options.seed},
        "split_half": None,
        "fraction_of_ceiling": None,
        "participants": human_info.participants,
        "published_check": human_info.published_check,
        "groups": None,
        "warnings": warnings,
    }
    if human_info.has_trials and options.splits > 0:
        # the ceiling over the matched images only, as the model is judged on them
        con.sql("CREATE OR REPLACE TEMP VIEW matched_counts AS SELECT c.* FROM trial_counts c "
                "WHERE c.image IN (SELECT image FROM joined)")
        sh = split_half(con, "matched_counts", measure=human_info.measure, splits=options.splits, seed=options.seed)
        result["split_half"] = sh.as_dict()
        rho, ceiling = stats["spearman"]["rho"], sh.spearman_brown
        if rho is not None and ceiling:
            result["fraction_of_ceiling"] = rho / ceiling
    if options.group_column:
        result["groups"] = group_stats(con, options)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def group_stats(con: duckdb.DuckDBPyConnection, options: AnalysisOptions) -> list[dict[str, Any]]:
    """The same correlations within each value of the group column (loops over groups, not rows)."""
    columns = list(con.sql("SELECT * FROM joined LIMIT 0").columns)
    col = _pick(columns, options.group_column, (), "group", "the human data or the scores")
    groups = con.sql(f"SELECT {q(col)}::VARCHAR AS g, count(*) FROM joined GROUP BY 1 ORDER BY 1").fetchall()
    out = []
    for g, n in groups:
        cond = f"{q(col)} IS NULL" if g is None else f"{q(col)}::VARCHAR = {lit(g)}"
        rel = f"(SELECT score, human FROM joined WHERE {cond})"
        entry: dict[str, Any] = {"group": g, "n": int(n)}
        if n >= options.min_group_size:
            s = correlate(con, rel, "score", "human", bootstrap=options.bootstrap, seed=options.seed,
                          confidence=options.confidence, kendall_max_n=options.kendall_max_n)
            entry.update(spearman=s["spearman"], pearson=s["pearson"], kendall=s["kendall"])
        out.append(entry)
    return out


# ---------------------------------------------------------------------------
# reports


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    s, p, k = result["spearman"], result["pearson"], result.get("kendall")
    conf = int(round(result["bootstrap"]["confidence"] * 100))
    lines = [
        f"{result['n']} images matched by {result['match']} "
        f"({result['n_unmatched_scores']} scored image(s) without human data, "
        f"{result['n_unmatched_human']} human image(s) without a score)",
        f"human measure: {result['human_measure']} ({result['human_format']})",
        f"Spearman rho = {_f(s['rho'])}  [{conf}% CI {_f(s['ci_low'])}, {_f(s['ci_high'])}]  p = {_p(s['p_value'])}",
        f"Pearson r    = {_f(p['r'])}  [{conf}% CI {_f(p['ci_low'])}, {_f(p['ci_high'])}]  p = {_p(p['p_value'])}",
    ]
    if k:
        lines.append(f"Kendall tau-b = {_f(k['tau'])}  p = {_p(k['p_value'])}")
    sh = result.get("split_half")
    if sh:
        lines.append(
            f"split-half ({sh['splits']} splits, {sh['participants']} participants): Spearman "
            f"{_f(sh['spearman_mean'])} (sd {_f(sh['spearman_sd'])}), Pearson {_f(sh['pearson_mean'])} "
            f"(sd {_f(sh['pearson_sd'])}); Spearman-Brown {_f(sh['spearman_brown'])}"
        )
        lines.append(f"model rho as a fraction of the human ceiling: {_f(result['fraction_of_ceiling'])}")
    part = result.get("participants")
    if part:
        lines.append(f"participants: {part['kept']} kept, {part['excluded']} excluded "
                     f"(filler FA > {part['rules']['max_filler_fa']}, vigilance miss > {part['rules']['max_vigilance_miss']})")
    if result.get("published_check"):
        checks = ", ".join(f"{c} max |diff| {v:.1e}" for c, v in result["published_check"].items())
        lines.append(f"published rates recomputed from the counts: {checks}")
    for g in result.get("groups") or []:
        if "spearman" in g:
            lines.append(f"  group {g['group']}: n={g['n']}, rho={_f(g['spearman']['rho'])} "
                         f"[{_f(g['spearman']['ci_low'])}, {_f(g['spearman']['ci_high'])}], r={_f(g['pearson']['r'])}")
        else:
            lines.append(f"  group {g['group']}: n={g['n']} (too few images)")
    for w in result.get("warnings") or []:
        lines.append(f"warning: {w}")
    return lines


def summary_markdown(result: dict[str, Any]) -> str:
    s, p = result["spearman"], result["pearson"]
    conf = int(round(result["bootstrap"]["confidence"] * 100))
    md = [
        "# memscore analysis",
        "",
        f"- scores: `{result['scores']}` (column `{result['score_column']}`)",
        f"- human data: `{result['human']}` ({result['human_format']}, measure `{result['human_measure']}`)",
        f"- images matched by {result['match']}: **{result['n']}**; unmatched: {result['n_unmatched_scores']} scored, "
        f"{result['n_unmatched_human']} human",
        "",
        f"| statistic | value | {conf}% CI (bootstrap, {result['bootstrap']['resamples']} resamples) | p |",
        "|---|---|---|---|",
        f"| Spearman rho | {_f(s['rho'])} | {_f(s['ci_low'])} .. {_f(s['ci_high'])} | {_p(s['p_value'])} |",
        f"| Pearson r | {_f(p['r'])} | {_f(p['ci_low'])} .. {_f(p['ci_high'])} | {_p(p['p_value'])} |",
    ]
    if result.get("kendall"):
        md.append(f"| Kendall tau-b | {_f(result['kendall']['tau'])} | | {_p(result['kendall']['p_value'])} |")
    sh = result.get("split_half")
    if sh:
        md += ["", "## Human split-half consistency", "",
               f"{sh['splits']} random splits of {sh['participants']} participants: mean Spearman "
               f"{_f(sh['spearman_mean'])} (sd {_f(sh['spearman_sd'])}), mean Pearson {_f(sh['pearson_mean'])} "
               f"(sd {_f(sh['pearson_sd'])}); Spearman-Brown corrected: **{_f(sh['spearman_brown'])}**. "
               f"The model reaches {_f(result['fraction_of_ceiling'])} of that ceiling."]
    if result.get("groups"):
        md += ["", "## Per group", "", "| group | n | Spearman rho | CI | Pearson r |", "|---|---|---|---|---|"]
        for g in result["groups"]:
            if "spearman" in g:
                md.append(f"| {g['group']} | {g['n']} | {_f(g['spearman']['rho'])} | {_f(g['spearman']['ci_low'])} .. "
                          f"{_f(g['spearman']['ci_high'])} | {_f(g['pearson']['r'])} |")
            else:
                md.append(f"| {g['group']} | {g['n']} | n/a | | |")
    if result.get("warnings"):
        md += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(md) + "\n"


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


# ---------------------------------------------------------------------------
# the Prefect flow

try:  # keep the plain functions importable without Prefect
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
except ImportError:  # pragma: no cover
    flow = None


if flow is not None:

    @flow(name="analyze", log_prints=True)
    def analyze(
        scores: str,
        human: str,
        id_column: str | None = None,
        human_id_column: str | None = None,
        score_column: str | None = None,
        human_column: str | None = None,
        human_measure: str | None = None,
        human_format: str = "auto",
        match: str = "auto",
        bootstrap: int = 1000,
        splits: int = 25,
        seed: int = 0,
        group_column: str | None = None,
        model: str | None = None,
        max_filler_fa: float | None = 0.5,
        max_vigilance_miss: float | None = 0.5,
        out: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Model scores vs human memorability: Spearman/Pearson with bootstrap CIs,
        split-half consistency; the summary becomes a Markdown artifact."""
        options = AnalysisOptions(
            id_column=id_column, human_id_column=human_id_column, score_column=score_column,
            human_column=human_column, human_measure=human_measure, human_format=human_format, match=match,
            bootstrap=bootstrap, splits=splits, seed=seed, group_column=group_column, model=model,
            max_filler_fa=max_filler_fa, max_vigilance_miss=max_vigilance_miss, storage_options=storage_options,
        )
        result = run_analysis(scores, human, options, out)
        create_markdown_artifact(markdown=summary_markdown(result), key="memscore-analysis",
                                 description="memscore: model scores vs human memorability")
        for line in summary_lines(result):
            print(line)
        return result
