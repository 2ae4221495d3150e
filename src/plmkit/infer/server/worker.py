"""The inference thread: one model, a queue of jobs, batches of compatible requests, cancellation.

The event loop never runs a model: each request becomes a `Job` put on the `Worker`'s queue,
and the one inference thread runs them (the model is not shared between threads, and the
loop stays free to answer ``/health`` and ``/metrics`` while long work runs).

Batching: jobs with the same batching key (the same kind of work with the same options) that
arrive within ``batch_window`` seconds of the first are run as one call, up to ``max_batch``
inputs; each job still gets its own results. When a batched call fails on one job's input,
every job of the batch is run again alone, so each gets its own result or error.

Cancellation: a job is stopped when its client disconnects or its deadline passes
(`Job.cancel`). Work runs under a `plmkit.infer.control.Control` that stops at the next
forward batch or decode step once every job of the batch has stopped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from plmkit.infer.control import Cancelled, Control, controlled

log = logging.getLogger("plmkit.serve")
END = object()
"""Put on a streaming job's queue after its last piece."""


class Job:
    """One request's work: what to run (`kind`, `payload`, `options`) and how to hand back results.

    `size` counts inputs (for ``max_batch``); `key` is the batching key (None: always alone).
    Results go to `future` (an asyncio future of the request's loop); a streaming job also puts
    its pieces on `pieces`.
    """

    def __init__(self, kind: str, payload: Any, options: dict[str, Any], *, size: int = 1, key: str | None = None,
                 deadline: float, loop: asyncio.AbstractEventLoop, streaming: bool = False) -> None:
        self.kind, self.payload, self.options, self.size, self.key = kind, payload, options, size, key
        self.deadline = deadline
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.future.add_done_callback(_retrieve)  # a request that left never reads its job's error
        self.pieces: asyncio.Queue | None = asyncio.Queue() if streaming else None
        self.cancel = threading.Event()
        self.control = Control()

    def stop_reason(self) -> str | None:
        """Why this job should stop now (deadline passed, client gone), or None. The deadline is
        checked first: the request side also sets `cancel` when its deadline fires."""
        if time.monotonic() > self.deadline:
            return "deadline"
        if self.cancel.is_set():
            return "cancelled"
        return None

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the result (or error) to the request's loop (callable from any thread)."""
        self.loop.call_soon_threadsafe(self._set, result, error)

    def _set(self, result: Any, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)

    def emit(self, piece: Any) -> None:
        """A streaming job's next piece (or `END`, or an exception) to the request's loop."""
        assert self.pieces is not None
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, piece)


Runner = Callable[[list[Job]], list[Any]]
"""Runs a batch of jobs of one kind (under a Control); returns one result per job, in order."""


class Worker:
    """The inference thread. `runners` maps a job kind to its `Runner`; `on_batch(jobs, control,
    seconds)` is told after each batch (metrics)."""

    def __init__(self, runners: dict[str, Runner], *, batch_window: float = 0.01, max_batch: int = 32,
                 on_batch: Callable[[list[Job], Control, float], None] | None = None) -> None:
        self.runners = runners
        self.batch_window = batch_window
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self.running = 0
        self.steps_done = 0
        self.tokens_done = 0
        self._current: Control | None = None
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="plmkit-inference", daemon=True)

    # ---- the request side --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, cancel the queued and running ones, and wait for the thread."""
        with self._cv:
            self._closing = True
            for job in self._jobs:
                job.cancel.set()
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._jobs.append(job)
            self._cv.notify_all()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def work_done(self) -> tuple[int, int]:
        """(inference steps, generated tokens) so far, the running batch's steps included."""
        with self._count_lock:
            current = self._current
            return self.steps_done + (current.steps if current else 0), self.tokens_done

    # ---- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.running = len(batch)
            try:
                self._run(batch)
            finally:
                self.running = 0

    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._jobs and not self._closing:
                self._cv.wait()
            if not self._jobs:
                return None
            batch = [self._jobs.popleft()]
            if batch[0].key is None:
                return batch
            end = time.monotonic() + self.batch_window
            while True:
                self._take_matching(batch)
                left = end - time.monotonic()
                if sum(j.size for j in batch) >= self.max_batch or left <= 0 or self._closing:
                    return batch
                self._cv.wait(left)

    def _take_matching(self, batch: list[Job]) -> None:
        """Move queued jobs with the batch's key into it (up to max_batch inputs), in arrival order."""
        size = sum(j.size for j in batch)
        rest: deque[Job] = deque()
        for job in self._jobs:
            if job.key == batch[0].key and size + job.size <= self.max_batch:
                batch.append(job)
                size += job.size
            else:
                rest.append(job)
        self._jobs = rest

    def _run(self, batch: list[Job]) -> None:
        live = []
        for job in batch:
            reason = job.stop_reason()
            if reason:
                job.resolve(error=Cancelled(reason))
            else:
                live.append(job)
        if not live:
            return
        control = Control(should_stop=lambda: _all_stopped(live))
        start = time.monotonic()
        self._current = control
        try:
            with controlled(control):
                results = self._results(live)
        except Cancelled as e:
            results = [e] * len(live)
        finally:
            with self._count_lock:
                self._current = None
                self.steps_done += control.steps
                self.tokens_done += control.tokens
            if self.on_batch is not None:
                self.on_batch(live, control, time.monotonic() - start)
        for job, result in zip(live, results):
            if isinstance(result, BaseException):
                job.resolve(error=result)
            else:
                job.resolve(result)

    def _results(self, jobs: list[Job]) -> list[Any]:
        """One result (or exception) per job; a failed batch is run again one job at a time."""
        runner = self.runners[jobs[0].kind]
        try:
            return runner(jobs)
        except Cancelled:
            raise
        except ValueError as e:
            if len(jobs) == 1:
                return [e]
        except Exception as e:  # a bug: logged with its traceback, answered 500 without one
            log.exception("inference failed")
            if len(jobs) == 1:
                return [e]
        out: list[Any] = []
        for job in jobs:
            if job.stop_reason():
                out.append(Cancelled(job.stop_reason() or "cancelled"))
                continue
            try:
                out += runner([job])
            except Cancelled as e:
                out.append(e)
            except Exception as e:
                if not isinstance(e, ValueError):
                    log.exception("inference failed")
                out.append(e)
        return out


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _all_stopped(jobs: list[Job]) -> str | None:
    reasons = [job.stop_reason() for job in jobs]
    return reasons[0] if all(reasons) else None


__all__ = ["END", "Job", "Runner", "Worker"]
