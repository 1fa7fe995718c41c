"""Polyhistor and Polyhistor-Lite, with the Houlsby adapters whose placement they share
(VL-Adapter: tests/test_vl_adapter.py; BitFit: tests/test_bitfit.py)."""

import json

import pytest
import torch
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.losses import MultiTaskLoss
from benchmark.model import MultiTaskModel, build_decoders
from benchmark.params import count
from benchmark.params import main as params_main
from methods.adapter import HoulsbyAdapter
from methods.blocks.bottleneck import AdaptedBranch, Adapter
from methods.blocks.factor_heads import FactorHeads
from methods.blocks.hypernet import HyperEncoder, ScaledLinear, TaskWeight
from methods.polyhistor import Polyhistor, PolyhistorLite
from tests.helpers import (
    DECODERS,
    OUTPUTS,
    SWIN_T_BLOCKS,
    SWIN_T_STAGES,
    TASKS,
    assert_gradients,
    assert_overfits,
    blocky_batch,
    expected_adapter,
    tiny_backbone,
)

METHODS = {
    "adapter": HoulsbyAdapter,
    "polyhistor": Polyhistor,
    "polyhistor_lite": PolyhistorLite,
}


def _conditioning(embed_dim: int, hidden: int) -> int:
    sites = 2 * len(SWIN_T_BLOCKS)
    return (len(TASKS) + sites) * embed_dim + 2 * embed_dim * hidden + hidden


def expected_polyhistor(reduction=2, rank=16, embed_dim=128, hidden=97) -> int:
    # per stage: down (left d x r, right r x m, bias m) and up (m x r, r x d, d), each head
    # a linear layer from `hidden` (+ its bias)
    heads = sum(
        (hidden + 1) * (2 * rank + 1) * (d + d // reduction) for d in SWIN_T_STAGES
    )
    return _conditioning(embed_dim, hidden) + heads + DECODERS


def expected_polyhistor_lite(reduction=2, rank=16, embed_dim=128, hidden=889) -> int:
    # one template of 96 x 96 // reduction; an s x s kernel per matrix and site, s = d / 96
    template = (hidden + 1) * (2 * rank + 1) * (96 + 96 // reduction)
    scales = sum(2 * 2 * (d // 96) ** 2 for d in SWIN_T_BLOCKS)
    return _conditioning(embed_dim, hidden) + template + scales + DECODERS


EXPECTED = {  # trainable, its formula, the paper's count, the encoder mode
    "adapter": (10_613_696, expected_adapter, 11.24, "shared"),
    "polyhistor": (8_960_577, expected_polyhistor, 8.96, "per_task"),
    "polyhistor_lite": (6_408_897, expected_polyhistor_lite, 6.41, "per_task"),
}


def test_params_lists_the_family_with_the_counts_of_the_formulas(capsys):
    overrides = ["dataset=pascal_context", "backbone=swin_tiny", "method=" + ",".join(EXPECTED)]
    assert params_main([*overrides, "format=json"]) == 0
    rows = {row["method"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == set(EXPECTED)
    for method, (expected, formula, paper, mode) in EXPECTED.items():
        assert formula() == expected, method
        row = rows[method]
        assert row["trainable"] == expected and row["decoders"] == DECODERS, method
        assert row["paper_trainable_m"] == paper and row["encoder_mode"] == mode, method
    labels = {row["label"] for row in rows.values()}
    assert labels == {"adapter reduction=1", "polyhistor rank=16",
                      "polyhistor_lite rank=16"}


def test_options_change_the_count_as_the_formula_says():
    assert expected_adapter(2) == 6_296_192
    (cfg,) = compose_all(expand(["method=adapter", "method.reduction=2",
                                 "dataset=pascal_context", "backbone=swin_tiny"]))
    assert count(cfg)["trainable"] == expected_adapter(2)
    (cfg,) = compose_all(expand(["method=polyhistor_lite", "method.rank=8",
                                 "method.reduction=4", "dataset=pascal_context",
                                 "backbone=swin_tiny"]))
    assert count(cfg)["trainable"] == expected_polyhistor_lite(reduction=4, rank=8)


def _silence(encoder) -> None:
    """Zero every adapter's up-projection (generated ones: the heads of the up factors)."""
    with torch.no_grad():
        for name, module in encoder.named_modules():
            if isinstance(module, Adapter):
                module.up.weight.zero_()
                module.up.bias.zero_()
            if isinstance(module, FactorHeads) and name.endswith("up"):
                for head in (module.right, module.bias):
                    head.weight.zero_()
                    head.bias.zero_()


@pytest.mark.parametrize("name", ["adapter", "polyhistor", "polyhistor_lite"])
def test_zero_adapters_give_the_frozen_backbone_features(name):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tiny_backbone().eval()(x, ["x"])["x"]
        encoder = METHODS[name]().build_encoder(tiny_backbone(), TASKS).eval()
        out = encoder(x)
        assert any(not torch.equal(a, b) for a, b in zip(out["semseg"], expected))
        _silence(encoder)
        out = encoder(x)
    for task in TASKS:
        for a, b in zip(out[task], expected):
            torch.testing.assert_close(a, b)


def _model(name: str) -> MultiTaskModel:
    backbone = tiny_backbone()
    encoder = METHODS[name]().build_encoder(backbone, TASKS)
    return MultiTaskModel(encoder, build_decoders(backbone, OUTPUTS))


def _trainable_encoder_names(model) -> set[str]:
    return {n for n, p in model.encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", list(METHODS))
def test_frozen_parameters_get_no_gradient_and_trainable_ones_do(name):
    model = _model(name)
    assert_gradients(model, blocky_batch())
    trainable = _trainable_encoder_names(model)
    if name == "adapter":
        norms = {
            f"{m_name}.{p_name}"
            for m_name, m in model.encoder.named_modules() if isinstance(m, nn.LayerNorm)
            for p_name, _ in m.named_parameters()
        }
        adapters = {n for n, _ in model.encoder.named_parameters() if ".adapter." in n}
        assert trainable == norms | adapters and len(norms) == 2 * (2 * 8 + 3 + 1)
        assert sum(isinstance(m, AdaptedBranch) for m in model.modules()) == 2 * 8
    else:
        assert trainable == {
            n for n, _ in model.encoder.named_parameters() if n.startswith("generator.")
        }


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    assert_overfits(_model(name), blocky_batch(), steps=8, lr=1e-3)


@pytest.mark.parametrize("method", [Polyhistor, PolyhistorLite])
def test_polyhistor_tasks_differ_and_batching_matches_separate_passes(method):
    backbone = tiny_backbone().eval()
    encoder = method().build_encoder(backbone, TASKS)
    assert isinstance(encoder, HyperEncoder) and encoder.mode == "per_task"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        task_embedding = encoder.generator.embedding.task
        distinct = task_embedding.clone()
        task_embedding.copy_(distinct[:1].expand_as(distinct))
        same = encoder(x)
        task_embedding.copy_(distinct)
        out = encoder(x)
        encoder.tasks_per_pass = 3  # two chunks: tasks 0-2, then task 3
        chunked = encoder(x)
        for i, task in enumerate(TASKS):
            with encoder.weights.hold(encoder.generator()), encoder.context.bind(
                torch.full((2,), i)
            ):
                alone = backbone(x, ["x"])["x"]
            for a, b, c in zip(out[task], alone, chunked[task]):
                torch.testing.assert_close(a, b)
                torch.testing.assert_close(a, c)
    for a, b in zip(same["semseg"], same["normals"]):
        torch.testing.assert_close(a, b)
    for other in TASKS[1:]:
        assert not torch.allclose(out["semseg"][-1], out[other][-1])


@pytest.mark.parametrize("name", ["polyhistor", "polyhistor_lite"])
def test_one_adam_step_moves_generated_weights_at_the_pace_of_direct_ones(name):
    # Regression: with plain linear heads on the (fixed) conditioning vector z, one Adam
    # step moved every generated entry by ~lr * sum|z| (~55 lr for polyhistor, ~400 lr for
    # polyhistor_lite here), and in training the adapters overwrote the frozen features.
    torch.manual_seed(0)
    model = _model(name).train()
    generator = model.encoder.generator
    lr = 1e-3

    def factors() -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.clone() for pair in generator() for w in pair
                    for t in (w.left, w.right, w.bias)]

    before = factors()
    batch = blocky_batch()
    loss, _ = MultiTaskLoss(TASKS)(model(batch["image"]), batch)
    loss.backward()
    torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr).step()
    steps = [(a - b).abs().max().item() / lr for a, b in zip(factors(), before)]
    assert min(steps) > 0.1, steps  # they do train
    assert max(steps) < 10, steps  # a directly trained weight moves by lr


def test_scaled_linear_starts_as_a_linear_layer_of_its_std():
    torch.manual_seed(0)
    layer = ScaledLinear(400, 300, std=0.05)
    x = torch.randn(8, 400)
    torch.testing.assert_close(layer(x), x @ layer.effective_weight().T + layer.bias)
    assert abs(layer.effective_weight().std().item() - 0.05) < 2e-3
    assert layer.bias.abs().sum() == 0
    assert ScaledLinear(4, 3, std=0.0).weight.abs().sum() == 0


def test_task_weight_applies_the_kronecker_of_scale_and_factors_per_sample():
    g = torch.Generator().manual_seed(0)
    tasks, a, b, rank, p, q = 3, 4, 2, 3, 2, 3
    weight = TaskWeight(
        left=torch.randn(tasks, a, rank, generator=g),
        right=torch.randn(tasks, rank, b, generator=g),
        bias=torch.randn(tasks, q * b, generator=g),
        scale=torch.randn(p, q, generator=g),
    )
    dense = weight.matrix()
    for t in range(tasks):
        product = weight.left[t] @ weight.right[t]
        torch.testing.assert_close(dense[t], torch.kron(weight.scale, product))
    assert (weight.in_features, weight.out_features) == (p * a, q * b)
    x = torch.randn(5, 7, p * a, generator=g)
    ids = torch.tensor([2, 0, 1, 1, 2])
    expected = torch.einsum("bni,bio->bno", x, dense[ids]) + weight.bias[ids].unsqueeze(1)
    torch.testing.assert_close(weight.apply(x, ids), expected)
    plain = TaskWeight(dense, None, weight.bias)  # a whole matrix, no factors, no scale
    torch.testing.assert_close(plain.apply(x, ids), expected)


def test_generated_adapters_refuse_to_run_outside_their_encoder():
    backbone = tiny_backbone()
    encoder = Polyhistor().build_encoder(backbone, TASKS)
    with encoder.context.bind(torch.zeros(1, dtype=torch.long)), pytest.raises(
        RuntimeError, match="HyperEncoder"
    ):
        backbone(torch.randn(1, 3, 32, 32), ["x"])


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="reduction"):
        HoulsbyAdapter(reduction=0)
    with pytest.raises(ValueError, match="rank"):
        Polyhistor(rank=0)
    with pytest.raises(ValueError, match="template"):
        PolyhistorLite(reduction=64).build_encoder(tiny_backbone(), TASKS)
