"""Handover: the requests of one loop turn go to the send thread in one job, each keeps its own
outcome, and none is told its records were written before Kafka acknowledged them."""

import asyncio
import concurrent.futures as cf
import threading

import pytest

from ray_app.collect.handover import Handover, NotConnected, NotHandedOver


class FakeProducer:
    """Records each send (on the send thread) and holds its acknowledgement until told."""

    def __init__(self):
        self.sent: list[tuple[object, int]] = []
        self.acks: list[cf.Future] = []
        self.jobs_seen: list[int] = []
        self.threads: set[str] = set()

    def send(self, records, size):
        self.threads.add(threading.current_thread().name)
        if records == "boom":
            raise ValueError("queue full")
        if records == "no producer":
            return None
        self.sent.append((records, size))
        ack: cf.Future = cf.Future()
        self.acks.append(ack)
        return ack


def make(producer):
    executor = cf.ThreadPoolExecutor(1, thread_name_prefix="test-send")
    released: list[int] = []
    return Handover(executor, producer.send, released.append), executor, released


async def until(predicate, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def test_one_job_per_loop_turn_in_submission_order():
    producer = FakeProducer()
    handover, executor, _ = make(producer)
    submitted = []
    original = executor.submit

    def counting(fn, *args):
        submitted.append(len(args[0]))
        return original(fn, *args)

    executor.submit = counting

    async def main():
        futures = [handover.submit([f"r{i}"], i) for i in range(5)]  # one turn
        await until(lambda: len(producer.acks) == 5)
        later = handover.submit(["r5"], 5)  # the next turn: a second job
        await until(lambda: len(producer.acks) == 6)
        for i, ack in enumerate(producer.acks):
            ack.set_result(f"delivered {i}")
        return await asyncio.gather(*futures, later)

    results = asyncio.run(main())
    assert results == [f"delivered {i}" for i in range(6)]  # each its own outcome
    assert [r for r, _ in producer.sent] == [[f"r{i}"] for i in range(6)]
    assert submitted == [5, 1]
    assert producer.threads == {"test-send_0"}  # never the loop's thread


def test_nothing_is_answered_before_its_acknowledgement():
    producer = FakeProducer()
    handover, _, _ = make(producer)

    async def main():
        first, second = handover.submit(["a"], 1), handover.submit(["b"], 1)
        await until(lambda: len(producer.acks) == 2)
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()
        producer.acks[1].set_result("b written")  # from a thread, as a Kafka client does
        assert await second == "b written"
        assert not first.done()
        threading.Thread(target=producer.acks[0].set_result, args=("a written",)).start()
        assert await first == "a written"

    asyncio.run(main())


def test_an_error_fails_only_its_own_request():
    producer = FakeProducer()
    handover, _, _ = make(producer)

    async def main():
        futures = [
            handover.submit(["ok"], 1),
            handover.submit("boom", 2),
            handover.submit("no producer", 3),
            handover.submit(["lost"], 4),
            handover.submit(["ok too"], 5),
        ]
        await until(lambda: len(producer.acks) == 3)
        producer.acks[0].set_result("ok")
        producer.acks[1].set_exception(RuntimeError("broker lost its state"))
        producer.acks[2].set_result("ok too")
        return await asyncio.gather(*futures, return_exceptions=True)

    ok, boom, missing, lost, ok_too = asyncio.run(main())
    assert (ok, ok_too) == ("ok", "ok too")
    assert isinstance(boom, NotHandedOver) and isinstance(boom.__cause__, ValueError)
    assert isinstance(missing, NotConnected)
    assert isinstance(lost, RuntimeError)


def test_a_cancelled_request_is_still_sent_and_the_others_answered():
    producer = FakeProducer()
    handover, _, _ = make(producer)

    async def main():
        gone, kept = handover.submit(["gone"], 1), handover.submit(["kept"], 1)
        gone.cancel()
        await until(lambda: len(producer.acks) == 2)
        for ack in producer.acks:
            ack.set_result("written")
        return await kept

    assert asyncio.run(main()) == "written"
    assert [r for r, _ in producer.sent] == [["gone"], ["kept"]]  # sent anyway


def test_a_shut_down_send_thread_releases_the_bytes_and_fails_the_requests():
    producer = FakeProducer()
    handover, executor, released = make(producer)
    executor.shutdown()

    async def main():
        futures = [handover.submit(["a"], 10), handover.submit(["b"], 20)]
        return await asyncio.gather(*futures, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, NotHandedOver) for o in outcomes)
    assert released == [10, 20] and not producer.sent


def test_outcomes_after_the_loop_closed_are_dropped_and_a_new_loop_works():
    producer = FakeProducer()
    handover, _, _ = make(producer)

    async def abandon():
        handover.submit(["old"], 1)
        await until(lambda: len(producer.acks) == 1)

    asyncio.run(abandon())
    producer.acks[0].set_result("late")  # its loop is closed: nothing to wake, no error

    async def again():
        fresh = handover.submit(["new"], 1)
        await until(lambda: len(producer.acks) == 2)
        producer.acks[1].set_result("new written")
        return await fresh

    assert asyncio.run(again()) == "new written"


def test_an_old_loop_left_open_neither_stalls_the_new_one_nor_keeps_its_records() -> None:
    """A loop that is left open (not run any more): an outcome of it that arrives late must not
    leave a wake-up due that never runs (every later request of the new loop would time out),
    and records it queued but never flushed still go to the producer."""
    producer = FakeProducer()
    handover, _, _ = make(producer)
    old = asyncio.new_event_loop()

    async def abandon():
        handover.submit(["old"], 1)
        await until(lambda: len(producer.acks) == 1)
        handover.submit(["queued, never flushed"], 2)  # its flush would run on the next turn

    old.run_until_complete(abandon())

    async def again():
        fresh = handover.submit(["new"], 3)
        await until(lambda: len(producer.acks) == 3)
        producer.acks[0].set_result("late")  # the old loop's ack arrives now
        producer.acks[-1].set_result("new written")
        return await asyncio.wait_for(fresh, 5.0)

    try:
        assert asyncio.run(again()) == "new written"
        assert [r for r, _ in producer.sent] == [["old"], ["queued, never flushed"], ["new"]]
    finally:
        old.close()


@pytest.mark.parametrize("requests", [200])
def test_many_concurrent_requests_each_get_their_own_ack(requests):
    producer = FakeProducer()
    handover, _, _ = make(producer)

    async def one(i):
        await asyncio.sleep(0.0005 * (i % 7))
        return await handover.submit([i], 1)

    async def main():
        tasks = [asyncio.create_task(one(i)) for i in range(requests)]
        await until(lambda: len(producer.acks) == requests)
        acker = threading.Thread(
            target=lambda: [
                a.set_result(r) for a, (r, _) in zip(producer.acks, producer.sent, strict=True)
            ]
        )
        acker.start()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [[i] for i in range(requests)]
