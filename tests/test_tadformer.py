"""TADFormer (methods/tadformer.py, methods/blocks/tadformer.py): the official code's counts,
where the prompts are seen and what crosses merging, the TPC operator, the task filters and
the gate by hand, what trains, identity of the task streams at initialisation, gradients,
overfitting."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.backbone import TaskStreams, build_backbone
from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from benchmark.speed import count_flops as _flops
from methods.blocks.lowrank import LoRALinear, LowRank
from methods.blocks.tadformer import (
    DynamicTaskFilter,
    PromptBlock,
    TADFormerEncoder,
    TaskAdaptedLinear,
    TaskAdaptingBlock,
    init_prompts_,
    static_filter,
)
from methods.tadformer import TADFormer
from tests.helpers import (
    DECODERS,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    SWIN_T_NORMS,
    SWIN_T_PATCH_CONV,
    SWIN_T_RELATIVE_POSITIONS,
    SWIN_T_STAGES,
    TADFORMER_UNUSED,
    TASKS,
    arch,
    assert_gradients,
    assert_overfits,
    fake_batch,
    model_with,
    params_of,
    randomise,
    tiny_backbone,
)

# the official code's totals (Swin-T 448, four PASCAL tasks), dynamic and static filter
OFFICIAL = {
    ("dynamic", 16): 3_557_502, ("dynamic", 32): 4_776_126, ("dynamic", 64): 7_379_262,
    ("static", 16): 3_532_350, ("static", 32): 4_670_526, ("static", 64): 6_946_878,
}


def expected_tadformer(rank: int, filter: str = "dynamic") -> int:
    ta_lora = 16 * rank * sum(SWIN_T_BLOCKS)  # qkv 4rC, proj 2rC, fc1 5rC, fc2 5rC
    task_layers = 3 * len(SWIN_T_STAGES)  # proj, fc1, fc2 of each stage's last block
    if filter == "dynamic":  # one per layer: 1x1 map r -> 9r with bias, sigma and mu (9r)
        filters = task_layers * (9 * rank * rank + 9 * rank + 2 * 9 * rank)
    else:  # one depthwise 3x3 per task and layer, with bias
        filters = task_layers * len(TASKS) * (9 * rank + rank)
    prompts = len(TASKS) * SWIN_T_STAGES[0]
    projections = sum(d * 2 * d for d in SWIN_T_STAGES[:3])
    gates = len(SWIN_T_STAGES)
    tpc_norms = sum(2 * d for d in SWIN_T_BLOCKS)
    return (ta_lora + filters + prompts + projections + gates + tpc_norms + SWIN_T_NORMS
            + SWIN_T_PATCH_CONV + SWIN_T_RELATIVE_POSITIONS + DECODERS)


def encoder_of(size: int = 64, **options) -> tuple[TADFormerEncoder, nn.Module]:
    backbone = tiny_backbone(size)
    return TADFormer(rank=4, **options).build_encoder(backbone, TASKS), backbone


def prompt_blocks(encoder) -> list[PromptBlock]:
    return [m for m in encoder.modules() if isinstance(m, PromptBlock)]


# --- counts and options -------------------------------------------------------------------


def test_counts_on_swin_tiny_pascal_are_the_official_breakdown():
    for (filter, rank), n in OFFICIAL.items():
        assert expected_tadformer(rank, filter) == n, (filter, rank)
    rows = params_of("method=tadformer", "method.rank=16,32,64", "method.filter=dynamic,static",
                     *PASCAL_SWIN_T)
    got = {(r["label"], r["paper_trainable_m"], r["encoder_mode"], r["decoders"]): r["trainable"]
           for r in rows}
    paper = {16: 3.56, 32: 4.78, 64: 7.38}
    assert got == {
        (f"tadformer{' static' if f == 'static' else ''} r={r}",
         paper[r] if f == "dynamic" else None, "task_streams", DECODERS): n
        for (f, r), n in OFFICIAL.items()
    }
    # the backbone alone, as the official code's breakdown gives it
    backbone = {(r["label"]): r["trainable"] - r["decoders"] for r in rows}
    assert backbone["tadformer r=16"] == 1_610_878
    assert backbone["tadformer static r=64"] == 5_000_254
    assert {r["label"]: r["paper_trainable_m"] for r in rows}["tadformer r=64"] == 7.38


def test_options_labels_and_invalid_values():
    assert TADFormer().options() == {"rank": 64, "scale": 4.0, "dropout": 0.05,
                                     "filter": "dynamic"}
    assert TADFormer(rank=16, filter="static").label == "tadformer static r=16"
    cfg = compose_all(expand(["method=tadformer"]))[0]
    assert cfg.method.filter == "dynamic" and cfg.method.rank == 64
    for override in ["method.rank=0", "method.dropout=1.5", "method.filter=sobel"]:
        with pytest.raises(UserError, match="method tadformer: "):
            compose_all(expand(["method=tadformer", override]))


# --- what trains, initial values ----------------------------------------------------------


def test_trainable_set_is_the_official_one_and_the_merging_stays_frozen_without_lora():
    encoder, _ = encoder_of()
    names = dict(encoder.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    frozen = set(names) - trainable
    own = (".lora.a", ".lora.b", ".filter.", "tpc_norm.", ".gate")
    kinds = {
        n for n in trainable
        if n == "prompts" or n.startswith(("prompt_up.", "backbone.patch_embed."))
        or any(k in n for k in own) or "relative_position_bias_table" in n
        or n.rsplit(".", 2)[-2] in ("norm1", "norm2", "norm")
    }
    assert kinds == trainable
    assert frozen == {n for n in names if n.endswith(("base.weight", "base.bias"))} | {
        f"backbone.stages.{s}.merge.reduction.weight" for s in range(3)
    }
    assert not any(isinstance(encoder.get_submodule(f"backbone.stages.{s}.merge.reduction"),
                              LoRALinear) for s in range(3))
    # the task layers are proj, fc1, fc2 of each stage's last block; qkv is shared everywhere
    task_layers = [n for n, m in encoder.named_modules() if isinstance(m, TaskAdaptedLinear)]
    assert task_layers == [f"backbone.stages.{s}.blocks.1.block.{layer}" for s in range(4)
                           for layer in ("attn.proj", "mlp.fc1", "mlp.fc2")]
    assert sum(isinstance(m, LoRALinear) for m in encoder.modules()) == 4 * 8
    assert sum(isinstance(m, LowRank) for m in encoder.modules()) == 4 * 8  # no task factors


def test_initial_values_follow_the_official_initialisation():
    encoder, _ = encoder_of()
    assert encoder.prompts.shape == (len(TASKS), 32)
    assert [tuple(up.weight.shape) for up in encoder.prompt_up] == [(64, 32), (128, 64),
                                                                   (256, 128)]
    assert all(up.bias is None for up in encoder.prompt_up)
    torch.testing.assert_close(encoder.prompt_up[2].weight.std().item(), 0.02, rtol=0.1,
                               atol=0)
    blocks = [m for m in encoder.modules() if isinstance(m, TaskAdaptingBlock)]
    assert len(blocks) == 4 and all(b.gate.item() == 0 and b.gate.dim() == 0 for b in blocks)
    assert all(m.b.abs().sum() == 0 for m in encoder.modules() if isinstance(m, LowRank))
    # N(1, 1) truncated to [-2, 2]: the mean of that truncated normal, computed here
    prompts = init_prompts_(torch.empty(200_000))
    assert prompts.min() >= -2 and prompts.max() <= 2
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: (1 + math.erf(z / math.sqrt(2))) / 2  # noqa: E731
    mean = 1 + (pdf(-3) - pdf(1)) / (cdf(1) - cdf(-3))  # bounds -3 and +1 sigma from 1
    assert abs(prompts.mean().item() - mean) < 0.01 and abs(mean - 0.717) < 1e-3
    # filters: PyTorch's convolution defaults, bound 1 / sqrt(fan in)
    conv = static_filter(64)
    assert conv.groups == 64 and conv.bias is not None
    assert 0.3 < conv.weight.abs().max() <= 1 / 3 and conv.bias.abs().max() <= 1 / 3
    dtf = DynamicTaskFilter(64)
    assert dtf.generator.weight.abs().max() <= 1 / 8 and dtf.generator.bias.abs().max() <= 1 / 8
    assert abs(dtf.sigma.std().item() - math.sqrt(2) / 3) < 0.07
    assert abs(dtf.mu.std().item() - 1) < 0.15


# --- prompts: where they are seen, how they change, what crosses merging ------------------


def _capture_block_inputs(encoder, x):
    inputs, tokens = {}, {}
    hooks = []
    for block in prompt_blocks(encoder):
        hooks.append(block.register_forward_pre_hook(
            lambda m, args: inputs.__setitem__(m, args)))
        hooks.append(block.block.attn.qkv.register_forward_pre_hook(
            lambda m, args, b=block: tokens.__setitem__(b, args[0])))
    outputs = {}
    hooks += [b.register_forward_hook(lambda m, _a, out: outputs.__setitem__(m, out))
              for b in prompt_blocks(encoder)]
    with torch.no_grad():
        encoder(x)
    for h in hooks:
        h.remove()
    return inputs, tokens, outputs


def test_prompts_are_prepended_to_every_window_of_every_block():
    encoder, _ = encoder_of()
    encoder.eval()
    randomise(encoder)
    x = torch.randn(2, 3, 64, 64)
    inputs, tokens, _ = _capture_block_inputs(encoder, x)
    assert len(tokens) == 8
    for block, (grid, p) in inputs.items():
        n, height, width, channels = grid.shape
        wh, ww = block.block.window_size
        windows = (height // wh) * (width // ww)
        assert p.shape == (2, len(TASKS), channels)
        seen = tokens[block].reshape(n, windows, len(TASKS) + wh * ww, channels)
        normed = block.block.norm1(p)
        for w in range(windows):  # the same normed prompts lead every window
            torch.testing.assert_close(seen[:, w, : len(TASKS)], normed)


def test_prompt_attention_has_no_bias_no_mask_no_residual_and_averages_the_windows():
    encoder, _ = encoder_of()
    encoder.eval()
    randomise(encoder)
    block = encoder.backbone.stages[0].blocks[0]  # 16 x 16 tokens, four 4 x 4 windows
    x, p = torch.randn(2, 16, 16, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        x1, p1 = block(x, p)
        # by hand: each window's prompts attend (no bias) to their 4 prompts + 16 patches
        blk = block.block
        normed, pn = blk.norm1(x), blk.norm1(p)
        rows = []
        for i in range(0, 16, 4):
            for j in range(0, 16, 4):
                tokens = torch.cat([pn, normed[:, i : i + 4, j : j + 4].reshape(2, 16, 32)], 1)
                q, k, v = blk.attn.qkv(tokens).chunk(3, dim=-1)  # one head
                weights = (q[:, :4] @ k.transpose(1, 2) / math.sqrt(32)).softmax(-1)
                rows.append(blk.attn.proj(weights @ v))
        a = torch.stack(rows).mean(0)
        torch.testing.assert_close(p1, p + blk.mlp(blk.norm2(a)))  # no attention residual
        # neither the relative-position bias nor the shift mask reaches the prompt rows
        shifted = encoder.backbone.stages[0].blocks[1]
        assert shifted.block.attn_mask is not None
        before = shifted.attend(x, p)[0]
        shifted.block.attn_mask.normal_()
        blk.attn.relative_position_bias_table.normal_()
        shifted.block.attn.relative_position_bias_table.normal_()
        after = shifted.attend(x, p)[0]
        torch.testing.assert_close(after[:, :4], before[:, :4])
        assert not torch.allclose(after[:, 4:], before[:, 4:])
        x2, p2 = block(x, p)
        torch.testing.assert_close(p2, p1)
        assert not torch.allclose(x2, x1)
        # image tokens attend to the prompts (new ones: a shift alone is normed away)
        assert not torch.allclose(block(x, torch.randn_like(p))[0], x2)


def test_prompts_cross_merging_only_through_their_projection():
    encoder, _ = encoder_of()
    encoder.eval()
    randomise(encoder)
    inputs, _, outputs = _capture_block_inputs(encoder, torch.randn(2, 3, 64, 64))
    stages = encoder.backbone.stages
    torch.testing.assert_close(inputs[stages[0].blocks[0]][1][0], encoder.prompts)
    for s in range(3):
        leaving = outputs[stages[s].blocks[1]][1]
        entering = inputs[stages[s + 1].blocks[0]][1]
        torch.testing.assert_close(entering, encoder.prompt_up[s](leaving), atol=0, rtol=0)
    assert len(encoder.prompt_up) == 3
    updates = [b.update_prompts for b in prompt_blocks(encoder)]
    assert updates == [True] * 7 + [False]  # the network's very last block leaves them
    last = stages[3].blocks[1]
    torch.testing.assert_close(outputs[last][1], inputs[last][1], atol=0, rtol=0)


# --- TPC, gate, task filters --------------------------------------------------------------


def test_tpc_weights_each_head_by_the_gelu_of_raw_prompt_logits():
    encoder, _ = encoder_of()
    block = encoder.backbone.stages[1].blocks[1]  # two heads of 32 channels
    x_o, raw = torch.randn(3, 16, 64), torch.randn(3, 2, 16)
    m = block.tpc(x_o, raw)
    for c in (0, 31, 32, 63):
        torch.testing.assert_close(m[:, :, c], F.gelu(raw[:, c // 32]) * x_o[:, :, c])


@pytest.mark.parametrize("stage", [0, 2])  # shifted, 16 windows / unshifted, one window
def test_skip_map_reads_the_channel_first_memory_as_the_official_code(stage):
    encoder, _ = encoder_of()
    block = encoder.backbone.stages[stage].blocks[1]
    (wh, ww), side, channels = block.block.window_size, 16 >> stage, 32 << stage
    per_row = side // wh
    windows = per_row * per_row
    m = torch.randn(2 * windows, wh * ww, channels)
    size = (side, side, side, side)
    got = block.skip_map(m, size)
    expected = torch.empty(2, side, side, channels)
    for b in range(2):
        for w in range(windows):
            for i in range(wh):
                for j in range(ww):
                    flat = (i * ww + j) * channels + torch.arange(channels)
                    row, col = (w // per_row) * wh + i, (w % per_row) * ww + j
                    expected[b, row, col] = m[b * windows + w, flat % (wh * ww),
                                              flat // (wh * ww)]
    shift = block.block.shift_size
    assert any(shift) == (stage == 0)
    torch.testing.assert_close(got, torch.roll(expected, shifts=shift, dims=(1, 2)))


def test_gate_mixes_the_skip_map_and_task_streams_equal_the_shared_one_at_init():
    encoder, _ = encoder_of()
    encoder.eval()
    block = encoder.backbone.stages[0].blocks[1]
    x, p = torch.randn(2, 16, 16, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        mixed, _ = block(x, p)
        block.gate.fill_(-1e4)  # g = 0 exactly: the streams before the gate
        plain, _ = block(x, p)
        assert isinstance(plain, TaskStreams)
        out, raw, size = block.attend(x, p)
        for i, task in enumerate(TASKS):
            assert torch.equal(plain.tasks[task], plain.shared)  # all B zero: identical
            skip = block.skip_map(block.tpc(out[:, 4:], raw[:, :, i, 4:]), size)
            torch.testing.assert_close(mixed.tasks[task], 0.5 * skip + 0.5 * plain.shared)
        assert not torch.allclose(mixed.tasks["semseg"], mixed.tasks["normals"])


def test_task_adapted_linear_reuses_the_shared_factors_with_a_filter_per_task():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    tasks = ["semseg", "sal"]
    for kind in ("static", "dynamic"):
        layer = TaskAdaptedLinear(base, rank=3, scale=2.0, dropout=0.0, tasks=tasks,
                                  filter=kind).eval()
        own = {n for n, p in layer.named_parameters() if p.requires_grad}
        assert {n for n in own if not n.startswith("filter.")} == {"lora.a", "lora.b"}
        randomise(layer)
        x, x_t = torch.randn(2, 4, 4, 6), {t: torch.randn(2, 4, 4, 6) for t in tasks}
        shared, out = layer.forward_tasks(x, x_t)
        torch.testing.assert_close(shared, base(x) + 2.0 * x @ layer.lora.a.T @ layer.lora.b.T)
        for t in tasks:
            z = (x_t[t] @ layer.lora.a.T).permute(0, 3, 1, 2)
            if kind == "static":
                conv = layer.filter[t]
                filtered = F.conv2d(z, conv.weight, conv.bias, padding=1, groups=3)
            else:  # one sample at a time
                filtered = torch.cat([F.conv2d(z[i : i + 1], layer.filter.kernels(
                    z[i : i + 1].permute(0, 2, 3, 1)), padding=1, groups=3) for i in range(2)])
            update = filtered.permute(0, 2, 3, 1) @ layer.lora.b.T * 2.0
            torch.testing.assert_close(out[t], base(x) + update)
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            layer.merge()
    assert isinstance(layer.filter, DynamicTaskFilter)  # one, shared by the tasks


def test_dynamic_filter_kernels_are_normalised_per_channel_then_scaled_and_shifted():
    torch.manual_seed(0)
    dtf = DynamicTaskFilter(2)
    z = torch.randn(3, 5, 5, 2)
    k = dtf.kernels(z).reshape(3, 2 * 9)
    raw = (z.mean(dim=(1, 2)) @ dtf.generator.weight.T + dtf.generator.bias).reshape(3, 2, 9)
    for s in range(3):
        for c in range(2):
            taps = raw[s, c]
            normal = (taps - taps.mean()) / (taps.std(unbiased=True) + 1e-10)
            torch.testing.assert_close(k[s, 9 * c : 9 * c + 9],
                                       normal * dtf.sigma[9 * c : 9 * c + 9]
                                       + dtf.mu[9 * c : 9 * c + 9])
    # a sample's kernels come from that sample alone
    batched = dtf(z)
    torch.testing.assert_close(batched[1:2], dtf(z[1:2]))


# --- the whole network -----------------------------------------------------------------


def test_swin_tiny_at_448_sees_53_tokens_per_window_and_gives_the_four_stage_maps():
    with torch.device("meta"):
        backbone = build_backbone(arch("swin_tiny"), 448, 0.0, load_weights=False)
        encoder = TADFormer(rank=16).build_encoder(backbone, TASKS)
        shapes = []
        hooks = [m.block.attn.qkv.register_forward_pre_hook(
            lambda _m, args: shapes.append(tuple(args[0].shape)))
            for m in prompt_blocks(encoder)]
        maps = encoder(torch.empty(1, 3, 448, 448))
    for h in hooks:
        h.remove()
    widths = [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    windows = [256] * 2 + [64] * 2 + [16] * 6 + [4] * 2
    assert shapes == [(w, 53, c) for w, c in zip(windows, widths)]
    assert [tuple(m.shape[1:]) for m in maps["sal"]] == [
        (192, 56, 56), (384, 28, 28), (768, 14, 14), (768, 14, 14)]


@pytest.mark.parametrize("filter", ["dynamic", "static"])
def test_frozen_parameters_get_no_gradient_and_every_used_trainable_one_does(filter):
    encoder, backbone = encoder_of(filter=filter)
    model = model_with(encoder, backbone)
    randomise(model)  # B != 0, so that A, the filters and the TPC norms see a signal
    assert_gradients(model, fake_batch(size=64), unused=TADFORMER_UNUSED)
    gates = [n for n, p in model.named_parameters() if n.endswith(".gate")]
    assert len(gates) == 4 and all(model.get_parameter(n).grad.abs() > 0 for n in gates)


def test_overfits_a_tiny_batch_and_counts_flops_without_gradients():
    encoder, backbone = encoder_of(size=32)
    model = model_with(encoder, backbone)
    assert_overfits(model, fake_batch(), steps=10, lr=3e-3, unused=TADFORMER_UNUSED)
    for name, p in model.named_parameters():  # the zero-initialised parts have moved
        if name.endswith((".lora.b", ".gate")):
            assert p.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        assert _flops(lambda: model(torch.randn(1, 3, 32, 32))) > 0
