"""Which storage failures may pass by themselves (and are worth another try).

Refused, reset or timed-out connections, throttling, HTTP 429 and 5xx answers,
anywhere in an exception's ``__cause__``/``__context__`` chain (s3fs and Prefect
wrap the original). Missing files, denied access and bad requests are not.
Used by image reads (:mod:`tasks.decode`) and by the SOURCE listing
(:mod:`tasks.discover`), whose transient failures are left to the flow's
storage retries instead of ending the run as "SOURCE unreadable".
"""

from __future__ import annotations

import errno
import re
_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "ServiceUnavailable", "InternalError", "RequestLimitExceeded", "TooManyRequests", "503", "500", "502", "504",
})
_TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN,
})
# botocore's HTTPClientError is the base of its connection-level errors (refused, closed,
# timed out, a garbled response); aiohttp's and fsspec's equivalents beside it.
_TRANSIENT_TYPE_NAMES = frozenset({
    "HTTPClientError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ResponseStreamingError", "IncompleteRead", "ClientConnectorError", "ClientPayloadError",
    "ServerDisconnectedError", "ServerTimeoutError", "ClientOSError", "FSTimeoutError",
})
_TRANSIENT_TEXT = re.compile(
    r"connection (refused|reset|aborted)|timed? ?out|throttl|slow ?down|service unavailable|"
    r"temporarily unavailable|too many requests|internal ?error|bad gateway|gateway timeout|"
    r"cannot connect|could not connect|server disconnected", re.IGNORECASE)


def is_transient(error: BaseException) -> bool:
    """Whether a read failure may pass by itself: refused, reset or timed-out connections,
    throttling, HTTP 429 or 5xx (anywhere in the exception's chain). Missing files, denied
    access and bad requests are not."""
    seen: BaseException | None = error
    depth = 0
    while seen is not None and depth < 8:
        if isinstance(seen, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, OSError) and seen.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(response.get("Error", {}).get("Code", ""))
            if code in _TRANSIENT_CODES or (isinstance(status, int) and (status == 429 or status >= 500)):
                return True
        name = type(seen).__name__
        if name in _TRANSIENT_TYPE_NAMES:
            return True
        if _TRANSIENT_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return False
