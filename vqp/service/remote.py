"""Video jobs on Ray (``vqp serve --jobs ray``): the JobRunner's encode step runs on a RayRunner actor.

Only the encode moves: the job's row (state, attempts, error) stays in this process's JobStore, so a
restart finds its jobs and queues them again exactly as with local jobs. An actor reads the input
from and writes the output and preview into the job's folder, so the jobs folder must be on a
filesystem that every Ray node mounts at the same path. Progress is not reported from the actors: a
job's progress stays 0 until it is done. Imported only with jobs=ray, so the service without it
never loads Ray.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ray
from ray.exceptions import RayError, RayTaskError

from ..batch import IMAGE, DetectorSpec, Settings as BatchSettings
from ..distributed import RayRunner
from ..errors import VqpError, one_line
from ..models import resolve_model
from .settings import Settings
from .videos import encode_job

POLL = 0.5  # seconds between checks whether a running job was deleted or the service stops


class RayJobs:
    """The encode step of jobs.JobRunner on ``settings.job_workers`` Ray actors, each loading the
    service's detector once."""

    def __init__(self, settings: Settings):
        self.spec = DetectorSpec(resolve_model(settings.model).source, None, settings.conf, settings.imgsz,
                                 device=settings.device)  # resolved here: every actor loads the same file
        self.runner = RayRunner(settings.ray_address, actors=settings.job_workers)
        self.runner.warm(BatchSettings(detector=self.spec), (IMAGE,))

    def encode(self, src: Path, folder: Path, options: dict, progress) -> tuple[str, dict]:
        classes = options.get("classes")
        spec = replace(self.spec, classes=tuple(classes) if classes else None)
        ref = self.runner.job(encode_job, spec, src, folder, options)
        try:
            while not ray.wait([ref], timeout=POLL)[0]:
                progress(None)  # raises jobs.Cancelled when the job is deleted or the service stops
            return ray.get(ref)
        except RayTaskError as e:  # the encode's own error, as the local runner would report it
            raise e.cause if isinstance(e.cause, Exception) else VqpError(one_line(e)) from None
        except RayError as e:  # an actor that kept dying, or a lost node
            raise VqpError(f"Ray worker failed: {one_line(e)}") from None
        except BaseException:
            ray.cancel(ref)  # best effort: a running actor call may finish into a folder that is gone
            raise
        finally:
            self.runner.done(ref)

    def close(self) -> None:
        self.runner.close()
