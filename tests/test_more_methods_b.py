"""HyperFormer, DoRA (and MTLoRA with DoRA): counts, identity at zero init, trainability,
the DoRA layers' algebra, overfitting, the CLI (TADFormer: tests/test_tadformer.py)."""

import copy

import pytest
import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.records import iter_records
from benchmark.run import compose_all, expand
from methods.adapters import HyperEncoder
from methods.dora import DoRA
from methods.hyperformer import HyperFormer
from methods.lowrank import (
    DoRALinear,
    LowRank,
    MultiTaskDoRALinear,
    MultiTaskLoRALinear,
    lora_layers,
    merge_lora,
    row_norm,
)
from methods.mtlora import MTLoRA, MTLoRAPlus
from tests.conftest import SMALL_DATA, run_cli
from tests.helpers import (
    DECODERS,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    SWIN_T_STAGES,
    TASKS,
    assert_gradients,
    assert_overfits,
    expected_mtlora,
)
from tests.test_lora import assert_same_features, fake_batch, model_with, params_of, randomise
from tests.test_model import tiny_backbone
from tests.test_mtlora import ONE_TOKEN_TABLES, UNUSED


def expected_hyperformer(reduction=2, embed_dim=128, hidden=89, tasks=4) -> int:
    # task, layer (one per block) and position (2) embeddings; one projection to `hidden`;
    # per stage a head for the whole down (d x m, + m bias) and up (m x d, + d) matrices
    embeddings = (tasks + len(SWIN_T_BLOCKS) + 2) * embed_dim
    projection = 3 * embed_dim * hidden + hidden
    heads = sum(
        (hidden + 1) * (2 * d * (d // reduction) + d // reduction + d) for d in SWIN_T_STAGES
    )
    return embeddings + projection + heads + DECODERS


def expected_dora(rank=35) -> int:
    # LoRA on qkv (C -> 3C) and proj (C -> C): r (C + 3C) + r (C + C); a magnitude per
    # output: 3C + C
    return sum(rank * 6 * d + 4 * d for d in SWIN_T_BLOCKS) + DECODERS


def dora_magnitudes(plus: bool) -> int:
    # one per output of qkv (3C), proj (C), fc1 (4C), fc2 (C) in every block; MTLoRA+ also
    # adapts the merging reductions (4C -> 2C) of the first three stages
    reductions = sum(2 * d for d in SWIN_T_STAGES[:3]) if plus else 0
    return sum(9 * d for d in SWIN_T_BLOCKS) + reductions


def test_trainable_counts_on_swin_tiny_pascal_follow_the_formulas():
    rows = {r["method"]: r for r in params_of("method=hyperformer,dora", *PASCAL_SWIN_T)}
    assert expected_hyperformer() == 72_679_993  # paper 72.77 M
    assert expected_dora() == 2_891_648  # lora's 2,873,984 + 17,664 magnitudes
    expected = {
        "hyperformer": (expected_hyperformer(), "hyperformer reduction=2", 72.77, "per_task"),
        "dora": (expected_dora(), "dora r=35", None, "shared"),
    }
    for method, (trainable, label, paper, mode) in expected.items():
        row = rows[method]
        assert (row["trainable"], row["label"]) == (trainable, label), method
        assert (row["paper_trainable_m"], row["encoder_mode"]) == (paper, mode), method
        assert row["decoders"] == DECODERS


def test_options_change_the_counts_as_the_formulas_say():
    rows = params_of("method=hyperformer", "method.reduction=4", "method.hidden=8",
                     *PASCAL_SWIN_T)
    assert rows[0]["trainable"] == expected_hyperformer(reduction=4, hidden=8)
    rows = params_of("method=dora", "method.rank=8", *PASCAL_SWIN_T)
    assert rows[0]["trainable"] == expected_dora(8)


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


def test_options_and_invalid_values():
    assert MTLoRA(dora=True).options() == {
        "rank": 16, "task_rank": 4, "scale": 4.0, "dropout": 0.05, "dora": True
    }
    assert HyperFormer().options() == {
        "reduction": 2, "embed_dim": 128, "hidden": 89, "tasks_per_pass": None
    }
    assert DoRA(rank=8, alpha=16).scale == 2.0
    bad = {
        "hyperformer": ["method.hidden=0", "method.reduction=0", "method.tasks_per_pass=0"],
        "dora": ["method.rank=0", "method.dropout=1.5", "method.targets=[qkv,fc3]"],
        "mtlora": ["method.dora=maybe"],
    }
    for method, overrides in bad.items():
        for override in overrides:
            with pytest.raises(UserError, match=f"method {method}: .*"):
                compose_all(expand([f"method={method}", override]))


# --- identity at zero init, trainability, overfitting ------------------------------------


def _zero_generated_up(encoder: HyperEncoder) -> None:
    with torch.no_grad():
        for heads in encoder.generator.stages:
            for p in heads["up"].parameters():
                p.zero_()


BUILD = {  # tiny versions of each method, by name
    "hyperformer": lambda: HyperFormer(),
    "dora": lambda: DoRA(rank=4),
    "mtlora+dora": lambda: MTLoRA(rank=4, task_rank=2, dora=True),
    "mtlora++dora": lambda: MTLoRAPlus(rank=4, task_rank=2, dora=True),
}


@pytest.mark.parametrize("name", list(BUILD))
def test_zero_initialised_updates_give_the_frozen_backbone_features(name):
    x = torch.randn(2, 3, 32, 32)
    plain = tiny_backbone().eval()
    encoder = BUILD[name]().build_encoder(tiny_backbone(), TASKS).eval()
    if name == "hyperformer":  # its up heads start small, not zero (every weight trains)
        with torch.no_grad():
            assert not torch.allclose(encoder(x)["semseg"][0], plain(x, ["x"])["x"][0])
        _zero_generated_up(encoder)
    with torch.no_grad():
        assert_same_features(encoder(x), plain(x, TASKS))  # every task, every stage


def _unused(name: str, size: int = 64) -> tuple[str, ...]:
    """MTLoRA's exception (UNUSED) in the methods built on its task streams, and at 32 px
    the last stage's relative-position tables, which those methods train (ONE_TOKEN_TABLES)."""
    if name in ("hyperformer", "dora"):
        return ()
    return UNUSED + (ONE_TOKEN_TABLES if size == 32 else ())


def _trainable(model) -> set[str]:
    return {n for n, p in model.encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", list(BUILD))
def test_frozen_parameters_get_no_gradient_and_every_trainable_one_does(name):
    backbone = tiny_backbone(64)
    model = model_with(BUILD[name]().build_encoder(backbone, TASKS), backbone)
    randomise(model)  # B != 0 (LoRA, TS-LoRA, TA-modules), so that A and the rest see a signal
    names = dict(model.encoder.named_parameters())
    trainable = _trainable(model)
    if name == "hyperformer":
        assert trainable == {n for n in names if n.startswith("generator.")}
    elif name == "dora":
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
        if pname.endswith((".b", ".kernels.weight")) and not pname.startswith(UNUSED):
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


# --- HyperFormer --------------------------------------------------------------------------


def test_hyperformer_generates_whole_matrices_per_task_and_batches_the_tasks():
    backbone = tiny_backbone().eval()
    encoder = HyperFormer().build_encoder(backbone, TASKS)
    assert isinstance(encoder, HyperEncoder) and encoder.mode == "per_task"
    weights = encoder.generator()
    assert len(weights) == 2 * 8  # two adapters in each of the 8 blocks
    for (down, up), d in zip(weights, [32] * 4 + [64] * 4 + [128] * 4 + [256] * 4):
        assert down.right is None and up.right is None  # one projection, no factors
        assert down.left.shape == (len(TASKS), d, d // 2) and up.left.shape == (4, d // 2, d)
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


def test_hyperformer_adam_step_moves_generated_weights_at_the_pace_of_direct_ones():
    torch.manual_seed(0)
    backbone = tiny_backbone()
    model = model_with(HyperFormer().build_encoder(backbone, TASKS), backbone)
    generator = model.encoder.generator
    lr = 1e-3

    def generated() -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.clone() for pair in generator() for w in pair for t in (w.left, w.bias)]

    before = generated()
    assert_gradients(model, fake_batch(size=32))
    torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr).step()
    steps = [(a - b).abs().max().item() / lr for a, b in zip(generated(), before)]
    assert min(steps) > 0.1 and max(steps) < 10, steps  # a direct weight moves by lr


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
