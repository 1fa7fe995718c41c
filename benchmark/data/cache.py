"""Where rendered and prepared data is cached: one folder for the synthetic renders
(`benchmark.data.synthetic`), the prepared real datasets (`benchmark.data.prepared`) and the
pre-trained upstream weights (`benchmark.pretrain`)."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from benchmark.config.parts import DataSpec


def cache_dir() -> pathlib.Path:
    """$MTPEFT_CACHE if set, else $XDG_CACHE_HOME/mtpeft, else ~/.cache/mtpeft."""
    env = os.environ.get("MTPEFT_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "mtpeft"


def cache_root(spec: DataSpec | DictConfig) -> pathlib.Path:
    """The cache folder of a `dataset` config: `dataset.cache_dir` when set, else
    `cache_dir()`."""
    from benchmark.data.registry import data_spec

    spec = data_spec(spec)
    return pathlib.Path(spec.cache_dir).expanduser() if spec.cache_dir else cache_dir()
