"""Where a sweep's runs execute: local worker processes (``--jobs N``) or tasks on a Ray cluster.

An executor maps one module-level function over a list of argument tuples and yields ``(index, result)`` as
tasks finish. The function must never raise (a run's own failure is recorded as its result); when the worker
itself dies (killed, out of memory, a lost Ray node) the executor yields a ``failed`` status for that task
instead, so one bad run never stops the sweep. The sweep logic (folders, skip and resume, failure records, the
defense step, the report) is the same whichever executor runs the tasks.

* ``local``: ``jobs`` spawned worker processes on this machine, one task at a time each.
* ``ray``: one Ray task per run with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, on the cluster at
  ``address`` (``auto`` joins the one started by ``ray start`` on this node) or on a local Ray started for the
  sweep and shut down after it. Ray is an optional extra: ``pip install 'medbackdoor[ray]'``. Workers import
  medbackdoor themselves, so on a cluster every node needs the package installed (the same version) and the
  ``--out`` folder must be on a file system all nodes share.

Both give a run the torch thread count of :func:`threads_per_run` (CPU results depend on it), and both watch a
task's heartbeat file (``RUN/heartbeat``, touched by the training loop every few seconds of progress): a task
whose heartbeat stops for ``stall_timeout`` seconds is killed and reported failed, and the other tasks go on.
Tasks given no heartbeat (a sweep's control scorings and defenses) are not watched.

New executors register with :data:`EXECUTORS` (a class with ``map``); nothing here schedules by itself.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError

RAY_HINT = "--executor ray needs Ray: pip install 'medbackdoor[ray]' (or pip install 'ray>=2.9')"
STALL_TIMEOUT = 1800.0  # seconds without a heartbeat before a run is stopped (sweep --stall-timeout; 0: never)
POLL = 1.0  # seconds between two looks at the running tasks' heartbeats


def threads_per_run(jobs: int = 1, cpus_per_run: float | None = None) -> int:
    """The torch thread count of one run, the same rule under every executor.

    ``cpus_per_run`` (whole CPUs, at least one) when given, else this machine's CPUs shared by ``jobs`` runs at a
    time. CPU results depend on the thread count (a reduction split over more threads adds in another order), so
    a run gets the same numbers from the local pool and from Ray only when both follow this rule.
    """
    cpus = (os.cpu_count() or 1) / jobs if cpus_per_run is None else cpus_per_run
    return max(1, int(cpus))


class Executor:
    """Runs ``fn(*args, threads)`` for every ``args`` tuple; ``threads`` is the torch thread count per task."""

    def map(self, fn: Callable, tasks: Sequence[tuple], heartbeats: Sequence[str | Path | None] | None = None
            ) -> Iterator[tuple[int, object]]:
        """Yield ``(index, result)`` as tasks finish; ``heartbeats[i]`` is the file whose touches show that task
        ``i`` makes progress (None: not watched)."""
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


def stalled(timeout: float, heartbeat: str | Path | None, seconds: float) -> dict:
    """The status of a task stopped because its heartbeat did not change for ``timeout`` seconds."""
    error = f"no progress for {timeout:g} s (stopped by --stall-timeout)"
    return {"status": "failed", "error": error, "seconds": seconds,
            "traceback": f"{error}: {heartbeat} was not touched for {timeout:g} s, so the worker was killed\n"}


def _mtime(path: str | Path | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path is not None else None
    except OSError:
        return None


class Watch:
    """How long a task has shown no progress, as its parent sees it.

    Progress is a change of the heartbeat file's modification time, timed on the parent's clock (so clocks of
    other nodes never matter). A task is timed from its first touch (:func:`beating`, when it starts): a task
    waiting for CPUs (Ray) or a worker still importing torch is not stalled.
    """

    def __init__(self, heartbeat: str | Path | None, timeout: float) -> None:
        self.heartbeat, self.timeout = heartbeat, timeout
        self.start = time.monotonic()
        self.seen = _mtime(heartbeat)
        self.last: float | None = None

    def stalled(self) -> bool:
        """True when watched and the heartbeat has not changed for ``timeout`` seconds."""
        if self.heartbeat is None or not self.timeout > 0:
            return False
        mtime = _mtime(self.heartbeat)
        if mtime != self.seen:
            self.seen, self.last = mtime, time.monotonic()
        return self.last is not None and time.monotonic() - self.last > self.timeout

    def result(self) -> dict:
        return stalled(self.timeout, self.heartbeat, time.monotonic() - self.start)


def beating(fn: Callable, heartbeat: str | Path | None, *args):
    """A task as the worker runs it: its heartbeat touched once (the task has started), then ``fn(*args)``."""
    if heartbeat is not None:
        Path(heartbeat).parent.mkdir(parents=True, exist_ok=True)
        Path(heartbeat).touch()
    return fn(*args)


def _worker(conn: Connection) -> None:
    """A local worker process: runs the tasks sent over ``conn`` one after another, each result sent back; None
    ends it."""
    while (task := conn.recv()) is not None:
        fn, heartbeat, args = task
        try:
            result = beating(fn, heartbeat, *args)
        except BaseException as exc:  # noqa: BLE001 - fn should never raise; if it does, the task failed
            result = crashed(exc)
        conn.send(result)
    conn.close()


class _Worker:
    """One spawned process of the local executor and the task it runs (``index`` None: idle)."""

    def __init__(self) -> None:
        ctx = get_context("spawn")
        self.conn, child = ctx.Pipe()
        # not a daemon: a run may start its own processes (DataLoader workers, the cache builder's pool)
        self.process = ctx.Process(target=_worker, args=(child,))
        self.process.start()
        child.close()
        self.index: int | None = None
        self.watch: Watch | None = None

    def submit(self, index: int, fn: Callable, heartbeat: str | Path | None, args: tuple, timeout: float) -> None:
        self.index, self.watch = index, Watch(heartbeat, timeout)
        self.conn.send((fn, heartbeat, args))

    def done(self) -> bool:
        return self.conn.poll() or not self.process.is_alive()

    def result(self) -> dict:
        """The task's answer (the worker is idle again), or a ``failed`` status when the process died."""
        self.index = None
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            return crashed(ChildProcessError(f"the worker process exited with code {self.process.exitcode}"))

    def kill(self) -> None:
        """Kill the process (its task stalled); the worker is gone, its task no longer running."""
        self.index = None
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self, grace: float = 0.0) -> None:
        """End the process: asked to when idle, else killed after ``grace`` seconds (a run interrupted by Ctrl-C
        records itself as interrupted meanwhile)."""
        if self.index is None and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:  # the pipe is already closed
                pass
        self.process.join(grace if self.index is not None else 10.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """``jobs`` spawned worker processes on this machine (``--jobs N``), each running one task at a time.

    A worker that dies, or whose task stalls (and is killed), fails that task alone: a fresh worker takes the
    next one.
    """

    def __init__(self, jobs: int = 1, stall_timeout: float = STALL_TIMEOUT) -> None:
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        _check_timeout(stall_timeout)
        self.jobs, self.stall_timeout = jobs, stall_timeout
        self.threads = threads_per_run(jobs)

    def map(self, fn: Callable, tasks: Sequence[tuple], heartbeats: Sequence[str | Path | None] | None = None
            ) -> Iterator[tuple[int, object]]:
        heartbeats = list(heartbeats) if heartbeats is not None else [None] * len(tasks)
        waiting, workers = list(range(len(tasks))), []
        try:
            while waiting or any(w.index is not None for w in workers):
                workers = [w for w in workers if w.process.is_alive() or w.index is not None]
                while waiting and len(workers) < self.jobs:
                    workers.append(_Worker())
                for w in workers:
                    if waiting and w.index is None:
                        i = waiting.pop(0)
                        w.submit(i, fn, heartbeats[i], (*tasks[i], self.threads), self.stall_timeout)
                busy = [w for w in workers if w.index is not None]
                wait([w.conn for w in busy] + [w.process.sentinel for w in busy], POLL)
                for w in [w for w in busy if w.done()]:
                    i = w.index
                    yield i, w.result()
                for w in [w for w in busy if w.index is not None and w.watch.stalled()]:
                    i, result = w.index, w.watch.result()
                    w.kill()
                    yield i, result
        finally:
            for w in workers:
                w.stop(grace=2.0)

    def describe(self) -> dict:
        return {"executor": "local", "jobs": self.jobs, "threads_per_run": self.threads,
                "stall_timeout": self.stall_timeout}


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """One Ray task per run with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs.

    A local Ray is started with its workers at the normal priority: Ray runs workers at niceness 15 by default,
    and on a shared machine a busy process then leaves a run almost no CPU (a 27-s sweep made no progress for
    10 minutes). On a cluster started with ``ray start``, set ``RAY_worker_niceness=0`` there for the same.

    Args:
        address: a running cluster (``auto``, ``ray://host:10001``, ``host:6379``); None starts a local Ray
            (``num_cpus`` of this machine) for the sweep and shuts it down after.
        cpus_per_run: CPUs Ray reserves for each run; None: :func:`threads_per_run` of ``jobs`` (this machine's
            CPUs shared by ``jobs`` runs, as the local executor does).
        gpus_per_run: GPUs Ray reserves for each run (fractions share a GPU); 0 runs on CPU.
        jobs: runs at a time on this machine, for the default ``cpus_per_run``.
        stall_timeout: seconds without a heartbeat before a running task is cancelled; 0: never.
    """

    def __init__(self, address: str | None = None, cpus_per_run: float | None = None, gpus_per_run: float = 0,
                 jobs: int = 1, stall_timeout: float = STALL_TIMEOUT) -> None:
        if cpus_per_run is not None and not cpus_per_run > 0:
            raise UserError(f"--cpus-per-run must be positive, got {cpus_per_run}")
        if gpus_per_run < 0:
            raise UserError(f"--gpus-per-run must be 0 or more, got {gpus_per_run}")
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        _check_timeout(stall_timeout)
        try:
            import ray
        except ImportError:
            raise UserError(RAY_HINT) from None
        self.ray, self.address, self.gpus, self.stall_timeout = ray, address, gpus_per_run, stall_timeout
        self.threads = threads_per_run(jobs, cpus_per_run)
        self.cpus = self.threads if cpus_per_run is None else cpus_per_run
        self.started = False
        if not ray.is_initialized():
            self._init()
        self._check_fits()

    def _init(self) -> None:
        kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
        try:
            if self.address:
                self.ray.init(address=self.address, **kwargs)
            else:
                self.ray.init(num_cpus=os.cpu_count() or 1, _system_config={"worker_niceness": 0}, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise UserError(f"could not start or join {where}: {str(exc).splitlines()[0]}") from None
        self.started = True

    def _check_fits(self) -> None:
        """A run must fit on one node: a task larger than every node would wait forever."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        for key, want, flag in (("CPU", self.cpus, "--cpus-per-run"), ("GPU", self.gpus, "--gpus-per-run")):
            most = max((n.get(key, 0) for n in nodes), default=0)
            if most < want:
                self.close()
                raise UserError(f"{flag} {want:g} is more than the {most:g} {key}s of the largest Ray node")

    def map(self, fn: Callable, tasks: Sequence[tuple], heartbeats: Sequence[str | Path | None] | None = None
            ) -> Iterator[tuple[int, object]]:
        ray = self.ray
        heartbeats = list(heartbeats) if heartbeats is not None else [None] * len(tasks)
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(beating)
        remote = remote.options(name=getattr(fn, "__name__", "task"))
        refs, watches = {}, {}
        for i, args in enumerate(tasks):
            watch = Watch(heartbeats[i], self.stall_timeout)
            ref = remote.remote(fn, heartbeats[i], *args, self.threads)
            refs[ref], watches[ref] = i, watch
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the worker died (RayTaskError, WorkerCrashedError, ...)
                    result = crashed(exc)
                yield refs[ref], result
            for ref in [r for r in pending if watches[r].stalled()]:
                ray.cancel(ref, force=True)  # kills the worker process
                pending.remove(ref)
                yield refs[ref], watches[ref].result()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address or "local", "cpus_per_run": self.cpus,
                "gpus_per_run": self.gpus, "threads_per_run": self.threads, "stall_timeout": self.stall_timeout}


def _check_timeout(seconds: float) -> None:
    if not seconds >= 0:
        raise UserError(f"--stall-timeout must be 0 (off) or a number of seconds, got {seconds}")


def create_executor(name: str = "local", jobs: int = 1, address: str | None = None, cpus_per_run: float | None = None,
                    gpus_per_run: float = 0, stall_timeout: float = STALL_TIMEOUT) -> Executor:
    """The executor for ``--executor NAME`` and its options (``--jobs`` for both, the rest for Ray)."""
    if name == "local":
        if address is not None or gpus_per_run or cpus_per_run is not None:
            raise UserError("--address, --cpus-per-run and --gpus-per-run need --executor ray")
        return LocalExecutor(jobs, stall_timeout)
    if name == "ray":
        return RayExecutor(address, cpus_per_run, gpus_per_run, jobs, stall_timeout)
    return EXECUTORS.create(name)
