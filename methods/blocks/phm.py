"""Compacter's parameterised hypercomplex multiplication (PHM) layers (Mahabadi et al.,
NeurIPS 2021): `phm_rule` (the slow matrices shared by the layers), `PHMLinear` and the
bottleneck adapter built of two of them, `PHMAdapter`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def phm_rule(
    n: int,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    std: float = 1e-4,
) -> nn.Parameter:
    """The "slow" matrices A_1..A_n (n x n each) of Compacter, as one (n, n, n) parameter
    to be shared by PHM layers; entries N(0, std^2), 1e-4 as in the official Compacter
    configurations (so every PHM matrix starts at about zero)."""
    if n < 1:
        raise ValueError(f"phm_dim must be >= 1, got {n}")
    rule = torch.empty(n, n, n, device=device, dtype=dtype)
    with torch.no_grad():
        rule.normal_(std=std)
    return nn.Parameter(rule)


def _xavier_bound(fan_in: int, fan_out: int, gain: float) -> float:
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


class PHMLinear(nn.Module):
    """Compacter's low-rank PHM layer (Mahabadi et al., NeurIPS 2021, Sec. 3).

    `y = x W + b` with the (in x out) matrix `W = sum_i kron(A_i, s_i t_i^T)`: the n x n
    "slow" A_i come from `rule`, a parameter shared with other layers (registered in each
    of them, like tied weights; counted once), and the "fast" rank-one factor of this layer
    has s_i of length in / n (`left`, (n, in / n)) and t_i of length out / n (`right`,
    (n, out / n)). A layer costs in + out (+ out bias) parameters. W is formed once per
    forward pass (n in out multiply-adds, at most 768 x 768 in Swin-T) and applied as one
    matmul, like any linear layer. Applying the factors to every token instead saves
    multiply-adds but, measured on a CPU at the synthetic benchmark's sizes, ran slower
    overall (three small contractions per token on the first stage's many tokens).

    Initialisation, as the official code's "glorot-uniform" option for the factorised fast
    weights: each s_i, an (in / n) x 1 matrix there, and each t_i, 1 x (out / n), is drawn
    Xavier-uniform with gain sqrt(2) and that matrix's fans: U(+-sqrt(2) sqrt(6 / (in / n
    + 1))) and U(+-sqrt(2) sqrt(6 / (out / n + 1))); the bias is zero. With the rule at
    std 1e-4 (`phm_rule`) W starts at about zero: the adapter is almost the identity.
    """

    def __init__(self, in_features: int, out_features: int, rule: nn.Parameter):
        super().__init__()
        n = rule.shape[0]
        if rule.shape != (n, n, n):
            raise ValueError(f"a PHM rule is (n, n, n), got {tuple(rule.shape)}")
        if in_features % n or out_features % n:
            raise ValueError(
                f"phm_dim {n} must divide both sides of a PHM layer, got "
                f"{in_features} -> {out_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.rule = rule
        factory = {"device": rule.device, "dtype": rule.dtype}
        self.left = nn.Parameter(torch.empty(n, in_features // n, **factory))
        self.right = nn.Parameter(torch.empty(n, out_features // n, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws this layer's fast factors and bias; the shared rule is left as it is."""
        gain = math.sqrt(2.0)
        a = _xavier_bound(1, self.left.shape[1], gain)  # s_i: (in / n) x 1
        b = _xavier_bound(self.right.shape[1], 1, gain)  # t_i: 1 x (out / n)
        nn.init.uniform_(self.left, -a, a)
        nn.init.uniform_(self.right, -b, b)
        nn.init.zeros_(self.bias)

    def matrix(self) -> Tensor:
        """The dense (in x out) W: entry ((a, p), (b, q)) is sum_i A_i[a, b] s_i[p] t_i[q]."""
        w = torch.einsum("iab,ip,iq->apbq", self.rule, self.left, self.right)
        return w.reshape(self.in_features, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.matrix().t(), self.bias)


class PHMAdapter(nn.Module):
    """A bottleneck adapter of two PHM layers: `x + up(gelu(down(x)))` (Compacter), with
    the tanh approximation of GELU (`gelu_new` of the official configurations) and no
    LayerNorm (the official configurations add none)."""

    def __init__(self, dim: int, bottleneck: int, rule: nn.Parameter):
        super().__init__()
        self.down = PHMLinear(dim, bottleneck, rule)
        self.act = nn.GELU(approximate="tanh")
        self.up = PHMLinear(bottleneck, dim, rule)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))
