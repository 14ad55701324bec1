"""Stream admission: a bounded number of set-ups at once, the others wait in order."""

from __future__ import annotations

import asyncio

from probemesh.collector.admission import Admission


def family(admission: Admission, name: str) -> dict[str, float]:
    for metric in admission.metric_families():
        if metric.name == name:
            return {s.name + str(sorted(s.labels.items())): s.value for s in metric.samples}
    raise AssertionError(name)


async def test_at_most_slots_set_ups_at_once_first_come_first_served() -> None:
    admission = Admission(slots=2)
    order: list[int] = []
    running = 0
    peak = 0

    async def stream(n: int) -> None:
        nonlocal running, peak
        slot = admission.slot()
        try:
            await slot.acquire()
            order.append(n)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            slot.release()  # early, as the servicer does once the set-up is done
        finally:
            slot.release()  # and again: a no-op

    tasks = [asyncio.create_task(stream(n)) for n in range(10)]
    await asyncio.sleep(0)
    assert admission.waiting == 8
    await asyncio.gather(*tasks)
    assert peak == 2
    assert order == list(range(10))
    assert admission.waiting == 0
    waits = family(admission, "probemesh_stream_admission_wait_seconds")
    assert waits["probemesh_stream_admission_wait_seconds_count[]"] == 10


async def test_a_stream_that_ends_while_waiting_takes_no_slot() -> None:
    admission = Admission(slots=1)
    holder = admission.slot()
    await holder.acquire()
    waiter = admission.slot()
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    waiter.release()  # never acquired: nothing to give back
    holder.release()
    late = admission.slot()
    await asyncio.wait_for(late.acquire(), 1)
    assert admission.waiting == 0
    late.release()
