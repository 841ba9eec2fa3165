"""A progress bar on the terminal (images/s, ETA) for a scoring run."""

from __future__ import annotations

import sys
import threading


class ProgressReporter:
    """Thread-safe progress over all shards of a run; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._bar = None
        if enabled and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", desc="scoring", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def advance(self, images: int) -> None:
        if self._bar is not None and images:
            with self._lock:
                self._bar.update(images)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __reduce__(self):  # shipped to another process (e.g. a Dask worker): no terminal there
        return (ProgressReporter, (0, False))
