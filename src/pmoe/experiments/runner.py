"""Run many independent training runs, in parallel worker processes, with one progress bar."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pmoe.runs import DataSpec, run
from pmoe.train import TrainConfig


@dataclass
class Job:
    model: str
    data: DataSpec
    train: TrainConfig
    model_options: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)  # copied into the result (e.g. {"n": 16})
    history: bool = False  # keep the per-epoch records in the result


def _work(job: Job) -> dict:
    torch.set_num_threads(1)  # small models: one thread per run, one run per core
    return {**job.tags, **run(job.model, job.data, job.train, job.model_options, progress=False,
                                history=job.history)}


def run_jobs(jobs: list[Job], workers: int | None = None, progress: bool = True) -> list[dict]:
    """Results of `jobs`, in order. `workers` defaults to the number of CPU cores (1 runs in-process)."""
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="runs", disable=not progress)
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_work(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_work, job) for job in jobs]
            for f in futures:
                f.add_done_callback(lambda _: bar.update())
            results = [f.result() for f in futures]
    bar.close()
    return results
