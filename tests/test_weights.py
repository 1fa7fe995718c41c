"""Pre-trained backbones from local files (protocol §2.1): timm state dicts in every container,
the official Microsoft layout, window-size changes, wrong architectures, missing weights."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.layers import resize_rel_pos_bias_table

from benchmark.backbone import build_backbone, build_swin, load_checkpoint, require_weights
from benchmark.errors import UserError
from benchmark.run import main as run_main
from tests.helpers import SMALL_DATA

ARCH = {"name": "swin_test", "embed_dim": 32, "depths": [2, 2, 2, 2],
        "num_heads": [1, 2, 4, 8], "window_size": 4, "patch_size": 4}


def arch(weights=None, **changes):
    value = None if weights is None else str(weights)
    return OmegaConf.create({**ARCH, **changes, "weights": value})


def source_model(image_size=64, **changes):
    """A 'pre-trained' timm Swin with a classifier head, as hub checkpoints have."""
    torch.manual_seed(1)
    return build_swin(arch(**changes), image_size, 0.0, num_classes=10)


def to_official(state: dict) -> dict:
    """timm's keys renamed back to the official Swin layout: patch merging at the end of a
    stage (timm keeps it at the start of the next), `head.` for the classifier, and the
    buffers the official code saves."""
    out = {}
    for key, value in state.items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if match:
            key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
        key = key.replace("head.fc.", "head.")
        out[key] = value
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    return out


def _assert_loaded(swin, source):
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    got = swin.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_timm_state_dicts_load_from_every_container(tmp_path, suffix):
    source = source_model()
    path = tmp_path / f"swin{suffix}"
    state = source.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    swin = build_swin(arch(), 64, 0.0)
    load_checkpoint(swin, path, "swin_test")
    _assert_loaded(swin, source)


def test_official_checkpoints_with_merging_at_the_end_of_stages(tmp_path):
    source = source_model()
    official = to_official(source.state_dict())
    assert "layers.0.downsample.reduction.weight" in official
    assert "layers.3.downsample.reduction.weight" not in official
    path = tmp_path / "swin_official.pth"
    torch.save({"model": official}, path)
    swin = build_swin(arch(), 64, 0.0)
    load_checkpoint(swin, path, "swin_test")
    _assert_loaded(swin, source)
    # through the backbone config, as backbone.weights=PATH does
    backbone = build_backbone(arch(path), 64, 0.0)
    merge = backbone.stages[0].merge.reduction.weight
    assert torch.equal(merge, source.layers[1].downsample.reduction.weight)


def test_a_different_window_resizes_the_relative_position_tables(tmp_path):
    source = source_model(image_size=128, window_size=8)  # windows 8, 8, 8, 4
    path = tmp_path / "swin_window8.pth"
    torch.save(source.state_dict(), path)
    swin = build_swin(arch(), 64, 0.0)  # windows 4, 4, 4, 2
    load_checkpoint(swin, path, "swin_test")
    got, src = swin.state_dict(), source.state_dict()
    tables = [k for k in got if k.endswith("relative_position_bias_table")]
    assert tables
    for key in tables:
        block = swin.get_submodule(key.rsplit(".", 1)[0])
        assert got[key].shape != src[key].shape
        resized = resize_rel_pos_bias_table(
            src[key], new_window_size=block.window_size, new_bias_shape=got[key].shape
        )
        torch.testing.assert_close(got[key], resized)
    for key, value in got.items():
        if key not in tables:
            assert torch.equal(value, src[key]), key


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"embed_dim": 48, "num_heads": [2, 4, 8, 16]}, "has shape"),  # a wider model
        ({"depths": [2, 2, 4, 2]}, "unexpected tensor layers.2.blocks.2"),  # a deeper one
        ({"depths": [2, 2, 1, 2]}, "layers.2.blocks.1"),  # a shallower one: missing tensors
        ({"num_heads": [2, 2, 4, 8]}, "heads"),  # other head counts
    ],
)
def test_a_checkpoint_of_another_architecture_is_one_line_naming_the_tensor(
    tmp_path, changes, needle
):
    path = tmp_path / "other.pth"
    torch.save(source_model(**changes).state_dict(), path)
    swin = build_swin(arch(), 64, 0.0)
    with pytest.raises(UserError) as err:
        load_checkpoint(swin, path, "swin_test")
    message = str(err.value)
    assert "\n" not in message and needle in message and str(path) in message
    assert "does not fit backbone swin_test" in message


def test_unreadable_checkpoints_are_one_line(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        load_checkpoint(build_swin(arch(), 64, 0.0), path)
    nested = tmp_path / "nested.pth"
    torch.save({"model": {"a": 1}}, nested)
    with pytest.raises(UserError, match="state dict of tensors"):
        load_checkpoint(build_swin(arch(), 64, 0.0), nested)


def test_a_wrong_checkpoint_on_the_command_line_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "wide.pth"
    torch.save(source_model(embed_dim=48, num_heads=[2, 4, 8, 16]).state_dict(), path)
    code = run_main(["method=decoders_only", "budget=smoke", *SMALL_DATA, "progress=false",
                     f"backbone.weights={path}", f"results_dir={tmp_path / 'results'}"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[-1] and "has shape" in lines[-1]


def test_real_data_without_weights_names_the_checkpoint_to_obtain(tmp_path, capsys):
    cfg = OmegaConf.load("benchmark/conf/backbone/swin_tiny.yaml")
    with pytest.raises(UserError) as err:
        require_weights(cfg, "pascal_context")
    assert "swin_tiny_patch4_window7_224.ms_in1k" in str(err.value)
    assert "swin_tiny_patch4_window7_224.pth" in str(err.value)
    assert "backbone.weights=none" in str(err.value)
    require_weights(cfg, "synthetic")  # synthetic runs may start from random weights
    cfg.weights = "none"
    require_weights(cfg, "nyud")  # on purpose

    root = tmp_path / "NYUD_MT"
    for folder in ("images", "gt_sets", "segmentation", "depth", "normals"):
        (root / folder).mkdir(parents=True)
    for split in ("train", "val"):
        (root / "gt_sets" / f"{split}.txt").write_text("0001\n")
    for name in ("swin_small", "swin_base"):
        assert run_main([f"backbone={name}", "dataset=nyud", f"dataset.root={root}",
                         "method=full_ft", "budget=smoke"]) == 2
        assert f"{name}_patch4_window7_224.ms_in1k" in capsys.readouterr().err


def test_unset_weights_on_synthetic_data_warn_once(capsys):
    cfg = arch()
    build_backbone(cfg, 64, 0.0)
    build_backbone(cfg, 64, 0.0)
    err = capsys.readouterr().err
    assert err.count("random weights") == 1
    build_backbone(arch("none"), 64, 0.0)  # none: on purpose, silent
    assert "random weights" not in capsys.readouterr().err
