"""The contract every shipped method keeps, one parametrised suite over the method configs
(benchmark/conf/method/*.yaml, `custom` aside): its yaml lists the constructor's options
with the constructor's defaults and `options()` reads them back; its trainable count on
Swin-T / PASCAL-Context and its encoder mode are the ones its docstring derives; on a tiny
model it starts as the frozen backbone where it adds nothing at initialisation, every
trainable parameter gets a gradient and no frozen one does, and a tiny batch's loss drops.
What is particular to a method is tested in its own file (tests/test_<method>.py)."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from benchmark.config import CONF_DIR, instantiate_method
from benchmark.losses import MultiTaskLoss
from benchmark.method import Method
from tests.helpers import (
    MTLORA_UNUSED,
    PASCAL_SWIN_T,
    TADFORMER_UNUSED,
    TASKS,
    assert_gradients,
    ditask_unused,
    fake_batch,
    model_with,
    params_of,
    randomise,
    tiny_backbone,
)

CONFIGS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem != "custom")

# Trainable parameters at the defaults for Swin-T on the four PASCAL tasks, decoders
# included: the counts each method's docstring derives from its layout.
TRAINABLE = {
    "adapter": 10_613_696, "bitfit": 1_998_080, "compacter": 1_999_728,
    "compacter_pp": 1_984_824, "decoders_only": 1_946_624, "ditask": 3_549_482,
    "dora": 2_891_648, "full_ft": 29_464_442, "hyperformer": 72_709_214, "lora": 2_873_984,
    "mtlora": 4_953_146, "mtlora_plus": 3_469_370, "polyhistor": 8_960_577,
    "polyhistor_lite": 6_408_897, "single_task": 4 * 27_517_818 + 1_946_624,
    "tadformer": 7_379_262, "vl_adapter": 4_857_024, "vpt_deep": 2_829_824,
    "vpt_shallow": 1_965_824,
}
MODES = {name: "shared" for name in CONFIGS} | {
    "mtlora": "task_streams", "mtlora_plus": "task_streams", "tadformer": "task_streams",
    "ditask": "task_streams", "polyhistor": "per_task", "polyhistor_lite": "per_task",
    "hyperformer": "per_task",
}
# Methods whose encoder is exactly the frozen backbone's at initialisation: they add
# nothing (bitfit, the baselines) or zero-initialised updates (LoRA's B = 0, DoRA's
# magnitude = the weight's norm). The adapters start near the identity only (small
# random weights), prompts and DiTASK's warps change the features from the start: their
# features differ from the frozen ones.
IDENTITY_AT_INIT = {"bitfit", "decoders_only", "dora", "full_ft", "lora", "mtlora",
                    "mtlora_plus", "single_task"}
# Trainable parameters that get no gradient by design (named in the tiny model at 64 px).
UNUSED = {"mtlora": MTLORA_UNUSED, "mtlora_plus": MTLORA_UNUSED,
          "tadformer": TADFORMER_UNUSED, "ditask": ditask_unused()}
# Options the constructor resolves: LoRA's scale null means 4.0 unless alpha is given.
RESOLVED = {("lora", "scale"): 4.0, ("dora", "scale"): 4.0}


def method_cfg(name: str):
    return OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml")


def constructor_defaults(cls: type[Method]) -> dict:
    """Each option's default (a constructor taking `**options` passes them on to its base
    class, whose defaults then apply)."""
    defaults = {p.name: p.default for p in cls.option_parameters()}
    assert inspect.Parameter.empty not in defaults.values(), cls  # hydra gives them all
    return defaults


def plain(value):
    return list(value) if isinstance(value, tuple | list) else value


def test_every_method_config_is_in_the_contract():
    assert set(CONFIGS) == set(TRAINABLE) == set(MODES)
    assert IDENTITY_AT_INIT | set(UNUSED) <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_yaml_lists_the_constructor_options_with_its_defaults(name):
    cfg = method_cfg(name)
    yaml = {k: plain(v) for k, v in OmegaConf.to_container(cfg).items()
            if k not in ("name", "_target_")}
    cls = get_class(cfg._target_)
    defaults = {k: plain(v) for k, v in constructor_defaults(cls).items()}
    assert yaml == defaults
    assert cls.option_names() == list(constructor_defaults(cls))
    method = instantiate_method(cfg)
    assert method.name == cfg.name
    options = {k: plain(v) for k, v in method.options().items()}
    assert options == {k: RESOLVED.get((name, k), v) for k, v in yaml.items()}


@pytest.mark.parametrize("name", CONFIGS)
def test_trainable_count_and_mode_on_swin_tiny_pascal(name):
    (row,) = params_of(*PASCAL_SWIN_T, f"method={name}")
    assert (row["trainable"], row["encoder_mode"]) == (TRAINABLE[name], MODES[name])


def tiny_model(name: str, size: int = 32):
    backbone = tiny_backbone(size)
    torch.manual_seed(0)
    encoder = instantiate_method(method_cfg(name)).build_encoder(backbone, TASKS)
    return model_with(encoder, backbone)


@pytest.mark.parametrize("name", CONFIGS)
def test_encoder_mode_is_its_class_and_identity_at_init_where_it_applies(name):
    model = tiny_model(name).eval()
    assert model.encoder.mode == type(model.encoder).mode == MODES[name]
    x = fake_batch()["image"]
    with torch.no_grad():
        features = model.encoder(x)
        frozen = tiny_backbone()(x, TASKS)
    assert features.keys() == frozen.keys()
    pairs = [(a, b) for t in TASKS for a, b in zip(features[t], frozen[t], strict=True)]
    if name in IDENTITY_AT_INIT:  # up to float rounding
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in pairs)
    else:  # near the identity at best (Compacter's PHM weights start at ~1e-4)
        assert not all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_trainable_parameter_gets_a_gradient_and_no_frozen_one(name):
    model = tiny_model(name, 64)
    randomise(model)  # a zero B would give its A a zero gradient (LoRA's family)
    assert_gradients(model, fake_batch(size=64), unused=UNUSED.get(name, ()))


@pytest.mark.parametrize("name", CONFIGS)
def test_a_tiny_batch_loss_drops(name):
    model = tiny_model(name).train()
    batch = fake_batch()
    criterion = MultiTaskLoss(model.tasks)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)  # dropout
    losses = []
    for _ in range(6):
        loss, _ = criterion(model(batch["image"]), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))), losses
    assert losses[-1] < losses[0], losses
