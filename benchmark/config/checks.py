"""Checking a composed configuration before anything trains: every key against `SCHEMA`
(a method's options against its constructor), the rules that join several keys, the method
itself, and, for a run, the dataset's files, the backbone's weights and the results
directory. Each problem is one `UserError` line naming the key and the fix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from benchmark.config.methods import check_method, method_keys
from benchmark.config.schema import SCHEMA, leaf_keys
from benchmark.errors import UserError


def normalise(cfg: DictConfig) -> None:
    """Forms a user may write for convenience, made canonical: `dataset.tasks=semseg`."""
    tasks = cfg.dataset.get("tasks")
    if isinstance(tasks, str):
        with open_dict(cfg):
            cfg.dataset.tasks = [tasks]


def check_config(cfg: DictConfig) -> None:
    """Check every key of a composed configuration against `SCHEMA` (method options
    against the method's constructor), then the rules that join several keys."""
    normalise(cfg)
    values = leaf_keys(cfg)
    target = values.get("method._target_")
    options = method_keys(target) if isinstance(target, str) else {}
    for key, value in values.items():
        if key in SCHEMA:
            SCHEMA[key].check(key, value)
        elif key.startswith("method."):
            spec = options.get(key.split(".", 1)[1])
            if spec is not None:
                spec.check(key, value)
    check_joint(cfg)


def backbone_multiple(backbone: DictConfig) -> int:
    """Image sizes `backbone` takes are multiples of this: the patch size times 2 per
    patch merging, so that every stage's map has whole patches, unpadded."""
    return int(backbone.patch_size) * 2 ** (len(backbone.depths) - 1)


def check_joint(cfg: DictConfig) -> None:
    backbone, dataset, budget = cfg.backbone, cfg.dataset, cfg.budget
    if len(backbone.num_heads) != len(backbone.depths):
        raise UserError(
            f"backbone.num_heads {list(backbone.num_heads)} needs one entry per stage of "
            f"backbone.depths {list(backbone.depths)}"
        )
    for i, heads in enumerate(backbone.num_heads):
        width = backbone.embed_dim * 2**i
        if width % heads:
            raise UserError(
                f"backbone.num_heads[{i}]={heads} does not divide stage {i + 1}'s width {width} "
                f"(backbone.embed_dim={backbone.embed_dim} doubled per stage)"
            )
    multiple = backbone_multiple(backbone)
    size = dataset.image_size
    if size % multiple:
        low = max(multiple, size // multiple * multiple)
        raise UserError(
            f"dataset.image_size={size}: backbone {backbone.name} takes multiples of {multiple} "
            f"(patch {backbone.patch_size} x 2^{len(backbone.depths) - 1} merges), e.g. "
            f"{low} or {low + multiple}"
        )
    if "train_size" in dataset and dataset.train_size < budget.batch_size:
        raise UserError(
            f"dataset.train_size={dataset.train_size} is smaller than budget.batch_size="
            f"{budget.batch_size}: no full batch to train on; raise the one or lower the other"
        )


def validate(cfg: DictConfig, training: bool = False) -> None:
    """Every check of one composed configuration; `training` adds those only a run needs
    (the dataset's files, the backbone's weights), which counting does not."""
    from benchmark.backbone import require_weights, resolve_weights
    from benchmark.data import check_dataset, dataset_info
    from benchmark.precision import check_budget

    if OmegaConf.is_missing(cfg.method, "_target_"):
        raise UserError(
            f"method={cfg.method.name} needs method._target_=package.module.Class "
            "(a methods.base.Method subclass importable from here)"
        )
    check_config(cfg)  # every key's type and range
    check_method(cfg)  # unknown options and classes fail here
    check_budget(cfg.budget)  # `precision` against the deprecated `amp`
    dataset_info(cfg.dataset)
    if training:
        check_dataset(cfg.dataset)  # the root and its split lists exist
        require_weights(cfg.backbone, cfg.dataset.name)
        resolve_weights(cfg.backbone)  # the checkpoint file exists


# -- output paths ------------------------------------------------------------------------------


def check_output_dir(path: str | Path, key: str) -> Path:
    """`path` exists as a directory (created if needed) in which files can be written; a
    one-line `UserError` naming the path and the problem otherwise."""
    path = Path(path).expanduser()
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise UserError(f"{key}={path}: {part} is a file, not a directory; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"{key}={path}: cannot write there ({reason.lower()}); give a writable directory"
        ) from None
    return path

