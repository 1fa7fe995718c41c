"""DoRA (methods/dora.py) and DoRA's layers inside MTLoRA (`method.dora=true`): counts,
identity at zero init, trainability, the DoRA layers' algebra, overfitting, the CLI (the
counts of MTLoRA with DoRA: tests/test_mtlora.py)."""

import copy

import pytest
import torch
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from benchmark.records import iter_records
from methods.blocks.lowrank import (
    DoRALinear,
    LowRank,
    MultiTaskDoRALinear,
    MultiTaskLoRALinear,
    lora_layers,
    merge_lora,
    row_norm,
)
from methods.dora import DoRA
from methods.mtlora import MTLoRA, MTLoRAPlus
from tests.helpers import (
    DECODERS,
    MTLORA_UNUSED,
    ONE_TOKEN_TABLES,
    PASCAL_SWIN_T,
    SMALL_DATA,
    SWIN_T_BLOCKS,
    TASKS,
    assert_gradients,
    assert_overfits,
    assert_same_features,
    fake_batch,
    model_with,
    params_of,
    randomise,
    run_cli,
    tiny_backbone,
)


def expected_dora(rank=35) -> int:
    # LoRA on qkv (C -> 3C) and proj (C -> C): r (C + 3C) + r (C + C); a magnitude per
    # output: 3C + C
    return sum(rank * 6 * d + 4 * d for d in SWIN_T_BLOCKS) + DECODERS


def test_trainable_counts_on_swin_tiny_pascal_follow_the_formulas():
    rows = {r["method"]: r for r in params_of("method=dora", *PASCAL_SWIN_T)}
    assert expected_dora() == 2_891_648  # lora's 2,873,984 + 17,664 magnitudes
    expected = {
        "dora": (expected_dora(), "dora r=35", None, "shared"),
    }
    for method, (trainable, label, paper, mode) in expected.items():
        row = rows[method]
        assert (row["trainable"], row["label"]) == (trainable, label), method
        assert (row["paper_trainable_m"], row["encoder_mode"]) == (paper, mode), method
        assert row["decoders"] == DECODERS


def test_options_change_the_counts_as_the_formulas_say():
    rows = params_of("method=dora", "method.rank=8", *PASCAL_SWIN_T)
    assert rows[0]["trainable"] == expected_dora(8)


def test_options_and_invalid_values():
    assert MTLoRA(dora=True).options() == {
        "rank": 16, "task_rank": 4, "scale": 4.0, "dropout": 0.05, "dora": True
    }
    assert DoRA(rank=8, alpha=16).scale == 2.0
    bad = {
        "dora": ["method.rank=0", "method.dropout=1.5", "method.targets=[qkv,fc3]"],
        "mtlora": ["method.dora=maybe"],
    }
    for method, overrides in bad.items():
        for override in overrides:
            with pytest.raises(UserError, match=rf"method {method}: |method\.\w+ must "):
                compose_all(expand([f"method={method}", override]))


# --- identity at zero init, trainability, overfitting ------------------------------------


BUILD = {  # tiny versions of each method, by name
    "dora": lambda: DoRA(rank=4),
    "mtlora+dora": lambda: MTLoRA(rank=4, task_rank=2, dora=True),
    "mtlora++dora": lambda: MTLoRAPlus(rank=4, task_rank=2, dora=True),
}


@pytest.mark.parametrize("name", list(BUILD))
def test_zero_initialised_updates_give_the_frozen_backbone_features(name):
    x = torch.randn(2, 3, 32, 32)
    plain = tiny_backbone().eval()
    encoder = BUILD[name]().build_encoder(tiny_backbone(), TASKS).eval()
    with torch.no_grad():
        assert_same_features(encoder(x), plain(x, TASKS))  # every task, every stage


def _unused(name: str, size: int = 64) -> tuple[str, ...]:
    """MTLoRA's exception (MTLORA_UNUSED) in the methods built on its task streams, and at 32 px
    the last stage's relative-position tables, which those methods train (ONE_TOKEN_TABLES)."""
    if name == "dora":
        return ()
    return MTLORA_UNUSED + (ONE_TOKEN_TABLES if size == 32 else ())


def _trainable(model) -> set[str]:
    return {n for n, p in model.encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", list(BUILD))
def test_frozen_parameters_get_no_gradient_and_every_trainable_one_does(name):
    backbone = tiny_backbone(64)
    model = model_with(BUILD[name]().build_encoder(backbone, TASKS), backbone)
    randomise(model)  # B != 0 (LoRA, TS-LoRA, TA-modules), so that A and the rest see a signal
    names = dict(model.encoder.named_parameters())
    trainable = _trainable(model)
    if name == "dora":
        assert trainable == {n for n in names if ".lora." in n or n.endswith(".magnitude")}
        assert sum(n.endswith(".magnitude") for n in trainable) == 2 * 8
    else:  # the MTLoRA family: nothing frozen in it becomes trainable, plus its own parts
        frozen_linears = {n for n in names if n.endswith(("base.weight", "base.bias"))}
        assert not trainable & frozen_linears
        reductions = {n for n in names if ".reduction." in n and n in trainable}
        if name == "mtlora+dora":  # MTLoRA trains the merging reductions in full
            assert len(reductions) == 3 and all(n.endswith("reduction.weight") for n in reductions)
        else:  # MTLoRA+ adapts them
            assert all(".lora." in n or n.endswith(".magnitude") for n in reductions)
        magnitudes = {n for n in trainable if n.endswith(".magnitude")}
        dora_layers = [m for m in model.modules()
                       if isinstance(m, (DoRALinear, MultiTaskDoRALinear))]
        assert len(magnitudes) == len(dora_layers) == 4 * 8 + (3 if "++" in name else 0)
    # MTLoRA's exception: the shared fc2 update of the very last block reaches no decoder;
    # its magnitude (DoRA) is shared with the task outputs and does train.
    assert_gradients(model, fake_batch(size=64), unused=_unused(name))
    if name == "mtlora+dora":
        assert names["backbone.stages.3.blocks.1.block.mlp.fc2.magnitude"].grad is not None


@pytest.mark.parametrize("name", list(BUILD))
def test_overfits_a_tiny_batch(name):
    backbone = tiny_backbone()
    model = model_with(BUILD[name]().build_encoder(backbone, TASKS), backbone)
    assert_overfits(model, fake_batch(), steps=10, lr=3e-3, unused=_unused(name, size=32))
    for pname, p in model.named_parameters():  # the zero-initialised parts have moved
        if pname.endswith((".b", ".kernels.weight")) and not pname.startswith(MTLORA_UNUSED):
            assert p.abs().sum() > 0, pname


# --- DoRA layers ------------------------------------------------------------------------


def _dora_reference(base: nn.Linear, m: torch.Tensor, lora: LowRank, x: torch.Tensor):
    direction = base.weight + lora.delta_weight()
    weight = m.unsqueeze(1) * direction / direction.norm(dim=1, keepdim=True)
    return nn.functional.linear(x, weight, base.bias)


def test_dora_linear_starts_frozen_follows_the_decomposition_and_merges():
    torch.manual_seed(0)
    base = nn.Linear(12, 20)
    layer = DoRALinear(copy.deepcopy(base), rank=3, scale=2.0, dropout=0.1).eval()
    assert lora_layers(nn.Sequential(layer)) == [layer]  # a LoRA layer: merge_lora finds it
    assert layer.magnitude.requires_grad and not layer.base.weight.requires_grad
    # the magnitude is the norm of each output's weights: one per output feature
    torch.testing.assert_close(layer.magnitude, base.weight.norm(dim=1))
    assert row_norm(base.weight).shape == (20,)
    x = torch.randn(4, 7, 12)
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)  # B = 0: exactly frozen

    randomise(layer)
    with torch.no_grad():
        layer.magnitude.mul_(torch.linspace(0.5, 1.5, 20))
    expected = _dora_reference(base, layer.magnitude, layer.lora, x)
    torch.testing.assert_close(layer(x), expected)
    effective = layer.base.weight + layer.delta_weight()  # W + delta is the layer's weight
    torch.testing.assert_close(nn.functional.linear(x, effective, base.bias), expected)
    assert merge_lora(nn.Sequential(layer)) == 1 and layer.merged
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.base(x), expected)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base.weight)
    torch.testing.assert_close(layer(x), expected)


def test_dora_magnitude_and_factors_train_and_the_norm_is_a_constant():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(8, 6), rank=2, scale=1.0)
    x = torch.randn(5, 8)
    layer(x).pow(2).sum().backward()
    assert layer.magnitude.grad.abs().min() > 0  # every output's magnitude trains
    assert layer.lora.b.grad.abs().sum() > 0
    assert layer.base.weight.grad is None
    # the norm is detached (Sec. 4.3 of the paper): the gradient of B is that of
    # ratio * (W x + B A x) with the ratio held fixed
    randomise(layer)
    layer.zero_grad()
    out = layer(x)
    out.pow(2).sum().backward()
    ratio = layer.ratio().detach()
    b = layer.lora.b.detach().clone().requires_grad_(True)
    y = (nn.functional.linear(x, layer.base.weight)
         + nn.functional.linear(x @ layer.lora.a.detach().T, b)) * ratio + layer.base.bias
    y.pow(2).sum().backward()
    torch.testing.assert_close(layer.lora.b.grad, b.grad)
    # doubling the magnitude doubles the output without its bias
    with torch.no_grad():
        before = layer(x) - layer.base.bias
        layer.magnitude.mul_(2)
        torch.testing.assert_close(layer(x) - layer.base.bias, 2 * before)


def test_dora_dropout_follows_peft_by_default_and_the_update_style_on_request():
    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    x = torch.randn(4, 5, 12)
    peft = DoRALinear(copy.deepcopy(base), rank=3, scale=2.0, dropout=0.3, dropout_style="peft")
    update = DoRALinear(copy.deepcopy(base), rank=3, scale=2.0, dropout=0.3)
    assert update.dropout_style == "update"  # the layer's default, which MTLoRA keeps
    randomise(peft)
    update.load_state_dict(peft.state_dict())
    with torch.no_grad():
        peft.magnitude.mul_(torch.linspace(0.5, 1.5, 9))
        update.magnitude.copy_(peft.magnitude)
    w, b, a, bb = base.weight, base.bias, peft.lora.a.detach(), peft.lora.b.detach()
    direction = w + 2.0 * bb @ a
    r = peft.magnitude.detach() / direction.norm(dim=1)
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.3, training=True)  # the mask the layer will draw
    with torch.no_grad():
        torch.manual_seed(1)
        got_peft = peft.train()(x)
        torch.manual_seed(1)
        got_update = update.train()(x)
        # peft's Linear with a DoRA variant in training: the base layer's output plus
        # (r - 1) W dropout(x) + r s B A dropout(x)
        expected = x @ w.T + b + (r - 1) * (dropped @ w.T) + r * 2.0 * (dropped @ a.T @ bb.T)
        torch.testing.assert_close(got_peft, expected)
        torch.testing.assert_close(got_update, r * (x @ w.T + 2.0 * dropped @ a.T @ bb.T) + b)
        assert not torch.allclose(got_peft, got_update)
        # in eval mode (dropout off) both are r (W x + s B A x) + b
        full = r * (x @ w.T + 2.0 * x @ a.T @ bb.T) + b
        torch.testing.assert_close(peft.eval()(x), full)
        torch.testing.assert_close(update.eval()(x), full)
    # the method's default is peft's; MTLoRA's DoRA layers keep the update style
    assert DoRA().options()["dropout_style"] == "peft"
    layers = [m for m in DoRA(rank=2).build_encoder(tiny_backbone(), TASKS).modules()
              if isinstance(m, DoRALinear)]
    assert layers and all(m.dropout_style == "peft" for m in layers)
    layers = [m for m in MTLoRA(rank=2, dora=True).build_encoder(tiny_backbone(), TASKS).modules()
              if isinstance(m, DoRALinear)]
    assert layers and all(m.dropout_style == "update" for m in layers)
    with pytest.raises(UserError, match="method dora: dropout_style"):
        compose_all(expand(["method=dora", "method.dropout_style=both"]))


def test_multi_task_dora_normalises_each_output_with_the_shared_magnitude():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    tasks = ["semseg", "sal"]
    layer = MultiTaskDoRALinear(copy.deepcopy(base), 3, tasks, 2, scale=4.0).eval()
    assert isinstance(layer, MultiTaskLoRALinear)
    x = torch.randn(2, 4, 10)
    task_x = {t: torch.randn(2, 4, 10) for t in tasks}
    shared, per_task = layer(x, task_x)
    torch.testing.assert_close(shared, base(x), atol=0, rtol=0)
    for t in tasks:
        torch.testing.assert_close(per_task[t], base(x), atol=0, rtol=0)
    randomise(layer)
    with torch.no_grad():
        layer.magnitude.mul_(1.3)
        shared, per_task = layer(x, task_x)
    torch.testing.assert_close(shared, _dora_reference(base, layer.magnitude, layer.shared, x))
    for t in tasks:
        # the frozen product reads x, the task update x_t, the task direction its own norm
        lora = layer.task_lora[t]
        direction = base.weight + lora.delta_weight()
        ratio = layer.magnitude / direction.norm(dim=1)
        expected = (x @ base.weight.T + lora(task_x[t])) * ratio + base.bias
        torch.testing.assert_close(per_task[t], expected)


# --- command line -------------------------------------------------------------------------


@pytest.mark.slow
def test_mtlora_with_dora_smoke_run_through_the_command_line(tmp_path):
    results = tmp_path / "results"
    proc = run_cli(
        "benchmark.run", "method=mtlora", "method.dora=true", "budget=smoke", *SMALL_DATA,
        f"results_dir={results}", "progress=false", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = {r["method"]: r for _, r in iter_records(results)}
    run = records["mtlora"]
    assert run["status"] == "ok" and run["label"] == "mtlora dora r=16"
    assert run["method_config"]["dora"] is True and run["delta_m"] is not None
