"""The model contract: what training, pruning and routing analysis use of every pmoe model (WRN, ViT, E³, theory).

* `config`: the dataclass it was built from (saved beside its weights);
* `moe_layers()` -> its `RoutedLayer`s in depth order ([] for a dense model);
* `aux_loss()` -> () the auxiliary loss of the last forward (`pmoe.layers.collect_aux_loss`), to add to the task loss;
* `ensemble_size`, `forward_members(x)` -> (B, M, C) logits of its M ensemble members (E³; 1 member otherwise);
* `concat_head()` -> (norm, head) fed by the channel blocks of a `concat` routed layer (WRN-pMoE), for truncation;
* `cell_grid(images)`, `image_inputs(images)` -> where the routed tokens lie in input images, and the model input.
A new model subclasses `MoEModel` and overrides what applies; the defaults fit a plain classifier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from pmoe.errors import PmoeError
from pmoe.layers import RoutedLayer, collect_aux_loss, routed_layers


@dataclass(frozen=True)
class CellGrid:
    """The tokens a routed layer sees, as a rows x cols grid of square cells of an input image."""

    rows: int
    cols: int
    cell: int  # side of a cell in input-image pixels
    offset: int  # pixel coordinate (row and column) of the grid's top-left corner; < 0 when the model zero-pads
    skip: int = 0  # leading tokens with no cell (ViT's cls token)

    @property
    def tokens(self) -> int:
        """n, tokens per image the routed layers see."""
        return self.skip + self.rows * self.cols


class MoEModel(nn.Module):
    """Base of every pmoe model; see the module docstring for the contract."""

    config: Any

    def moe_layers(self) -> list[RoutedLayer]:
        """The routed layers in depth order."""
        return routed_layers(self)

    def aux_loss(self) -> Tensor:
        """() sum of the routed layers' auxiliary losses of the last forward (0 before any, or without MoE)."""
        return collect_aux_loss(self)

    @property
    def ensemble_size(self) -> int:
        """M, ensemble members whose outputs `forward` combines."""
        return 1

    def forward_members(self, x: Tensor) -> Tensor:
        """x -> (B, M, C) logits of every member: the model's own logits, for one member."""
        return self(x).unsqueeze(1)

    def concat_head(self) -> tuple[nn.BatchNorm2d, nn.Linear]:
        """(norm, head) on the k channel blocks a `concat` routed layer fills."""
        raise PmoeError(f"{type(self).__name__}: truncating a concat layer needs the WRN-pMoE head (norm, head)")

    def cell_grid(self, images: Tensor) -> CellGrid:
        """The cells of the routed tokens for `images` (B, C, H, W)."""
        raise PmoeError(f"no cell mapping for {type(self).__name__}; expected a theory MixtureOfCNNs, a WideResNet "
                        "or a ViT with routed layers")

    def image_inputs(self, images: Tensor) -> Tensor:
        """The model input for `images` (B, C, H, W): the images themselves."""
        return images
