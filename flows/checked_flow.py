"""Prefect flows whose direct calls are checked before Prefect records their parameters.

What belongs here: :class:`CheckedFlow` and its decorator :func:`checked_flow`, used by
every memscore flow instead of ``prefect.flow``.

Why: calling a flow in Python (``score_archive(request={...})``) makes Prefect create
the flow run, with its parameters stored in its database (and sent to a configured
server), *before* it validates them. A dict with ``storage_options: {"key": ...}``
was therefore refused, but only after the credential had been written down. A
:class:`CheckedFlow` validates the call's parameters the way Prefect will (the
flow's own pydantic types, :meth:`prefect.Flow.validate_parameters`) and looks for
credentials in every ``storage_options`` among them first; a refused call raises
:class:`RefusedParametersError` (one line; a ``ParameterError`` and Prefect's
``ParameterTypeError``) and no flow run exists.

Deployment runs are not affected: their parameters are validated by the server when
the run is created (the deployment's parameter schema), and workers call the flow
through Prefect's engine, not through ``__call__``.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import Flow
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import get_call_parameters
from pydantic import BaseModel, ValidationError

from memscore.tasks.params import ParameterError, describe_errors, secret_paths


class RefusedParametersError(ParameterError, ParameterTypeError):
    """A direct flow call refused before its flow run was created: a memscore
    :class:`~tasks.params.ParameterError` (one line) and Prefect's own
    :class:`~prefect.exceptions.ParameterTypeError` (what Prefect raises for bad parameters)."""


def credentials_in(parameters: dict[str, Any]) -> list[str]:
    """Dotted paths of secret-looking keys under any ``storage_options`` in ``parameters``
    (parameter objects are read through ``model_dump``; dicts and lists are searched)."""
    found: list[str] = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict):
            for key, inner in value.items():
                inner_path = f"{path}.{key}" if path else str(key)
                if key == "storage_options" and isinstance(inner, dict):
                    found.extend(f"{inner_path}.{p}" for p in secret_paths(inner))
                else:
                    visit(inner, inner_path)
        elif isinstance(value, (list, tuple)):
            for i, inner in enumerate(value):
                visit(inner, f"{path}[{i}]")

    visit(parameters, "")
    return found


class CheckedFlow(Flow):
    """A :class:`prefect.Flow` that refuses a direct call with invalid parameters or credentials
    before any flow run is created (see the module's docstring)."""

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        parameters = get_call_parameters(self.fn, args, kwargs)
        secrets = credentials_in(parameters)
        if secrets:
            raise RefusedParametersError(
                f"{self.name}: credentials in the parameters ({', '.join(secrets)}) would be stored in Prefect's "
                "database: give them in the worker's environment or name a Prefect Secret block in "
                "storage_options_secret")
        if self.should_validate_parameters:
            try:
                self.validate_parameters(parameters)
            except ParameterTypeError as error:
                cause = error.__context__  # Prefect raises it `from None` over pydantic's error
                text = describe_errors(cause) if isinstance(cause, ValidationError) else str(error).splitlines()[0]
                raise RefusedParametersError(f"{self.name}: {text}") from None
        return super().__call__(*args, return_state=return_state, wait_for=wait_for, **kwargs)


def checked_flow(**options: Any) -> Callable[[Callable[..., Any]], CheckedFlow]:
    """``@checked_flow(name=..., ...)``: like ``@prefect.flow(...)`` (the same keyword options),
    returning a :class:`CheckedFlow`."""

    def decorate(fn: Callable[..., Any]) -> CheckedFlow:
        return CheckedFlow(fn, **options)

    return decorate
