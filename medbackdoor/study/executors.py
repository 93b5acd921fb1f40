"""Where a sweep's runs execute: local worker processes (``--jobs N``) or tasks on a Ray cluster.

An executor maps one module-level function over a list of argument tuples and yields ``(index, result)`` as
tasks finish. The function must never raise (a run's own failure is recorded as its result); when the worker
itself dies (killed, out of memory, a lost Ray node) the executor yields a ``failed`` status for that task
instead, so one bad run never stops the sweep. The sweep logic (folders, skip and resume, failure records, the
defense step, the report) is the same whichever executor runs the tasks.

* ``local``: a process pool of ``jobs`` spawned workers on this machine; each gets ``cpu_count // jobs`` threads.
* ``ray``: one Ray task per run with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, on the cluster at
  ``address`` (``auto`` joins the one started by ``ray start`` on this node) or on a local Ray started for the
  sweep and shut down after it. Ray is an optional extra: ``pip install 'medbackdoor[ray]'``. Workers import
  medbackdoor themselves, so on a cluster every node needs the package installed (the same version) and the
  ``--out`` folder must be on a file system all nodes share.

New executors register with :data:`EXECUTORS` (a class with ``map``); nothing here schedules by itself.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError

RAY_HINT = "--executor ray needs Ray: pip install 'medbackdoor[ray]' (or pip install 'ray>=2.9')"


class Executor:
    """Runs ``fn(*args, threads)`` for every ``args`` tuple; ``threads`` is the torch thread count per task."""

    def map(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a local Ray instance)."""

    def describe(self) -> dict:
        return {"executor": type(self).__name__}


EXECUTORS: Registry[Executor] = Registry("executor")


def crashed(exc: BaseException) -> dict:
    """The status of a task whose worker died before returning one."""
    return {"status": "failed", "error": f"worker died: {type(exc).__name__}: {exc}", "seconds": 0.0,
            "traceback": "".join(traceback.format_exception(exc))}


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """A pool of ``jobs`` spawned processes on this machine (``--jobs N``)."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def map(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, *args, self.threads): i for i, args in enumerate(tasks)}
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except BrokenProcessPool as exc:  # a worker was killed: this task (and the pool) failed
                    result = crashed(exc)
                yield futures[fut], result

    def describe(self) -> dict:
        return {"executor": "local", "jobs": self.jobs, "threads_per_run": self.threads}


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """One Ray task per run with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs.

    Args:
        address: a running cluster (``auto``, ``ray://host:10001``, ``host:6379``); None starts a local Ray
            (``num_cpus`` of this machine) for the sweep and shuts it down after.
        cpus_per_run: CPUs Ray reserves for each run; also the run's torch thread count.
        gpus_per_run: GPUs Ray reserves for each run (fractions share a GPU); 0 runs on CPU.
    """

    def __init__(self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 jobs: int | None = None) -> None:
        if not cpus_per_run > 0:
            raise UserError(f"--cpus-per-run must be positive, got {cpus_per_run}")
        if gpus_per_run < 0:
            raise UserError(f"--gpus-per-run must be 0 or more, got {gpus_per_run}")
        try:
            import ray
        except ImportError:
            raise UserError(RAY_HINT) from None
        self.ray = ray
        self.address, self.cpus, self.gpus = address, cpus_per_run, gpus_per_run
        self.threads = max(1, int(cpus_per_run))
        self.started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise UserError(f"could not start or join {where}: {str(exc).splitlines()[0]}") from None
            self.started = True
        total = ray.cluster_resources()
        if total.get("CPU", 0) < cpus_per_run:
            self.close()
            raise UserError(f"--cpus-per-run {cpus_per_run} is more than the cluster's {total.get('CPU', 0):g} CPUs")
        if total.get("GPU", 0) < gpus_per_run:
            self.close()
            raise UserError(f"--gpus-per-run {gpus_per_run} is more than the cluster's {total.get('GPU', 0):g} GPUs")

    def map(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        ray = self.ray
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(fn)
        refs = {remote.remote(*args, self.threads): i for i, args in enumerate(tasks)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the worker died (RayTaskError, WorkerCrashedError, ...)
                    result = crashed(exc)
                yield refs[ref], result

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address or "local", "cpus_per_run": self.cpus,
                "gpus_per_run": self.gpus}


def create_executor(name: str = "local", jobs: int = 1, address: str | None = None, cpus_per_run: float | None = None,
                    gpus_per_run: float = 0) -> Executor:
    """The executor for ``--executor NAME`` and its options (``--jobs`` for local, the rest for Ray)."""
    if name == "local":
        if address is not None or gpus_per_run or cpus_per_run is not None:
            raise UserError("--address, --cpus-per-run and --gpus-per-run need --executor ray")
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(address, 1 if cpus_per_run is None else cpus_per_run, gpus_per_run)
    return EXECUTORS.create(name)
