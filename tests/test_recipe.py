"""The paper budget's optimiser against the official MTLoRA optimiser's parameter groups."""

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from benchmark.config import compose_all, instantiate_method
from benchmark.data import dataset_info
from benchmark.errors import UserError
from benchmark.model import build_model
from benchmark.records import run_key
from benchmark.train import param_groups
from tests.helpers import PASCAL_SWIN_T, SWIN_T_HEADS, TASKS

# Swin-T, window 7: one (2 * 7 - 1)^2 x heads table per block, counted by hand:
# 169 * (2 * 3 + 2 * 6 + 6 * 12 + 2 * 24) = 169 * 138.
SWIN_T_TABLES, SWIN_T_TABLE_PARAMS = 12, 23_322


def swin_t_model(method: str, budget: str = "paper"):
    (cfg,) = compose_all([[*PASCAL_SWIN_T, f"method={method}", f"budget={budget}"]])
    with torch.device("meta"):
        model = build_model(
            instantiate_method(cfg.method), cfg.backbone, dataset_info(cfg.dataset), TASKS,
            drop_path=cfg.budget.drop_path, load_weights=False,
        )
    return cfg, model


def official_decayed(model) -> set[str]:
    """The official optimiser's rule with the empty skip list of the multi-task wrapper:
    every trainable parameter except 1-D ones and biases."""
    return {
        name for name, p in model.named_parameters()
        if p.requires_grad and p.ndim > 1 and not name.endswith(".bias")
    }


def decayed_names(model, groups) -> set[str]:
    ids = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("method", ["mtlora", "mtlora_plus", "full_ft"])
def test_the_paper_budget_decays_exactly_what_the_official_optimiser_decays(method):
    cfg, model = swin_t_model(method)
    assert cfg.budget.decay_position_tables is True
    groups = param_groups(model, cfg.budget.weight_decay, cfg.budget.decay_position_tables)
    decayed = decayed_names(model, groups)
    assert decayed == official_decayed(model)
    tables = {n: p for n, p in model.named_parameters() if "relative_position_bias_table" in n}
    assert len(tables) == SWIN_T_TABLES and set(tables) <= decayed
    assert sum(p.numel() for p in tables.values()) == SWIN_T_TABLE_PARAMS
    assert 169 * sum(SWIN_T_HEADS) == SWIN_T_TABLE_PARAMS
    # every trainable parameter is in exactly one group, the exempt ones without decay
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_the_other_budgets_keep_the_tables_exempt_and_their_run_keys():
    for budget in ("quick", "smoke"):
        cfg, model = swin_t_model("mtlora", budget)
        assert cfg.budget.decay_position_tables is False
        groups = param_groups(model, cfg.budget.weight_decay, cfg.budget.decay_position_tables)
        decayed = decayed_names(model, groups)
        tables = {n for n in official_decayed(model) if "relative_position_bias_table" in n}
        assert len(tables) == SWIN_T_TABLES  # MTLoRA trains the tables
        assert decayed == official_decayed(model) - tables
        # at false, the option stays out of the run key: committed results keep their key
        without = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        del without.budget["decay_position_tables"]
        assert run_key(cfg) == run_key(without)
        with open_dict(cfg):
            cfg.budget.decay_position_tables = True
        assert run_key(cfg) != run_key(without)


def test_a_non_boolean_option_is_refused():
    _, model = swin_t_model("mtlora", "smoke")
    with pytest.raises(UserError, match="budget.decay_position_tables must be true or false"):
        param_groups(model, 0.05, "yes")
