"""A streaming safetensors writer: the header first (all shapes are known), then each tensor's bytes in turn.

`safetensors.torch.save_file` needs every tensor of a file in memory at once; this needs one piece at a time.
Format: 8-byte little-endian header length, JSON header (padded with spaces to a multiple of 8), raw data.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from pmoe.errors import PmoeError

# Bytes per element of each safetensors dtype that pmoe can write.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its header entry, and a function yielding its data in order, piece by piece."""

    key: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]
    pieces: Callable[[], Iterable[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        if self.dtype not in DTYPE_BYTES:
            raise PmoeError(f"tensor {self.key} has dtype {self.dtype}; expected one of {sorted(DTYPE_BYTES)}")
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def write_safetensors(path: Path, tensors: list[OutTensor], metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[], None] = lambda: None) -> int:
    """Write `tensors` to the safetensors file `path`, calling `on_tensor` after each; returns the file size."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.key] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for t in tensors:
            written = 0
            for piece in t.pieces():
                data = piece.contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(data)
                written += data.nbytes
            if written != t.nbytes:
                raise RuntimeError(f"{t.key}: wrote {written} bytes, header says {t.nbytes}")
            on_tensor()
    return 8 + len(head) + offset
