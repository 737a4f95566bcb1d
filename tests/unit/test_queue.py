"""The work queue: the most urgent key first, one worker per key, delays and back-off on loop time."""

from __future__ import annotations

import asyncio

import pytest

from controller.reconciler.priority import Priority
from controller.reconciler.queue import WorkQueue

pytestmark = pytest.mark.looptime


async def drain(queue: WorkQueue) -> list[str]:
    """Every key due now, in the order workers would get them."""
    keys = []
    while queue.depth() != dict.fromkeys(Priority, 0):
        item = await queue.get()
        assert item is not None
        queue.done(item.key)
        keys.append(item.key)
    return keys


async def test_a_wake_behind_a_thousand_resyncs_goes_first() -> None:
    queue = WorkQueue()
    for index in range(1000):
        queue.add(f"shop/db{index}", Priority.RESYNC)
    queue.add("shop/new", Priority.CHANGE)
    queue.add("shop/woken", Priority.WAKE)
    order = await drain(queue)
    assert order[:3] == ["shop/woken", "shop/new", "shop/db0"]  # then the resync, in the order it came
    assert len(order) == 1002


async def test_only_a_few_resync_passes_are_in_flight_and_a_wake_still_finds_a_worker() -> None:
    queue = WorkQueue(resync_limit=2)
    for index in range(5):
        queue.add(f"shop/db{index}", Priority.RESYNC)
    first, second = await queue.get(), await queue.get()
    assert first is not None
    assert second is not None
    third = asyncio.create_task(queue.get())
    await asyncio.sleep(10)
    assert not third.done()  # two resync passes in flight: a third waits, though a worker is free
    queue.add("shop/woken", Priority.WAKE)
    woken = await asyncio.wait_for(third, 1)
    assert woken is not None
    assert woken.key == "shop/woken"
    fourth = asyncio.create_task(queue.get())
    await asyncio.sleep(10)
    assert not fourth.done()
    queue.done(first.key)
    resync = await asyncio.wait_for(fourth, 1)
    assert resync is not None
    assert (resync.key, resync.priority) == ("shop/db2", Priority.RESYNC)


async def test_a_key_is_queued_once_at_its_most_urgent() -> None:
    queue = WorkQueue()
    queue.add("shop/a", Priority.RESYNC)
    queue.add("shop/b", Priority.TICK)
    queue.add("shop/a", Priority.WAKE)
    queue.add("shop/a", Priority.RESYNC)
    assert queue.depth()[Priority.WAKE] == 1
    assert await drain(queue) == ["shop/a", "shop/b"]


async def test_a_key_in_flight_runs_again_only_once_its_worker_is_done() -> None:
    queue = WorkQueue()
    queue.add("shop/a")
    item = await queue.get()
    assert item is not None
    queue.add("shop/a", Priority.TICK)
    queue.add("shop/a", Priority.WAKE)
    assert queue.depth() == dict.fromkeys(Priority, 0)  # not handed to a second worker meanwhile
    queue.done("shop/a")
    again = await queue.get()
    assert again is not None
    assert (again.key, again.priority) == ("shop/a", Priority.WAKE)


async def test_a_delayed_key_waits_for_its_time_and_keeps_the_earlier_one() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue()
    started = loop.time()
    queue.add("shop/a", Priority.TICK, after=30)
    queue.add("shop/a", Priority.TICK, after=10)
    queue.add("shop/a", Priority.TICK, after=20)
    item = await queue.get()
    assert item is not None
    assert loop.time() - started == pytest.approx(10)
    queue.done(item.key)
    assert queue.scheduled() == 0  # the later asks were folded into the first


async def test_a_back_off_holds_ticks_and_resyncs_but_not_a_change() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue()
    started = loop.time()
    queue.add("shop/a")
    item = await queue.get()
    assert item is not None
    queue.done("shop/a")
    assert queue.retry("shop/a") == 0.5
    queue.add("shop/a", Priority.TICK)
    queue.add("shop/a", Priority.RESYNC)
    assert queue.depth() == dict.fromkeys(Priority, 0)
    item = await queue.get()
    assert item is not None
    assert loop.time() - started == pytest.approx(0.5)
    queue.done("shop/a")
    assert queue.retry("shop/a") == 1.0  # doubling per failure of this key
    queue.add("shop/a", Priority.CHANGE)  # someone changed it: no waiting
    item = await queue.get()
    assert item is not None
    assert loop.time() - started == pytest.approx(0.5)
    queue.done("shop/a")
    queue.succeeded("shop/a")
    queue.add("shop/a", Priority.TICK)
    assert queue.depth()[Priority.TICK] == 1


async def test_waiting_is_measured_from_when_a_key_was_due() -> None:
    queue = WorkQueue()
    queue.add("shop/a", Priority.TICK, after=5)
    await asyncio.sleep(8)
    item = await queue.get()
    assert item is not None
    assert item.waited == pytest.approx(3)


async def test_a_forgotten_key_is_never_handed_out() -> None:
    queue = WorkQueue()
    queue.add("shop/gone", Priority.TICK, after=1)
    queue.add("shop/gone-now")
    queue.forget("shop/gone")
    queue.forget("shop/gone-now")
    queue.add("shop/kept", Priority.TICK, after=2)
    item = await queue.get()
    assert item is not None
    assert item.key == "shop/kept"


async def test_a_key_found_at_rest_drops_its_routine_looks_but_not_a_change() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue()
    queue.add("shop/parked")
    item = await queue.get()
    assert item is not None
    queue.add("shop/parked", Priority.TICK)  # the sampler's tick, asked while its pass ran
    queue.add("shop/timer", Priority.TICK, after=5)
    queue.add("shop/ticked", Priority.TICK)
    queue.add("shop/changed", Priority.CHANGE)
    for key in ("shop/parked", "shop/timer", "shop/ticked", "shop/changed"):
        queue.drop_routine(key)
    queue.done("shop/parked")
    queue.add("shop/last", Priority.TICK, after=10)
    started = loop.time()
    seen = []
    while (next_item := await queue.get()) is not None:
        queue.done(next_item.key)
        seen.append(next_item.key)
        if next_item.key == "shop/last":
            break
    assert seen == ["shop/changed", "shop/last"]
    assert loop.time() - started == pytest.approx(10)


async def run_pool(
    queue: WorkQueue, workers: int, seconds: float, handed: list[tuple[str, float]]
) -> list[asyncio.Task[None]]:
    """`workers` workers, each pass `seconds` long, noting each key and when it was handed out."""
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            handed.append((item.key, loop.time()))
            await asyncio.sleep(seconds)
            queue.done(item.key)

    return [asyncio.create_task(worker()) for _ in range(workers)]


async def test_idle_workers_take_keys_as_they_come_due_and_a_burst_in_waves() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue()
    handed: list[tuple[str, float]] = []
    pool = await run_pool(queue, 8, 2.0, handed)
    started = loop.time()
    for index in range(20):  # due faster than a pass ends, later ones added first: never 8 in flight
        queue.add(f"shop/timer{19 - index}", Priority.TICK, after=10 + 0.5 * (19 - index))
    await asyncio.sleep(100)
    assert [(key, round(at - started, 6)) for key, at in handed] == [
        (f"shop/timer{index}", 10 + 0.5 * index) for index in range(20)
    ]
    handed.clear()
    burst = loop.time()
    for index in range(20):  # all due at once: eight at a time, each as soon as a worker is free
        queue.add(f"shop/burst{index}", Priority.CHANGE)
    await asyncio.sleep(10)
    assert [round(at - burst, 6) for _, at in handed] == [0.0] * 8 + [2.0] * 8 + [4.0] * 4
    queue.close()
    await asyncio.gather(*pool)


async def test_a_worker_cancelled_while_idle_leaves_the_timers_watched() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue()
    handed: list[tuple[str, float]] = []
    queue.add("shop/first", Priority.TICK, after=5)
    pool = await run_pool(queue, 3, 0.1, handed)
    await asyncio.sleep(1)  # all three idle, one of them watching the timer
    for task in pool[:2]:
        task.cancel()
    started = loop.time()
    queue.add("shop/second", Priority.TICK, after=10)
    await asyncio.sleep(20)
    assert [(key, round(at - started, 6)) for key, at in handed] == [
        ("shop/first", 4.0),
        ("shop/second", 10.0),
    ]
    queue.close()
    await asyncio.gather(*pool, return_exceptions=True)


async def test_a_timer_is_still_watched_after_its_watcher_took_a_change() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue()
    handed: list[tuple[str, float]] = []
    started = loop.time()
    queue.add("shop/ticked", Priority.TICK, after=5)
    pool = await run_pool(queue, 3, 100.0, handed)
    await asyncio.sleep(1)  # all three idle, the longest idle watching the timer
    queue.add("shop/changed", Priority.CHANGE)  # handed to the longest idle: the watcher
    await asyncio.sleep(10)
    assert [(key, round(at - started, 6)) for key, at in handed] == [
        ("shop/changed", 1.0),
        ("shop/ticked", 5.0),
    ]
    queue.close()
    for task in pool:
        task.cancel()
    await asyncio.gather(*pool, return_exceptions=True)
