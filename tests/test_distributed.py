"""One run over several processes (torchrun, gloo on the CPU), the shards of an epoch, and
the execution options (prefetch, channels-last, torch.compile)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from benchmark.config import Execution
from benchmark.data import (
    BatchLoader,
    DatasetInfo,
    MultiTaskData,
    Split,
    dataset_info,
    place_split,
)
from benchmark.model import Decoder, MultiTaskModel
from benchmark.records import iter_records
from benchmark.train import train_and_evaluate
from tests.helpers import ROOT, TinyEncoder, tiny_split

CPU = torch.device("cpu")


def _epoch(loader: BatchLoader, epoch: int) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader)


def test_rank_shards_are_disjoint_cover_the_epoch_and_make_up_the_global_batches():
    split = tiny_split(n=21)
    tasks = ["semseg", "normals"]

    def loader(rank, world, batch):
        return BatchLoader(split, tasks, batch, CPU, shuffle=True, augment=True, seed=4,
                           drop_last=True, rank=rank, world_size=world)

    split.arrays["semseg"][:] = torch.arange(21, dtype=torch.uint8).view(21, 1, 1)  # ids
    single = _epoch(loader(0, 1, 6), epoch=2)
    shards = [_epoch(loader(r, 3, 2), epoch=2) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3] == [len(single)] * 3
    seen = [int(b["semseg"][i].max()) for s in shards for b in s for i in range(2)]
    assert len(seen) == len(set(seen)) == 18  # disjoint; 21 // 6 global steps of 6 images
    for step, whole in enumerate(single):
        # the ranks' batches of a step are the one process's global batch, augmentation and all
        together = {k: torch.cat([s[step][k] for s in shards]) for k in whole}
        for key in whole:
            assert torch.equal(together[key], whole[key]), key
    unaugmented = BatchLoader(split, tasks, 6, CPU, shuffle=True, seed=4, drop_last=True)
    changed = [not torch.equal(a["image"], b["image"])
               for a, b in zip(_epoch(unaugmented, 2), single)]
    assert any(changed)  # the augmentation did something, identically on both sides


def test_evaluation_shards_share_out_the_last_batch_and_miss_nothing():
    split = tiny_split(n=13)
    split.arrays["semseg"][:] = torch.arange(13, dtype=torch.uint8).view(13, 1, 1)
    seen = []
    counts = []
    for rank in range(2):
        batches = list(BatchLoader(split, ["semseg"], 4, CPU, rank=rank, world_size=2))
        counts.append(sum(len(b["semseg"]) for b in batches))
        seen += [int(b["semseg"][i].max()) for b in batches for i in range(len(b["semseg"]))]
    assert sorted(seen) == list(range(13)) and counts == [7, 6]


def test_prefetched_batches_are_the_same_batches():
    split = tiny_split()
    tasks = ["semseg", "normals"]
    plain = BatchLoader(split, tasks, 4, CPU, shuffle=True, augment=True, seed=1)
    ahead = BatchLoader(split, tasks, 4, CPU, shuffle=True, augment=True, seed=1, prefetch=2)
    for a, b in zip(_epoch(plain, 3), _epoch(ahead, 3), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # stopping early ends the background thread
    it = iter(ahead)
    next(it)
    it.close()
    # an error while gathering reaches the training loop
    broken = Split({"image": split.arrays["image"], "semseg": split.arrays["semseg"][:3]})
    with pytest.raises(IndexError):
        list(BatchLoader(broken, ["semseg"], 4, CPU, shuffle=True, prefetch=2))


def test_data_stays_in_host_memory_off_cuda():
    split = tiny_split()
    assert place_split(split, CPU, 1.0) is split


def _tiny_run(execution: Execution) -> tuple[float, dict]:
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    info = DatasetInfo("tiny", ["semseg", "normals"], {"semseg": 5, "normals": 3}, 16, "16")
    decoders = {t: Decoder([8] * 4, [2] * 4, n) for t, n in info.num_outputs.items()}
    model = MultiTaskModel(TinyEncoder(info.tasks), nn.ModuleDict(decoders))
    split = tiny_split(n=16, size=16)
    budget = OmegaConf.create({
        "batch_size": 4, "epochs": 2, "lr": 0.05, "warmup_lr": 1e-6, "min_lr": 1e-5,
        "warmup_epochs": 0.5, "weight_decay": 0.05, "clip_grad": 5.0, "amp": True,
        "train_batches": None, "val_images": None,
    })
    result = train_and_evaluate(
        model, MultiTaskData(info, split, split), budget, CPU, seed=0, progress=False,
        execution=execution,
    )
    return result.final_loss, result.metrics


def test_channels_last_trains_the_same_model():
    loss, metrics = _tiny_run(Execution())
    loss_cl, metrics_cl = _tiny_run(Execution(channels_last=True))
    assert loss_cl == pytest.approx(loss, rel=1e-4)
    assert metrics_cl["normals"]["mean"] == pytest.approx(metrics["normals"]["mean"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
    reason="torch.compile on the CPU needs a C++ compiler",
)
def test_compile_trains_the_same_model():
    loss, metrics = _tiny_run(Execution())
    loss_c, metrics_c = _tiny_run(Execution(compile=True))
    assert loss_c == pytest.approx(loss, rel=1e-3)
    assert metrics_c["normals"]["mean"] == pytest.approx(metrics["normals"]["mean"], rel=1e-2)


def _replica_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from benchmark import distributed

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    distributed.check_replicas(model)  # identical: passes
    with torch.no_grad():
        model.bias[1] += rank  # rank 1 drifts
    try:
        distributed.check_replicas(model)
        message = "no error"
    except RuntimeError as err:
        message = str(err)
    with open(f"{out}.{rank}", "w") as f:
        f.write(message)
    dist.destroy_process_group()


@pytest.mark.slow
def test_diverged_replicas_are_caught_on_every_rank(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_replica_worker, args=(init, str(tmp_path / "out")), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"out.{rank}").read_text()
        assert "rank 1 differs from rank 0's in bias" in message


@pytest.mark.slow
def test_torchrun_two_processes_one_record_reduced_evaluation(tmp_path):
    """The CLI under torchrun with two gloo processes: one record per run, written once,
    world size 2, global throughput; the metrics reduced over the two shards equal one
    process's evaluation of the same final weights; both ranks ended with the same weights
    (checked in the trainer, which would have failed the run). MTLoRA has a trainable
    parameter that reaches no output, which DDP must be told about."""
    results = tmp_path / "results"
    data = ["dataset.train_size=48", "dataset.val_size=12"]
    args = ["method=full_ft", "budget=smoke", *data, "device=cpu", "progress=false",
            f"results_dir={results}", "keep_checkpoints=true"]
    sweep = [*args[1:], "method=full_ft,mtlora"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, "-m", "benchmark.run", *sweep], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("full_ft seed 0:") == 1  # only rank 0 logs
    records = {r["method"]: (path, r) for path, r in iter_records(results)}
    assert set(records) == {"single_task", "full_ft", "mtlora"}  # the reference, trained first
    mtlora = records["mtlora"][1]
    assert mtlora["status"] == "ok" and mtlora["cost"]["world_size"] == 2
    path, record = records["full_ft"]
    assert record["status"] == "ok" and record["cost"]["world_size"] == 2
    assert record["cost"]["train_images"] == 48  # 3 steps of 2 ranks x 8 images
    assert records["single_task"][1]["cost"]["world_size"] == 2
    assert isinstance(record["delta_m"], float)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert not list(path.parent.glob("lock")) and not list(path.parent.glob(".*.tmp"))

    # the same final weights, evaluated by this one process
    from benchmark.config import compose_all, instantiate_method
    from benchmark.experiment import DataCache
    from benchmark.model import build_model
    from benchmark.train import evaluate

    (cfg,) = compose_all([args])
    info = dataset_info(cfg.dataset)
    model = build_model(instantiate_method(cfg.method), cfg.backbone, info, info.tasks,
                        drop_path=cfg.budget.drop_path)
    blob = torch.load(path.parent / "checkpoint-0.pt", weights_only=False)
    model.load_state_dict(blob["model"])
    assert len(blob["rng"]) == 2  # every rank's RNG, for an exact resume
    metrics = evaluate(model, DataCache().get(cfg.dataset, False), cfg.budget, CPU)
    for task, values in metrics.items():
        for name, value in values.items():
            # equal up to float rounding (the thread counts, hence summation orders, differ);
            # a shard missed or counted twice would move them by whole percents
            assert record["metrics"][task][name] == pytest.approx(value, rel=1e-6, abs=1e-6)
