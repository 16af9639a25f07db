"""Lazy access to a local Hugging Face safetensors checkpoint: headers up front, tensors one at a time.

A checkpoint folder holds `config.json` and either `model.safetensors` or `model.safetensors.index.json` with its
shards. Opening reads only the config and the shard headers; `read` maps a shard for one tensor and unmaps it
after, so memory stays near one tensor however large the model.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePath
from typing import Any, Iterator, Sequence

import torch
from safetensors import safe_open

from pmoe.errors import PmoeError, check, check_folder, os_message

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the shard header."""

    file: str  # shard file name inside the checkpoint folder
    dtype: str  # safetensors dtype, e.g. "BF16"
    shape: tuple[int, ...]


def _open_error(path: Path) -> OSError | None:
    """Why `path` cannot be opened for reading (permission denied, missing, ...), or None if it can."""
    try:
        with open(path, "rb"):
            return None
    except OSError as e:
        return e


@contextmanager
def open_shard(path: Path) -> Iterator[Any]:
    """`safe_open(path)`, with an unreadable or truncated file reported as PmoeError."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises SafetensorError, OSError or others for a bad file
        why = _open_error(path)  # safetensors reports any failure to open as "No such file or directory"
        raise PmoeError(f"cannot read {path.name}: {os_message(why)}" if why else
                        f"{path}: not a readable safetensors file ({e}); expected a complete safetensors file") from e
    with handle as f:
        yield f


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; PmoeError if it cannot be read or holds anything else."""
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as e:
        raise PmoeError(f"cannot read {path.name}: {os_message(e)}") from e
    except ValueError as e:
        raise PmoeError(f"{path}: cannot read JSON ({e}); expected a Hugging Face checkpoint file") from e
    check(isinstance(value, dict), f"{path} holds {json.dumps(value)[:80]}, not a JSON object; expected the object "
                                   "of a Hugging Face checkpoint file")
    return value


def _shard_index(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The weight map (tensor name -> shard file in the folder) and metadata of shard index `path`; PmoeError
    naming the bad value unless both are JSON objects and every shard a relative file name."""
    index = _read_json(path)
    weight_map, metadata = index.get("weight_map"), index.get("metadata", {})
    check(isinstance(weight_map, dict), f"{path}: weight_map is {json.dumps(weight_map)[:80]}; expected an object "
                                        "of tensor name -> shard file name")
    for key, file in weight_map.items():
        check(isinstance(file, str) and file != "" and not PurePath(file).is_absolute()
              and ".." not in PurePath(file).parts,
              f"{path} puts {key} in shard {json.dumps(file)[:80]}; expected a file name inside the checkpoint folder")
    check(isinstance(metadata, dict), f"{path}: metadata is {json.dumps(metadata)[:80]}; expected an object")
    return weight_map, metadata


@dataclass
class Checkpoint:
    """A local safetensors checkpoint, opened lazily (see the module docstring)."""

    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]  # by key, grouped by shard in shard order
    index_metadata: dict[str, Any] | None  # "metadata" of the shard index; None for a single file
    shard_metadata: dict[str, dict[str, str]]  # "__metadata__" of each shard header

    @classmethod
    def open(cls, folder: str | Path) -> Checkpoint:
        """Read `config.json` and every shard header of `folder`; PmoeError if something is missing or corrupt."""
        folder = Path(folder)
        check_folder(folder, "checkpoint folder", "expected a local Hugging Face model folder")
        check((folder / "config.json").is_file(), f"{folder} has no config.json; expected a Hugging Face model folder")
        config = _read_json(folder / "config.json")
        if (folder / INDEX).is_file():
            weight_map, index_metadata = _shard_index(folder / INDEX)
        else:
            check((folder / SINGLE).is_file(), f"{folder} has neither {SINGLE} nor {INDEX}; "
                                               "expected a safetensors checkpoint (convert .bin weights first)")
            with open_shard(folder / SINGLE) as f:
                weight_map, index_metadata = dict.fromkeys(f.keys(), SINGLE), None
        by_file: dict[str, list[str]] = {}
        for key, file in weight_map.items():
            by_file.setdefault(file, []).append(key)
        tensors, shard_metadata = {}, {}
        for file, keys in by_file.items():
            check((folder / file).is_file(), f"{folder / INDEX} names shard {file}, which is missing")
            with open_shard(folder / file) as f:
                present = set(f.keys())
                for key in keys:
                    check(key in present, f"{folder / INDEX} puts {key} in {file}, which lacks it")
                    sl = f.get_slice(key)
                    tensors[key] = TensorInfo(file, sl.get_dtype(), tuple(sl.get_shape()))
                shard_metadata[file] = f.metadata() or {}
        return cls(folder, config, tensors, index_metadata, shard_metadata)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor, by key."""
        return {k: t.shape for k, t in self.tensors.items()}

    @property
    def files(self) -> list[str]:
        """Shard file names, in order."""
        return list(self.shard_metadata)

    def load(self, key: str) -> torch.Tensor:
        """The whole tensor `key` (used for routers, which are small)."""
        with open_shard(self.folder / self.tensors[key].file) as f:
            return f.get_tensor(key)

    def read(self, key: str, rows: Sequence[int] | None = None, axis: int = 0) -> Iterator[torch.Tensor]:
        """Tensor `key` in pieces: whole if `rows` is None, else its `rows` along `axis` in order: one contiguous
        run each on axis 0 (streamed), the runs concatenated on a later axis (small tensors such as `[1, E]`)."""
        with open_shard(self.folder / self.tensors[key].file) as f:
            if rows is None:
                yield f.get_tensor(key)
                return
            sl = f.get_slice(key)
            pieces = (sl[(slice(None),) * axis + (slice(start, stop),)] for start, stop in runs(rows))
            if axis == 0:
                yield from pieces
            else:
                yield torch.cat(list(pieces), dim=axis)


def runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Split `rows` into maximal runs of consecutive ids, as `(start, stop)` ranges: [0,1,3] -> [(0,2),(3,4)]."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1] = (out[-1][0], r + 1)
        else:
            out.append((r, r + 1))
    return out
