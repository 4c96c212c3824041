"""Trials as Ray tasks, so the seeds of an experiment (and the trials of a search) spread over a Ray cluster.

Ray is optional (the `ray` extra) and imported only here, only when `--backend ray` asks for it. Each trial is one
task in a worker process of its own (max_calls=1: nothing of one trial stays behind for the next) that declares the
CPUs and GPUs its config needs; Ray runs it where they are free. When a worker dies (killed, out of memory, its node
lost) Ray starts the task again, up to RETRIES times, and the trial continues from its last checkpoint. Trials read
and write their run directories by path, so those must be on a file system every node mounts at the same path.
Nothing here prints.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rl_lab.errors import UserError
from rl_lab.extras import require

RETRIES = 3  # starts of a trial after its worker died, before it counts as failed


@dataclass
class Job:
    key: Any  # what the caller knows the trial by (a seed, a trial number)
    args: tuple  # the task function's arguments
    resources: dict[str, float]  # num_cpus, num_gpus


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


class Session:
    """A connection to a Ray cluster (or a local Ray this session started), for running jobs and closing."""

    def __init__(self, ray):
        self.ray = ray
        self.gpus = float(ray.cluster_resources().get("GPU", 0))

    def run(
        self, task: Callable, jobs: list[Job], on_submit: Callable[[Job], None] = lambda job: None
    ) -> Iterator[tuple[Any, Any, str | None]]:
        """Submit every job as a task running `task(*job.args)`; yield (key, result, None) as each ends, or
        (key, None, why) when it never reported (its worker died more than RETRIES times, or Ray failed it).
        Ctrl-C cancels the tasks still running (their workers are killed; each keeps its last checkpoint)."""
        remote = self.ray.remote(max_calls=1, max_retries=RETRIES, retry_exceptions=False)(task)
        keys = {}
        for job in jobs:
            keys[remote.options(**job.resources).remote(*job.args)] = job.key
            on_submit(job)
        pending = list(keys)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        result = self.ray.get(ref)
                    except self.ray.exceptions.RayError as err:
                        yield keys[ref], None, _one_line(err)[:500]
                    else:
                        yield keys[ref], result, None
        except KeyboardInterrupt:
            for ref in pending:
                self.ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        self.ray.shutdown()


def _unreachable(address: str | None, timeout: float = 10.0) -> str | None:
    """Why nothing answers at HOST:PORT (None when something does, or for other forms: auto, ray://...): Ray itself
    would wait for an absent cluster forever."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def connect(address: str | None) -> Session:
    """Connect to the Ray cluster at `address` ("auto" finds a local one; None: RAY_ADDRESS, else a new local Ray
    for this session); a missing `ray` package or an unreachable cluster is a UserError."""
    (ray,) = require("ray", "ray", what="trials on Ray (--backend ray)")
    problem = _unreachable(address or os.environ.get("RAY_ADDRESS"))
    if problem:
        raise UserError(
            f"no Ray cluster answers at {address or os.environ.get('RAY_ADDRESS')} ({problem}); start one with "
            "`ray start --head` and pass its address (HOST:6379) with --address"
        )
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "(none found, and none could be started here)"
        raise UserError(
            f"cannot connect to a Ray cluster {where}: {_one_line(err)[:300]}; start one with "
            "`ray start --head` and pass its address with --address HOST:PORT"
        ) from None
    return Session(ray)
