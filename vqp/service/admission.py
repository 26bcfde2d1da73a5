"""Admission control: a request is accepted only when every stage it will pass through has room.

The service refuses work it cannot start in time at once, with 503 and ``Retry-After``, rather than
queueing it until the client or a server timeout gives up on it: a request that was accepted
finishes. Each CPU stage (image decoding, the JPEG encode and its quality search) runs ``slots``
items at once on its own threads and admits at most ``waiting`` more; the detector's queue has its
own bound (batcher.py). Places are reserved when the request arrives, before its body is read, and
each is given back when its stage is done with the request.
"""
from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

EWMA = 0.2  # weight of the newest item in a stage's running mean of seconds per item
NICE = 5     # worker threads' CPU priority below the event loop's


def background() -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads one by one), so that the event
    loop, which admits and refuses requests, runs first: a refusal is immediate even when the encode
    and detector threads keep every core busy. Threads they start (torch's) inherit it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the loop
        pass


class Busy(Exception):
    """A stage has no room for the request, or it could not start within the request's deadline."""

    def __init__(self, message: str, retry_after: float = 1.0, reason: str = "busy"):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.reason = reason  # label of vqp_rejected_total


class Ticket:
    """One reserved place in a stage, given back exactly once.

    ``close`` (the request is over) gives it back only while the work has not started; work that
    started (a thread cannot be interrupted) gives it back itself with ``finish``, so a stage never
    counts fewer items than are really running.
    """

    def __init__(self, give_back):
        self._give_back = give_back
        self._lock = threading.Lock()
        self.state = "reserved"

    def start(self) -> None:
        with self._lock:
            if self.state == "reserved":
                self.state = "started"

    def finish(self) -> None:
        with self._lock:
            if self.state == "done":
                return
            self.state = "done"
        self._give_back()

    def close(self) -> None:
        with self._lock:
            if self.state != "reserved":
                return
            self.state = "done"
        self._give_back()


class Mean:
    """Running mean of seconds per item (exponentially weighted); None until the first item."""

    def __init__(self):
        self.value: float | None = None

    def add(self, seconds: float) -> None:
        self.value = seconds if self.value is None else (1 - EWMA) * self.value + EWMA * seconds


class Stage:
    """Work run on the stage's own ``slots`` threads, with at most ``waiting`` more requests admitted."""

    def __init__(self, name: str, slots: int, waiting: int):
        self.name, self.slots, self.waiting = name, slots, waiting
        self.admitted = 0  # reserved places not yet given back (waiting or running)
        self.lock = threading.Lock()
        self.mean = Mean()
        self.pool = ThreadPoolExecutor(slots, thread_name_prefix=f"vqp-{name}", initializer=background)
        self._sem: asyncio.Semaphore | None = None

    def expected_wait(self) -> float:
        """Seconds until one more request would get a slot, from the mean time per item."""
        ahead = self.admitted + 1 - self.slots
        return 0.0 if ahead <= 0 or self.mean.value is None else math.ceil(ahead / self.slots) * self.mean.value

    def admit(self) -> Ticket:
        """A place, or Busy at once when ``slots + waiting`` requests already hold one."""
        with self.lock:
            if self.admitted >= self.slots + self.waiting:
                raise Busy(f"the {self.name} stage is full ({self.slots} running, {self.waiting} waiting); "
                           "retry shortly", self.expected_wait(), f"{self.name}_full")
            self.admitted += 1
        return Ticket(self._leave)

    def _leave(self) -> None:
        with self.lock:
            self.admitted -= 1

    async def run(self, ticket: Ticket, fn, *args, **kw):
        """``fn`` on a stage thread once a slot is free; the place is given back when ``fn`` returns,
        even when the awaiting request was cancelled meanwhile (its deadline passed)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        sem = self._sem
        await sem.acquire()
        ticket.start()
        start = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kw))

        def done(f):
            sem.release()
            self.mean.add(time.perf_counter() - start)
            ticket.finish()
            if not f.cancelled():
                f.exception()  # retrieved: the error of a request that gave up is not logged as lost

        future.add_done_callback(done)
        return await asyncio.shield(future)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
