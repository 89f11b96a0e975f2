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


async def test_an_owners_release_timer_replaces_a_sweepers_backup_and_fires_early():
    import asyncio
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from streams.runtime import Runtime

    runtime = Runtime()
    loop = runtime.loop = asyncio.get_running_loop()
    when = timezone.now() + timedelta(seconds=60)
    runtime._arm("release", "t1", when, backup=True)
    backup, is_backup = runtime._timers[("release", "t1")]
    assert is_backup
    # A backup too reads its plan ahead of its moment, the predicted end + the backup delay.
    lead = settings.PARLEY_RELEASE_PREPARE_S
    backup_in = 60 + settings.PARLEY_RELEASE_BACKUP_S - lead
    assert backup.when() - loop.time() == pytest.approx(backup_in, abs=0.01)

    runtime._arm("release", "t1", when)  # the owner, after its final chunk committed
    owner, is_backup = runtime._timers[("release", "t1")]
    assert backup.cancelled() and not is_backup
    # Early by the prepare lead: the plan is read ahead, the commit waits for `when`.
    assert owner.when() - loop.time() == pytest.approx(60 - lead, abs=0.01)

    runtime._arm("release", "t1", when, backup=True)  # a later sweep changes nothing
    assert runtime._timers[("release", "t1")] == (owner, False)
    owner.cancel()
