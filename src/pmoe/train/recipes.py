"""Training recipes of the vision presets: each preset trains with the settings of its reference unless told
otherwise; `override` changes single fields (the CLI flags), and the recipe used is recorded with the run.

  wrn-sgd         wrn-cifar, wrn-pmoe-cifar, wrn-celeba, wrn-pmoe-celeba: SGD lr 0.1, momentum 0.9, weight decay
                  5e-4, no warm-up, cosine, no clipping, no augmentation, 50 epochs, batch 128
  wrn-sgd-tiny    wrn-tiny, wrn-pmoe-tiny: wrn-sgd for 10 epochs
  vit-adamw       vit-s, vit-moe-s, vit-b, vit-moe-b, e3-s32: AdamW lr 1e-3, betas (0.9, 0.999), weight decay 0.05,
                  warm-up 10k steps capped at 10% of the run, cosine, clipping at 1, crop + flip, 300 epochs, batch 1024
  vit-adamw-tiny  vit-tiny, vit-moe-tiny, e3-tiny: vit-adamw for 10 epochs at batch 128 (same lr), no augmentation

References. WRN: the pMoE authors' WRN-10-10 runs (lr 0.1, batch 128, 50 epochs, no augmentation). Their Keras
`SGD(learning_rate=0.1)` has no momentum, a constant lr and no weight decay; we add WRN's momentum 0.9, weight decay
5e-4 and cosine decay (Zagoruyko & Komodakis 2016); `--momentum 0 --weight-decay 0 --schedule constant` is the
authors' optimizer. ViT, ViT-MoE, E3: DeiT (AdamW, lr 5e-4 x batch/512 = 1e-3 at 1024, weight decay 0.05, cosine,
300 epochs, crop + flip among its augmentations) with V-MoE's 10k warm-up steps and clipping at global norm 1. The
`*-tiny` test sizes take their family's recipe for a CPU-sized first run: 10 epochs, batch 128; the ViTs keep lr 1e-3
(DeiT's scaling to batch 128, 1.25e-4, learns too slowly in a few epochs) and train without augmentation (crop + flip
halves what they learn in a first run of 2 epochs; README, "Training vision models").

Warm-up rule: min(warmup_steps, floor(warmup_cap x total steps)) linear steps, so a long run warms up for 10k steps
and a first run of 2 epochs of 15 steps for 3. An explicit warm-up (`override(warmup_steps=N)`, `--warmup-steps N`)
is taken as given (warmup_cap 1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from pmoe.errors import check
from pmoe.train.optim import DEFAULTS, OptimConfig
from pmoe.train.vision import FitConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # the reference its settings come from
    optim: OptimConfig  # optimizer, lr, momentum (AdamW: beta1), weight decay, warm-up, schedule, clipping
    epochs: int
    batch_size: int
    augment: bool  # random crop (pad 4) + flip of the training images

    def fit_config(self, **fields) -> FitConfig:
        """The FitConfig of this recipe; `fields`: FitConfig's other fields (seed, device, max_steps, ...)."""
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, optim=replace(self.optim),
                         augment=self.augment, recipe=self.name, **fields)


_WRN = OptimConfig("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
_VIT = OptimConfig("adamw", lr=1e-3, momentum=0.9, weight_decay=0.05, warmup_steps=10_000, warmup_cap=0.1,
                   clip_norm=1.0)
_WRN_SOURCE = "pMoE paper's WRN runs (lr 0.1, batch 128, 50 epochs, no augmentation) + WRN's momentum, decay, cosine"
_VIT_SOURCE = "DeiT (AdamW, lr 1e-3 at batch 1024, weight decay 0.05, cosine, 300 epochs) + V-MoE's warm-up, clip 1"

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("wrn-sgd", _WRN_SOURCE, _WRN, epochs=50, batch_size=128, augment=False),
    Recipe("wrn-sgd-tiny", _WRN_SOURCE + "; test size: 10 epochs", _WRN, epochs=10, batch_size=128, augment=False),
    Recipe("vit-adamw", _VIT_SOURCE, _VIT, epochs=300, batch_size=1024, augment=True),
    Recipe("vit-adamw-tiny", _VIT_SOURCE + "; test size: 10 epochs, batch 128, no augmentation", _VIT, epochs=10,
           batch_size=128, augment=False),
)}

PRESET_RECIPES: dict[str, str] = {
    **dict.fromkeys(("wrn-cifar", "wrn-pmoe-cifar", "wrn-celeba", "wrn-pmoe-celeba"), "wrn-sgd"),
    **dict.fromkeys(("wrn-tiny", "wrn-pmoe-tiny"), "wrn-sgd-tiny"),
    **dict.fromkeys(("vit-s", "vit-moe-s", "vit-b", "vit-moe-b", "e3-s32"), "vit-adamw"),
    **dict.fromkeys(("vit-tiny", "vit-moe-tiny", "e3-tiny"), "vit-adamw-tiny"),
}
ARCH_RECIPES = {"wrn": "wrn-sgd", "vit": "vit-adamw", "e3": "vit-adamw"}  # checkpoints that record no preset
FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "warmup_steps", "schedule", "clip_norm", "augment", "epochs",
          "batch_size")  # what `override` changes


def recipe_for(preset: str) -> Recipe:
    """The training recipe of vision preset `preset`."""
    check(preset in PRESET_RECIPES,
          f"no training recipe for preset {preset!r}; expected one of {sorted(PRESET_RECIPES)}")
    return RECIPES[PRESET_RECIPES[preset]]


def checkpoint_recipe(config: dict) -> Recipe:
    """The recipe of a vision checkpoint's config.json: its preset's, or, for a checkpoint of no preset (`fit` from
    Python), its architecture's full-size one."""
    preset = config.get("preset")
    return recipe_for(preset) if preset is not None else RECIPES[ARCH_RECIPES[config["arch"]]]


def override(cfg: FitConfig, *, optimizer: str | None = None, lr: float | None = None,
             momentum: float | None = None, weight_decay: float | None = None, warmup_steps: int | None = None,
             schedule: str | None = None, clip_norm: float | None = None, augment: bool | None = None,
             epochs: int | None = None, batch_size: int | None = None) -> FitConfig:
    """`cfg` with the given fields changed (None: kept). Another optimizer family brings its own lr, momentum and
    weight decay (`pmoe.train.optim.DEFAULTS`) unless given; an explicit warm-up is taken as given (no cap);
    clip_norm 0: no clipping."""
    o = cfg.optim
    check(optimizer is None or optimizer in DEFAULTS, f"optimizer must be one of {sorted(DEFAULTS)}, got {optimizer!r}")
    family = {} if optimizer in (None, o.name) else {"name": optimizer, **DEFAULTS[optimizer]}
    given = {k: v for k, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                               ("schedule", schedule)) if v is not None}
    if warmup_steps is not None:
        given.update(warmup_steps=warmup_steps, warmup_cap=1.0)
    if clip_norm is not None:
        given["clip_norm"] = clip_norm or None
    top = {k: v for k, v in (("augment", augment), ("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    return replace(cfg, optim=replace(o, **{**family, **given}), **top)


@dataclass
class RecipeChanges:
    """Fields of a preset's recipe to change (the training flags); None keeps the recipe's (see `override`)."""

    optimizer: str | None = None  # sgd | adamw; another family brings its own lr, momentum, weight decay
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None  # taken as given (no cap)
    schedule: str | None = None
    clip_norm: float | None = None  # 0: none
    augment: bool | None = None  # random crop (4 px padding) and flip
    epochs: int | None = None
    batch_size: int | None = None

    def changes(self) -> dict:
        """The fields this changes, by `override`'s names."""
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k) is not None}

    def apply(self, cfg: FitConfig) -> FitConfig:
        """`cfg` with these changes."""
        return override(cfg, **self.changes())


def settings(cfg: FitConfig) -> dict:
    """The recipe fields of `cfg`, flat, in `override`'s names (plus warmup_cap)."""
    o = cfg.optim
    return {"optimizer": o.name, "lr": o.lr, "momentum": o.momentum, "weight_decay": o.weight_decay,
            "warmup_steps": o.warmup_steps, "warmup_cap": o.warmup_cap, "schedule": o.schedule,
            "clip_norm": o.clip_norm, "augment": cfg.augment, "epochs": cfg.epochs, "batch_size": cfg.batch_size}


def record(cfg: FitConfig) -> dict:
    """{'name', 'source', 'changed': {field: [the recipe's value, the run's]}} of a FitConfig made from a recipe."""
    check(cfg.recipe in RECIPES, f"unknown recipe {cfg.recipe!r}; expected one of {sorted(RECIPES)}")
    recipe = RECIPES[cfg.recipe]
    base, used = settings(recipe.fit_config()), settings(cfg)
    return {"name": recipe.name, "source": recipe.source,
            "changed": {k: [base[k], v] for k, v in used.items() if v != base[k]}}


def describe(cfg: FitConfig) -> str:
    """One line: the recipe's name, the settings used and what differs from the recipe (of a FitConfig made from
    one)."""
    o = cfg.optim
    warmup = ("no warm-up" if o.warmup_steps == 0 else f"warm-up {o.warmup_steps} steps"
              + (f" (at most {o.warmup_cap:.0%} of the run)" if o.warmup_cap < 1 else ""))
    text = ", ".join([f"{o.name} lr {o.lr:g}", f"{'momentum' if o.name == 'sgd' else 'beta1'} {o.momentum:g}",
                      f"weight decay {o.weight_decay:g}", warmup, o.schedule,
                      f"clip {o.clip_norm:g}" if o.clip_norm else "no clipping",
                      "crop + flip" if cfg.augment else "no augmentation", f"{cfg.epochs} epochs",
                      f"batch {cfg.batch_size}"])
    changed = record(cfg)["changed"]
    return (f"recipe {cfg.recipe}: {text}"
            + ("; changed: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) if changed else ""))
