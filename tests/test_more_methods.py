"""VPT (shallow, deep), Compacter, Compacter++ and VL-Adapter."""

import json

import pytest
import torch
from torch import nn

from benchmark.model import MultiTaskModel, build_decoders
from benchmark.params import count
from benchmark.params import main as params_main
from benchmark.run import compose_all, expand
from methods.adapters import AdaptedBranch, Adapter, PHMAdapter, PHMLinear, phm_rule
from methods.compacter import Compacter, CompacterPlusPlus
from methods.prompts import PromptedWindowAttention
from methods.vl_adapter import VLAdapter
from methods.vpt import VPTDeep, VPTShallow
from tests.helpers import (
    DECODERS,
    OUTPUTS,
    SWIN_T_BLOCKS,
    SWIN_T_NORMS,
    TASKS,
    assert_gradients,
    assert_overfits,
)
from tests.test_adapters import _batch, expected_adapter
from tests.test_model import tiny_backbone

METHODS = {
    "vpt_shallow": VPTShallow,
    "vpt_deep": VPTDeep,
    "compacter": Compacter,
    "compacter_pp": CompacterPlusPlus,
    "vl_adapter": VLAdapter,
}


def expected_vpt(deep: bool, prompts: int = 200) -> int:
    # one (prompts x width) set per block of every stage, or one set of stage 1's width
    return prompts * (sum(SWIN_T_BLOCKS) if deep else SWIN_T_BLOCKS[0]) + DECODERS


def expected_compacter(per_block: int, n: int = 4, reduction: int = 1) -> int:
    # a PHM layer in -> out: fast factors in + out, bias out; adapter d -> m -> d: 3 (d + m);
    # the slow n x n x n rule once; the LayerNorms
    adapters = sum(per_block * 3 * (d + d // reduction) for d in SWIN_T_BLOCKS)
    return adapters + n**3 + SWIN_T_NORMS + DECODERS


EXPECTED = {  # trainable, its formula, the paper's count, the label
    "vpt_shallow": (1_965_824, lambda: expected_vpt(False), 2.57, "vpt_shallow prompts=200"),
    "vpt_deep": (2_829_824, lambda: expected_vpt(True), 3.43, "vpt_deep prompts=200"),
    "compacter": (2_022_912, lambda: expected_compacter(2), 2.78,
                  "compacter n=4 reduction=1"),
    "compacter_pp": (1_996_416, lambda: expected_compacter(1), 2.66,
                     "compacter_pp n=4 reduction=1"),
    "vl_adapter": (4_857_024, lambda: expected_adapter(3), 4.74, "vl_adapter reduction=3"),
}


def test_params_gives_the_counts_of_the_formulas_for_swin_t_on_pascal(capsys):
    overrides = ["dataset=pascal_context", "backbone=swin_tiny", "method=" + ",".join(EXPECTED)]
    assert params_main([*overrides, "format=json"]) == 0
    rows = {row["method"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == set(EXPECTED)
    for method, (expected, formula, paper, label) in EXPECTED.items():
        assert formula() == expected, method
        row = rows[method]
        assert row["trainable"] == expected and row["decoders"] == DECODERS, method
        assert row["paper_trainable_m"] == paper and row["encoder_mode"] == "shared", method
        assert row["label"] == label


def test_options_change_the_count_as_the_formula_says():
    swin_t = ["dataset=pascal_context", "backbone=swin_tiny"]
    cases = [
        (["method=vpt_deep", "method.num_prompts=10"], expected_vpt(True, 10)),
        (["method=vpt_shallow", "method.num_prompts=50"], expected_vpt(False, 50)),
        (["method=compacter", "method.phm_dim=8", "method.reduction=4"],
         expected_compacter(2, n=8, reduction=4)),
        (["method=compacter_pp", "method.phm_dim=12"], expected_compacter(1, n=12)),
    ]
    for overrides, expected in cases:
        (cfg,) = compose_all(expand([*overrides, *swin_t]))
        assert count(cfg)["trainable"] == expected, overrides


def _hide_prompts(encoder) -> None:
    for module in encoder.modules():
        if isinstance(module, PromptedWindowAttention):
            module.prompts_visible = False


def _silence_adapters(encoder) -> None:
    """Zero every adapter's up-projection (for PHM adapters: its fast t_i and its bias)."""
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, PHMAdapter):
                module.up.right.zero_()
                module.up.bias.zero_()
            elif isinstance(module, Adapter):
                module.up.weight.zero_()
                module.up.bias.zero_()


@pytest.mark.parametrize("name", list(METHODS))
def test_disabled_prompts_or_zero_adapters_give_the_frozen_backbone_features(name):
    # at 32 px the first stage's second block runs shifted windows with timm's mask
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tiny_backbone().eval()(x, ["x"])["x"]
        encoder = METHODS[name]().build_encoder(tiny_backbone(), TASKS).eval()
        out = encoder(x)
        assert all(not torch.allclose(a, b) for a, b in zip(out["semseg"][:1], expected[:1]))
        if name.startswith("vpt"):
            _hide_prompts(encoder)
        else:
            _silence_adapters(encoder)
        out = encoder(x)
    for task in TASKS:
        for a, b in zip(out[task], expected):
            torch.testing.assert_close(a, b)


def test_vpt_prompts_sit_where_the_method_says():
    shallow = VPTShallow(num_prompts=3).build_encoder(tiny_backbone(), TASKS).backbone
    deep = VPTDeep(num_prompts=3).build_encoder(tiny_backbone(), TASKS).backbone
    # shallow: the blocks of stage 1 only, one shared parameter
    prompted = [isinstance(b.attn, PromptedWindowAttention) for b in shallow.blocks()]
    assert prompted == [True, True] + [False] * 6
    first, second = shallow.stages[0].blocks
    assert first.attn.prompts is second.attn.prompts
    assert tuple(first.attn.prompts.shape) == (3, 32)
    # deep: every block, one set each, of the block's width
    sets = [b.attn.prompts for b in deep.blocks()]
    assert len({id(p) for p in sets}) == 8
    assert [p.shape[1] for p in sets] == [32, 32, 64, 64, 128, 128, 256, 256]
    # the blocks' norm1 is used by the prompts, not registered a second time
    plain = len(list(tiny_backbone().named_parameters()))
    assert len(list(deep.named_parameters(remove_duplicate=False))) == plain + 8
    assert len(list(shallow.named_parameters(remove_duplicate=False))) == plain + 2
    assert len(list(shallow.named_parameters())) == plain + 1


def test_prompts_are_seen_by_every_window():
    # stage 1 at 32 px: 8 x 8 tokens in four 4 x 4 windows; hiding the prompts must change
    # the output of every token of the first block, in every window
    encoder = VPTShallow(num_prompts=2).build_encoder(tiny_backbone(), TASKS).eval()
    backbone = encoder.backbone
    block = backbone.stages[0].blocks[0]
    with torch.no_grad():
        tokens = backbone.patch_embed(torch.randn(1, 3, 32, 32))
        seen = block(tokens)
        block.attn.prompts_visible = False
        hidden = block(tokens)
    changed = (seen - hidden).abs().amax(dim=-1)  # (1, 8, 8): one value per token
    assert changed.shape == (1, 8, 8) and (changed > 1e-5).all()


def test_phm_layer_is_the_sum_of_kronecker_products_and_shares_its_rule():
    torch.manual_seed(0)
    rule = phm_rule(4)
    layer = PHMLinear(8, 12, rule)
    other = PHMLinear(12, 8, rule)
    with torch.no_grad():
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


def test_compacter_places_adapters_as_its_variant_says():
    full = Compacter().build_encoder(tiny_backbone(), TASKS).backbone
    plus = CompacterPlusPlus().build_encoder(tiny_backbone(), TASKS).backbone
    for backbone, attn_side in ((full, True), (plus, False)):
        for block in backbone.blocks():
            assert isinstance(block.drop_path2, AdaptedBranch)
            assert isinstance(block.drop_path1, AdaptedBranch) == attn_side
        rules = {id(m.rule) for m in backbone.modules() if isinstance(m, PHMLinear)}
        assert len(rules) == 1  # one set of slow matrices for the whole network
    with pytest.raises(ValueError, match="phm_dim"):
        Compacter(phm_dim=3).build_encoder(tiny_backbone(), TASKS)


def _model(name: str, **options) -> MultiTaskModel:
    backbone = tiny_backbone()
    encoder = METHODS[name](**options).build_encoder(backbone, TASKS)
    return MultiTaskModel(encoder, build_decoders(backbone, OUTPUTS))


@pytest.mark.parametrize("name", list(METHODS))
def test_frozen_parameters_get_no_gradient_and_trainable_ones_do(name):
    model = _model(name)
    assert_gradients(model, _batch())
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    norms = {
        f"{m_name}.{p_name}"
        for m_name, m in model.encoder.named_modules() if isinstance(m, nn.LayerNorm)
        for p_name, _ in m.named_parameters()
    }
    adapters = {n for n in dict(model.encoder.named_parameters()) if ".adapter." in n}
    if name.startswith("vpt"):
        assert all(n.endswith(".attn.prompts") for n in trainable)
        assert len(trainable) == (8 if name == "vpt_deep" else 1)
    else:
        assert trainable == norms | adapters
        assert adapters


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    assert_overfits(_model(name), _batch(), steps=8, lr=1e-3)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="num_prompts"):
        VPTDeep(num_prompts=0)
    with pytest.raises(ValueError, match="phm_dim"):
        Compacter(phm_dim=0)
    with pytest.raises(ValueError, match="reduction"):
        CompacterPlusPlus(reduction=1.5)
    with pytest.raises(ValueError, match="reduction"):
        VLAdapter(reduction=0)
