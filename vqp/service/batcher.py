"""Micro-batching in front of the one loaded detector.

Requests put frames on a bounded queue; a single thread takes the first waiting frame, collects
more for up to ``max_wait`` seconds or until ``max_batch`` frames, and runs the detector once on
all of them. One thread owns the model, so it needs no locking. The queue holds at most
``queue_size`` frames: an image request reserves its place when it arrives (``reserve``, refused at
once with Busy when none is left, so the service answers 503 before doing any work), video jobs wait
for one. A place is given back when the batcher takes the frame.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..detect import Detector, class_ids
from ..types import Detections
from .admission import Busy, Mean, Ticket, background
from .metrics import Metrics

log = logging.getLogger("vqp.service")


@dataclass
class _Item:
    rgb: np.ndarray
    future: Future
    queued: float
    place: Ticket


class Batcher:
    def __init__(self, detector: Detector, *, max_batch: int = 8, max_wait: float = 0.005,
                 queue_size: int = 64, metrics: Metrics | None = None):
        self.detector, self.max_batch, self.max_wait = detector, max_batch, max_wait
        self.queue_size = queue_size
        self.metrics = metrics or Metrics()
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()  # bounded by the places
        self._places = threading.BoundedSemaphore(queue_size)
        self._used = 0  # places reserved or queued (for the gauge and the wait estimate)
        self._lock = threading.Lock()
        self.per_frame = Mean()  # detector seconds per frame
        self.ready = threading.Event()  # set once the detector is warm
        self._thread = threading.Thread(target=self._run, name="vqp-batcher", daemon=True)
        self.metrics.queue_depth.set_function(lambda: self._used)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def expected_wait(self) -> float:
        """Seconds until the detector would reach one more frame: the frames ahead of it at the mean time per frame."""
        return self._used * (self.per_frame.value or 0.0)

    def reserve(self, block: bool = False) -> Ticket:
        """A place in the queue; Busy when none is left and not blocking."""
        if not self._places.acquire(blocking=block):
            raise Busy(f"detection queue is full ({self.queue_size} frames waiting); retry shortly",
                       self.expected_wait(), "queue_full")
        with self._lock:
            self._used += 1
        return Ticket(self._give_back)

    def _give_back(self) -> None:
        with self._lock:
            self._used -= 1
        self._places.release()

    def submit(self, rgb: np.ndarray, place: Ticket | None = None) -> Future:
        """Queue one HxWx3 uint8 frame in a reserved place (without one: wait for a place); the
        future yields its Detections."""
        place = place or self.reserve(block=True)
        place.start()
        item = _Item(rgb, Future(), time.perf_counter(), place)
        self._q.put(item)
        return item.future

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, deadline = [first], time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _warm(self) -> None:
        """Two calls on a blank frame: the model's first call is slow (not on a client's time), the
        second measures it, so that the first requests' expected wait is known. The detector's input
        is a fixed size, so one frame costs about the same whatever the image."""
        frame = np.zeros((480, 640, 3), np.uint8)
        try:
            self.detector([frame])
            start = time.perf_counter()
            self.detector([frame])
            self.per_frame.add(time.perf_counter() - start)
        except Exception:  # requests will fail with the reason; the service still answers
            log.exception("detector failed on a blank frame")
        self.ready.set()

    def _run(self) -> None:
        background()
        self._warm()
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            for it in batch:
                it.place.finish()
            batch = [it for it in batch if it.future.set_running_or_notify_cancel()]  # drop timed-out requests
            if not batch:
                continue
            start = time.perf_counter()
            for it in batch:
                self.metrics.queue_wait.observe(start - it.queued)
            try:
                dets = self.detector([it.rgb for it in batch])
            except Exception as e:  # a detector failure fails this batch's requests, not the service
                log.exception("detector failed on a batch of %d", len(batch))
                for it in batch:
                    it.future.set_exception(e)
                continue
            seconds = time.perf_counter() - start
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_seconds.observe(seconds)
            self.per_frame.add(seconds / len(batch))
            for it, d in zip(batch, dets):
                it.future.set_result(d)


def keep_classes(dets: Detections, ids: Iterable[int] | None) -> Detections:
    """Per-request class filter on a detection of all classes (NMS is per class, so this is exact)."""
    if ids is None:
        return dets
    ids = set(ids)
    return Detections([b for b in dets.boxes if b.cls in ids], dets.height, dets.width)


class SharedDetector:
    """The Detector interface over a Batcher, so video jobs share the service's one model.

    Frames are queued blocking: a long video waits for room rather than being refused.
    """

    def __init__(self, batcher: Batcher, classes: Iterable[str | int] | None = None):
        self.batcher = batcher
        self.names = batcher.detector.names
        self.source = getattr(batcher.detector, "source", "")
        self.ids = class_ids(self.names, classes)

    def __call__(self, frames) -> list[Detections]:
        futures = [self.batcher.submit(f) for f in frames]
        return [keep_classes(f.result(), self.ids) for f in futures]
