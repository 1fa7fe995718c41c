"""Compacter and Compacter++: counts, the PHM algebra, the official initialisation, the
bottleneck check, what trains, near-identity at the start, overfitting."""

import math

import pytest
import torch
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from benchmark.model import MultiTaskModel, build_decoders
from benchmark.params import main as params_main
from methods.blocks.bottleneck import AdaptedBranch
from methods.blocks.phm import PHMAdapter, PHMLinear, phm_rule
from methods.compacter import Compacter, CompacterPlusPlus
from tests.helpers import (
    DECODERS,
    OUTPUTS,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    SWIN_T_NORMS,
    TASKS,
    assert_gradients,
    assert_overfits,
    blocky_batch,
    params_of,
    tiny_backbone,
)


def expected_compacter(per_block: int, n: int = 4, reduction: int = 8) -> int:
    # a PHM layer in -> out: fast factors in + out, bias out; adapter d -> m -> d: 3 (d + m);
    # the slow n x n x n rule once; the backbone's LayerNorms
    adapters = sum(per_block * 3 * (d + d // reduction) for d in SWIN_T_BLOCKS)
    return adapters + n**3 + SWIN_T_NORMS + DECODERS


def test_counts_for_swin_t_on_pascal_follow_the_formulas():
    assert expected_compacter(2) == 1_999_728 and expected_compacter(1) == 1_984_824
    # the breakdown's other settings: adapters and rule alone
    assert expected_compacter(2, 4, 24) - SWIN_T_NORMS - DECODERS == 27_664
    assert expected_compacter(1, 4, 24) - SWIN_T_NORMS - DECODERS == 13_864
    assert expected_compacter(2, 3, 32) - SWIN_T_NORMS - DECODERS == 27_351
    rows = {r["method"]: r for r in params_of("method=compacter,compacter_pp", *PASCAL_SWIN_T)}
    for name, per_block, paper in (("compacter", 2, 2.78), ("compacter_pp", 1, 2.66)):
        row = rows[name]
        assert row["trainable"] == expected_compacter(per_block)
        assert row["label"] == f"{name} n=4 reduction=8" and row["decoders"] == DECODERS
        assert (row["paper_trainable_m"], row["encoder_mode"]) == (paper, "shared")
    cases = [
        (["method=compacter", "method.reduction=24"], expected_compacter(2, 4, 24)),
        (["method=compacter_pp", "method.phm_dim=3", "method.reduction=32"],
         expected_compacter(1, 3, 32)),
        (["method=compacter", "method.reduction=1"], expected_compacter(2, 4, 1)),
    ]
    for overrides, expected in cases:
        (row,) = params_of(*overrides, *PASCAL_SWIN_T)
        assert row["trainable"] == expected, overrides
    # even the largest bottleneck stays far below the paper's counts
    assert expected_compacter(2, 4, 1) == 2_022_912 < 2.78e6 - 0.7e6


def test_a_bottleneck_not_divisible_by_phm_dim_is_refused_in_one_line(capsys):
    # the official reduction 32 leaves 96 // 32 = 3 in Swin-T's first stage
    with pytest.raises(UserError, match=r"method compacter: phm_dim 4 must divide .* "
                                        r"width 96 with reduction 32 gives bottleneck 3"):
        compose_all(expand(["method=compacter", "method.reduction=32", *PASCAL_SWIN_T]))
    # swin_micro (the synthetic default): 32 // 24 = 1
    assert params_main(["method=compacter_pp", "method.reduction=24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bottleneck 1" in err
    with pytest.raises(ValueError, match="phm_dim 3 must divide"):
        Compacter(phm_dim=3).build_encoder(tiny_backbone(), TASKS)  # 32 is not a multiple
    for bad in (["method.phm_dim=0"], ["method.reduction=1.5"]):
        with pytest.raises(UserError, match=r"method compacter: |method\.\w+ must "):
            compose_all(expand(["method=compacter", *bad]))


def test_phm_layer_is_the_sum_of_kronecker_products_and_shares_its_rule():
    torch.manual_seed(0)
    rule = phm_rule(4)
    layer = PHMLinear(8, 12, rule)
    other = PHMLinear(12, 8, rule)
    with torch.no_grad():
        rule.normal_()
        layer.bias.normal_()
    dense = sum(
        torch.kron(rule[i], torch.outer(layer.left[i], layer.right[i])) for i in range(4)
    )
    torch.testing.assert_close(layer.matrix(), dense)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(layer(x), x @ dense + layer.bias)
    assert other.rule is layer.rule
    both = nn.ModuleList([layer, other])
    assert sum(p.numel() for p in both.parameters()) == 64 + (8 + 12 + 12) + (12 + 8 + 8)
    with pytest.raises(ValueError, match="phm_dim"):
        PHMLinear(6, 8, rule)


def test_initialisation_is_the_official_one():
    torch.manual_seed(0)
    rule = phm_rule(8)  # 512 entries
    assert abs(rule.std().item() - 1e-4) < 1e-5 and abs(rule.mean().item()) < 1e-5
    layer = PHMLinear(768, 96, rule)  # s_i of 96 entries, t_i of 12
    s_bound = math.sqrt(2) * math.sqrt(6 / (1 + 96))
    t_bound = math.sqrt(2) * math.sqrt(6 / (12 + 1))
    for factor, bound in ((layer.left, s_bound), (layer.right, t_bound)):
        assert factor.abs().max() <= bound and factor.abs().max() > 0.9 * bound
        assert abs(factor.std().item() - bound / math.sqrt(3)) < 0.1 * bound  # uniform
    assert torch.equal(layer.bias, torch.zeros(96))
    assert layer.matrix().abs().max() < 2e-3  # the rule keeps W about zero


def test_placement_one_shared_rule_no_layernorm_inside_and_tanh_gelu():
    full = Compacter().build_encoder(tiny_backbone(), TASKS).backbone
    plus = CompacterPlusPlus().build_encoder(tiny_backbone(), TASKS).backbone
    for backbone, attn_side in ((full, True), (plus, False)):
        for block in backbone.blocks():
            assert isinstance(block.drop_path2.adapter, PHMAdapter)
            assert isinstance(block.drop_path1, AdaptedBranch) == attn_side
        rules = {id(m.rule) for m in backbone.modules() if isinstance(m, PHMLinear)}
        assert len(rules) == 1  # one set of slow matrices for the whole network
        for adapter in (m for m in backbone.modules() if isinstance(m, PHMAdapter)):
            assert not any(isinstance(m, nn.LayerNorm) for m in adapter.modules())
            assert adapter.act.approximate == "tanh"
            assert adapter.down.out_features == adapter.down.in_features // 8


def test_starts_almost_as_the_frozen_backbone_and_exactly_with_zero_up_projections():
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tiny_backbone().eval()(x, ["x"])["x"]
        encoder = Compacter().build_encoder(tiny_backbone(), TASKS).eval()
        out = encoder(x)["semseg"]
        for a, b in zip(out, expected):
            assert not torch.equal(a, b)
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
        for m in encoder.modules():
            if isinstance(m, PHMAdapter):
                m.up.right.zero_()
        for a, b in zip(encoder(x)["semseg"], expected):
            torch.testing.assert_close(a, b)


def _model(cls) -> MultiTaskModel:
    backbone = tiny_backbone()
    return MultiTaskModel(cls().build_encoder(backbone, TASKS), build_decoders(backbone, OUTPUTS))


@pytest.mark.parametrize("cls", [Compacter, CompacterPlusPlus])
def test_adapters_and_every_backbone_layernorm_train_and_get_gradients(cls):
    model = _model(cls)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    norms = {
        f"{m_name}.{p_name}"
        for m_name, m in model.encoder.named_modules() if isinstance(m, nn.LayerNorm)
        for p_name, _ in m.named_parameters()
    }
    adapters = {n for n in dict(model.encoder.named_parameters()) if ".adapter." in n}
    assert trainable == norms | adapters and adapters
    assert "backbone.patch_embed.norm.weight" in norms
    assert "backbone.stages.0.merge.norm.bias" in norms
    assert_gradients(model, blocky_batch())


@pytest.mark.parametrize("cls", [Compacter, CompacterPlusPlus])
def test_overfits_a_tiny_batch(cls):
    torch.manual_seed(0)
    assert_overfits(_model(cls), blocky_batch(), steps=8, lr=1e-3)
