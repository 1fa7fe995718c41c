"""TADFormer's building blocks (`methods.tadformer` documents the method and its choices).

- `DynamicTaskFilter`: the dynamic task filter (DTF), a per-sample depthwise 3x3 convolution
  whose kernels a 1x1 map generates from the sample's pooled features, normalised per
  channel over the 9 taps (filter normalisation) and then scaled and shifted.
- `static_filter`: the released code's per-task depthwise 3x3 convolution (with bias).
- `TaskAdaptedLinear`: a TA-LoRA linear whose task outputs reuse the layer's shared factors
  with a task filter in the rank-r bottleneck: `W x + b + s B filter_t(A x_t)`.
- `PromptBlock`: a Swin block whose windows each see the task prompts prepended; it returns
  the updated image tokens and prompts.
- `TaskAdaptingBlock`: the last block of a stage, also computing the task streams (TPC
  operator, task-adapted proj, fc1, fc2) and the stage-wise gate.

Image tokens are NHWC throughout; prompts are (batch, tasks, width).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone, TaskStreams
from benchmark.method import TaskStreamEncoder
from methods.blocks.lowrank import LoRALinear

TAPS = 9  # a 3 x 3 kernel


class DynamicTaskFilter(nn.Module):
    """`z -> dwconv3x3(z; k(z))` on (n, h, w, rank) maps, one kernel per sample and channel:
    k = mu + sigma * normalise(W_g mean_hw(z) + b_g), normalised over each channel's 9 taps
    (mean 0, unbiased std 1, + 1e-10). W_g, b_g: `nn.Linear` defaults (those of a 1x1
    convolution); sigma ~ N(0, 1) * sqrt(2) / 3, mu ~ N(0, 1)."""

    def __init__(self, rank: int, device=None, dtype=None):
        super().__init__()
        self.generator = nn.Linear(rank, rank * TAPS, device=device, dtype=dtype)
        self.sigma = nn.Parameter(torch.randn(rank * TAPS, device=device, dtype=dtype))
        self.mu = nn.Parameter(torch.randn(rank * TAPS, device=device, dtype=dtype))
        with torch.no_grad():
            self.sigma.mul_(nn.init.calculate_gain("relu") / 3)

    def kernels(self, z: Tensor) -> Tensor:
        """Each sample's kernels, (n * rank, 1, 3, 3)."""
        n, rank = z.shape[0], z.shape[-1]
        k = self.generator(z.mean(dim=(1, 2))).reshape(n, rank, TAPS)
        k = (k - k.mean(dim=-1, keepdim=True)) / (k.std(dim=-1, keepdim=True) + 1e-10)
        k = k.reshape(n, rank * TAPS) * self.sigma + self.mu
        return k.reshape(n * rank, 1, 3, 3)

    def forward(self, z: Tensor) -> Tensor:
        n, height, width, rank = z.shape
        grid = z.permute(0, 3, 1, 2).reshape(1, n * rank, height, width)
        out = F.conv2d(grid, self.kernels(z).to(grid.dtype), padding=1, groups=n * rank)
        return out.reshape(n, rank, height, width).permute(0, 2, 3, 1)


def static_filter(rank: int, device=None, dtype=None) -> nn.Conv2d:
    """The released task filter: depthwise 3x3, zero padding, bias, PyTorch's init."""
    return nn.Conv2d(rank, rank, 3, padding=1, groups=rank, device=device, dtype=dtype)


class TaskAdaptedLinear(LoRALinear):
    """A TA-LoRA linear with task outputs (TADFormer's proj, fc1, fc2 of a stage's last block):

        shared output  = W x + b + s B A dropout(x)           (`forward`, as `LoRALinear`)
        task output t  = W x + b + s B filter_t(A x_t)        (`forward_tasks`)

    A and B are the shared factors; x_t is a (n, h, w, in) grid, not dropped out. With
    `filter="dynamic"` one `DynamicTaskFilter` serves every task, with `"static"` each task
    has its own `static_filter`. The task outputs exclude the shared update, so there is no
    merge."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float,
                 tasks: Sequence[str], filter: str):
        super().__init__(base, rank, scale, dropout)
        dd = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.tasks = list(tasks)
        if filter == "dynamic":
            self.filter = DynamicTaskFilter(rank, **dd)
        else:
            self.filter = nn.ModuleDict({t: static_filter(rank, **dd) for t in self.tasks})

    def task_update(self, x: Tensor, task: str) -> Tensor:
        """s B filter_t(A x) for a (n, h, w, in) grid x."""
        z = F.linear(x, self.lora.a)
        if isinstance(self.filter, DynamicTaskFilter):
            z = self.filter(z)
        else:
            z = self.filter[task](z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return F.linear(z, self.lora.b) * self.lora.scale

    def forward_tasks(self, x: Tensor, task_inputs: Mapping[str, Tensor]
                      ) -> tuple[Tensor, dict[str, Tensor]]:
        frozen = self.base(x)
        shared = frozen + self.lora(self.dropout(x))
        return shared, {t: frozen + self.task_update(x_t, t) for t, x_t in task_inputs.items()}

    def merge(self) -> None:
        raise NotImplementedError("a task-adapted layer's task outputs exclude the shared "
                                  "update: it cannot be merged into the frozen weight")


class PromptBlock(nn.Module):
    """A timm `SwinTransformerBlock` (kept whole as `.block`, its linears adapted) run with
    the task prompts p (batch, P, C) in every window:

    - norm1 of p is prepended to each window of norm1(x) (shifted as the block shifts);
      qkv and the softmax attention run over the P + window tokens, the relative-position
      bias and the shift mask only on the patch x patch part; proj acts on every token;
    - image tokens: x + droppath(proj output), then the block's MLP residual;
    - prompts: a = proj output of the prompt rows averaged over the image's windows, then
      p + droppath(MLP(norm2(a))), with no attention residual (`update_prompts`; the very
      last block of the network leaves them).

    `tpc_norm` is the TPC LayerNorm every proj layer holds; only a stage's last block uses
    it (`TaskAdaptingBlock`)."""

    def __init__(self, block: nn.Module, update_prompts: bool = True):
        super().__init__()
        self.block = block
        self.update_prompts = update_prompts
        w = block.norm1.weight
        self.tpc_norm = nn.LayerNorm(block.dim, device=w.device, dtype=w.dtype)

    def windows(self, x: Tensor) -> tuple[Tensor, int, int]:
        """The block's (shifted, padded) windows of x: (batch * windows, area, C), Hp, Wp."""
        blk = self.block
        if any(blk.shift_size):
            x = torch.roll(x, shifts=(-blk.shift_size[0], -blk.shift_size[1]), dims=(1, 2))
        _, height, width, channels = x.shape
        pad_h = -height % blk.window_size[0]
        pad_w = -width % blk.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        windows = window_partition(x, blk.window_size).reshape(-1, blk.window_area, channels)
        return windows, height + pad_h, width + pad_w

    def unwindow(self, windows: Tensor, size: tuple[int, int, int, int]) -> Tensor:
        """The inverse of `windows`: (batch * windows, ...) back to (batch, H, W, C)."""
        height, width, padded_h, padded_w = size
        (wh, ww), channels = self.block.window_size, windows.shape[-1]
        x = windows.reshape(-1, padded_h // wh, padded_w // ww, wh, ww, channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, padded_h, padded_w, channels)
        x = x[:, :height, :width]
        shift = self.block.shift_size
        return torch.roll(x, shifts=shift, dims=(1, 2)) if any(shift) else x

    def attend(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor, tuple]:
        """Attention over prompts and windows: the output before proj (b, P + area, C), the
        raw q k^T logits (b, heads, P + area, P + area) and the window geometry."""
        blk, attn = self.block, self.block.attn
        n, height, width, channels = x.shape
        windows, padded_h, padded_w = self.windows(blk.norm1(x))
        b, count = windows.shape[0], p.shape[1]
        per_image = b // n
        prompts = blk.norm1(p).unsqueeze(1).expand(n, per_image, count, channels)
        tokens = torch.cat([prompts.reshape(b, count, channels), windows], dim=1)
        q, k, v = attn.qkv(tokens).reshape(b, tokens.shape[1], 3, attn.num_heads, -1) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        raw = q @ k.transpose(-2, -1)
        logits = raw * attn.scale + F.pad(attn._get_rel_pos_bias(), (count, 0, count, 0))
        if blk.attn_mask is not None:  # (windows, area, area), the same for every image
            mask = F.pad(blk.attn_mask, (count, 0, count, 0))
            logits = (logits.reshape(n, per_image, *logits.shape[1:]) + mask[None, :, None]) \
                .reshape(raw.shape)
        out = attn.attn_drop(logits.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(b, tokens.shape[1], -1)
        return out, raw, (height, width, padded_h, padded_w)

    def next_prompts(self, p: Tensor, prompt_rows: Tensor) -> Tensor:
        if not self.update_prompts:
            return p
        blk = self.block
        a = prompt_rows.reshape(p.shape[0], -1, *p.shape[1:]).mean(dim=1)
        return p + blk.drop_path2(blk.mlp(blk.norm2(a)))

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        blk, count = self.block, p.shape[1]
        out, _, size = self.attend(x, p)
        y = blk.attn.proj_drop(blk.attn.proj(out))
        x = x + blk.drop_path1(self.unwindow(y[:, count:], size))
        x = x + blk.drop_path2(blk.mlp(blk.norm2(x)))
        return x, self.next_prompts(p, y[:, :count])


class TaskAdaptingBlock(PromptBlock):
    """The last block of a stage: the shared stream as `PromptBlock`, and one stream per
    task (prompt row t is task t's prompt):

        G_t   = GELU(raw q k^T of prompt t to the window's patches), per head
        M_t   = G_t * x_O per head and channel  (x_O: the dropped-out attention output)
        z_t   = x + droppath(W x_O' + b + s B filter_t(A tpc_norm(x_O + M_t)))
        h_t   = GELU(fc1_t(norm2(shared after attention), norm2(z_t)))
        out_t = z_t + droppath(fc2_t(GELU(shared fc1 output), h_t))
        out_t = g S_t + (1 - g) out_t,  g = sigmoid(gate), S_t = `skip_map(M_t)`

    where x_O' is the attention output without dropout and `layer_t(x, x_t)` a task output
    of a `TaskAdaptedLinear`. Returns `TaskStreams` and the prompts."""

    def __init__(self, block: nn.Module, update_prompts: bool = True):
        super().__init__(block, update_prompts)
        w = block.norm1.weight
        self.gate = nn.Parameter(torch.zeros((), device=w.device, dtype=w.dtype))
        self.tasks = block.attn.proj.tasks

    def tpc(self, x_o: Tensor, raw_rows: Tensor) -> Tensor:
        """M = GELU(raw) * x_O: x_O (b, area, C), raw_rows (b, heads, area) -> (b, area, C)."""
        b, area, channels = x_o.shape
        heads = raw_rows.shape[1]
        weights = F.gelu(raw_rows).transpose(1, 2).unsqueeze(-1)  # (b, area, heads, 1)
        return (weights * x_o.reshape(b, area, heads, -1)).reshape(b, area, channels)

    def skip_map(self, m: Tensor, size: tuple) -> Tensor:
        """S_t as the official code forms it: M_t kept channel-first, (b, C, area), and its
        memory read as (b, wh, ww, C) windows without a transpose, then un-windowed."""
        channel_first = m.transpose(1, 2).contiguous()
        return self.unwindow(channel_first.reshape(m.shape[0], *self.block.window_size, -1), size)

    def forward(self, x: Tensor, p: Tensor) -> tuple[TaskStreams, Tensor]:
        blk, mlp, proj = self.block, self.block.mlp, self.block.attn.proj
        count = p.shape[1]
        out, raw, size = self.attend(x, p)
        frozen, dropped = proj.base(out), proj.dropout(out)
        y = blk.attn.proj_drop(frozen + proj.lora(dropped))
        shared = x + blk.drop_path1(self.unwindow(y[:, count:], size))

        x_o, grid = dropped[:, count:], (dropped.shape[0], *blk.window_size, -1)
        streams, skips = {}, {}
        for i, task in enumerate(self.tasks):
            m = self.tpc(x_o, raw[:, :, i, count:])
            update = proj.task_update(self.tpc_norm(x_o + m).reshape(grid), task)
            y_t = frozen[:, count:] + update.reshape(x_o.shape)
            streams[task] = x + blk.drop_path1(self.unwindow(blk.attn.proj_drop(y_t), size))
            skips[task] = self.skip_map(m, size)

        hidden, hidden_t = mlp.fc1.forward_tasks(
            blk.norm2(shared), {t: blk.norm2(z) for t, z in streams.items()})
        hidden = mlp.norm(mlp.drop1(mlp.act(hidden)))
        hidden_t = {t: mlp.norm(mlp.drop1(mlp.act(h))) for t, h in hidden_t.items()}
        o, o_t = mlp.fc2.forward_tasks(hidden, hidden_t)
        shared = shared + blk.drop_path2(mlp.drop2(o))
        g = torch.sigmoid(self.gate)
        streams = {t: g * skips[t] + (1 - g) * (z + blk.drop_path2(mlp.drop2(o_t[t])))
                   for t, z in streams.items()}
        return TaskStreams(shared, streams), self.next_prompts(p, y[:, :count])


def init_prompts_(prompts: Tensor) -> Tensor:
    """N(1, 1) truncated to the absolute bounds [-2, 2] (timm's `trunc_normal_(mean=1)`)."""
    return nn.init.trunc_normal_(prompts, mean=1.0, std=1.0, a=-2.0, b=2.0)


class TADFormerEncoder(TaskStreamEncoder):
    """The backbone run with the prompts: every block takes and returns (tokens, prompts);
    each stage's last block returns the task streams, which leave through the merging."""

    def __init__(self, backbone: SwinBackbone, tasks: Sequence[str]):
        super().__init__(backbone, tasks)
        w = backbone.patch_embed.proj.weight
        dd = {"device": w.device, "dtype": w.dtype}
        self.prompts = nn.Parameter(init_prompts_(torch.empty(len(tasks), backbone.embed_dim,
                                                              **dd)))
        self.prompt_up = nn.ModuleList()
        for stage in backbone.stages[:-1]:
            up = nn.Linear(stage.merge.dim, stage.merge.out_dim, bias=False, **dd)
            nn.init.trunc_normal_(up.weight, std=0.02)
            self.prompt_up.append(up)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        x = self.backbone.patch_embed(images)
        # a copy, not a view: a view of a parameter made under no_grad trips the module
        # tracker of PyTorch's FLOP counter
        p = self.prompts.repeat(x.shape[0], 1, 1)
        features: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        for i, stage in enumerate(self.backbone.stages):
            for block in stage.blocks[:-1]:
                x, p = block(x, p)
            streams, p = stage.blocks[-1](x, p)
            for task in self.tasks:
                features[task].append(stage.merge(streams.tasks[task]).permute(0, 3, 1, 2))
            x = stage.merge(streams.shared)
            if i < len(self.prompt_up):
                p = self.prompt_up[i](p)
        return features
