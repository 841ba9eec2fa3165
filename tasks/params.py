"""The types of every pipeline's parameters, and the rules that keep credentials out of them.

What belongs here: the base class of the parameter objects (:class:`Parameters`:
:class:`tasks.score_request.ScoreRequest`, :class:`tasks.analysis_options.AnalysisOptions` and
:class:`~tasks.analysis_options.AnalyzeRequest`, :class:`tasks.train_config.TrainConfig`),
the choice types their fields use (Prefect turns them into the deployment's parameter
schema, so the UI offers the choices and the server refuses other values when a run is
created), the one-line message for a refused value (:func:`describe_errors`), and the
rules that keep secrets out of flow-run parameters, which Prefect stores in its database
(and sends to a configured server or Prefect Cloud). It imports only pydantic and
:mod:`memscore.errors`, so every layer may use it.

Credentials belong in the worker's environment (``AWS_ACCESS_KEY_ID``, an IAM role,
``GOOGLE_APPLICATION_CREDENTIALS``, ...) or in a Prefect ``Secret`` block named by the
object's ``storage_options_secret``; ``storage_options`` itself refuses keys that look
like secrets (:data:`SECRET_KEY_PATTERN`). The CLI and the Python API split such keys off
the options they are given (:func:`storage_fields`) and keep them in this process only
(:func:`keep_in_process`), never in a parameter; :meth:`Parameters.resolved` merges them
back, in this process, where the files are opened.
"""

from __future__ import annotations

import json
import re
import types
import uuid
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from memscore.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Decode = Literal["auto", "workers", "device"]
Backend = Literal["torch", "onnxruntime"]
# auto, cpu, cuda, mps as choices; cuda:N (one GPU of several) as a checked string.
Device = Union[
    Annotated[Literal["auto", "cpu", "cuda", "mps"], Field(title="choice")],
    Annotated[str, Field(pattern=r"^cuda:[0-9]+$", title="cuda:N")],
]
HumanFormat = Literal["auto", "lamem", "table", "counts", "trials", "bids"]
MatchMode = Literal["auto", "path", "name", "stem"]
HumanMeasure = Literal["hit_rate", "false_alarm_rate", "corrected_recognition", "miss_rate", "dprime"]
EmptyResponse = Literal["missing", "no"]

# Words in the keys of fsspec/boto/gcsfs/adlfs options that hold credentials (any case, anywhere in the key).
SECRET_WORDS = ("key", "secret", "token", "passw", "credential", "sas", "signature", "connection_string", "auth")
_SECRET = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# The same as a JSON Schema regex (ECMA 262 has no case-insensitive flag: [Kk][Ee][Yy]...).
SECRET_KEY_PATTERN = "|".join("".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in w) for w in SECRET_WORDS)
LOCAL_PREFIX = "memscore-process:"


class SecretInParametersError(UserError, ValueError):
    """A flow parameter holds what looks like a credential."""


class ParameterError(UserError, ValueError):
    """A parameter object was given a value it refuses (wrong type, out of range, not a choice)."""


def is_secret_key(key: str) -> bool:
    """True if an option named ``key`` probably holds a credential."""
    return bool(_SECRET.search(key))


def secret_paths(options: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-looking keys in ``options`` (nested dicts included)."""
    found: list[str] = []
    if isinstance(options, dict):
        for key, value in options.items():
            path = f"{prefix}{key}"
            if is_secret_key(str(key)) and value not in (None, "", False):
                found.append(path)
            else:
                found += secret_paths(value, path + ".")
    return found


def split_secrets(options: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``options`` as (without secret keys, only the secret keys), nested dicts kept in shape."""
    if not options:
        return options, {}
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for key, value in options.items():
        if is_secret_key(str(key)) and value not in (None, "", False):
            secret[key] = value
        elif isinstance(value, dict):
            inner_public, inner_secret = split_secrets(value)
            public[key] = inner_public
            if inner_secret:
                secret[key] = inner_secret
        else:
            public[key] = value
    return public, secret


def refuse_secrets(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Raise :class:`SecretInParametersError` if ``options`` holds secret-looking keys."""
    found = secret_paths(options)
    if found:
        raise SecretInParametersError(
            f"storage_options holds credentials ({', '.join(found)}); flow parameters are stored in Prefect's "
            "database: put credentials in the worker's environment (AWS_ACCESS_KEY_ID, ...) or in a Prefect "
            "Secret block and pass its name as storage_options_secret (see docs/deploy.md)"
        )
    return options


# The flow parameter: the JSON schema refuses secret-looking top-level keys when a
# deployment run is created (propertyNames); the validator checks nested keys too.
StorageOptions = Annotated[
    dict[str, Any],
    AfterValidator(refuse_secrets),
    WithJsonSchema({
        "type": "object",
        "propertyNames": {"not": {"pattern": SECRET_KEY_PATTERN}},
    }),
]
# The two fields every parameter object with URIs has (one description each, here).
StorageOptionsField = Annotated[
    StorageOptions | None,
    Field(description="fsspec options for the URIs (endpoint_url, region, anon, client_kwargs, ...), as a JSON "
                      "object; no credentials: keys such as key, secret or token are refused, because parameters "
                      "are stored in Prefect's database (use storage_options_secret or the worker's environment)"),
]
StorageSecretField = Annotated[
    str | None,
    Field(description="name of a Prefect Secret block holding a JSON object of fsspec options with the "
                      'credentials (e.g. {"key": "...", "secret": "..."}), merged into storage_options at run '
                      "time; default: the worker's environment (AWS_ACCESS_KEY_ID, an IAM role, ...)"),
]

_in_process: dict[str, dict[str, Any]] = {}


def keep_in_process(secret: dict[str, Any]) -> str | None:
    """Keep ``secret`` options in this process; return the reference to pass as ``storage_options_secret``.

    Used by the CLI, which runs the flow in its own process: the reference
    (``memscore-process:<uuid>``) is stored as the parameter, the values are not.
    """
    if not secret:
        return None
    ref = LOCAL_PREFIX + uuid.uuid4().hex
    _in_process[ref] = secret
    return ref


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_storage_options(options: dict[str, Any] | None, secret_ref: str | None) -> dict[str, Any] | None:
    """``options`` merged with the credentials named by ``secret_ref``.

    ``secret_ref`` is a reference from :func:`keep_in_process` or the name of a
    Prefect ``Secret`` block whose value is a JSON object of fsspec options
    (e.g. ``{"key": "...", "secret": "..."}``). Raises ValueError when it names
    nothing usable.
    """
    if not secret_ref:
        return options
    if secret_ref.startswith(LOCAL_PREFIX):
        if secret_ref not in _in_process:
            raise ValueError(f"storage_options_secret {secret_ref} belongs to another process")
        secret = _in_process[secret_ref]
    else:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(secret_ref).get()
        except ValueError as error:
            raise ValueError(f"no Prefect Secret block named {secret_ref!r} ({error}); create it with "
                             "Secret(value={...}).save(name) or in the UI (Blocks -> Secret)") from None
        secret = json.loads(value) if isinstance(value, str) else value
        if not isinstance(secret, dict):
            raise ValueError(f"the Secret block {secret_ref!r} must hold a JSON object of fsspec options")
    return _merge(options or {}, secret)


def storage_fields(options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` and ``storage_options_secret`` for a parameter object, from fsspec
    options that may hold credentials (``--storage-options``, the Python API's argument).

    The credentials stay in this process (:func:`keep_in_process`); the object holds their
    reference only, so it can be stored as a flow parameter.
    """
    public, secret = split_secrets(options)
    return {"storage_options": public, "storage_options_secret": keep_in_process(secret)}


# ---------------------------------------------------------------------------
# the parameter objects' base class and their one-line errors


def _label(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    """The dotted field path of an error's ``loc``, without pydantic's union tags and list indexes."""
    names: list[str] = []
    for part in loc:
        fields = model.model_fields if model is not None else {}
        if isinstance(part, str) and part in fields:
            names.append(part)
            inner = [a for a in (fields[part].annotation, *get_args(fields[part].annotation))
                     if isinstance(a, type) and issubclass(a, BaseModel)]
            model = inner[0] if inner else None
        elif isinstance(part, str) and model is None and not names:
            names.append(part)
    return ".".join(names) or "value"


def describe_errors(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A pydantic ValidationError as one line: each refused field, what it accepts, what it got.

    ``unknown device 'gpu'; choose from 'auto', 'cpu', 'cuda' or 'mps', or a value matching
    ^cuda:[0-9]+$``; ``batch_size must be greater than or equal to 1 (got 0)``; ``unknown
    setting 'bootstrapp'``; a validator's own message (credentials) as it is.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in error.errors(include_url=False):
        label = _label(model, item["loc"])
        if item["type"] == "extra_forbidden":  # the unknown name itself is not a field
            label = ".".join([*(_label(model, item["loc"][:-1]).split(".") if item["loc"][:-1] else []),
                              str(item["loc"][-1])])
        grouped.setdefault(label, []).append(item)
    lines = []
    for label, items in grouped.items():
        given = items[0].get("input")
        choices = [i["ctx"]["expected"] for i in items if i["type"] == "literal_error"]
        patterns = [i["ctx"]["pattern"] for i in items if i["type"] == "string_pattern_mismatch"]
        if choices:
            text = f"unknown {label} {given!r}; choose from {' or '.join(choices)}"
            lines.append(text + "".join(f", or a value matching {p}" for p in patterns))
            continue
        texts: list[str] = []
        for item in items:
            kind, message = item["type"], item["msg"]
            if kind == "extra_forbidden":
                text = f"unknown setting {label!r}" + (f"; use {', '.join(model.model_fields)}" if model and "." not in label else "")
            elif kind == "missing":
                text = f"{label} is required"
            elif kind in ("value_error", "assertion_error"):
                text = message.split(", ", 1)[1] if message.startswith(("Value error, ", "Assertion failed, ")) else message
            elif message.startswith("Input should be "):
                text = f"{label} must be {message[len('Input should be '):]} (got {item.get('input')!r})"
            else:
                text = f"{label}: {message} (got {item.get('input')!r})"
            if text not in texts:
                texts.append(text)
        lines.append("; ".join(texts))
    return "; ".join(lines)


class Parameters(BaseModel):
    """Base of the parameter objects: each field's type, default and description live in the
    subclass, nowhere else (the CLI's options, the flows' parameter schemas and the UI's forms
    are read off it).

    Building one from Python (``ScoreRequest(source=..., ...)``) raises :attr:`error_type`
    (a :class:`memscore.UserError`) with one line for a refused value; Prefect validates the
    flows' parameters against the same model (a ``ParameterTypeError`` for a direct call,
    refused at creation for a deployment run, from the JSON schema).
    """

    model_config = ConfigDict(extra="forbid")
    error_type: ClassVar[type[Exception]] = ParameterError

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise self.error_type(describe_errors(error, type(self))) from None

    def resolved(self):
        """This object with the credentials named by ``storage_options_secret`` merged into
        ``storage_options`` (:func:`resolve_storage_options`), for use in this process only:
        never pass the result as a flow parameter. Nested parameter objects are resolved too."""
        update: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Parameters):
                update[name] = value.resolved()
        if "storage_options_secret" in type(self).model_fields and self.storage_options_secret:
            update["storage_options"] = resolve_storage_options(self.storage_options, self.storage_options_secret)
            update["storage_options_secret"] = None
        return self.model_copy(update=update) if update else self


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of ``model``'s field ``name`` (the one place it is written); None for a required field."""
    info = model.model_fields[name]
    return None if info.is_required() else info.get_default(call_default_factory=True)


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a Literal annotation (or an Optional/Annotated one), else None."""
    if get_origin(annotation) is Annotated:
        return literal_choices(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return literal_choices(members[0])
    return None
