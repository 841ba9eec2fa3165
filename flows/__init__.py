"""Prefect flows and the ``memscore`` command line.

flows/score.py (flow ``score-archive``), flows/analyze.py (flow ``analyze``), and
one small module per subcommand of :mod:`flows.cli`. Importing this package sets
Prefect defaults that suit a run without a server (a longer start timeout for the
temporary local API, analytics off); values already in the environment win.
"""

import os

_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LOG_PRINTS": "true",
}
for _key, _value in _PREFECT_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
