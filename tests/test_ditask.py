"""DiTASK (methods/ditask.py) and its CPAB transform (methods/blocks/cpab.py): the transform against
a numerical ODE solution, finite differences and its invariants; the layer against a dense
reconstruction; the SVD cache against recomputation; counts, streams, trainability."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import compose_all, expand
from benchmark.errors import UserError
from methods.blocks import cpab
from methods.blocks.spectral import DiTASKBlock, DiTASKLinear, MultiTaskDiTASKLinear
from methods.ditask import DiTASK
from tests.helpers import (
    DECODERS,
    PASCAL_SWIN_T,
    SWIN_T_NORMS,
    SWIN_T_PATCH_CONV,
    SWIN_T_REDUCTIONS,
    SWIN_T_RELATIVE_POSITIONS,
    TASKS,
    assert_gradients,
    assert_overfits,
    assert_same_features,
    ditask_unused,
    fake_batch,
    model_with,
    params_of,
    tiny_backbone,
)

# --- the CPAB transform ---------------------------------------------------------------


def difw_basis(cells: int) -> torch.Tensor:
    """difw's velocity basis (2 cells x (cells - 1)) as its columns are described: column k
    has slope 1/k, intercept 0 on cells 0..k-1; slope -1, intercept (k+1)/cells on cell k."""
    basis = torch.zeros(2 * cells, cells - 1, dtype=torch.float64)
    for k in range(1, cells):
        for c in range(k):
            basis[2 * c, k - 1] = 1 / k
        basis[2 * k, k - 1], basis[2 * k + 1, k - 1] = -1.0, (k + 1) / cells
    return basis


def field(theta: torch.Tensor):
    """v_theta from the basis: cell c = clamp(floor(x cells)), v(x) = a_c x + b_c."""
    cells = theta.shape[-1] + 1
    ab = (difw_basis(cells) @ theta).reshape(cells, 2)

    def v(x: torch.Tensor) -> torch.Tensor:
        c = (x * cells).floor().long().clamp(0, cells - 1)
        return ab[c, 0] * x + ab[c, 1]

    return v


def rk4(theta: torch.Tensor, x: torch.Tensor, steps: int = 1000) -> torch.Tensor:
    h, v = 1.0 / steps, field(theta)
    for _ in range(steps):
        k1 = v(x)
        k2 = v(x + h / 2 * k1)
        k3 = v(x + h / 2 * k2)
        k4 = v(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def thetas(cells: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for scale in (0.1, 1.0, 3.0):
        yield torch.randn(cells - 1, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("cells", [2, 4, 64])
def test_knot_velocities_are_the_basis_field(cells):
    x = torch.rand(500, dtype=torch.float64)
    knots = torch.linspace(0, 1, cells + 1, dtype=torch.float64).numpy()
    for theta in thetas(cells):
        u = cpab.knot_velocities(theta)
        assert u[0] == 0 and u[-1] == 0  # zero velocity at the boundary
        expected = np.interp(x.numpy(), knots, u.numpy())
        np.testing.assert_allclose(field(theta)(x).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("cells", [4, 64])
def test_closed_form_integration_matches_rk4(cells):
    x = torch.cat([torch.rand(200, dtype=torch.float64), torch.linspace(0, 1, 65).double()])
    for theta in thetas(cells):
        torch.testing.assert_close(cpab.integrate(theta, x), rk4(theta, x), atol=1e-6, rtol=0)


def test_integration_is_a_flow_and_float32_agrees_with_float64():
    # v is linear in theta: the time-2 flow of theta is phi_{2 theta}, and also phi o phi
    x = torch.linspace(0, 1, 301, dtype=torch.float64)
    for theta in thetas(64, seed=1):
        twice = cpab.integrate(theta, cpab.integrate(theta, x))
        torch.testing.assert_close(cpab.integrate(2 * theta, x), twice, atol=1e-9, rtol=0)
        single = cpab.integrate(theta.float(), x.float())
        torch.testing.assert_close(single.double(), cpab.integrate(theta, x), atol=2e-6, rtol=0)


def test_identity_at_zero_theta():
    x = torch.rand(100)
    assert torch.equal(cpab.integrate(torch.zeros(63), x), x)
    signal = torch.rand(96).sort(descending=True).values
    # exact up to the rounding of i / (k - 1) * (k - 1)
    torch.testing.assert_close(cpab.warp_signal(signal, torch.zeros(1, 63)), signal[None],
                               atol=2.5e-7, rtol=0)


@pytest.mark.parametrize("cells", [4, 64])
def test_boundaries_are_fixed_and_order_is_kept(cells):
    x = torch.linspace(0, 1, 2001, dtype=torch.float64)
    signal = torch.rand(96, dtype=torch.float64).sort(descending=True).values * 5
    for theta in [*thetas(cells), torch.full((cells - 1,), 8.0, dtype=torch.float64)]:
        phi = cpab.integrate(theta, x)
        assert phi[0] == 0 and phi[-1] == 1
        assert (phi.diff() > 0).all()  # a diffeomorphism: strictly increasing
        warped = cpab.warp_signal(signal, theta)
        assert warped[0] == signal[0] and warped[-1] == signal[-1]  # largest, smallest kept
        assert (warped.diff() <= 0).all()
        assert not torch.allclose(warped, signal)


def test_resampling_is_linear_interpolation_at_the_warped_locations():
    theta = torch.randn(3, 63, dtype=torch.float64) * 0.5  # a batch of three warps
    signal = torch.rand(50, dtype=torch.float64).sort(descending=True).values
    grid = torch.linspace(0, 1, 50, dtype=torch.float64)
    warped = cpab.warp_signal(signal, theta)
    assert warped.shape == (3, 50)
    for row, th in zip(warped, theta):
        where = cpab.integrate(th, grid).numpy()
        np.testing.assert_allclose(row.numpy(), np.interp(where, grid.numpy(), signal.numpy()),
                                   atol=1e-12)


@pytest.mark.parametrize("cells", [4, 64])
def test_gradients_match_finite_differences(cells):
    signal = torch.rand(96, dtype=torch.float64).sort(descending=True).values
    x = torch.rand(40, dtype=torch.float64)
    for theta in thetas(cells, seed=2):
        theta = theta.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: cpab.integrate(t, x), (theta,))
        assert torch.autograd.gradcheck(lambda t: cpab.warp_signal(signal, t), (theta,))


# --- the DiTASK layer ---------------------------------------------------------------------


def dense_weight(weight: torch.Tensor, theta: torch.Tensor, parts: int) -> torch.Tensor:
    """Each of `parts` row blocks rebuilt from numpy's SVD with its warped spectrum."""
    blocks = []
    for block in np.split(weight.detach().double().numpy(), parts):
        u, s, vh = np.linalg.svd(block, full_matrices=False)
        grid = np.linspace(0, 1, len(s))
        where = cpab.integrate(theta.detach().double().reshape(-1), torch.from_numpy(grid))
        blocks.append((u * np.interp(where.numpy(), grid, s)) @ vh)
    return torch.from_numpy(np.concatenate(blocks)).float()


@pytest.mark.parametrize(("out_features", "parts"), [(48, 3), (32, 2), (64, 1), (8, 1)])
def test_layer_is_the_frozen_linear_with_warped_singular_values(out_features, parts):
    torch.manual_seed(0)
    base = nn.Linear(16, out_features)
    plain = copy.deepcopy(base)
    layer = DiTASKLinear(base, cells=8)
    x = torch.randn(5, 16)
    assert 0 < layer.theta.abs().max() <= 1 / np.sqrt(7)  # Kaiming-uniform, not identity
    expected = F.linear(x, dense_weight(base.weight, layer.theta, parts), base.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        layer.theta.zero_()
    torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=1e-4)  # theta = 0: W


def test_task_outputs_warp_the_original_spectrum_with_their_own_theta():
    torch.manual_seed(0)
    base = nn.Linear(16, 64)
    layer = MultiTaskDiTASKLinear(base, cells=8, tasks=["semseg", "sal"], task_cells=4)
    x, xt = torch.randn(3, 16), torch.randn(3, 16)
    shared, tasks = layer(x, {"semseg": xt, "sal": xt})
    torch.testing.assert_close(shared, F.linear(x, dense_weight(base.weight, layer.theta, 1),
                                                base.bias), atol=1e-5, rtol=1e-4)
    for t, theta in layer.task_theta.items():
        expected = F.linear(xt, dense_weight(base.weight, theta, 1), base.bias)
        torch.testing.assert_close(tasks[t], expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        layer.theta.mul_(3)  # the shared warp is no part of a task output
    _, again = layer(x, {"semseg": xt, "sal": xt})
    assert all(torch.equal(again[t], tasks[t]) for t in tasks)
    _, from_shared = layer(x)  # no task input: the tasks read the shared input
    torch.testing.assert_close(from_shared["sal"], layer(x, {"semseg": x, "sal": x})[1]["sal"])


def test_the_svd_is_computed_once_per_device_dtype_and_weight(monkeypatch):
    calls = []
    svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    torch.manual_seed(0)
    base = nn.Linear(16, 48)
    cached = MultiTaskDiTASKLinear(copy.deepcopy(base), 8, ["semseg", "sal"], 4)
    official = copy.deepcopy(cached)
    official.cache_svd = False
    x = torch.randn(4, 16)
    for _ in range(3):
        out = cached(x)
    assert len(calls) == 3  # the three blocks of a qkv weight, once
    calls.clear()
    ref = official(x)
    assert len(calls) == 3 * 2  # recomputed for the shared and for the task outputs
    torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=1e-5)
    for t in ref[1]:
        torch.testing.assert_close(out[1][t], ref[1][t], atol=1e-6, rtol=1e-5)
    calls.clear()
    cached.double()  # another dtype: computed again, in that dtype
    out = cached(x.double())
    assert len(calls) == 3 and out[0].dtype == torch.float64
    torch.testing.assert_close(out[0], ref[0].double(), atol=1e-5, rtol=1e-4)
    calls.clear()
    with torch.no_grad():  # loading other weights in place: the cache follows
        cached.base.weight.mul_(2)
    assert len(calls) == 0
    torch.testing.assert_close(cached(x.double())[0] - cached.base.bias,
                               2 * (out[0] - cached.base.bias))
    assert len(calls) == 3


# --- the method ---------------------------------------------------------------------------


def expected_ditask(task_cells: int = 4, tasks: int = 4) -> int:
    """Swin-T, four PASCAL tasks: a 63-parameter shared theta on the 48 adapted linears,
    task thetas on proj/fc1/fc2 of the 4 last blocks and on all 12 qkv, and MTLoRA's set."""
    thetas = 48 * 63 + (12 + 12) * tasks * (task_cells - 1)
    return (thetas + SWIN_T_NORMS + SWIN_T_PATCH_CONV + SWIN_T_RELATIVE_POSITIONS
            + SWIN_T_REDUCTIONS + DECODERS)


def test_trainable_counts_on_swin_tiny_pascal_are_the_official_ones():
    rows = params_of("method=ditask", "method.task_tessellation=4,64", *PASCAL_SWIN_T)
    got = {r["label"]: (r["trainable"], r["decoders"]) for r in rows}
    assert got == {"ditask nc=64": (3_549_482, DECODERS),
                   "ditask nc=64 task_nc=64": (3_555_242, DECODERS)}
    assert expected_ditask(4) == 3_549_482 and expected_ditask(64) == 3_555_242
    assert 3_549_482 - DECODERS == 1_602_858 and 3_555_242 - DECODERS == 1_608_618  # "1.61 M"
    assert all(r["encoder_mode"] == "task_streams" for r in rows)


def test_options_and_invalid_values():
    method = DiTASK()
    assert method.options() == {"tessellation": 64, "task_tessellation": 4, "dropout": 0.05,
                                "cache_svd": True}
    (cfg,) = compose_all(expand(["method=ditask"]))
    assert cfg.method.cache_svd is True and cfg.method.task_tessellation == 4
    for override, needle in [("method.tessellation=1", "at least 2 cells"),
                             ("method.cache_svd=maybe", "cache_svd"),
                             ("method.dropout=1.5", "dropout")]:
        with pytest.raises(UserError, match=needle):
            compose_all(expand(["method=ditask", override]))


def zero_thetas(module: nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("theta") or ".task_theta." in name:
                p.zero_()


def test_zero_theta_gives_the_frozen_backbone_and_the_initial_warp_does_not():
    backbone = tiny_backbone()
    plain = copy.deepcopy(backbone).eval()
    encoder = DiTASK().build_encoder(backbone, TASKS).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        start, frozen = encoder(x), plain(x, TASKS)
        assert not torch.allclose(start["sal"][0], frozen["sal"][0], atol=1e-3)
        zero_thetas(encoder)
        assert_same_features(encoder(x), frozen, atol=1e-4)


def test_task_streams_follow_the_official_structure():
    backbone = tiny_backbone()
    encoder = DiTASK().build_encoder(backbone, TASKS).eval()
    blocks = [b for s in backbone.stages for b in s.blocks]
    assert sum(isinstance(b, DiTASKBlock) for b in blocks) == 4
    assert sum(isinstance(m, MultiTaskDiTASKLinear) for m in encoder.modules()) == 12
    assert sum(type(m) is DiTASKLinear for m in encoder.modules()) == 8 + 12  # qkv + others
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = encoder(x)
        # the shared warps of the first stage's last proj/fc1/fc2 reach that stage's task
        # features only through the next stages: their task outputs hold no shared term
        last = backbone.stages[0].blocks[-1]
        for layer in (last.proj, last.block.mlp.fc1, last.block.mlp.fc2):
            layer.theta.mul_(-2)
        after = encoder(x)
        for t in TASKS:
            torch.testing.assert_close(after[t][0], before[t][0], atol=0, rtol=0)
            assert not torch.allclose(after[t][1], before[t][1])
        last.block.mlp.fc1.task_theta["sal"].mul_(-2)  # one task's warp: only its features
        again = encoder(x)
        assert not torch.allclose(again["sal"][0], after["sal"][0])
        for t in ("semseg", "human_parts", "normals"):
            assert all(torch.equal(a, b) for a, b in zip(again[t], after[t]))


def test_trainable_set_and_exactly_the_official_parameters_get_gradients():
    backbone = tiny_backbone(64)
    model = model_with(DiTASK().build_encoder(backbone, TASKS), backbone)
    for name, p in model.encoder.named_parameters():
        frozen = name.endswith(("base.weight", "base.bias"))  # qkv, proj, fc1, fc2
        assert p.requires_grad != frozen, name  # thetas, norms, patch embed, tables, merging
    assert any(".reduction." in n and p.requires_grad for n, p in model.named_parameters())
    unused = ditask_unused()
    assert_gradients(model, fake_batch(size=64), unused=unused)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert len(no_grad) == 8 * 4 + 3  # 4 task thetas on the 8 qkv, the 3 last shared thetas


def test_overfits_a_tiny_batch():
    backbone = tiny_backbone()
    model = model_with(DiTASK().build_encoder(backbone, TASKS), backbone)
    # at 32 px the last stage is one token: its relative-position tables get zero gradients
    tables = ("encoder.backbone.stages.3.blocks.0.attn.relative_position_bias_table",
              "encoder.backbone.stages.3.blocks.1.block.attn.relative_position_bias_table")
    assert_overfits(model, fake_batch(), steps=10, lr=3e-3, unused=ditask_unused() + tables)


def test_the_report_sets_ditasks_published_numbers_beside_ours(tmp_path):
    from tests.report.builders import build, make_record, published_records, write

    published_records(tmp_path / "results")
    write(tmp_path / "results", make_record("ditask nc=64", "ditask", (69.0, 61.0, 64.0, 17.5),
                                            trainable=3_549_482))
    (page,) = build(tmp_path / "results", tmp_path / "reports")
    published = page.read_text().split("## Beside the published numbers", 1)[1].splitlines()
    i = next(i for i, line in enumerate(published) if line.startswith("| DiTASK"))
    cells = [c.strip() for c in published[i].split("|")[1:-1]]
    # the printed metrics, the printed Δm and the one recomputed from them agree: +3.22
    assert cells[2:] == ["69.66", "62.02", "65.00", "17.10", "+3.22", "+3.22", "1.61"]
    assert "ours (ditask nc=64, n=1)" in published[i + 1] and "3.55" in published[i + 1]
