"""The parameter objects on the command line: argparse options read off their fields.

The types, defaults and descriptions of every parameter live in the parameter objects
(:class:`tasks.score_request.ScoreRequest`, :class:`tasks.analysis_options.AnalysisOptions`,
:class:`tasks.train_config.TrainConfig`; their base and choice types and the credential
rules are :mod:`tasks.params`, re-exported here). :func:`add_field_option` makes an
argparse option of one field: its default, its choices (a Literal type) and its help
(the field's description) come from the model, so nothing is written twice.
"""

from __future__ import annotations

import argparse
from typing import Any

from memscore.tasks.params import (  # noqa: F401 - the parameter types, importable from here too
    LOCAL_PREFIX,
    SECRET_KEY_PATTERN,
    SECRET_WORDS,
    Backend,
    Decode,
    Device,
    EmptyResponse,
    HumanFormat,
    HumanMeasure,
    MatchMode,
    ParameterError,
    Parameters,
    Precision,
    SecretInParametersError,
    StorageOptions,
    describe_errors,
    field_default,
    is_secret_key,
    keep_in_process,
    literal_choices,
    refuse_secrets,
    resolve_storage_options,
    secret_paths,
    split_secrets,
    storage_fields,
)
from pydantic import BaseModel


def field_help(model: type[BaseModel], name: str, show_default: bool = True) -> str:
    """The field's description for ``--help`` (with its default when it has a value), %-escaped for argparse."""
    info = model.model_fields[name]
    text = info.description or ""
    default = field_default(model, name)
    if show_default and not (default is None or isinstance(default, bool) or default in ([], {})) and "default" not in text:
        text += f" (default: {default})"
    return text.replace("%", "%%")


def add_field_option(parser: Any, flag: str | list[str], model: type[BaseModel], name: str, **kwargs: Any) -> None:
    """``parser.add_argument(flag, ...)`` for ``model``'s field ``name``: ``dest``, ``default``,
    ``choices`` (a Literal field) and ``help`` from the field unless given in ``kwargs``."""
    flags = [flag] if isinstance(flag, str) else list(flag)
    kwargs.setdefault("dest", name)
    kwargs.setdefault("default", field_default(model, name))
    if kwargs.get("action") in (None, "store"):
        choices = literal_choices(model.model_fields[name].annotation)
        if choices:
            kwargs.setdefault("choices", choices)
    kwargs.setdefault("help", field_help(model, name, show_default=kwargs.get("action") is None))
    parser.add_argument(*flags, **kwargs)


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative(text: str) -> int:
    """argparse type: an integer of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value
