"""memscore: score image archives with published memorability models and check them
against human memory data.

The layers live in the repository's top-level folders and are installed under this
one namespace (``pyproject.toml`` maps them with setuptools' ``package-dir``):

- ``memscore.flows``   Prefect flows and the ``memscore`` command line
- ``memscore.tasks``   plain functions the flows call (discover, plan, score, train, ...)
- ``memscore.models``  model definitions, weights, preprocessing, the registry
- ``memscore.storage`` locations (fsspec), Parquet parts, DuckDB SQL, human data readers

Nothing else is installed at the top level of site-packages.

The Python API (docs/python-api.md): :func:`load_model` (score images in a notebook),
:func:`score` (an archive, as ``memscore score``, without Prefect), :func:`analyze`
(scores vs human data, as ``memscore analyze``) and :func:`sql` (DuckDB over an output folder).
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout (the repository root on sys.path, as with ``python -m pytest``
# or the benchmarks' scripts) this folder holds only this file and the layers sit
# beside it: let ``memscore.flows`` etc. resolve to ../flows and so on. An installed
# wheel has them inside this package and never reaches this branch.
_ROOT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "flows").is_dir() and (_ROOT / "flows" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # type: ignore[name-defined]  # noqa: F821

# The public API (memscore/api.py; it imports torch, DuckDB and Prefect only when called).
from memscore.api import AnalysisResult, ImageLoadError, Model, analyze, load_model, score, sql  # noqa: E402
from memscore.errors import UserError  # noqa: E402 - every error a user can fix (bad model name, SOURCE, data...)

__all__ = ["AnalysisResult", "ImageLoadError", "Model", "UserError", "__version__", "analyze", "load_model",
           "score", "sql"]
