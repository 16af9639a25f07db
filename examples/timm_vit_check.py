"""`MoEMlp` inside timm's own VisionTransformer (`mlp_layer=partial(MoEMlp, ...)`), trained 10 steps with the aux
loss collected by `collect_aux_loss`, for both routers. timm needs torchvision, which does not import beside the CPU
build of torch that CI installs, so this runs where timm is installed (the GPU machine: timm 1.0.29, torch 2.11):

    PYTHONPATH=src python examples/timm_vit_check.py
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from pmoe.layers import MoEMlp, collect_aux_loss, routed_layers


def train_steps(router: str, steps: int = 10) -> list[float]:
    """Task losses of `steps` Adam steps of a tiny timm ViT whose FFNs are `MoEMlp` with `router`."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                              mlp_layer=partial(MoEMlp, num_experts=4, router=router, num_selected=2))
    assert len(routed_layers(model)) == 2
    x, y = torch.randn(8, 3, 32, 32), torch.randint(3, (8,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        task = F.cross_entropy(model(x), y)
        (task + collect_aux_loss(model)).backward()
        opt.step()
        opt.zero_grad()
        losses.append(task.item())
    return losses


if __name__ == "__main__":
    for router in ("token", "patch"):
        losses = train_steps(router)
        assert losses[-1] < losses[0], losses
        print(f"{router}: task loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
