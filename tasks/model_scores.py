"""Reading model scores for the analysis: a memscore output folder (local or in a bucket;
one or several models), or any Parquet/CSV file with an id and one or more score
columns, into the temp table ``model_scores`` (image, model, score, other columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from memscore.storage.compact import current_rows_sql
from memscore.storage.human import HumanDataError, find_column
from memscore.storage.human_base import encoding_hint
from memscore.storage.parts import duckdb_parts, list_parts
from memscore.storage.relations import lit, num, parquet_files_sql, q, table_file_sql
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location, open_location
from memscore.tasks.analysis_options import AnalysisError, AnalysisOptions

SCORE_CANDIDATES = ("score", "resmem", "memorability", "prediction", "predicted", "pred", "mem_score", "memscore")
ID_CANDIDATES = ("path", "image_id", "image_name", "image", "filename")


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
        return parquet_files_sql(files) if not folder else _current_sql(files, list_parts(location, ERRORS_DIR))
    if not p.exists():
        raise AnalysisError(f"scores not found: {path}")
    return table_file_sql(path)


def _current_sql(scores: list[str], errors: list[str], con: duckdb.DuckDBPyConnection | None = None) -> str:
    """SQL reading a memscore folder's scores: the current row of each (uri, model, weights) only
    (:func:`storage.compact.current_rows_sql`), so stale rows (a run killed during compaction, two
    runs at once) never look like duplicates. Parts without memscore's key and time columns
    (written by another tool) are read as they are."""
    try:
        described = (con or duckdb).sql(f"DESCRIBE SELECT * FROM {parquet_files_sql(scores)}").fetchall()
    except duckdb.Error:
        return parquet_files_sql(scores)  # load_scores reports what cannot be read
    if not {"uri", "model", "weights", "run_id", "scored_at"} <= {row[0] for row in described}:
        return parquet_files_sql(scores)
    return current_rows_sql(scores, errors, SCORES_DIR)


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
            return parquet_files_sql(files) if not folder else _current_sql(files, duckdb_parts(con, location, ERRORS_DIR), con)
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


def _digest_sql(weights: str, width: int | None) -> str:
    """The hex of a weights digest such as ``sha256:8e4b...`` (its first ``width`` characters)."""
    hex_sql = f"regexp_replace(({weights})::VARCHAR, '^[A-Za-z0-9_-]+:', '')"
    return f"coalesce(left({hex_sql}, {width}), 'none')" if width else f"coalesce({hex_sql}, 'none')"


def _weights_label(con: duckdb.DuckDBPyConnection, rel: str, cond: str, warnings: list[str]) -> str:
    """SQL of the predictor name of a memscore folder's row: the model, or ``model@<first 8
    hex characters of the weights digest>`` for a model scored with several weights (rows
    keyed (uri, model, weights): e.g. ``memscore score --weights`` of a fine-tuned copy), so
    that each weights is a predictor of its own (with a warning naming them); the full digest
    when 8 characters do not tell two apart. A model with one weights keeps its plain name."""
    rows = con.sql(f"""SELECT model::VARCHAR, list(DISTINCT {_digest_sql('weights', None)} ORDER BY 1)
        FROM {rel} {cond} GROUP BY 1 HAVING count(DISTINCT coalesce(weights::VARCHAR, '')) > 1
        ORDER BY 1""").fetchall()
    if not rows:
        return "model::VARCHAR"
    several = [r[0] for r in rows]
    short = all(len({d[:8] for d in r[1]}) == len(r[1]) for r in rows)
    digest = _digest_sql("weights", 8 if short else None)
    names = "; ".join(f"{m}: {', '.join(f'{m}@{d[:8] if short else d}' for d in ds)}" for m, ds in rows)
    warnings.append(f"scores: {len(several)} model(s) were scored with several weights; each weights is analysed as "
                    f"a predictor of its own, named model@digest ({names})")
    return (f"CASE WHEN model::VARCHAR IN ({', '.join(lit(m) for m in several)}) "
            f"THEN model::VARCHAR || '@' || {digest} ELSE model::VARCHAR END")


def load_scores(con: duckdb.DuckDBPyConnection, path: str, options: AnalysisOptions, warnings: list[str]) -> dict[str, Any]:
    """Temp table ``model_scores`` (image, model, score, other columns but feature vectors):
    one row per image and model. A model is a value of the ``model`` column (all of them
    unless ``options.model``), or a score column when several are given."""
    rel = scores_relation_sql(path, con, options.storage_options)
    try:
        described = con.sql(f"DESCRIBE SELECT * FROM {rel}").fetchall()
    except duckdb.Error as error:
        raise AnalysisError(f"cannot read scores {path}: {encoding_hint(path, str(error).splitlines()[0])}") from error
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
    model_label = "model::VARCHAR"
    if has_model and "weights" in columns:
        model_label = _weights_label(con, rel, cond, warnings)
    selects = []
    for col in score_cols:
        if has_model:
            label = model_label if len(score_cols) == 1 else f"{model_label} || {lit(':' + col)}"
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
        hint = "choose an id column that is unique"
        if "uri" in columns and id_col != "uri":
            sources = con.sql(f"SELECT count(DISTINCT uri) FROM {rel} {cond}").fetchall()[0][0]
            images = con.sql("SELECT count(DISTINCT image) FROM model_scores").fetchall()[0][0]
            if sources > images:  # one path, several full URIs: several SOURCEs scored into one DEST
                hint = ("the folder holds several SOURCEs whose relative paths repeat (see the uri column); "
                        "score each SOURCE into its own DEST, or --id-column uri")
        raise AnalysisError(f"{path}: {dup[0]} image id(s) appear more than once in the scores of one model "
                            f"(e.g. {', '.join(dup[1])}); {hint}")
    names = [r[0] for r in con.sql("SELECT DISTINCT model FROM model_scores ORDER BY 1").fetchall()]
    return {"path": path, "id_column": id_col, "score_column": score_cols[0] if len(score_cols) == 1 else score_cols,
            "rows": int(row[0]), "images": int(n), "extra_columns": keep, "models": names}


def model_arrays(con: duckdb.DuckDBPyConnection, models: list[str], table: str = "analysed",
                 cond: str = "") -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(images, human [n], {model: scores [n]}) for the images of ``table`` (columns image, human;
    ``cond`` filters it as alias ``a``), in image id order; the scores come from ``joined``."""
    rows = con.sql(f"SELECT a.image, a.human FROM {table} a {cond} ORDER BY a.image").fetchall()
    images = [r[0] for r in rows]
    human = np.array([r[1] for r in rows], dtype=np.float64)
    scores = {}
    for m in models:
        got = dict(con.sql(f"SELECT image, score FROM joined WHERE model = {lit(m)} AND image IN "
                           f"(SELECT a.image FROM {table} a {cond})").fetchall())
        scores[m] = np.array([got[i] for i in images], dtype=np.float64)
    return images, human, scores
