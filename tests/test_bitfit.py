"""BitFit (methods/bitfit.py): its count on Swin-T / PASCAL and what trains."""

import torch

from methods.bitfit import BitFit
from tests.helpers import (
    DECODERS,
    PASCAL_SWIN_T,
    SWIN_T_BLOCKS,
    SWIN_T_STAGES,
    TASKS,
    assert_gradients,
    assert_overfits,
    blocky_batch,
    model_with,
    params_of,
    tiny_backbone,
)


def expected_bitfit() -> int:
    # qkv 3d, proj d, fc1 4d, fc2 d, norm1 d, norm2 d; patch conv and norm; merging norms
    blocks = sum(11 * d for d in SWIN_T_BLOCKS)
    return blocks + 96 + 96 + sum(4 * d for d in SWIN_T_STAGES[:3]) + DECODERS


def test_params_gives_the_count_of_the_formula():
    (row,) = params_of("method=bitfit", *PASCAL_SWIN_T)
    assert expected_bitfit() == row["trainable"] == 1_998_080
    assert (row["label"], row["paper_trainable_m"], row["encoder_mode"]) == (
        "bitfit", 2.85, "shared")
    assert row["decoders"] == DECODERS


def test_only_the_biases_train_and_get_gradients():
    backbone = tiny_backbone()
    model = model_with(BitFit().build_encoder(backbone, TASKS), backbone)
    assert_gradients(model, blocky_batch())
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    biases = {n for n, _ in model.encoder.named_parameters() if n.endswith(".bias")}
    assert trainable == biases
    assert not any("relative_position" in n or "reduction" in n for n in trainable)


def test_overfits_a_tiny_batch():
    backbone = tiny_backbone()
    torch.manual_seed(0)
    model = model_with(BitFit().build_encoder(backbone, TASKS), backbone)
    assert_overfits(model, blocky_batch(), steps=8, lr=1e-3)
