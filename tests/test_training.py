"""Training recipe, batching and reproducibility."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.config import compose_all
from benchmark.data import BatchLoader, Split
from benchmark.experiment import DataCache, run_experiment
from benchmark.train import lr_schedule, param_groups
from tests.helpers import SMALL_DATA, tiny_backbone


def test_lr_schedule_scales_warms_up_and_decays_to_the_minimum():
    budget = OmegaConf.create(
        {"lr": 5e-4, "warmup_lr": 5e-7, "min_lr": 5e-6, "batch_size": 32, "epochs": 10,
         "warmup_epochs": 2}
    )
    lr_at = lr_schedule(budget, steps_per_epoch=10)
    scale = 32 / 512
    assert lr_at(0) == pytest.approx(5e-7 * scale)
    assert lr_at(10) == pytest.approx((5e-7 + (5e-4 - 5e-7) / 2) * scale)
    assert lr_at(20) == pytest.approx(5e-4 * scale)  # end of warm-up: the peak
    assert lr_at(60) == pytest.approx((5e-6 + 0.5 * (5e-4 - 5e-6)) * scale)  # half-way cosine
    assert lr_at(100) == pytest.approx(5e-6 * scale)
    assert all(lr_at(s) >= lr_at(s + 1) for s in range(20, 100))
    # world size scales like batch size (protocol §4)
    assert lr_schedule(budget, 10, world_size=4)(20) == pytest.approx(4 * 5e-4 * scale)


def test_weight_decay_only_on_weight_matrices():
    backbone = tiny_backbone()
    groups = param_groups(backbone, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    for name, p in backbone.named_parameters():
        expected = p.ndim > 1 and "relative_position_bias_table" not in name
        assert (id(p) in decay) == expected, name
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0


def _split(n=6, size=4) -> Split:
    g = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(n, size, size, 3, generator=g), dim=-1)
    return Split({
        "image": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g),
        "semseg": torch.randint(0, 5, (n, size, size), dtype=torch.uint8, generator=g),
        "normals": normals.half(),
        "depth": torch.rand(n, size, size, generator=g),
    })


def test_batches_have_the_label_formats_and_flips_negate_normals_x():
    split = _split()
    tasks = ["semseg", "normals", "depth"]
    plain = next(iter(BatchLoader(split, tasks, 6, torch.device("cpu"))))
    assert plain["image"].shape == (6, 3, 4, 4) and plain["image"].dtype == torch.float32
    assert plain["semseg"].dtype == torch.int64 and plain["semseg"].shape == (6, 4, 4)
    assert plain["normals"].shape == (6, 3, 4, 4) and plain["depth"].shape == (6, 1, 4, 4)

    torch.manual_seed(0)
    loader = BatchLoader(split, tasks, 6, torch.device("cpu"), augment=True, seed=3)
    flipped = next(iter(loader))
    was_flipped = [not torch.equal(flipped["semseg"][i], plain["semseg"][i]) for i in range(6)]
    assert any(was_flipped) and not all(was_flipped)
    for i, f in enumerate(was_flipped):
        if f:
            assert torch.equal(flipped["semseg"][i], plain["semseg"][i].flip(-1))
            assert torch.equal(flipped["depth"][i], plain["depth"][i].flip(-1))
            torch.testing.assert_close(flipped["normals"][i, 0], -plain["normals"][i, 0].flip(-1))
            torch.testing.assert_close(flipped["normals"][i, 1:], plain["normals"][i, 1:].flip(-1))


def test_batch_order_depends_on_seed_and_epoch_only():
    split = _split(n=12)
    def order(seed, epoch):
        loader = BatchLoader(split, ["semseg"], 4, torch.device("cpu"), shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([b["semseg"] for b in loader])
    assert torch.equal(order(0, 1), order(0, 1))
    assert not torch.equal(order(0, 1), order(0, 2))
    assert not torch.equal(order(0, 1), order(1, 1))


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics(tmp_path):
    overrides = ["method=full_ft", "budget=smoke", *SMALL_DATA, "progress=false", "force=true"]
    first, second = compose_all(
        [[*overrides, f"results_dir={tmp_path / name}"] for name in ("a", "b")]
    )
    cache = DataCache()
    a = run_experiment(first, cache, log=lambda _: None)
    b = run_experiment(second, cache, log=lambda _: None)
    assert a["metrics"] == b["metrics"]
    assert a["final_loss"] == b["final_loss"] and math.isfinite(a["delta_m"])
    (third,) = compose_all([[*overrides, "seed=1", f"results_dir={tmp_path / 'a'}"]])
    c = run_experiment(third, cache, log=lambda _: None)
    assert c["metrics"] != a["metrics"]
