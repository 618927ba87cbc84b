"""A keyed work queue, as client-go's: every trigger adds a key, one worker handles a key at a time.

Why: status must never be lost. A key added while it waits is merged into one run (a burst of pod
events costs one status computation); a key added while it is being processed runs once more
afterwards (nothing seen meanwhile is missed); a failed run is retried with capped exponential backoff,
never dropped; a run may ask to run again later (rate-limited progress). A periodic resync re-adds
known keys, a safety net for events that never came.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable

log = logging.getLogger("axolotl_operator.workqueue")

Process = Callable[[Hashable], float | None]  # returns seconds until it wants to run again, or None
OnError = Callable[[Hashable, BaseException, int, float], None]  # key, error, failures in a row, delay


class WorkQueue:
    """Thread-based: `workers` threads call `process(key)`; `add` is safe from any thread."""

    def __init__(
        self,
        process: Process,
        *,
        workers: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        on_error: OnError | None = None,
        name: str = "queue",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._process = process
        self._workers = workers
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._on_error = on_error
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # queued keys -> when they are due (the live heap entry)
        self._processing: set[Hashable] = set()
        self._again: dict[Hashable, float] = {}  # added while processing -> when due
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> WorkQueue:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def every(self, interval: float, keys: Callable[[], Iterable[Hashable]]) -> None:
        """Re-add `keys()` every `interval` seconds until stopped (the resync)."""

        interval = self._delay(interval) if not math.isfinite(interval) else max(interval, 0.001)

        def loop() -> None:
            while not self._stopped.wait(interval):
                try:
                    for key in list(keys()):
                        self.add(key)
                except Exception as exc:  # the safety net must not die of one bad round
                    log.warning("%s: resync failed: %s", self._name, exc)

        thread = threading.Thread(target=loop, name=f"{self._name}-resync", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10) -> None:
        """Stop taking work; running calls finish (up to `timeout`)."""
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # ---------------------------------------------------------------- producers

    def _delay(self, seconds: float | None) -> float:
        """A delay in [0, max_delay]: a huge, infinite or NaN one must not stall (or kill) the workers."""
        if seconds is None or not math.isfinite(seconds):
            return self._max_delay
        return min(max(0.0, seconds), self._max_delay)

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Process `key` after `delay` seconds (or sooner, if it is already due sooner); delays are capped
        at `max_delay`."""
        due = self._clock() + self._delay(delay)
        with self._cond:
            if self._stopped.is_set():
                return
            if key in self._processing:
                self._again[key] = min(self._again.get(key, due), due)
            else:
                self._push(key, due)

    def forget(self, key: Hashable) -> None:
        """Drop the key's failure count and any queued run (the object is gone)."""
        with self._cond:
            self._due.pop(key, None)
            self._again.pop(key, None)
            self._failures.pop(key, None)
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys waiting (not those being processed)."""
        with self._cond:
            return len(self._due)

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or processing; False on timeout (for tests and shutdown)."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._due or self._processing:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    # ---------------------------------------------------------------- workers

    def _push(self, key: Hashable, due: float) -> None:
        """Queue `key` at `due` unless it is already queued sooner (lock held)."""
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._cond.notify()

    def _take(self) -> Hashable | None:
        """The next due key, marked as processing; None once stopped."""
        with self._cond:
            while not self._stopped.is_set():
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier entry, or forgotten
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, key = self._heap[0]
                wait = due - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                self._processing.add(key)
                return key
            return None

    def _work(self) -> None:
        while (key := self._take()) is not None:
            error: BaseException | None = None
            later: float | None = None
            try:
                later = self._process(key)
            except BaseException as exc:  # whatever happens, the key is released and retried
                error = exc
            finally:
                self._done(key, error, later)

    def _done(self, key: Hashable, error: BaseException | None, later: float | None) -> None:
        now = self._clock()
        with self._cond:
            self._processing.discard(key)
            again = self._again.pop(key, None)
            if error is not None:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(self._max_delay, self._base_delay * 2 ** (failures - 1))
                # A retry recomputes from fresh reads, so it covers triggers that came meanwhile.
                self._push(key, now + delay)
            else:
                failures, delay = 0, 0.0
                self._failures.pop(key, None)
                if again is not None:
                    self._push(key, again)
                if later is not None:
                    self._push(key, now + self._delay(later))
            self._cond.notify_all()
        if error is not None:
            if self._on_error is not None:
                try:
                    self._on_error(key, error, failures, delay)
                except Exception as exc:
                    log.warning("%s: error handler failed for %s: %s", self._name, key, exc)
            else:
                log.warning(
                    "%s: %s failed (%d in a row), retrying in %.1fs: %s",
                    self._name,
                    key,
                    failures,
                    delay,
                    error,
                )
