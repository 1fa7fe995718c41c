"""Adapter building blocks shared by the adapter family of methods.

- `Adapter`: Houlsby et al.'s bottleneck (ICML 2019), `x + up(act(down(x)))`, initialised
  near zero so that the adapted network starts as (almost) the pre-trained one.
- `AdapterSite`, `insert_adapters`, `insert_adapters_at`: where adapters go in a Swin block.
- `TaskWeight`, `TaskAdapter`, `GeneratedWeights`, `TaskLayerEmbedding`, `HyperEncoder`,
  `ScaledLinear`: task-conditioned adapters whose weights come from a hypernetwork
  (Polyhistor, HyperFormer). They hold no parameters of their own: once per forward pass
  the encoder asks the hypernetwork for every task's weights of every adapter, and each
  adapter gathers the weights of its samples' tasks (`TaskContext`) and applies them with
  batched matmuls, so the one pass per task of `PerTaskEncoder` is batched across tasks
  without any loop over samples. The hypernetworks' linear layers are `ScaledLinear`.

Placement. A timm Swin block computes `x + drop_path1(attn(norm1(x)))` and then
`x + drop_path2(mlp(norm2(x)))`. An adapter is put in front of each drop-path module
(`AdaptedBranch`), so it sees the sub-layer's output after its projection (`attn.proj`,
`mlp.fc2`) and their dropout, and its output goes through stochastic depth and the residual
addition: Houlsby's placement ("applied directly to the output of the sub-layer, after the
projection back to the input size, but before adding the skip connection back"). Wrapping
the drop-path rather than `attn.proj` has two reasons: `attn.proj` runs on shifted, padded
windows (num_windows * batch, tokens, C), so a per-sample adapter would have to know the
window layout, while the drop-path sees the un-windowed map (batch, H, W, C) or
(batch, H * W, C) whose first dimension is the sample; and the linear layers stay untouched,
free for other methods' wrappers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone
from benchmark.model import PerTaskEncoder, TaskContext
from methods.base import freeze, positive_ints

# The two adapters of a block, in the order the block runs them.
POSITIONS = ("attn", "mlp")


class Adapter(nn.Module):
    """Houlsby's bottleneck adapter: `x + up(gelu(down(x)))` on the last dimension.

    Both projections are drawn from a zero-mean normal with std `init_std` truncated at two
    standard deviations, biases zero (Houlsby et al., Sec. 2.1: a near-identity start).
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        init_std: float = 1e-2,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"an adapter needs a bottleneck >= 1, got {bottleneck}")
        self.init_std = init_std
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.init_std
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))


class AdaptedBranch(nn.Module):
    """A block's residual branch ending: the adapter, then the block's own drop-path."""

    def __init__(self, adapter: nn.Module, drop_path: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.adapter(x))


def bottleneck_width(dim: int, reduction: int) -> int:
    """The hidden width of an adapter of width `dim` with reduction factor `reduction`."""
    if dim // reduction < 1:
        raise ValueError(f"reduction {reduction} leaves no bottleneck for width {dim}")
    return dim // reduction


@dataclass(frozen=True)
class AdapterSite:
    """One adapter position: `index` counts sites stage by stage, block by block, attn first."""

    index: int
    stage: int
    block: int
    position: str  # "attn" or "mlp"
    dim: int  # the block's width


def adapter_sites(backbone: SwinBackbone) -> list[AdapterSite]:
    """Two sites per block (after attention, after the MLP) in execution order."""
    sites: list[AdapterSite] = []
    for s, stage in enumerate(backbone.stages):
        for b, block in enumerate(stage.blocks):
            for position in POSITIONS:
                sites.append(AdapterSite(len(sites), s, b, position, block.dim))
    return sites


def insert_adapters_at(
    backbone: SwinBackbone,
    make: Callable[[AdapterSite], nn.Module],
    positions: Sequence[str] = POSITIONS,
) -> list[AdapterSite]:
    """Put `make(site)` at the given positions (`attn`, `mlp`) of every block, in execution
    order; returns the sites that got an adapter, with their `index` counting those sites
    only."""
    unknown = set(positions) - set(POSITIONS)
    if unknown or not positions:
        raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {positions}")
    sites: list[AdapterSite] = []
    for site in adapter_sites(backbone):
        if site.position not in positions:
            continue
        site = AdapterSite(len(sites), site.stage, site.block, site.position, site.dim)
        block = backbone.stages[site.stage].blocks[site.block]
        attr = "drop_path1" if site.position == "attn" else "drop_path2"
        setattr(block, attr, AdaptedBranch(make(site), getattr(block, attr)))
        sites.append(site)
    return sites


def insert_adapters(
    backbone: SwinBackbone, make: Callable[[AdapterSite], nn.Module]
) -> list[AdapterSite]:
    """Put `make(site)` after attention and after the MLP of every block; returns the sites."""
    return insert_adapters_at(backbone, make)


# --- task-conditioned adapters -------------------------------------------------------------

# A generated up-projection starts this much smaller than a fan-in initialisation, so that
# every generated adapter starts near the identity (Polyhistor, HyperFormer).
UP_GAIN = 1e-2


@dataclass
class TaskWeight:
    """Every task's weight and bias for one adapter projection, kept in factored form.

    For task t the (in x out) matrix is `kron(scale, left[t] @ right[t])`: `left` is
    (T, a, r), `right` (T, r, b) or None (then `left` is the whole a x b matrix), `scale` a
    (p, q) kernel shared by the tasks or None (1 x 1), so in = p * a and out = q * b. `bias`
    is (T, out). The factors are applied one after the other and never multiplied out, so
    gathering them per sample costs (a + b) * r numbers per sample, not a * b.
    """

    left: Tensor
    right: Tensor | None
    bias: Tensor
    scale: Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.left.shape[1] * (1 if self.scale is None else self.scale.shape[0])

    @property
    def out_features(self) -> int:
        return self.bias.shape[-1]

    def matrix(self) -> Tensor:
        """The dense (T, in, out) matrices (for inspection and tests)."""
        k = self.left if self.right is None else self.left @ self.right
        if self.scale is None:
            return k
        p, q = self.scale.shape
        t, a, b = k.shape
        return torch.einsum("pq,tab->tpaqb", self.scale, k).reshape(t, p * a, q * b)

    def apply(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """`x @ W[task] + bias[task]` per sample: x is (B, N, in), `task_ids` is (B,)."""
        n, tokens, _ = x.shape
        a = self.left.shape[1]
        p = 1 if self.scale is None else self.scale.shape[0]
        # kron(S, K) acting on a row vector: split it into p chunks of a, map every chunk by
        # K, then mix the chunks by S (y = S^T X K with X the p x a reshaped input).
        h = torch.bmm(x.reshape(n, tokens * p, a), self.left[task_ids])
        if self.right is not None:
            h = torch.bmm(h, self.right[task_ids])
        if self.scale is not None:
            h = torch.einsum("bnpk,pq->bnqk", h.view(n, tokens, p, -1), self.scale)
        return h.reshape(n, tokens, -1) + self.bias[task_ids].unsqueeze(1)


class GeneratedWeights:
    """The weights a hypernetwork generated for one forward pass, read by the adapters.

    A plain object (like `TaskContext`), so that the adapters can share it without
    registering the hypernetwork's parameters a second time.
    """

    def __init__(self) -> None:
        self._weights: Sequence[tuple[TaskWeight, TaskWeight]] | None = None

    @contextlib.contextmanager
    def hold(self, weights: Sequence[tuple[TaskWeight, TaskWeight]]) -> Iterator[None]:
        self._weights = weights
        try:
            yield
        finally:
            self._weights = None

    def get(self, index: int) -> tuple[TaskWeight, TaskWeight]:
        if self._weights is None:
            raise RuntimeError("a generated adapter ran outside HyperEncoder")
        return self._weights[index]


class TaskAdapter(nn.Module):
    """A bottleneck adapter whose (down, up) weights depend on each sample's task.

    It has no parameters: `weights.get(index)` returns every task's generated projections
    and the context says which task each sample of the batch belongs to.
    """

    def __init__(self, index: int, weights: GeneratedWeights, context: TaskContext):
        super().__init__()
        self.index = index
        self.weights = weights
        self.context = context

    def forward(self, x: Tensor) -> Tensor:
        ids = self.context.current()
        down, up = self.weights.get(self.index)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        hidden = F.gelu(down.apply(flat, ids))
        return (flat + up.apply(hidden, ids)).reshape(x.shape)


class ScaledLinear(nn.Linear):
    """A linear layer of a hypernetwork: `x @ (weight / in_features)^T + bias`.

    A hypernetwork's input is not data but a learned embedding, the same vector z at every
    step, so the gradient of a plain linear layer fed with it is the rank-one outer product
    g z^T. Adam moves every entry by about lr whatever the gradient's size, with the signs of
    g z^T, so an output moves by about lr * sum |z_j| = lr * in_features * mean |z| per step:
    with in_features in the hundreds, the generated adapter weights would change tens to
    hundreds of times faster than the same weights trained directly, overwrite the frozen
    features within the warm-up and keep growing (the frozen blocks' LayerNorms make the loss
    blind to their scale). Dividing the weight by in_features in the forward pass brings that
    step down to lr * mean |z|, whatever the width. `std` is the standard deviation of the
    effective weight, weight / in_features (the stored weight is drawn in_features times
    wider), so the layer computes at the start what an `nn.Linear` initialised with that std
    would; the bias is zero and used as is (its step is lr).
    """

    def __init__(
        self, in_features: int, out_features: int, std: float, device=None, dtype=None
    ):
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.std = std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = getattr(self, "std", None)
        if std is None:  # called by nn.Linear.__init__, before `std` is set
            return
        nn.init.normal_(self.weight, std=std * self.in_features)
        nn.init.zeros_(self.bias)

    def effective_weight(self) -> Tensor:
        return self.weight / self.in_features

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class TaskLayerEmbedding(nn.Module):
    """The hypernetworks' input: one vector per (task, adapter site).

    A learned embedding per task and per site (its layer and position in the block, as
    HyperFormer's layer-id embedding), concatenated and projected with a ReLU:
    `z[t, l] = relu(W [task_t; layer_l] + c)`, shape (tasks, sites, hidden). Embeddings start
    as standard normals and W with std 1/sqrt(2 * embed_dim), so the projection starts with
    unit variance before the ReLU (E[z^2] = 1/2), which the heads' initialisation assumes.
    The projection is a `ScaledLinear` (its input is the same at every step).
    """

    def __init__(self, num_tasks: int, num_sites: int, embed_dim: int, hidden: int):
        super().__init__()
        self.task = nn.Parameter(torch.randn(num_tasks, embed_dim))
        self.layer = nn.Parameter(torch.randn(num_sites, embed_dim))
        self.project = ScaledLinear(2 * embed_dim, hidden, std=1 / math.sqrt(2 * embed_dim))

    def forward(self) -> Tensor:
        tasks, sites = self.task.shape[0], self.layer.shape[0]
        pairs = torch.cat(
            [
                self.task.unsqueeze(1).expand(tasks, sites, -1),
                self.layer.unsqueeze(0).expand(tasks, sites, -1),
            ],
            dim=-1,
        )
        return F.relu(self.project(pairs))


class HyperEncoder(PerTaskEncoder):
    """`PerTaskEncoder` whose `TaskAdapter`s take their weights from `generator`.

    `generator()` returns one (down, up) `TaskWeight` pair per adapter site, for every task;
    it runs once per forward pass, before the (chunked) per-task passes read it.
    """

    def __init__(
        self,
        backbone: SwinBackbone,
        tasks: Sequence[str],
        context: TaskContext,
        generator: nn.Module,
        weights: GeneratedWeights,
        tasks_per_pass: int | None = None,
    ):
        super().__init__(backbone, tasks, context, tasks_per_pass)
        self.generator = generator
        self.weights = weights

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        with self.weights.hold(self.generator()):
            return super().forward(images)


def tasks_per_pass_option(value: object) -> int | None:
    """A hypernetwork method's `tasks_per_pass` option: None (every task in one pass) or a
    whole number >= 1, as an int; a ValueError otherwise."""
    if value is None:
        return None
    try:
        (count,) = positive_ints(tasks_per_pass=value)
    except ValueError:
        message = f"tasks_per_pass must be a whole number >= 1 or null, got {value!r}"
        raise ValueError(message) from None
    return count


def hyper_encoder(
    backbone: SwinBackbone,
    tasks: Sequence[str],
    build_generator: Callable[[Sequence[AdapterSite]], nn.Module],
    tasks_per_pass: int | None = None,
) -> HyperEncoder:
    """Freeze `backbone`, put a `TaskAdapter` at every site (`insert_adapters`) and return
    the `HyperEncoder` whose generator is `build_generator(sites)`, built on the backbone's
    device."""
    freeze(backbone)
    context = TaskContext(tasks)
    weights = GeneratedWeights()
    sites = insert_adapters(backbone, lambda site: TaskAdapter(site.index, weights, context))
    with torch.device(backbone.patch_embed.proj.weight.device):
        generator = build_generator(sites)
    return HyperEncoder(backbone, tasks, context, generator, weights, tasks_per_pass)


# --- parameterised hypercomplex multiplication (Compacter) ---------------------------------


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
