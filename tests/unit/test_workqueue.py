"""The keyed work queue: one worker per key, coalescing, retries with capped backoff, run-again-later."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from axolotl_operator.workqueue import WorkQueue


@pytest.fixture
def queues():
    made: list[WorkQueue] = []
    yield made
    for queue in made:
        queue.stop()


def make(queues, process, **kwargs) -> WorkQueue:
    queue = WorkQueue(process, **{"workers": 4, "base_delay": 0.001, "max_delay": 0.01, **kwargs}).start()
    queues.append(queue)
    return queue


def test_a_key_added_while_it_runs_runs_once_more_and_never_twice_at_once(queues):
    entered, release = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()
    active: Counter[str] = Counter()
    overlap: list[str] = []
    released: list[bool] = []  # what each run's wait returned: asserted below, not in the worker
    lock = threading.Lock()

    def process(key):
        with lock:
            active[key] += 1
            runs[key] += 1
            if active[key] > 1:
                overlap.append(key)
        entered.set()
        released.append(release.wait(5))
        with lock:
            active[key] -= 1

    queue = make(queues, process)
    queue.add("a")
    assert entered.wait(5)
    for _ in range(50):  # a burst of triggers while "a" is being processed
        queue.add("a")
    release.set()
    assert queue.drain(5)
    assert runs["a"] == 2  # the running one, then one more for the whole burst
    assert overlap == []
    assert released == [True, True]  # the first run was held until released, not until its wait timed out


def test_triggers_for_a_waiting_key_coalesce(queues):
    runs: Counter[str] = Counter()
    queue = make(queues, lambda key: runs.update([key]) and None)
    for _ in range(20):
        queue.add("b", delay=0.05)  # all waiting: one run
    assert queue.drain(5)
    assert runs["b"] == 1


def test_failures_are_retried_with_capped_exponential_backoff(queues):
    attempts: list[int] = []
    errors: list[tuple[int, float]] = []

    def process(key):
        attempts.append(1)
        if len(attempts) <= 5:
            raise RuntimeError("apiserver unavailable")

    queue = make(
        queues,
        process,
        base_delay=0.002,
        max_delay=0.01,
        on_error=lambda key, error, failures, delay: errors.append((failures, delay)),
    )
    queue.add("c")
    assert queue.drain(5)
    assert len(attempts) == 6  # five failures, then the success: nothing dropped
    assert errors == [(1, 0.002), (2, 0.004), (3, 0.008), (4, 0.01), (5, 0.01)]


def test_a_success_resets_the_backoff(queues):
    outcomes = iter([RuntimeError("x"), None, RuntimeError("y")])
    errors: list[int] = []

    def process(key):
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome

    queue = make(queues, process, on_error=lambda key, error, failures, delay: errors.append(failures))
    queue.add("d")
    assert queue.drain(5)
    queue.add("d")
    assert queue.drain(5)
    assert errors == [1, 1]


def test_a_run_can_ask_to_run_again_later(queues):
    runs: list[float | None] = []

    def process(key):
        runs.append(key)
        return 0.01 if len(runs) == 1 else None

    queue = make(queues, process)
    queue.add("e")
    assert queue.drain(5)
    assert runs == ["e", "e"]


def test_different_keys_run_in_parallel(queues):
    b_ran = threading.Event()

    def process(key):
        if key == "a":
            assert b_ran.wait(5), "b never ran while a was running"
        else:
            b_ran.set()

    errors: list[BaseException] = []
    queue = make(queues, process, on_error=lambda key, error, failures, delay: errors.append(error))
    queue.add("a")
    queue.add("b")
    assert queue.drain(10)
    assert errors == []


def test_forget_drops_a_queued_key_and_stop_ends_the_workers(queues):
    runs: list[str] = []
    queue = make(queues, runs.append)
    queue.add("f", delay=60)
    assert len(queue) == 1
    queue.forget("f")
    assert len(queue) == 0 and queue.drain(1)
    queue.stop()
    queue.add("g")
    time.sleep(0.05)  # nothing may run after stop (an absence: there is no event to wait for)
    assert runs == []


def test_every_readds_the_keys_it_is_given(queues):
    runs: Counter[str] = Counter()
    seen = threading.Event()

    def process(key):
        runs[key] += 1
        if runs[key] >= 3:
            seen.set()

    queue = make(queues, process)
    queue.every(0.01, lambda: ["h"])
    assert seen.wait(5)


@pytest.mark.parametrize("later", [float("inf"), float("nan"), 1e12, -5.0])
def test_odd_delays_are_capped_and_never_kill_the_workers(queues, later):
    runs: list[str] = []

    def process(key):
        runs.append(key)
        return later if len(runs) == 1 else None

    queue = make(queues, process, workers=1, max_delay=0.01)
    queue.add("x", delay=later)
    assert queue.drain(5)
    assert runs == ["x", "x"]  # ran, asked for an odd delay, ran again within max_delay
    queue.add("y")
    assert queue.drain(5) and runs[-1] == "y"  # the worker is alive


def test_an_error_handler_that_raises_does_not_kill_the_worker(queues):
    def boom(key, error, failures, delay):
        raise RuntimeError("handler bug")

    outcomes = iter([RuntimeError("first"), None])

    def process(key):
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome

    queue = make(queues, process, workers=1, on_error=boom)
    queue.add("z")
    assert queue.drain(5)
