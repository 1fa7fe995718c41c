"""MTLoRA and MTLoRA+ (methods/mtlora.py): counts, task streams, trainability, merging."""

import copy

import pytest
import torch
import torch.nn.functional as F

from methods.blocks.lowrank import LoRALinear, MultiTaskLoRALinear, lora_layers, merge_lora
from methods.blocks.task_streams import TaskStreamBlock
from methods.mtlora import MTLoRA, MTLoRAPlus
from tests.helpers import (
    MTLORA_UNUSED,
    ONE_TOKEN_TABLES,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    SWIN_T_STAGES,
    TASKS,
    assert_gradients,
    assert_overfits,
    assert_same_features,
    expected_mtlora,
    fake_batch,
    model_with,
    params_of,
    randomise,
    tiny_backbone,
)

METHODS = [MTLoRA, MTLoRAPlus]


def ts_updates(module):
    """The task-specific (TS-LoRA) updates inside `module`."""
    return [lora for m in module.modules() if isinstance(m, MultiTaskLoRALinear)
            for lora in m.task_lora.values()]


def perturb(updates, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in updates:
            lora.b.copy_(torch.randn(lora.b.shape, generator=g) * 0.05)


def shared_streams(encoder, x):
    """The features of every task, and the shared stream each stage passes on."""
    shared = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: shared.append(out.shared))
        for block in encoder.modules() if isinstance(block, TaskStreamBlock)
    ]
    with torch.no_grad():
        features = encoder(x)
    for h in hooks:
        h.remove()
    return features, shared


def test_trainable_counts_on_swin_tiny_pascal_are_exactly_the_official_ones():
    # the formula against the counts of the paper and the official code
    official = {
        ("mtlora", 16): 4_953_146,
        ("mtlora", 32): 6_083_642,
        ("mtlora", 64): 8_344_634,
        ("mtlora_plus", 16): 3_469_370,
        ("mtlora_plus", 32): 4_664_378,
        ("mtlora_plus", 64): 7_054_394,
    }
    for (method, rank), n in official.items():
        assert expected_mtlora(rank, plus=method == "mtlora_plus") == n, (method, rank)
    rows = params_of("method=mtlora,mtlora_plus", "method.rank=16,32,64", *PASCAL_SWIN_T)
    got = {(r["method"], r["label"]): r["trainable"] for r in rows}
    assert got == {
        **{("mtlora", f"mtlora r={r}"): expected_mtlora(r, plus=False) for r in (16, 32, 64)},
        **{("mtlora_plus", f"mtlora+ r={r}"): expected_mtlora(r, plus=True)
           for r in (16, 32, 64)},
    }
    assert all(r["encoder_mode"] == "task_streams" for r in rows)
    assert [r["paper_trainable_m"] for r in rows[:3]] == [4.95, 6.08, 8.34]


def test_options_and_labels():
    method = MTLoRA(rank=32, task_rank=8)
    assert method.label == "mtlora r=32 task_r=8" and method.paper_trainable_m is None
    assert method.options() == {"rank": 32, "task_rank": 8, "scale": 4.0, "dropout": 0.05,
                                "dora": False}
    assert MTLoRAPlus(rank=64).label == "mtlora+ r=64"


@pytest.mark.parametrize("method", METHODS)
def test_zero_initialised_updates_give_the_frozen_backbone_features(method):
    backbone = tiny_backbone()
    plain = copy.deepcopy(backbone).eval()
    encoder = method(rank=4, task_rank=2).build_encoder(backbone, TASKS).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_features(encoder(x), plain(x, TASKS))  # every task stream, every stage


def test_one_encoder_pass_serves_every_task():
    backbone = tiny_backbone()
    encoder = MTLoRA(rank=4, task_rank=2).build_encoder(backbone, TASKS)
    calls = []
    for module in (backbone.patch_embed, *(m for m in encoder.modules()
                                           if isinstance(m, TaskStreamBlock))):
        module.register_forward_hook(lambda m, _i, _o: calls.append(m))
    qkv = backbone.stages[0].blocks[-1].block.attn.qkv
    qkv.register_forward_hook(lambda m, _i, _o: calls.append(m))
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1 + 4 + 1  # patch embedding, four last blocks, one attention
    assert set(features) == set(TASKS) and all(len(f) == 4 for f in features.values())


def test_task_stream_block_follows_the_mtlora_equations():
    """The last block against a reference computed from timm's own block with dense,
    merged deltas: a shifted block (8x8 tokens, window 4) with a mask."""
    tasks = ["semseg", "sal"]
    backbone = tiny_backbone()
    ref = copy.deepcopy(backbone.stages[0].blocks[-1]).eval()
    assert any(ref.shift_size)
    MTLoRA(rank=4, task_rank=2).build_encoder(backbone, tasks)
    block = backbone.stages[0].blocks[-1].eval()
    randomise(block)
    with torch.no_grad():
        ref.attn.qkv.weight += block.block.attn.qkv.delta_weight()
    proj, fc1, fc2 = block.proj, block.block.mlp.fc1, block.block.mlp.fc2
    x = torch.randn(2, 8, 8, 32)

    def attention(delta):  # timm's attention with proj weight W + delta
        b = copy.deepcopy(ref)
        b.attn.proj.weight.data += delta
        return b._attn(b.norm1(x))

    with torch.no_grad():
        out = block(x)
        shared_ref = copy.deepcopy(ref)
        for layer, mt in ((shared_ref.attn.proj, proj), (shared_ref.mlp.fc1, fc1),
                          (shared_ref.mlp.fc2, fc2)):
            layer.weight += mt.shared.delta_weight()
        torch.testing.assert_close(out.shared, shared_ref(x), atol=1e-5, rtol=1e-4)

        a = x + attention(proj.shared.delta_weight())
        hidden = F.gelu(F.linear(ref.norm2(a), ref.mlp.fc1.weight + fc1.shared.delta_weight(),
                                 ref.mlp.fc1.bias))
        for t in tasks:
            a_t = x + attention(proj.task_lora[t].delta_weight())
            h_t = F.gelu(ref.mlp.fc1(ref.norm2(a))
                         + F.linear(ref.norm2(a_t), fc1.task_lora[t].delta_weight()))
            out_t = a_t + ref.mlp.fc2(hidden) + F.linear(h_t, fc2.task_lora[t].delta_weight())
            torch.testing.assert_close(out.tasks[t], out_t, atol=1e-5, rtol=1e-4)


def test_shared_stream_ignores_ts_lora_and_tasks_differ_only_through_it():
    backbone = tiny_backbone()
    encoder = MTLoRA(rank=4, task_rank=2).build_encoder(backbone, TASKS).eval()
    randomise(encoder)  # TA-LoRA and TS-LoRA non-zero
    for lora in ts_updates(encoder):
        torch.nn.init.zeros_(lora.b)
    x = torch.randn(2, 3, 32, 32)
    plain = copy.deepcopy(tiny_backbone()).eval()(x, TASKS)

    # TS-LoRA zero: every task sees the same features, adapted (not the plain backbone's)
    same, shared = shared_streams(encoder, x)
    for task in TASKS[1:]:
        assert_same_features({task: same[task]}, {task: same[TASKS[0]]}, atol=0)
    assert not torch.allclose(same["semseg"][0], plain["semseg"][0])

    # TS-LoRA of stage 0 only: stage 0 features differ per task, later stages do not
    perturb(ts_updates(backbone.stages[0]), seed=1)
    first, shared_first = shared_streams(encoder, x)
    for a, b in zip(shared, shared_first, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(first["semseg"][0], first["sal"][0])
    for task in TASKS:
        for s in range(1, 4):
            torch.testing.assert_close(first[task][s], same[task][s], atol=0, rtol=0)

    # every TS-LoRA random: the shared stream is still unchanged, every stage differs per task
    perturb(ts_updates(encoder), seed=2)
    differ, shared_all = shared_streams(encoder, x)
    for a, b in zip(shared, shared_all, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for s in range(4):
        assert not torch.allclose(differ["semseg"][s], differ["normals"][s])


@pytest.mark.parametrize("method", METHODS)
def test_trainable_set_and_gradients(method):
    backbone = tiny_backbone(64)
    model = model_with(method(rank=4, task_rank=2).build_encoder(backbone, TASKS), backbone)
    randomise(model)
    adapt_merging = method is MTLoRAPlus
    for name, p in model.encoder.named_parameters():
        low_rank = ".lora." in name or ".shared." in name or ".task_lora." in name
        if ".reduction." in name and not low_rank:
            assert p.requires_grad != adapt_merging, name
        elif name.endswith(("base.weight", "base.bias")):
            assert not p.requires_grad, name  # qkv, proj, fc1, fc2 (and MTLoRA+ reductions)
        else:  # LoRA, norms, patch embedding, relative-position tables
            assert p.requires_grad, name
    assert_gradients(model, fake_batch(size=64), unused=MTLORA_UNUSED)


def test_ta_lora_merges_into_the_frozen_weights():
    """The TA-only layers (all but proj/fc1/fc2 of the last blocks) merge exactly; the
    multi-task layers stay as they are (their task outputs exclude the shared update)."""
    backbone = tiny_backbone()
    encoder = MTLoRAPlus(rank=4, task_rank=2).build_encoder(backbone, TASKS).eval()
    randomise(encoder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = encoder(x)
        merged = merge_lora(encoder)
        after = encoder(x)
    # 4 per block but the last of each stage, its qkv, and the three merging reductions
    assert merged == 4 * 4 + 4 + 3
    assert all(layer.merged for layer in lora_layers(encoder))
    assert_same_features(before, after)


@pytest.mark.parametrize("method", METHODS)
def test_overfits_a_tiny_batch(method):
    backbone = tiny_backbone()
    model = model_with(method(rank=4, task_rank=2).build_encoder(backbone, TASKS), backbone)
    assert_overfits(model, fake_batch(), steps=10, lr=3e-3, unused=MTLORA_UNUSED + ONE_TOKEN_TABLES)
    for name, p in model.named_parameters():
        if name.endswith(".b") and not name.startswith(MTLORA_UNUSED):
            assert p.abs().sum() > 0, name  # every used B has left zero
    assert any(isinstance(m, LoRALinear) for m in model.modules())


# --- with DoRA (`method.dora=true`; the DoRA layers: tests/test_dora.py) ---------------


def dora_magnitudes(plus: bool) -> int:
    # one per output of qkv (3C), proj (C), fc1 (4C), fc2 (C) in every block; MTLoRA+ also
    # adapts the merging reductions (4C -> 2C) of the first three stages
    reductions = sum(2 * d for d in SWIN_T_STAGES[:3]) if plus else 0
    return sum(9 * d for d in SWIN_T_BLOCKS) + reductions


def test_mtlora_counts_without_dora_stay_exact_and_dora_adds_the_magnitudes():
    rows = params_of("method=mtlora,mtlora_plus", "method.rank=16,32,64", "method.dora=false",
                     *PASCAL_SWIN_T)
    got = {(r["method"], r["label"]): r["trainable"] for r in rows}
    assert got == {
        **{("mtlora", f"mtlora r={r}"): expected_mtlora(r, plus=False) for r in (16, 32, 64)},
        **{("mtlora_plus", f"mtlora+ r={r}"): expected_mtlora(r, plus=True)
           for r in (16, 32, 64)},
    }
    assert dora_magnitudes(plus=False) == 39_744 and dora_magnitudes(plus=True) == 41_088
    rows = params_of("method=mtlora,mtlora_plus", "method.rank=16,64", "method.dora=true",
                     *PASCAL_SWIN_T)
    got = {(r["method"], r["label"]): r["trainable"] for r in rows}
    assert got == {
        (method, f"{label} dora r={r}"): expected_mtlora(r, plus) + dora_magnitudes(plus)
        for method, label, plus in (("mtlora", "mtlora", False), ("mtlora_plus", "mtlora+", True))
        for r in (16, 64)
    }
    assert all(r["paper_trainable_m"] is None and r["encoder_mode"] == "task_streams"
               for r in rows)
