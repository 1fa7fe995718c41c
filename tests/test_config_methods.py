"""`benchmark.config.methods` and `execution`: a method named by the configuration, its
options checked, and how a run executes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from benchmark.config import Execution, check_method, compose_all, instantiate_method
from benchmark.errors import UserError
from methods.lora import LoRA


def test_a_method_is_instantiated_from_its_group():
    method = instantiate_method(
        OmegaConf.create({"_target_": "methods.lora.LoRA", "name": "lora", "rank": 3}))
    assert isinstance(method, LoRA) and method.name == "lora"


def test_an_unknown_option_is_one_line_naming_the_method():
    with pytest.raises(UserError) as caught:
        instantiate_method(OmegaConf.create(
            {"_target_": "methods.lora.LoRA", "name": "lora", "nope": 1}))
    text = str(caught.value)
    assert text.startswith("method lora: ") and "nope" in text and "\n" not in text


def test_a_class_that_is_not_a_method_is_refused():
    with pytest.raises(UserError, match=r"^method._target_ collections.OrderedDict is not a "
                                        r"methods.base.Method subclass$"):
        instantiate_method(OmegaConf.create({"_target_": "collections.OrderedDict"}))


def test_options_that_depend_on_the_widths_are_checked_against_the_backbone():
    (cfg,) = compose_all([["method=compacter"]])
    assert check_method(cfg).phm_dim == 4
    with open_dict(cfg):
        cfg.method.phm_dim = 3  # swin_micro's first stage is 32 wide
    with pytest.raises(UserError, match=r"^method compacter: phm_dim 3 must divide"):
        check_method(cfg)


def test_execution_reads_its_keys_and_the_defaults_agree_with_the_config():
    (cfg,) = compose_all([[]])
    assert Execution.from_config(cfg) == Execution()
    (cfg,) = compose_all([["compile=true", "prefetch=3", "data_on_gpu=0.5", "eval_every=2"]])
    assert Execution.from_config(cfg) == Execution(
        compile=True, channels_last=False, data_on_gpu=0.5, prefetch=3, fused_attn=False,
        eval_every=2)
