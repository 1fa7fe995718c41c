"""The CUDA-only branches, run on the CPU against the stand-in of `tests.cuda_stub`: device
resolution, data placement and the prefetch thread, training and evaluation, precision
selection, compilation, DDP options, the OOM handler and perf's measurements."""

from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark import distributed
from benchmark.config import Execution
from benchmark.data import BatchLoader, DatasetInfo, MultiTaskData, Split
from benchmark.data.transforms import Geometry
from benchmark.distributed import resolve_device
from benchmark.errors import UserError
from benchmark.model import Decoder, MultiTaskModel
from benchmark.train import OutOfMemory, train_and_evaluate
from tests.cuda_stub import FakeCuda
from tests.helpers import TinyEncoder, tiny_split

CPU = torch.device("cpu")


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    return FakeCuda(monkeypatch, count=2)


def _budget(**over):
    values = {
        "batch_size": 4, "epochs": 2, "lr": 0.05, "warmup_lr": 1e-6, "min_lr": 1e-5,
        "warmup_epochs": 0.5, "weight_decay": 0.05, "clip_grad": 5.0, "precision": "bf16",
        "eval_precision": "fp32", "amp": None, "train_batches": None, "val_images": None,
    }
    return OmegaConf.create({**values, **over})


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    info = DatasetInfo("tiny", ["semseg", "normals"], {"semseg": 5, "normals": 3}, 16, "16")
    decoders = {t: Decoder([8] * 4, [2] * 4, n) for t, n in info.num_outputs.items()}
    model = MultiTaskModel(TinyEncoder(info.tasks), nn.ModuleDict(decoders))
    split = tiny_split(n=16, size=16)
    return model, MultiTaskData(info, split, split)


# defect 1: device index resolution -------------------------------------------------------

def test_every_cuda_device_resolves_to_an_explicit_index(cuda):
    cuda.current = 1
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == CPU
    with pytest.raises(UserError, match="cuda:5"):
        resolve_device("cuda:5")


def test_devices_compare_by_type_and_index(cuda):
    assert distributed.same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert not distributed.same_device(torch.device("cuda:1"), torch.device("cuda:0"))
    assert not distributed.same_device(CPU, torch.device("cuda:0"))
    assert distributed.same_device(CPU, torch.device("cpu"))


def test_under_torchrun_cuda_is_the_gpu_of_the_local_rank(cuda, monkeypatch):
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(1, 2, 1))
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)


def test_a_loader_given_cuda_without_index_prefetches_on_the_indexed_gpu(cuda):
    loader = BatchLoader(tiny_split(), ["semseg"], 4, torch.device("cuda"), prefetch=2)
    batches = list(loader)  # the old code: ValueError in the prefetch thread
    assert len(batches) == 5
    assert cuda.set_devices == [0]
    # every array copied from pinned memory without blocking, on the indexed device
    assert cuda.copies and all(c == ("cuda:0", True, True) for c in cuda.copies)
    assert all(s.device == torch.device("cuda", 0) for s in cuda.streams)


def test_single_gpu_default_settings_train_and_evaluate(cuda):
    """The first command of a researcher with one GPU: device=auto, defaults."""
    model, data = _tiny()
    device = resolve_device("auto")
    result = train_and_evaluate(model, data, _budget(), device, seed=0, progress=False)
    assert set(cuda.set_devices) == {0}  # the prefetch threads, training and evaluation
    assert torch.isfinite(torch.tensor(result.final_loss))
    assert result.memory_kind == "cuda_allocated"
    assert result.precision == "bf16" and result.eval_precision == "fp32"
    assert all(0 <= v <= 100 for v in result.metrics["semseg"].values())


# precision: autocast and scaler selection -------------------------------------------------

@pytest.mark.parametrize(
    ("precision", "dtype", "scaled"),
    [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True), ("fp32", None, False)],
)
def test_precision_selects_autocast_and_scaler(cuda, precision, dtype, scaled):
    model, data = _tiny()
    budget = _budget(precision=precision, train_batches=2, epochs=1)
    result = train_and_evaluate(model, data, budget, resolve_device("cuda"), seed=0,
                                progress=False)
    steps = 2
    casts = [c for c in cuda.autocasts if c[0] == "cuda"]
    # training steps autocast in `dtype`; evaluation (fp32 by default) never does
    assert casts == ([] if dtype is None else [("cuda", dtype, True)] * steps)
    assert len(cuda.scalers) == (1 if scaled else 0)
    if scaled:
        assert cuda.scalers[0].calls == ["scale", "unscale_", "step", "update"] * steps
    assert result.precision == precision


def test_evaluation_precision_is_an_option(cuda):
    model, data = _tiny()
    budget = _budget(precision="fp32", eval_precision="bf16", train_batches=1, epochs=1)
    result = train_and_evaluate(model, data, budget, resolve_device("cuda"), seed=0,
                                progress=False)
    val_batches = -(-16 // 8)
    casts = [c for c in cuda.autocasts if c[0] == "cuda"]
    assert casts == [("cuda", torch.bfloat16, True)] * val_batches
    assert result.eval_precision == "bf16"


def test_precision_on_a_cpu_is_float32_whatever_asked():
    model, data = _tiny()
    result = train_and_evaluate(model, data, _budget(precision="fp16", epochs=1), CPU, seed=0,
                                progress=False)
    assert result.precision == "fp32"


def test_deprecated_amp_maps_to_precision_and_keeps_run_keys():
    from benchmark.precision import check_budget, key_budget, training_precision

    assert training_precision(_budget(amp=True)) == "bf16"
    assert training_precision(_budget(amp=False)) == "fp32"
    assert training_precision(_budget(amp=False, precision="fp32")) == "fp32"
    with pytest.raises(UserError, match="contradicts"):
        training_precision(_budget(amp=True, precision="fp16"))
    with pytest.raises(UserError, match="fp8"):
        check_budget(_budget(precision="fp8"), warn=False)
    legacy = {"name": "quick", "lr": 1.0, "amp": True}
    assert key_budget({"name": "quick", "lr": 1.0, "amp": None, "precision": "bf16",
                       "eval_precision": "fp32"}) == legacy
    assert key_budget({"name": "quick", "lr": 1.0, "amp": False}) == {
        "name": "quick", "lr": 1.0, "amp": False}
    assert key_budget({"name": "q", "amp": None, "precision": "fp32"}) == {
        "name": "q", "amp": False}
    assert key_budget({"name": "q", "amp": None, "precision": "fp16"}) == {
        "name": "q", "precision": "fp16"}
    assert key_budget({"name": "q", "precision": "bf16", "eval_precision": "bf16"}) == {
        "name": "q", "amp": True, "eval_precision": "bf16"}


def test_run_keys_of_the_default_budget_are_unchanged_and_precision_enters_them():
    from benchmark.config import compose_all
    from benchmark.records import run_key

    base, amp_off, fp32, fp16 = compose_all([
        ["method=full_ft"], ["method=full_ft", "budget.amp=false"],
        ["method=full_ft", "budget.precision=fp32"], ["method=full_ft", "budget.precision=fp16"],
    ])
    legacy = OmegaConf.create(OmegaConf.to_container(base))
    del legacy.budget["precision"], legacy.budget["eval_precision"]
    legacy.budget.amp = True  # the budget as it was written before `precision` existed
    assert run_key(base) == run_key(legacy)
    assert run_key(amp_off) == run_key(fp32) != run_key(base)
    assert run_key(fp16) not in (run_key(base), run_key(fp32))


# defect 2 and 3: compile per model, compile time apart -----------------------------------

class _Stack(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.body = nn.Sequential(*[nn.Linear(4, 4) for _ in range(depth)])

    def forward(self, x):
        return self.body(x)


def test_every_model_of_a_sweep_really_compiles(monkeypatch):
    """Twelve models of different structure in one process (more than dynamo's recompile
    limit of 8): each gets its own graph, and says so."""
    from benchmark import train

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(train, "COMPILE_BACKEND", backend)
    for depth in range(1, 13):
        module, probe = train.compile_module(_Stack(depth))
        module(torch.randn(2, 4)).sum().backward()
        assert probe.compiled, depth
    assert len(graphs) == 12


def test_a_model_that_falls_back_to_eager_is_recorded_as_not_compiled(monkeypatch):
    from benchmark import train

    monkeypatch.setattr(train, "COMPILE_BACKEND", lambda gm, inputs: gm.forward)
    module, probe = train.compile_module(_Stack(1))
    torch._dynamo.config.recompile_limit, limit = 0, torch._dynamo.config.recompile_limit
    try:
        module(torch.randn(2, 4))
    finally:
        torch._dynamo.config.recompile_limit = limit
    assert not probe.compiled


def test_compile_time_is_recorded_apart_and_kept_out_of_training_time(monkeypatch):
    from benchmark import train

    class SlowFirstCall(nn.Module):
        """Stands in for a compiled module: its first call takes 1.5 s longer."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 1:
                time.sleep(1.5)
            return self.inner(x)

    class Probe:
        compiled = True

    monkeypatch.setattr(train, "compile_module", lambda m: (SlowFirstCall(m), Probe()))
    model, data = _tiny()
    result = train_and_evaluate(model, data, _budget(epochs=2), CPU, seed=0, progress=False,
                                execution=Execution(compile=True))
    assert result.compiled is True
    assert result.compile_seconds >= 1.4
    eager_model, _ = _tiny()
    eager = train_and_evaluate(eager_model, data, _budget(epochs=2), CPU, seed=0,
                               progress=False)
    assert eager.compiled is None and eager.compile_seconds == 0.0
    assert result.train_seconds < eager.train_seconds + 1.0


# defect 6: DDP without find_unused_parameters --------------------------------------------

def test_ddp_excludes_the_statically_unused_parameters(monkeypatch):
    from benchmark import train
    from benchmark.config import compose_all, instantiate_method

    (cfg,) = compose_all([["method=mtlora"]])
    from benchmark.data import dataset_info
    from benchmark.model import build_model

    info = dataset_info(cfg.dataset)
    method = instantiate_method(cfg.method)
    model = build_model(method, cfg.backbone, info, info.tasks, drop_path=cfg.budget.drop_path,
                        load_weights=False)
    unused = train.unused_parameters(model, info.image_size, CPU)
    assert unused and all(".3." in n.replace("layers.", "") or "fc2" in n for n in unused)
    assert all("fc2" in n for n in unused)
    made = {}

    class FakeDDP(nn.Module):
        def __init__(self, module, **kwargs):
            super().__init__()
            made.update(kwargs, ignored=set(getattr(module, "_ddp_params_and_buffers_to_ignore",
                                                    ())))
            self.module = module

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 2, 0))
    train.training_module(model, CPU, info.image_size)
    assert made["find_unused_parameters"] is False
    assert made["ignored"] == set(unused)


# defect 8: pinned non-blocking copies at original resolution, OOM in optimizer.step -------

def test_original_resolution_labels_come_from_pinned_memory_without_blocking(cuda):
    g = torch.Generator().manual_seed(0)
    n, canvas = 4, 12
    split = Split(
        {"image": torch.randint(0, 256, (n, canvas, canvas, 3), dtype=torch.uint8, generator=g),
         "semseg": torch.randint(0, 5, (n, canvas, canvas), dtype=torch.uint8, generator=g)},
        sizes=torch.tensor([[12, 10], [8, 12], [12, 12], [6, 7]]),
        ids=[str(i) for i in range(n)],
        geometry=Geometry(size=8, original_resolution=True),
    )
    loader = BatchLoader(split, ["semseg"], 4, torch.device("cuda"))
    (batch,) = list(loader)
    outputs = {"semseg": torch.randn(n, 5, 8, 8)}
    cuda.copies.clear()
    pairs = list(loader.score_pairs(outputs, batch))
    assert [tuple(p[1]["semseg"].shape) for p in pairs] == [(1, 12, 10), (1, 8, 12),
                                                           (1, 12, 12), (1, 6, 7)]
    assert [tuple(p[0]["semseg"].shape[-2:]) for p in pairs] == [(12, 10), (8, 12), (12, 12),
                                                                (6, 7)]
    for j, (_, labels) in enumerate(pairs):
        h, w = split.sizes[j].tolist()
        assert torch.equal(labels["semseg"][0], split.arrays["semseg"][j, :h, :w].long())
    assert cuda.copies and all(c == ("cuda:0", True, True) for c in cuda.copies)


def test_out_of_memory_in_the_optimizer_step_is_reported(monkeypatch):
    def step(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    model, data = _tiny()
    with pytest.raises(OutOfMemory, match="batch_size=4"):
        train_and_evaluate(model, data, _budget(), CPU, seed=0, progress=False)


def test_fused_attention_is_an_option_set_on_every_attention(monkeypatch):
    from benchmark import train
    from benchmark.config import compose_all

    (cfg,) = compose_all([["method=full_ft", "fused_attn=true"]])
    from benchmark.config import instantiate_method
    from benchmark.data import dataset_info
    from benchmark.model import build_model

    info = dataset_info(cfg.dataset)
    model = build_model(instantiate_method(cfg.method), cfg.backbone, info, info.tasks,
                        drop_path=cfg.budget.drop_path, load_weights=False)
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    assert flags and not any(flags)  # timm's default for Swin: off
    assert train.set_fused_attention(model, True) == len(flags)
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    assert Execution.from_config(cfg).fused_attn is True
