"""VL-Adapter (methods/vl_adapter.py): its count, identity with silenced adapters, what
trains, overfitting, invalid options."""

import json

import pytest
import torch
from torch import nn

from benchmark.model import MultiTaskModel, build_decoders
from benchmark.params import main as params_main
from methods.blocks.bottleneck import Adapter
from methods.vl_adapter import VLAdapter
from tests.helpers import (
    DECODERS,
    OUTPUTS,
    TASKS,
    assert_gradients,
    assert_overfits,
    blocky_batch,
    expected_adapter,
    tiny_backbone,
)

METHODS = {
    "vl_adapter": VLAdapter,
}


EXPECTED = {  # trainable, its formula, the paper's count, the label
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


def _silence_adapters(encoder) -> None:
    """Zero every adapter's up-projection."""
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, Adapter):
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
        _silence_adapters(encoder)
        out = encoder(x)
    for task in TASKS:
        for a, b in zip(out[task], expected):
            torch.testing.assert_close(a, b)


def _model(name: str, **options) -> MultiTaskModel:
    backbone = tiny_backbone()
    encoder = METHODS[name](**options).build_encoder(backbone, TASKS)
    return MultiTaskModel(encoder, build_decoders(backbone, OUTPUTS))


@pytest.mark.parametrize("name", list(METHODS))
def test_frozen_parameters_get_no_gradient_and_trainable_ones_do(name):
    model = _model(name)
    assert_gradients(model, blocky_batch())
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    norms = {
        f"{m_name}.{p_name}"
        for m_name, m in model.encoder.named_modules() if isinstance(m, nn.LayerNorm)
        for p_name, _ in m.named_parameters()
    }
    adapters = {n for n in dict(model.encoder.named_parameters()) if ".adapter." in n}
    assert trainable == norms | adapters
    assert adapters


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    assert_overfits(_model(name), blocky_batch(), steps=8, lr=1e-3)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="reduction"):
        VLAdapter(reduction=0)
