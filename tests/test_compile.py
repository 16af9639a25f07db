"""torch.compile(fullgraph=True) traces the routed layers and an MoE model with no graph break; compiled equals
eager, and the aux loss is collected the same."""
import pytest
import torch

from pmoe.layers import MlpExperts, PatchMoE, TokenMoE, collect_aux_loss
from pmoe.models import build_preset


@pytest.mark.parametrize("kind", ["patch", "token"])
def test_compiled_layer_equals_eager_values_and_gradients(kind, device):
    torch.manual_seed(0)
    experts = MlpExperts(4, 16, 32)
    layer = (PatchMoE(experts, l=3) if kind == "patch" else TokenMoE(experts, noise_std=0.0)).to(device)
    x = torch.randn(2, 8, 16, device=device)
    compiled = torch.compile(lambda x: layer(x).output, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    ref = layer(x).output
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for g, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_compiled_model_collects_the_same_aux_loss_without_recompiling():
    torch.manual_seed(0)
    model = build_preset("vit-moe-tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    ref, ref_aux = model(x), collect_aux_loss(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            out = compiled(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(model.aux_loss(), ref_aux)
