"""VPT-shallow and VPT-deep: counts, the prompted block against a hand computation, what
crosses the merging, batch pairing, what trains, initial scales, overfitting."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from benchmark.model import MultiTaskModel, build_decoders
from methods.blocks.prompts import (
    PromptedWindowAttention,
    ShallowPromptEncoder,
    merge_prompts,
    prompted_block,
)
from methods.vpt import VPTDeep, VPTShallow
from tests.helpers import (
    DECODERS,
    OUTPUTS,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    TASKS,
    assert_gradients,
    assert_overfits,
    blocky_batch,
    params_of,
    tiny_backbone,
)

TINY_WIDTHS = [32, 64, 128, 256]  # swin_micro's stages


def expected_vpt(deep: bool, prompts: int = 200) -> int:
    # deep: one (prompts x width) set per block of every stage; shallow: one set of the
    # first stage's width (the later stages' prompts are computed from it)
    return prompts * (sum(SWIN_T_BLOCKS) if deep else SWIN_T_BLOCKS[0]) + DECODERS


def test_counts_for_swin_t_on_pascal_follow_the_formulas():
    assert expected_vpt(False) == 1_965_824 and expected_vpt(True) == 2_829_824
    rows = {r["method"]: r for r in params_of("method=vpt_shallow,vpt_deep", *PASCAL_SWIN_T)}
    for name, deep, paper in (("vpt_shallow", False, 2.57), ("vpt_deep", True, 3.43)):
        row = rows[name]
        assert row["trainable"] == expected_vpt(deep) and row["decoders"] == DECODERS
        assert row["label"] == f"{name} prompts=200"
        assert (row["paper_trainable_m"], row["encoder_mode"]) == (paper, "shared")
    for name, deep in (("vpt_shallow", False), ("vpt_deep", True)):
        (row,) = params_of(f"method={name}", "method.num_prompts=50", *PASCAL_SWIN_T)
        assert row["trainable"] == expected_vpt(deep, 50)


# --- the prompted block by hand -----------------------------------------------------------


def _region(i: int, size: int, window: int, shift: int) -> int:
    """Swin's shift region of row (or column) i of the shifted map."""
    return 0 if i < size - window else 1 if i < size - shift else 2


def reference_block(block: nn.Module, x: torch.Tensor, z: torch.Tensor):
    """The official prompted block, image by image and window by window, with each window
    paired with its own image's prompts: x (B, H, W, C), z (B, P, C)."""
    attn = block.attn
    batch, h, w, c = x.shape
    p = z.shape[1]
    ws = block.window_size[0]
    s = block.shift_size[0]
    heads = attn.num_heads
    table = attn.relative_position_bias_table  # ((2 ws - 1)^2, heads)
    xs, zs = [], []
    for b in range(batch):
        seq = torch.cat([z[b], x[b].reshape(h * w, c)])
        u = block.norm1(seq)
        uz, ut = u[:p], u[p:].reshape(h, w, c)
        ut = torch.roll(ut, (-s, -s), (0, 1))  # shifted frame
        patch_out = torch.zeros(h, w, c)
        prompt_out = torch.zeros(p, c)
        count = 0
        for wi in range(0, h, ws):
            for wj in range(0, w, ws):
                pos = [(i, j) for i in range(wi, wi + ws) for j in range(wj, wj + ws)]
                tokens = torch.cat([uz, torch.stack([ut[i, j] for i, j in pos])])
                n = len(tokens)
                bias = torch.zeros(heads, n, n)
                for a, (ia, ja) in enumerate(pos):
                    for k, (ib, jb) in enumerate(pos):
                        dy, dx = ia - ib + ws - 1, ja - jb + ws - 1
                        bias[:, p + a, p + k] = table[dy * (2 * ws - 1) + dx]
                        if s and (_region(ia, h, ws, s), _region(ja, w, ws, s)) != (
                            _region(ib, h, ws, s), _region(jb, w, ws, s)
                        ):
                            bias[:, p + a, p + k] -= 100.0
                q, k_, v = attn.qkv(tokens).reshape(n, 3, heads, -1).permute(1, 2, 0, 3)
                logits = q @ k_.transpose(-1, -2) * attn.scale + bias
                out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(n, -1)
                out = attn.proj(out)
                prompt_out += out[:p]
                count += 1
                for a, (i, j) in enumerate(pos):
                    patch_out[(i + s) % h, (j + s) % w] = out[p + a]
        seq = seq + torch.cat([prompt_out / count, patch_out.reshape(h * w, c)])
        seq = seq + block.mlp(block.norm2(seq))
        zs.append(seq[:p])
        xs.append(seq[p:].reshape(h, w, c))
    return torch.stack(xs), torch.stack(zs)


def test_prompted_block_is_the_official_block_with_each_window_paired_with_its_image():
    torch.manual_seed(0)
    backbone = tiny_backbone().eval()
    blocks = backbone.stages[0].blocks  # 8 x 8 tokens, four 4 x 4 windows
    assert blocks[0].shift_size[0] == 0 and blocks[1].shift_size[0] == 2
    x = torch.randn(2, 8, 8, 32)
    z = torch.randn(2, 3, 32)  # different prompts per image (as from block 2 on)
    with torch.no_grad():
        for block in blocks:
            got_x, got_z = prompted_block(block, x, z)
            want_x, want_z = reference_block(block, x, z)
            torch.testing.assert_close(got_x, want_x, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got_z, want_z, atol=1e-5, rtol=1e-4)
            # each image alone gives the same: the samples of a batch are not coupled
            alone_x, alone_z = prompted_block(block, x[1:], z[1:])
            torch.testing.assert_close(got_x[1:], alone_x, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(got_z[1:], alone_z, atol=1e-6, rtol=1e-5)


def test_shallow_prompts_cross_every_block_and_every_merging():
    torch.manual_seed(0)
    encoder = VPTShallow(num_prompts=3).build_encoder(tiny_backbone(), TASKS).eval()
    assert isinstance(encoder, ShallowPromptEncoder)
    backbone = encoder.backbone
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, stage_prompts = encoder.forward_with_prompts(images)
        assert [tuple(z.shape) for z in stage_prompts] == [(2, 3, d) for d in TINY_WIDTHS]
        # the network's input prompts are the parameter itself, for every image
        torch.testing.assert_close(stage_prompts[0][1], encoder.prompts)
        # run stage 0 by hand: the prompts feed block 2 and then the merging as four copies
        x = backbone.patch_embed(images)
        z = encoder.prompts.expand(2, -1, -1)
        for block in backbone.stages[0].blocks:
            x, z = prompted_block(block, x, z)
        merge = backbone.stages[0].merge
        norm = merge.norm
        normed = F.layer_norm(z, (32,), eps=norm.eps)  # 4 copies standardise as one
        by_hand = torch.cat([normed] * 4, -1) * norm.weight + norm.bias
        torch.testing.assert_close(stage_prompts[1], merge.reduction(by_hand))
        torch.testing.assert_close(maps[0], merge(x).permute(0, 3, 1, 2))
        assert not torch.allclose(stage_prompts[1], merge_prompts(merge, encoder.prompts))
        # the last stage has no merging: nothing is done to its prompts
        assert merge_prompts(backbone.stages[3].merge, z) is z
        # the prompts reach every stage's output, and every token of the first one
        before = encoder(images)["semseg"]
        encoder.prompts.add_(0.5 * torch.randn_like(encoder.prompts))
        after = encoder(images)["semseg"]
    for a, b in zip(before, after):
        assert (a - b).abs().amax(dim=1).min() > 0  # every position of every map changes
    # every task gets the same maps (one shared pass)
    out = encoder(images)
    assert all(out[t] is out["semseg"] for t in TASKS)


def test_deep_prompts_are_keys_and_values_of_their_own_block_only():
    deep = VPTDeep(num_prompts=3).build_encoder(tiny_backbone(), TASKS).backbone
    sets = [b.attn.prompts for b in deep.blocks()]
    assert all(isinstance(b.attn, PromptedWindowAttention) for b in deep.blocks())
    assert len({id(p) for p in sets}) == 8
    assert [p.shape[1] for p in sets] == [32, 32, 64, 64, 128, 128, 256, 256]
    # the blocks' norm1 is used by the prompts, not registered a second time
    plain = len(list(tiny_backbone().named_parameters()))
    assert len(list(deep.named_parameters(remove_duplicate=False))) == plain + 8
    # hiding the prompts gives the frozen backbone back; they are seen by every window
    x = torch.randn(2, 3, 32, 32)
    encoder = VPTDeep().build_encoder(tiny_backbone(), TASKS).eval()
    with torch.no_grad():
        expected = tiny_backbone().eval()(x, ["x"])["x"]
        block = encoder.backbone.stages[0].blocks[0]
        tokens = encoder.backbone.patch_embed(x)
        seen = block(tokens)
        for m in encoder.modules():
            if isinstance(m, PromptedWindowAttention):
                m.prompts_visible = False
        hidden = block(tokens)
        out = encoder(x)
    assert ((seen - hidden).abs().amax(dim=-1) > 1e-5).all()  # every token of every window
    for a, b in zip(out["semseg"], expected):
        torch.testing.assert_close(a, b)


def test_every_prompt_set_starts_with_the_first_stage_bound():
    bound = math.sqrt(6 / (3 * 4 * 4 + 32))  # fan-in 3 x 4 x 4, swin_micro's C_0 = 32
    torch.manual_seed(0)
    deep = VPTDeep(num_prompts=50).build_encoder(tiny_backbone(), TASKS).backbone
    shallow = VPTShallow(num_prompts=50).build_encoder(tiny_backbone(), TASKS)
    sets = [b.attn.prompts for b in deep.blocks()] + [shallow.prompts]
    for p in sets:  # also the 256-wide sets of the last stage
        assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def _model(cls, **options) -> MultiTaskModel:
    backbone = tiny_backbone()
    return MultiTaskModel(cls(**options).build_encoder(backbone, TASKS),
                          build_decoders(backbone, OUTPUTS))


@pytest.mark.parametrize("cls", [VPTShallow, VPTDeep])
def test_only_the_prompts_train_and_all_of_them_get_gradients(cls):
    model = _model(cls, num_prompts=3)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    if cls is VPTShallow:
        assert trainable == {"prompts"}
    else:
        assert len(trainable) == 8 and all(n.endswith(".attn.prompts") for n in trainable)
    assert_gradients(model, blocky_batch())


@pytest.mark.parametrize("cls", [VPTShallow, VPTDeep])
def test_overfits_a_tiny_batch(cls):
    torch.manual_seed(0)
    assert_overfits(_model(cls, num_prompts=4), blocky_batch(), steps=8, lr=1e-2)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="num_prompts"):
        VPTDeep(num_prompts=0)
    with pytest.raises(UserError,
                       match=r"method vpt_shallow: num_prompts|method\.num_prompts must "):
        compose_all(expand(["method=vpt_shallow", "method.num_prompts=2.5"]))
