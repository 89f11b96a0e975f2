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

    def armed_in(handle: asyncio.TimerHandle, since: float) -> tuple[float, float]:
        """How far after `since` (loop time, read before `when` was taken) the timer fires,
        and the tolerance: the time since then, however long a loaded machine made it
        (the timer is armed relative to the clock at arming), plus clock-reading noise."""
        return handle.when() - since, loop.time() - since + 0.05

    since = loop.time()
    when = timezone.now() + timedelta(seconds=60)
    runtime._arm("release", "t1", when, backup=True)
    backup, is_backup = runtime._timers[("release", "t1")]
    assert is_backup
    # A backup too reads its plan ahead of its moment, the predicted end + the backup delay.
    lead = settings.PARLEY_RELEASE_PREPARE_S
    fires_in, tolerance = armed_in(backup, since)
    assert fires_in == pytest.approx(60 + settings.PARLEY_RELEASE_BACKUP_S - lead, abs=tolerance)

    runtime._arm("release", "t1", when)  # the owner, after its final chunk committed
    owner, is_backup = runtime._timers[("release", "t1")]
    assert backup.cancelled() and not is_backup
    # Early by the prepare lead: the plan is read ahead, the commit waits for `when`.
    fires_in, tolerance = armed_in(owner, since)
    assert fires_in == pytest.approx(60 - lead, abs=tolerance)
    # For the same moment, the owner's timer fires first, by the backup delay.
    assert owner.when() < backup.when()
    assert backup.when() - owner.when() == pytest.approx(
        settings.PARLEY_RELEASE_BACKUP_S, abs=tolerance
    )

    runtime._arm("release", "t1", when, backup=True)  # a later sweep changes nothing
    assert runtime._timers[("release", "t1")] == (owner, False)
    owner.cancel()


async def test_a_clock_job_starts_at_its_moment_while_the_loop_is_busy():
    """The alarm thread starts a release's commit at its moment even when the loop is busy
    (here: a CPU-bound step holding it for 0.8 s); never before the moment."""
    import asyncio
    import time
    from datetime import timedelta

    from django.utils import timezone

    from streams.runtime import Runtime

    runtime = Runtime()
    runtime.loop = asyncio.get_running_loop()
    moment = timezone.now() + timedelta(seconds=0.2)
    job = asyncio.ensure_future(runtime.run_clock_db_at(moment, time.time))
    await asyncio.sleep(0)  # the job registers its alarm
    busy_until = time.monotonic() + 0.8
    while time.monotonic() < busy_until:  # the loop does not come round meanwhile
        pass
    started = await job
    assert started >= moment.timestamp()
    # Generous: a loaded machine may be slow to switch threads, but not by the whole 0.6 s
    # the loop stayed busy after the moment.
    assert started < moment.timestamp() + 0.45
    # A job whose moment has passed starts at once.
    assert await runtime.run_clock_db_at(timezone.now() - timedelta(seconds=1), lambda: 7) == 7
