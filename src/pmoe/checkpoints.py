"""Checkpoints: a folder with `model.safetensors` (weights) and `config.json` (everything to rebuild the model).

config.json = {"format": "pmoe", "version": 1, "arch": ..., "model": {...}, ...extra sections (data, train)}; a pruned
model's section `pruning` (`pmoe.prune.surgery.pruning_record`) says which experts of each MoE layer are left.
Files are written atomically, the same content always as the same bytes (an unchanged file is not rewritten);
loading checks the format, the architecture and every tensor's shape.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from pmoe.errors import PmoeError, check, check_folder
from pmoe.io import write_bytes, write_json
from pmoe.models import build_model
from pmoe.prune.surgery import apply_record

FORMAT, VERSION = "pmoe", 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(out_dir: str | Path, model: nn.Module, arch: str, model_config: dict, **sections: Any) -> Path:
    """Write weights and config of `model` into `out_dir` (created if needed). Returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_bytes(out / WEIGHTS, safetensors_bytes(tensors, {"format": FORMAT, "arch": arch}))
    write_json(out / CONFIG, {"format": FORMAT, "version": VERSION, "arch": arch, "model": model_config, **sections})
    return out


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of `tensors` whose header lists `metadata` in sorted order (the library writes it in a
    random order), so that the same tensors and metadata always give the same bytes and SHA-256."""
    data = save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= size, "a safetensors header grew when its metadata was sorted"
    return data[:8] + text.ljust(size) + data[8 + size:]


def read_config(ckpt_dir: str | Path) -> dict:
    """config.json of a checkpoint folder, validated."""
    path = Path(ckpt_dir) / CONFIG
    check_folder(ckpt_dir, "checkpoint folder")
    check(path.is_file(), f"{path} is missing: {ckpt_dir} is not a pmoe checkpoint folder")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PmoeError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    check(isinstance(cfg, dict) and cfg.get("format") == FORMAT and "arch" in cfg and "model" in cfg,
          f"{path} is not a pmoe checkpoint config (expected keys format='pmoe', arch, model)")
    check(isinstance(cfg["model"], dict), f"{path}: the model section must be an object of config fields, got "
                                          f"{cfg['model']!r}")
    return cfg


def read_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(ckpt_dir) / WEIGHTS
    check(path.is_file(), f"{path} is missing: the checkpoint has no weights")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PmoeError(f"{path} is not a readable safetensors file ({e}); it is corrupt or truncated") from None


def nonfinite_weights(ckpt_dir: str | Path) -> tuple[int, int]:
    """(NaN or infinite entries, all entries) of a checkpoint's floating-point weights."""
    floats = [t for t in read_weights(ckpt_dir).values() if t.is_floating_point()]
    return sum(int((~torch.isfinite(t)).sum()) for t in floats), sum(t.numel() for t in floats)


def check_finite_weights(ckpt_dir: str | Path, use: str) -> None:
    """Refuse a checkpoint with NaN or infinite weights (a diverged run) for `use` ('prune', 'route', ...)."""
    bad, total = nonfinite_weights(ckpt_dir)
    check(not bad, f"{bad:,} of {total:,} weights of {ckpt_dir} are NaN or infinite (the run diverged): nothing to "
                   f"{use}; use a checkpoint of a run that converged")


def weights_sha256(ckpt_dir: str | Path) -> str:
    """Hex SHA-256 of a checkpoint's model.safetensors (recorded by fine-tuned checkpoints of their parent)."""
    path = Path(ckpt_dir) / WEIGHTS
    check(path.is_file(), f"{path} is missing: the checkpoint has no weights")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `tensors` into `model`, refusing missing, unexpected or mis-shaped entries."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    check(not missing and not unexpected,
          f"{source} does not match the model built from its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in tensors.items():
        check(t.shape == expected[name].shape,
              f"{source}: tensor {name!r} has shape {tuple(t.shape)}, the model expects {tuple(expected[name].shape)}")
    model.load_state_dict(tensors)


def build_from_config(cfg: dict, **model_overrides) -> nn.Module:
    """The (untrained) model a checkpoint config describes, in its pruned shape if it was pruned."""
    model = build_model(cfg["arch"], {**cfg["model"], **model_overrides})
    if "pruning" in cfg:  # experts removed by `pmoe prune`: rebuild the pruned shape before loading
        apply_record(model, cfg["pruning"])
    return model


def load_checkpoint(ckpt_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint folder and load its weights. Returns (model, config)."""
    cfg = read_config(ckpt_dir)
    model = build_from_config(cfg)
    load_state(model, read_weights(ckpt_dir), str(Path(ckpt_dir) / WEIGHTS))
    return model.eval(), cfg
