"""Resumable training state: everything a killed run needs to continue to exactly the same weights.

`train_state.pt` holds the weights, optimizer, scheduler, RNG states, counters, history and the run's settings in one
file, written to a temporary name and renamed, so it is always a complete epoch's state; `model.safetensors` and
`config.json` beside it are the published checkpoint, rewritten from it. A run over several processes (torchrun)
keeps the same state in the folder `train_state/` instead (`pmoe.train.distributed.checkpoint`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pmoe.data.vision.splits import seeded_generator
from pmoe.errors import PmoeError, check
from pmoe.io import atomic_path

STATE = "train_state.pt"
DCP_STATE = "train_state"  # of a run over several processes: a torch.distributed.checkpoint folder


def stream_seed(*keys: int) -> int:
    """A seed for random streams mixed from integers, e.g. (seed, rank): distinct and well mixed for distinct keys."""
    return seeded_generator(*keys).initial_seed()


def rng_states() -> dict[str, Any]:
    """The torch CPU and CUDA generators' states (routing noise, dropout)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_state(out_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` to out_dir/train_state.pt atomically."""
    with atomic_path(out_dir / STATE) as tmp:
        torch.save(state, tmp)


def load_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE
    check(path.is_file(), f"nothing to resume in {str(out_dir)!r}: {STATE} does not exist there "
                          "(start the run without --resume / resume=False)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds on a bad file)
        raise PmoeError(f"{path} is not a readable training state ({type(e).__name__}: {e}); it is corrupt") from None


def as_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), for comparing settings with saved ones."""
    return json.loads(json.dumps(obj))


def differences(saved: dict, new: dict) -> list[str]:
    """'section.key: saved -> new' for every setting that differs between two {section: value} dicts."""
    out = []
    for name in sorted(set(saved) | set(new)):
        a, b = saved.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
