"""The per-process runtime's database executor."""

import pytest


def test_priority_executor_serves_clock_jobs_before_queued_work():
    import threading

    from streams.runtime import CLOCK_PRIORITY, PriorityExecutor

    executor = PriorityExecutor(name="test-priority")
    gate = threading.Event()
    order: list[str] = []
    blocker = executor.submit(gate.wait)
    queued = [executor.submit(order.append, f"request-{n}") for n in range(3)]
    clock = executor.submit(order.append, "release", priority=CLOCK_PRIORITY)
    gate.set()
    for future in [blocker, *queued, clock]:
        future.result(timeout=5)
    assert order == ["release", "request-0", "request-1", "request-2"]
    failing = executor.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
