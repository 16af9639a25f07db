"""Banks of k experts whose weights carry a leading expert axis, so all experts run in one batched op.

Every bank maps routed inputs (k, M, d_in) -> (k, M, d_out): row block s holds the M patches that expert s
took. `forward_expert(s, x)` runs one expert with plain ops: the readable reference for tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.errors import check


class MlpExperts(nn.Module):
    """k two-layer MLPs: out = act(x @ W1^T + b1) @ W2^T + b2, weights stored (k, out, in) as nn.Linear's.

    With `act_layer=nn.ReLU, bias=False` and fixed output weights this is the theory's expert: m ReLU neurons
    w_{r,s} on a flattened patch with output weights a_{r,s} (see `relu_neurons`).
    """

    def __init__(self, num_experts: int, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, bias: bool = True, drop: float = 0.0,
                 init_std: float = 0.02, train_output: bool = True) -> None:
        super().__init__()
        check(num_experts >= 1 and in_features >= 1 and hidden_features >= 1,
              f"experts, in_features and hidden_features must be >= 1, got {num_experts}, {in_features}, {hidden_features}")
        out_features = out_features or in_features
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        # (k, out, in): the transposed operand makes both the forward and the weight-gradient GEMMs fast on CPU
        self.w1 = nn.Parameter(torch.randn(num_experts, hidden_features, in_features) * init_std)  # (k, h, d)
        self.w2 = nn.Parameter(torch.randn(num_experts, out_features, hidden_features) * init_std,  # (k, d_out, h)
                               requires_grad=train_output)
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden_features)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, out_features)) if bias else None
        self.act = act_layer()
        self.drop = nn.Dropout(drop)

    @property
    def hidden_features(self) -> int:
        return self.w1.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        """x: (k, M, d_in) rows routed to each expert, or (M, d_in) rows every expert sees -> (k, M, d_out).

        The shared form runs the first layer of all experts as one GEMM (PatchMoE's `dense` dispatch).
        """
        k, h, d = self.w1.shape
        if x.dim() == 2:  # the activation runs on the GEMM's contiguous (M, k*h) output, not on the (k, M, h) view
            b1 = None if self.b1 is None else self.b1.reshape(k * h)
            hid = self._drop(self.act(F.linear(x, self.w1.reshape(k * h, d), b1)))
            hid = hid.view(-1, k, h).transpose(0, 1)  # (k, M, h)
        else:
            w1 = self.w1.transpose(1, 2)  # (k, d, h) view
            hid = self._drop(self.act(torch.bmm(x, w1) if self.b1 is None else torch.baddbmm(self.b1, x, w1)))
        w2 = self.w2.transpose(1, 2)  # (k, h, d_out) view
        return self._drop(torch.bmm(hid, w2) if self.b2 is None else torch.baddbmm(self.b2, hid, w2))

    def _drop(self, x: Tensor) -> Tensor:
        """Dropout, not called at p = 0 (a module call costs launch-bound sizes a few microseconds)."""
        return self.drop(x) if self.drop.p > 0 else x

    def forward_expert(self, s: int, x: Tensor) -> Tensor:
        """Expert s alone on x: (M, d_in) -> (M, d_out)."""
        b1 = None if self.b1 is None else self.b1[s, 0]
        b2 = None if self.b2 is None else self.b2[s, 0]
        h = self._drop(self.act(F.linear(x, self.w1[s], b1)))
        return self._drop(F.linear(h, self.w2[s], b2))

    def flops_per_token(self) -> int:
        """Multiply-adds x2 of one expert on one token."""
        return 2 * self.hidden_features * (self.in_features + self.out_features)


def relu_neurons(num_experts: int, in_features: int, neurons: int, output_weights: Tensor,
                 init_std: float = 0.01) -> MlpExperts:
    """The theory's expert bank: `neurons` ReLU units per expert, no bias, fixed output weights.

    output_weights: (k, m) -- a_{r,s}, already scaled as the model needs (e.g. a/l); it does not train.
    """
    check(output_weights.shape == (num_experts, neurons),
          f"output_weights must be (k={num_experts}, m={neurons}), got {tuple(output_weights.shape)}")
    bank = MlpExperts(num_experts, in_features, neurons, 1, act_layer=nn.ReLU, bias=False,
                      init_std=init_std, train_output=False)
    bank.w2.data.copy_(output_weights.unsqueeze(1))  # (k, 1, m)
    return bank


class ConvExperts(nn.Module):
    """k convolutional experts on patch-shaped inputs, run as one grouped convolution.

    A routed patch is a flattened (C, p_h, p_w) block; the output is a flattened (C_out, p_h', p_w') block.
    With `preact=True` each expert is BN -> ReLU -> Conv (WRN-pMoE), its BN statistics taken over its own patches.
    """

    def __init__(self, num_experts: int, in_channels: int, out_channels: int, patch_size: tuple[int, int],
                 kernel_size: int = 3, stride: int = 1, bias: bool = False, preact: bool = False) -> None:
        super().__init__()
        check(num_experts >= 1 and in_channels >= 1 and out_channels >= 1,
              f"experts and channels must be >= 1, got {num_experts}, {in_channels}, {out_channels}")
        self.num_experts, self.in_channels, self.out_channels = num_experts, in_channels, out_channels
        self.patch_size = tuple(patch_size)
        self.conv = nn.Conv2d(num_experts * in_channels, num_experts * out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=bias, groups=num_experts)
        self.norm = nn.BatchNorm2d(num_experts * in_channels) if preact else None
        ph, pw = self.patch_size
        self.out_patch_size = ((ph - 1) // stride + 1, (pw - 1) // stride + 1)

    @property
    def in_features(self) -> int:
        return self.in_channels * self.patch_size[0] * self.patch_size[1]

    @property
    def out_features(self) -> int:
        return self.out_channels * self.out_patch_size[0] * self.out_patch_size[1]

    def _preact(self, x: Tensor) -> Tensor:
        return x if self.norm is None else F.relu(self.norm(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: (k, M, C*p_h*p_w) -> (k, M, C_out*p_h'*p_w')."""
        k, M, _ = x.shape
        x = x.view(k, M, self.in_channels, *self.patch_size).transpose(0, 1)  # (M, k, C, ph, pw)
        y = self.conv(self._preact(x.reshape(M, k * self.in_channels, *self.patch_size)))  # (M, k*C_out, ph', pw')
        return y.view(M, k, -1).transpose(0, 1)  # (k, M, C_out*ph'*pw')

    def forward_expert(self, s: int, x: Tensor) -> Tensor:
        """Expert s alone on x: (M, C*p_h*p_w) -> (M, C_out*p_h'*p_w')."""
        C, O = self.in_channels, self.out_channels
        x = x.view(-1, C, *self.patch_size)
        if self.norm is not None:
            bn = self.norm
            sl = slice(s * C, (s + 1) * C)
            x = F.relu(F.batch_norm(x, bn.running_mean[sl].clone(), bn.running_var[sl].clone(), bn.weight[sl],
                                    bn.bias[sl], self.training, 0.0, bn.eps))
        bias = None if self.conv.bias is None else self.conv.bias[s * O:(s + 1) * O]
        y = F.conv2d(x, self.conv.weight[s * O:(s + 1) * O], bias, self.conv.stride, self.conv.padding)
        return y.flatten(1)
