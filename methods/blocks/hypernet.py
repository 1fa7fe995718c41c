"""Task-conditioned adapters whose weights come from a hypernetwork (Polyhistor, HyperFormer).

- `TaskWeight`, `GeneratedWeights`, `TaskAdapter`: the generated adapters hold no
  parameters of their own: once per forward pass the encoder (`HyperEncoder`) asks the
  hypernetwork for every task's weights of every adapter, and each adapter gathers the
  weights of its samples' tasks (`TaskContext`) and applies them with batched matmuls, so
  the one pass per task of `PerTaskEncoder` is batched across tasks without any loop over
  samples. They sit where `methods.blocks.bottleneck.insert_adapters` puts adapters.
- `ScaledLinear`, `TaskLayerEmbedding`: a hypernetwork's linear layer and its input.
- `HyperNetworkMethod`: the shared base of the methods built this way.
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
from benchmark.method import Method, PerTaskEncoder, TaskContext
from methods.blocks.bottleneck import AdapterSite, insert_adapters
from methods.blocks.inject import freeze, unfreeze_norms
from methods.blocks.options import positive_ints, tasks_per_pass_option

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

    Why (this is the one place the story is told; Polyhistor and HyperFormer refer here). A
    hypernetwork's input is not data but a learned embedding, the same vector z at every
    step, so the gradient of a plain linear layer fed with it is the rank-one outer product
    g z^T. Adam moves every entry by about lr whatever the gradient's size, with the signs of
    g z^T, so an emitted entry moves by about lr * sum |z_j| = lr * in_features * mean |z|
    per step (~0.4 lr * hidden: 39 lr for `polyhistor`, 355 lr for `polyhistor_lite`, where
    a directly trained adapter weight moves by lr). With plain layers and the harness's
    shared recipe the generated adapters overwrote the frozen features within the warm-up:
    on the synthetic benchmark at the `quick` budget, adapter outputs were 10^2 to 10^4
    times their input by the end of the first epoch and still growing, still several times
    their input at 1/30 of the learning rate (the frozen blocks' LayerNorms hide their scale
    from the loss, so nothing stopped the growth), and both Polyhistor variants fell to
    constant predictions. Dividing the weight by in_features in the forward pass brings the
    step down to lr * mean |z|, whatever the width, and the generated adapters train at the
    pace of directly trained ones; parameter counts do not change.

    `std` is the standard deviation of the effective weight, weight / in_features (the
    stored weight is drawn in_features times wider), so the layer computes at the start what
    an `nn.Linear` initialised with that std would; the bias is zero and used as is (its
    step is lr).
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


def hyper_encoder(
    backbone: SwinBackbone,
    tasks: Sequence[str],
    build_generator: Callable[[Sequence[AdapterSite]], nn.Module],
    tasks_per_pass: int | None = None,
    adapter: Callable[[int, GeneratedWeights, TaskContext], nn.Module] = TaskAdapter,
) -> HyperEncoder:
    """Freeze `backbone`, put `adapter(site.index, weights, context)` at every site
    (`insert_adapters`) and return the `HyperEncoder` whose generator is
    `build_generator(sites)`, built on the backbone's device."""
    freeze(backbone)
    context = TaskContext(tasks)
    weights = GeneratedWeights()
    sites = insert_adapters(backbone, lambda site: adapter(site.index, weights, context))
    with torch.device(backbone.patch_embed.proj.weight.device):
        generator = build_generator(sites)
    return HyperEncoder(backbone, tasks, context, generator, weights, tasks_per_pass)


def positive_number(key: str, value: object) -> float:
    """A real option > 0 (finite), as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return float(value)


class HyperNetworkMethod(Method):
    """A method whose adapters a hypernetwork generates per task (`per_task` mode).

    The constructor stores `sizes` (positive integers, but those named in `real_sizes`:
    positive reals) and `tasks_per_pass` (tasks per batched pass; None: all at once);
    `build_generator` makes the hypernetwork for the adapter sites; `adapter` is the module
    built at every site, `train_norms` whether the backbone's LayerNorms train.
    """

    adapter: Callable[[int, GeneratedWeights, TaskContext], nn.Module] = TaskAdapter
    train_norms = False
    real_sizes: tuple[str, ...] = ()

    def __init__(self, name: str, tasks_per_pass: object, **sizes: object):
        super().__init__(name)
        for key, value in sizes.items():
            setattr(self, key, positive_number(key, value) if key in self.real_sizes
                    else positive_ints(**{key: value})[0])
        self.tasks_per_pass = tasks_per_pass_option(tasks_per_pass)

    def build_generator(
        self, backbone: SwinBackbone, sites: Sequence[AdapterSite], num_tasks: int
    ) -> nn.Module:
        raise NotImplementedError

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> HyperEncoder:
        encoder = hyper_encoder(
            backbone, tasks, lambda sites: self.build_generator(backbone, sites, len(tasks)),
            self.tasks_per_pass, type(self).adapter,
        )
        if self.train_norms:
            unfreeze_norms(backbone)
        return encoder
