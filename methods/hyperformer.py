"""HyperFormer (Karimi Mahabadi, Ruder, Dehghani, Henderson: "Parameter-efficient Multi-task
Fine-tuning for Transformers via Shared Hypernetworks", ACL 2021), the `hyperformer` row of
protocol §3.2 (72.77 M trainable for Swin-T on PASCAL-Context, as reported in the Polyhistor
paper, whose baseline this is), built as the official code's released `hyperformer`
configuration builds it for T5, ported to Swin's stages.

The official code and its configuration. The released HyperFormer configuration builds,
for each T5 stack, one hypernetwork shared by all its blocks and conditioned on the block
(the README's "one hypernetwork per layer" describes another code path, which no released
configuration selects; HyperFormer++ is a third one, with one set of heads for both adapter
positions). For task tau and block l:

- Task projector: I = LN( W_2 relu(W_1 [z_tau; e_l] + b_1) + b_2 ), with z_tau the task
  embedding and e_l the block's row of a learned layer-id table (both of width t = 64,
  the effective value of the configuration's twice-given `task_embedding_dim`), W_1
  (128 x 128), W_2 (64 x 128), and an affine LayerNorm(64, eps 1e-6).
- Heads: for each of the block's two adapter positions (after attention, after the
  feed-forward), one linear layer from I per generated tensor: the down matrix (m x d) and
  its bias (m), the up matrix (d x m) and its bias (d), and the gamma (d) and beta (d) of
  the adapter's LayerNorm.
- Adapter, on the sub-layer's output y before the sub-layer's dropout and residual:
  a(y) = y + LN_{gamma, beta}( W_up gelu(W_down y + b_down) + b_up ), with the tanh
  approximation of GELU (`gelu_new`) and the generated gamma and beta used as they come
  (LayerNorm eps 1e-5, the functional default). No dropout, no LayerNorm before.
- Initialisation: every linear layer of the projector and the heads N(0, 0.01^2) with
  zero bias; task embeddings and layer table N(0, 1); the projector's LayerNorm gamma 1,
  beta 0. Since I is layer-normalised (|I|^2 ~ 64), the generated entries start with std
  about 0.08: gamma has mean about 0, not 1, and the adapter starts small, not exactly as
  the identity.
- Trains: the task embeddings, the hypernetworks and every LayerNorm of the backbone
  (`unfreeze_layer_norms`); everything else is frozen. Everything is recomputed at every
  forward pass.

Our port (`per_task` mode, protocol §2.3): the task decides the encoder's weights, so the
encoder runs one pass per task, batched across tasks (`methods.blocks.hypernet.HyperEncoder`: the
generator runs once per forward pass and each adapter gathers its samples' weights by task
id). Choices the official code leaves open for Swin, and ours:

- Generated shapes depend on the width, so one hypernetwork cannot serve Swin's four
  widths: every stage has its own (projector, layer table with one row per block of the
  stage, heads), as each T5 stack has its own; the task embeddings are one table shared by
  the stages, as the official code shares them between its stacks.
- Placement: after the attention's output projection and after the MLP's fc2, before the
  block's stochastic depth and residual addition (`methods.blocks.bottleneck.insert_adapters`).
- Backbone LayerNorms trained: every one of them (norm1 and norm2 of every block, the
  patch-embedding norm, the merging norms; Swin's have a weight and a bias, T5's RMS norms
  a weight only).
- Multi-task batches: every batch serves all tasks through the harness's multi-task loss
  (the official trainer draws one task per batch).
- The linear layers are plain ones, as in the official code, not the fan-in-scaled ones of
  Polyhistor: an Adam step moves a generated entry by about lr times the sum of |I|, faster
  than a directly trained weight moves (`methods.blocks.hypernet.ScaledLinear` tells why and
  what that did to Polyhistor).

Count and the fitted width. The official reduction factor 32 (m = 3 / 6 / 12 / 24 on Swin-T)
gives 9,002,714 trainable, far from the paper's 72.77 M, whose widths are not published. We
keep every official width (t = 64, hidden 128, t' = 64) and fit only the free one, the
adapter bottleneck: `reduction` is a real number and a block of width d gets the bottleneck
round(d / reduction); the default 2.91 gives m = 33 / 66 / 132 / 264. A stage of width d,
bottleneck m and L blocks costs L t + (2t h + h) + (h t' + t') + 2 t' for its projector
and 2 (t' + 1) (2 d m + m + 3 d) for its heads; with the four task embeddings (4 t), the
LayerNorms (23,232) and the decoders (1,946,624), Swin-T on PASCAL has 72,709,214 trainable,
60,786 (0.08 %) below the paper's 72.77 M (a stage-0 bottleneck of 32 or 34 would be
2.2 M below or 2.1 M above).

`tasks_per_pass` bounds memory: with fewer tasks per pass the tasks are processed in chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from methods.blocks.bottleneck import AdapterSite
from methods.blocks.hypernet import HyperNetworkMethod
from methods.blocks.stage_hypernet import GeneratedAdapter, HyperFormerGenerator


class HyperFormer(HyperNetworkMethod):
    """Task-conditioned adapters generated by one hypernetwork per stage (see the module)."""

    paper_trainable_m = 72.77
    adapter = GeneratedAdapter
    train_norms = True
    real_sizes = ("reduction",)

    def __init__(
        self,
        reduction: float = 2.91,
        embed_dim: int = 64,
        hidden: int = 128,
        projected: int = 64,
        tasks_per_pass: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name or "hyperformer", tasks_per_pass, embed_dim=embed_dim,
                         hidden=hidden, projected=projected, reduction=reduction)

    @property
    def label(self) -> str:
        return f"{self.name} reduction={self.reduction:g}"

    def build_generator(self, backbone: SwinBackbone, sites: Sequence[AdapterSite], num_tasks: int):
        return HyperFormerGenerator(
            num_tasks, sites, self.reduction, self.embed_dim, self.hidden, self.projected
        )
