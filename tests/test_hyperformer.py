"""HyperFormer: counts, the released configuration's structure and initialisation, the
generated adapter by hand, batched task passes, what trains, gradients, overfitting."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from methods.blocks.bottleneck import AdaptedBranch
from methods.blocks.hypernet import HyperEncoder
from methods.blocks.stage_hypernet import GeneratedAdapter, bottleneck_of
from methods.hyperformer import HyperFormer
from tests.helpers import (
    DECODERS,
    PASCAL_SWIN_T,
    SWIN_T_NORMS,
    SWIN_T_STAGES,
    TASKS,
    assert_gradients,
    assert_overfits,
    fake_batch,
    model_with,
    params_of,
    tiny_backbone,
)

SWIN_T_DEPTHS = [2, 2, 6, 2]


def expected_hyperformer(bottlenecks, t=64, h=128, tp=64, tasks=4) -> int:
    # per stage: layer table, projector 2t -> h -> t' and its LayerNorm, and for each of the
    # two positions six heads from t' (+ bias): down d m + m, up m d + d, gamma d, beta d
    total = tasks * t + SWIN_T_NORMS + DECODERS
    for d, m, blocks in zip(SWIN_T_STAGES, bottlenecks, SWIN_T_DEPTHS):
        total += blocks * t + (2 * t * h + h) + (h * tp + tp) + 2 * tp
        total += 2 * (tp + 1) * (2 * d * m + m + 3 * d)
    return total


def test_counts_for_swin_t_on_pascal_follow_the_formula():
    fitted = expected_hyperformer([33, 66, 132, 264])
    assert fitted == 72_709_214 and 72_770_000 - fitted == 60_786  # 0.08 % below the paper
    assert [bottleneck_of(d, 2.91) for d in SWIN_T_STAGES] == [33, 66, 132, 264]
    (row,) = params_of("method=hyperformer", *PASCAL_SWIN_T)
    assert (row["trainable"], row["label"]) == (fitted, "hyperformer reduction=2.91")
    assert (row["paper_trainable_m"], row["encoder_mode"]) == (72.77, "per_task")
    assert row["decoders"] == DECODERS
    # the official reduction 32, and other widths
    (row,) = params_of("method=hyperformer", "method.reduction=32", *PASCAL_SWIN_T)
    assert row["trainable"] == expected_hyperformer([3, 6, 12, 24]) == 9_002_714
    (row,) = params_of("method=hyperformer", "method.reduction=4", "method.hidden=16",
                       "method.embed_dim=8", "method.projected=12", *PASCAL_SWIN_T)
    assert row["trainable"] == expected_hyperformer([24, 48, 96, 192], t=8, h=16, tp=12)


def test_invalid_options_are_refused():
    assert HyperFormer().options() == {
        "reduction": 2.91, "embed_dim": 64, "hidden": 128, "projected": 64,
        "tasks_per_pass": None,
    }
    for bad in ("method.reduction=0", "method.reduction=true", "method.hidden=0",
                "method.projected=1.5", "method.tasks_per_pass=0"):
        with pytest.raises(UserError, match=r"method hyperformer: |method\.\w+ must "):
            compose_all(expand(["method=hyperformer", bad]))
    with pytest.raises(ValueError, match="no bottleneck"):
        HyperFormer(reduction=100).build_encoder(tiny_backbone(), TASKS)


def test_structure_and_initialisation_are_the_released_configuration():
    torch.manual_seed(0)
    encoder = HyperFormer().build_encoder(tiny_backbone(), TASKS)
    assert isinstance(encoder, HyperEncoder) and encoder.mode == "per_task"
    generator = encoder.generator
    assert tuple(generator.task.shape) == (4, 64)
    assert [tuple(s.layer.shape) for s in generator.stages] == [(2, 64)] * 4
    for stage in generator.stages:
        first, act, second = stage.projector
        assert (first.in_features, first.out_features) == (128, 128)
        assert isinstance(act, nn.ReLU)
        assert (second.in_features, second.out_features) == (128, 64)
        assert stage.norm.normalized_shape == (64,) and stage.norm.eps == 1e-6
        assert set(stage.heads) == {"attn", "mlp"}
    linears = [m for m in generator.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 * (2 + 2 * 6)
    big = torch.cat([m.weight.flatten() for m in linears])
    assert abs(big.std().item() - 0.01) < 5e-4 and abs(big.mean().item()) < 5e-4
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    # every adapter of every block is generated, with its LayerNorm's gamma and beta
    backbone = encoder.backbone
    for block in backbone.blocks():
        for branch in (block.drop_path1, block.drop_path2):
            assert isinstance(branch, AdaptedBranch)
            assert isinstance(branch.adapter, GeneratedAdapter)
    generated = generator()
    assert len(generated) == 2 * 8
    widths = [32] * 4 + [64] * 4 + [128] * 4 + [256] * 4
    for (down, up, gamma, beta), d in zip(generated, widths):
        m = bottleneck_of(d, 2.91)
        assert down.left.shape == (4, d, m) and down.bias.shape == (4, m)
        assert up.left.shape == (4, m, d) and up.bias.shape == (4, d)
        assert gamma.shape == beta.shape == (4, d)
    # I is layer-normalised (|I|^2 ~ 64), so generated entries start with std ~ 0.08 and
    # gamma with mean ~ 0: small adapters, not the identity
    gammas = torch.cat([g.flatten() for _, _, g, _ in generated]).detach()
    assert 0.06 < gammas.std().item() < 0.1 and abs(gammas.mean().item()) < 0.01


def test_generated_adapter_is_the_official_formula_by_hand():
    torch.manual_seed(0)
    encoder = HyperFormer().build_encoder(tiny_backbone(), TASKS)
    generator = encoder.generator
    stage = generator.stages[1]
    with torch.no_grad():
        generated = generator()
        # site 5: stage 1, block 0, after the MLP; task 2
        z = torch.cat([generator.task[2], stage.layer[0]])
        first, _, second = stage.projector
        i = stage.norm(second(torch.relu(first(z))))
        heads = stage.heads["mlp"]
        w_down = heads.down(i).view(64, 22)
        w_up = heads.up(i).view(22, 64)
        y = torch.randn(3, 5, 64)
        u = F.gelu(y @ w_down + heads.down_bias(i), approximate="tanh") @ w_up + heads.up_bias(i)
        u = (u - u.mean(-1, keepdim=True)) / torch.sqrt(u.var(-1, unbiased=False, keepdim=True)
                                                         + 1e-5)
        expected = y + heads.gamma(i) * u + heads.beta(i)
        adapter = encoder.backbone.stages[1].blocks[0].drop_path2.adapter
        assert adapter.index == 5
        with encoder.weights.hold(generated), encoder.context.bind(torch.full((3,), 2)):
            got = adapter(y)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_tasks_are_batched_and_zero_norm_heads_give_the_frozen_backbone():
    torch.manual_seed(0)
    backbone = tiny_backbone().eval()
    encoder = HyperFormer().build_encoder(backbone, TASKS)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = encoder(x)
        for i, task in enumerate(TASKS):
            with encoder.weights.hold(encoder.generator()), encoder.context.bind(
                torch.full((2,), i)
            ):
                alone = backbone(x, ["x"])["x"]
            for a, b in zip(out[task], alone):
                torch.testing.assert_close(a, b)
        assert not torch.allclose(out["semseg"][-1], out["normals"][-1])
        plain = tiny_backbone().eval()(x, ["x"])["x"]
        assert not torch.allclose(out["semseg"][0], plain[0])
        for stage in encoder.generator.stages:
            for heads in stage.heads.values():
                for p in (*heads.gamma.parameters(), *heads.beta.parameters()):
                    p.zero_()
        out = encoder(x)
    for task in TASKS:
        for a, b in zip(out[task], plain):
            torch.testing.assert_close(a, b)


def test_the_hypernetwork_and_every_backbone_layernorm_train_and_get_gradients():
    backbone = tiny_backbone()
    model = model_with(HyperFormer().build_encoder(backbone, TASKS), backbone)
    names = dict(model.encoder.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    norms = {
        f"{m_name}.{p_name}"
        for m_name, m in model.encoder.named_modules()
        if isinstance(m, nn.LayerNorm) and m_name.startswith("backbone.")
        for p_name, _ in m.named_parameters()
    }
    assert "backbone.patch_embed.norm.weight" in norms
    assert "backbone.stages.0.merge.norm.bias" in norms
    assert trainable == {n for n in names if n.startswith("generator.")} | norms
    assert_gradients(model, fake_batch())


def test_overfits_a_tiny_batch():
    backbone = tiny_backbone()
    model = model_with(HyperFormer().build_encoder(backbone, TASKS), backbone)
    assert_overfits(model, fake_batch(), steps=10, lr=1e-3)
