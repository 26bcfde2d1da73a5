"""Ray runner for ``vqp.batch``: worker actors spread over a cluster, each loading its detectors once.

Imported only when Ray is asked for (``vqp batch --ray``), so ``import vqp`` never loads Ray. An
actor whose process dies is restarted and the call it was running is retried (``RETRIES`` more
times); a unit of several images that still fails is split so that each image gets its own
chance, and an input that keeps failing is recorded as failed with the reason. ``submit`` queues
one unit and returns its ObjectRef; ``job`` runs one video job of ``vqp serve --jobs ray``.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Callable, Iterable, Sequence

import ray
from ray.exceptions import RayError

from .batch import FAILED, IMAGE, VIDEO, DetectorSpec, Item, Settings, Unit, Worker, record
from .errors import VqpError, one_line

RETRIES = 2  # extra attempts of a call whose worker process died
DEPTH = 2    # calls queued per actor, so an actor never waits for the driver between units
ENV = ("VQP_", "YOLO_")  # the driver's settings that workers on other nodes need too


class RayWorker(Worker):
    """A Worker whose records also say which Ray node made them."""

    def one(self, item: Item, s: Settings) -> dict:
        return {**super().one(item, s), "node": ray.get_runtime_context().get_node_id()}

    def job(self, fn: Callable, spec: DetectorSpec, *args):
        """``fn(detector, *args)`` with ``spec``'s image-path detector (torch at ``spec.imgsz``), the one a
        service loads, so that a service's job gives the same output on Ray as in the service."""
        return fn(self.detector(spec, IMAGE), *args)

    def ready(self) -> dict:
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def connect(address: str | None = None) -> bool:
    """Join Ray: the running session, else ``address`` ("auto", "ray://HOST:PORT", "HOST:PORT"),
    else $RAY_ADDRESS, else a new local Ray on this machine's cores. True when this call started it."""
    if ray.is_initialized():
        return False
    local = not address and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address or None, log_to_driver=False, logging_level=logging.WARNING,
                 **({"include_dashboard": False} if local else {}))
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise VqpError(f"cannot start or join Ray at {address or os.environ.get('RAY_ADDRESS') or 'local'}: "
                       f"{one_line(e)}") from None
    return True


class RayRunner:
    """``actors`` workers (default: one per GPU when the cluster has GPUs, else one per CPU), each
    asking for its share of the GPUs or CPUs, so however many are asked for, all of them start."""

    def __init__(self, address: str | None = None, actors: int | None = None):
        if actors is not None and actors < 1:
            raise VqpError(f"actors must be at least 1, got {actors}")
        self.started = connect(address)
        res = ray.cluster_resources()
        gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 1.0)
        n = actors or int(gpus or cpus) or 1
        opts = dict(num_cpus=min(1.0, cpus / n), max_restarts=-1, max_task_retries=RETRIES,
                    scheduling_strategy="SPREAD",
                    runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(ENV)}})
        if gpus:
            opts["num_gpus"] = min(1.0, gpus / n)
        self.actors = [ray.remote(RayWorker).options(**opts).remote() for _ in range(n)]
        self.pending = {a.ready.remote(): a for a in self.actors}  # actors not known to be up yet
        self.load: dict = {}  # started actor -> calls queued on it
        self.owner: dict = {}  # ref -> the actor running it
        self.why = "no Ray worker could start"

    def submit(self, unit: Unit) -> ray.ObjectRef:
        """Queue ``unit`` on the least busy started actor (the first actor while none is known to be up)."""
        a = min(self.load, key=self.load.get) if self.load else self.actors[0]
        self.load[a] = self.load.get(a, 0) + 1
        ref = a.run.remote(unit)
        self.owner[ref] = a
        return ref

    def job(self, fn: Callable, spec: DetectorSpec, *args) -> ray.ObjectRef:
        """Run ``RayWorker.job(fn, spec, *args)`` on the actor with the fewest calls in flight; ``done(ref)``
        once its result was read."""
        a = min(self.actors, key=lambda a: sum(o == a for o in self.owner.values()))
        ref = a.job.remote(fn, spec, *args)
        self.owner[ref] = a
        return ref

    def done(self, ref: ray.ObjectRef) -> None:
        self.owner.pop(ref, None)

    def run(self, units: Iterable[Unit], emit: Callable[[dict], None]) -> None:
        queue = deque(units)
        flight: dict = {}  # ref -> unit

        def fill():
            while queue and self.load and min(self.load.values()) < DEPTH:
                unit = queue.popleft()
                flight[self.submit(unit)] = unit

        fill()
        while queue or flight:
            if not flight and not self.pending and not self.load:
                for unit in queue:
                    for item in unit.items:
                        emit(record(item, unit.settings, FAILED, self.why))
                return
            (ref,), _ = ray.wait(list(flight) + list(self.pending), num_returns=1)
            if ref in self.pending:
                actor = self.pending.pop(ref)
                try:
                    ray.get(ref)
                    self.load.setdefault(actor, 0)
                except RayError as e:  # it could not start (e.g. vqp missing on its node): the others go on
                    self.why = f"no Ray worker could start: {one_line(e)}"
                fill()
                continue
            unit = flight.pop(ref)
            self.load[self.owner.pop(ref)] -= 1
            try:
                records = ray.get(ref)
            except RayError as e:
                if len(unit.items) > 1:  # one input may have killed the others' chance: each on its own
                    queue.extendleft(Unit((i,), unit.settings) for i in reversed(unit.items))
                    records = []
                else:
                    records = [record(unit.items[0], unit.settings, FAILED,
                                      f"worker failed {RETRIES + 1} times on this input: {one_line(e)}")]
            fill()  # before emitting: the actors stay busy while the driver writes the manifest
            for rec in records:
                emit(rec)

    def warm(self, settings: Settings, kinds: Sequence[str] = (IMAGE, VIDEO)) -> None:
        """Wait until every actor is up with its detectors (of ``kinds``) loaded."""
        ray.get([a.load.remote(settings.detector, kinds) for a in self.actors])

    def close(self) -> None:
        """Stop the actors (and Ray itself when this runner started it)."""
        if self.started:
            ray.shutdown()
        else:
            for a in self.actors:
                ray.kill(a)
