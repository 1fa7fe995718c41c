"""LoRA (methods/lora.py) and the low-rank building blocks it shares (methods/blocks/lowrank.py,
methods/blocks/inject.py)."""

import copy

import pytest
import torch
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from methods.blocks.inject import inject
from methods.blocks.lowrank import LoRALinear, lora_layers, merge_lora
from methods.lora import LoRA
from tests.helpers import (
    DECODERS,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    TASKS,
    assert_gradients,
    assert_overfits,
    assert_same_features,
    fake_batch,
    model_with,
    params_of,
    randomise,
    tiny_backbone,
)

# --- building blocks ------------------------------------------------------------------


def test_lora_linear_starts_at_the_frozen_layer_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(12, 20)
    layer = LoRALinear(copy.deepcopy(base), rank=3, scale=2.0, dropout=0.1).eval()
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert layer.lora.a.requires_grad and layer.lora.b.requires_grad
    assert torch.count_nonzero(layer.lora.b) == 0 and layer.lora.a.abs().sum() > 0
    # A as nn.Linear initialises its weight: Kaiming-uniform (a = sqrt 5) -> bound 1 / sqrt(in)
    assert layer.lora.a.abs().max() <= 12 ** -0.5
    x = torch.randn(4, 7, 12)
    torch.testing.assert_close(layer(x), base(x))

    randomise(layer)
    expected = base(x) + 2.0 * x @ layer.lora.a.T @ layer.lora.b.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * layer.lora.b @ layer.lora.a)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.base(x), expected)  # the update now lives in W
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base.weight)


def test_inject_replaces_named_linears_once_and_rejects_unknown_names():
    net = nn.Sequential(nn.Linear(4, 4), nn.ModuleDict({"qkv": nn.Linear(4, 12)}))

    def wrap(linear):
        return LoRALinear(linear, rank=2)

    assert inject(net, ["qkv"], wrap) == ["1.qkv"]
    assert isinstance(net[1]["qkv"], LoRALinear) and isinstance(net[0], nn.Linear)
    with pytest.raises(ValueError, match="qkv"):  # already wrapped: nothing left to adapt
        inject(net, ["qkv"], wrap)
    with pytest.raises(ValueError, match="fc9"):
        inject(net, ["fc9"], wrap)


# --- the method ---------------------------------------------------------------------


def test_default_lora_count_on_swin_tiny_pascal_is_closest_to_the_paper():
    rows = params_of("method=lora", *PASCAL_SWIN_T)
    # decoders + r (C + 3C) on qkv and r (C + C) on proj per block, r = 35: 2,873,984
    # (paper: 2.87 M, see methods/lora.py); the block widths of Swin-T sum to 4,416
    assert sum(SWIN_T_BLOCKS) == 4_416
    assert rows[0]["trainable"] == DECODERS + 6 * 35 * 4_416 == 2_873_984
    assert rows[0]["label"] == "lora r=35" and rows[0]["encoder_mode"] == "shared"
    # decoders + 4 C r per block on qkv
    rows = params_of("method=lora", "method.rank=8", "method.targets=[qkv]", *PASCAL_SWIN_T)
    assert rows[0]["trainable"] == DECODERS + 4 * 4_416 * 8


def test_invalid_options_fail_when_the_config_is_composed():
    with pytest.raises(UserError, match="unknown targets"):
        compose_all(expand(["method=lora", "method.targets=[qkv,fc3]"]))
    with pytest.raises(UserError, match="scale or alpha"):
        compose_all(expand(["method=lora", "method.scale=2", "method.alpha=16"]))
    assert LoRA(rank=8, alpha=16).scale == 2.0
    assert LoRA().options() == {
        "rank": 35, "targets": ["qkv", "proj"], "scale": 4.0, "alpha": None, "dropout": 0.05
    }


def test_zero_initialised_lora_gives_the_frozen_backbone_features():
    backbone = tiny_backbone()
    plain = copy.deepcopy(backbone).eval()
    encoder = LoRA(rank=4).build_encoder(backbone, TASKS).eval()
    assert len(lora_layers(encoder)) == 2 * 8  # qkv and proj of the 8 blocks
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_features(encoder(x), plain(x, TASKS))


def test_only_lora_factors_and_decoders_train_and_all_of_them_get_gradients():
    backbone = tiny_backbone(64)
    model = model_with(LoRA(rank=4).build_encoder(backbone, TASKS), backbone)
    randomise(model)
    for name, p in model.encoder.named_parameters():
        assert p.requires_grad == (".lora." in name), name
    assert_gradients(model, fake_batch(size=64))


def test_merged_lora_gives_the_same_features():
    backbone = tiny_backbone()
    encoder = LoRA(rank=4, targets=["qkv", "proj", "fc2"]).build_encoder(backbone, TASKS).eval()
    randomise(encoder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = encoder(x)
        assert merge_lora(encoder) == 3 * 8
        after = encoder(x)
        for layer in lora_layers(encoder):
            layer.merged = False  # the update is in W now: counting it again must change things
        doubled = encoder(x)
    assert_same_features(before, after)
    assert not torch.allclose(before["semseg"][-1], doubled["semseg"][-1])


def test_lora_overfits_a_tiny_batch():
    backbone = tiny_backbone()
    model = model_with(LoRA(rank=4).build_encoder(backbone, TASKS), backbone)
    assert_overfits(model, fake_batch(), steps=10, lr=3e-3)
    assert all(layer.lora.b.abs().sum() > 0 for layer in lora_layers(model))
