"""Run many independent training runs, in parallel worker processes, with one progress bar."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from pmoe.runs.theory import DataSpec, run
from pmoe.train import TrainConfig

T = TypeVar("T")


@dataclass
class Job:
    model: str
    data: DataSpec
    train: TrainConfig
    model_options: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)  # copied into the result (e.g. {"n": 16})
    history: bool = False  # keep the per-epoch records in the result


def _work(job: Job) -> dict:
    return {**job.tags, **run(job.model, job.data, job.train, job.model_options, progress=False,
                                history=job.history)}


def _start_worker(threads: int, parent: int) -> None:
    """A worker's set-up: its share of the CPU cores, and a watchdog that ends it once `parent` (the command) is gone,
    killed by any signal: no orphaned run goes on computing and writing."""
    torch.set_num_threads(threads)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which a stopped worker would leak
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int, every: float = 0.5) -> None:
    while os.getppid() == parent:  # an orphan is adopted by another process
        time.sleep(every)
    os._exit(1)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued items and end the running ones now (leaving the `with` block would wait for them)."""
    workers = multiprocessing.active_children()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in workers:
        p.terminate()


def parallel_map(fn: Callable[[T], dict], items: Sequence[T], workers: int | None = None, progress: bool = True,
                 desc: str = "runs") -> list[dict]:
    """[fn(item) for item in items], in order, over `workers` processes (default: CPU cores; 1 runs in-process).

    Workers are spawned (safe with CUDA: several runs share one GPU) and split the CPU cores between them; `fn` and
    the items must pickle (a module-level function, or a functools.partial of one). When an item fails or the
    command is stopped, the running items end at once; a worker whose command was killed ends itself."""
    workers = min(workers or os.cpu_count() or 1, max(1, len(items)))
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    if workers == 1:
        results = []
        for item in items:
            results.append(fn(item))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(threads, os.getpid())) as pool:
            try:
                futures = [pool.submit(fn, item) for item in items]
                for f in futures:
                    f.add_done_callback(lambda _: bar.update())
                results = [f.result() for f in futures]
            except BaseException:  # a failed item, Ctrl-C or SIGTERM (`pmoe.cli`): the other items stop too
                _stop(pool)
                raise
    bar.close()
    return results


def spread_device(device: str, i: int) -> str:
    """The device of a sweep's i-th run: with 'auto' and several visible GPUs, GPU i mod their count (the runs
    spread over them); else `device`."""
    count = torch.cuda.device_count() if device == "auto" else 0
    return f"cuda:{i % count}" if count > 1 else device


def run_jobs(jobs: list[Job], workers: int | None = None, progress: bool = True) -> list[dict]:
    """Results of the theory runs `jobs`, in order, over `workers` processes (default: CPU cores)."""
    return parallel_map(_work, jobs, workers, progress)
