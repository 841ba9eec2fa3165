"""Typed flow parameters and credentials kept out of them.

What belongs here: the choice types of the ``score-archive`` flow's signature
(Prefect turns them into the deployment's parameter schema, so the UI offers the
choices and the server refuses other values when a run is created), and the rules
that keep secrets out of flow-run parameters, which Prefect stores in its
database (and sends to a configured server or Prefect Cloud).

Credentials belong in the worker's environment (``AWS_ACCESS_KEY_ID``, an IAM
role, ``GOOGLE_APPLICATION_CREDENTIALS``, ...) or in a Prefect ``Secret`` block
named by the flow's ``storage_options_secret`` parameter; ``storage_options``
itself refuses keys that look like secrets (:data:`SECRET_KEY_PATTERN`). The CLI
splits such keys off ``--storage-options`` and hands them to the flow through
this process only (:func:`keep_in_process`), never as a parameter.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, WithJsonSchema

from memscore.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Decode = Literal["auto", "workers", "device"]
Backend = Literal["torch", "onnxruntime"]
# auto, cpu, cuda, mps as choices; cuda:N (one GPU of several) as a checked string.
Device = Union[
    Annotated[Literal["auto", "cpu", "cuda", "mps"], Field(title="choice")],
    Annotated[str, Field(pattern=r"^cuda:[0-9]+$", title="cuda:N")],
]

# Words in the keys of fsspec/boto/gcsfs/adlfs options that hold credentials (any case, anywhere in the key).
SECRET_WORDS = ("key", "secret", "token", "passw", "credential", "sas", "signature", "connection_string", "auth")
_SECRET = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# The same as a JSON Schema regex (ECMA 262 has no case-insensitive flag: [Kk][Ee][Yy]...).
SECRET_KEY_PATTERN = "|".join("".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in w) for w in SECRET_WORDS)
LOCAL_PREFIX = "memscore-process:"


class SecretInParametersError(UserError, ValueError):
    """A flow parameter holds what looks like a credential."""


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
