"""The one marker for errors a user can fix.

An exception that is a :class:`UserError` (or has one in its ``__cause__`` /
``__context__`` chain, as when Prefect wraps it) is shown by the command line as
one line, ``memscore: error: <message>``, with exit status 1 and no traceback,
and the flows' storage retries never retry it. Each layer's own error types
(unknown model, weights missing, SOURCE unreadable, bad human data, a training
run that cannot start, ...) subclass it, so no list of error types is kept
anywhere else. The message must name the fix.

This module imports nothing from memscore: every layer can use it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; shown as one line, without a traceback, and never retried."""


def find_user_error(error: BaseException) -> UserError | None:
    """The user-fixable error behind ``error`` (Prefect and DuckDB may wrap it), or None."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, UserError):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None
