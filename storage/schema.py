"""The Parquet schemas of memscore's outputs (columns and row keys: docs/output-format.md).

DEST/scores/*.parquet holds one row per scored image; DEST/errors/*.parquet one
row per image that could not be scored. Besides the contract columns, both carry
``source_version`` (the store's version tag of the file when it was read: size
and mtime locally, ETag on object stores), which makes reruns incremental. Error
rows carry ``transient`` (true when the failure was a store outage, a timeout or
throttling that retries within the run did not outlast: the next run tries again).
docs/output-format.md describes every column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

SCORES_DIR = "scores"
ERRORS_DIR = "errors"
FEATURE_PREFIX = "feat_"
TIMESTAMP = pa.timestamp("us", tz="UTC")

_SCORE_FIELDS = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("weights", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
]
_SCORE_TAIL = [
    pa.field("source_version", pa.string()),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("scored_at", TIMESTAMP, nullable=False),
]

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("weights", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("source_version", pa.string()),
        pa.field("failed_at", TIMESTAMP, nullable=False),
        pa.field("transient", pa.bool_()),
    ]
)

# Error types of failures that may pass by themselves (a store outage, a timeout, throttling):
# an image whose newest row is one of these is scored again by the next run. Rows written
# before the ``transient`` column existed are judged by their ``error`` against this list.
TRANSIENT_ERRORS = (
    "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
    "BrokenPipeError", "TimeoutError", "ClientConnectorError", "ClientOSError", "ServerDisconnectedError",
    "ServerTimeoutError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
    "HTTPClientError", "ConnectionClosedError", "ResponseStreamingError", "FSTimeoutError",
)

ERROR_STAGES = ("read", "decode", "model")


def feature_column(layer: str) -> str:
    """Column name of a feature layer: ``feat_<layer>``."""
    return f"{FEATURE_PREFIX}{layer}"


def scores_schema(feature_dims: Mapping[str, int]) -> pa.Schema:
    """Schema of a scores part with ``feat_<layer>`` columns of the given sizes."""
    features = [
        pa.field(feature_column(name), pa.list_(pa.float32(), dim)) for name, dim in feature_dims.items()
    ]
    return pa.schema([*_SCORE_FIELDS, *features, *_SCORE_TAIL])


def empty_errors() -> pa.Table:
    return ERRORS_SCHEMA.empty_table()


def column_names(schema: pa.Schema) -> Sequence[str]:
    return [f.name for f in schema]
