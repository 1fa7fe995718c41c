"""A method as the configuration names it: its options' checks, declared by its constructor's
annotations, and the instance (`instantiate_method`), with one-line errors.

A method is a `methods.base.Method` subclass named by `method._target_`; its options are the
other keys of the `method` group, which `method_keys` reads off the constructor (following
`**options` to the base classes), so a new method needs no line in `SCHEMA`.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Sequence

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmark.config.schema import Bool, Float, Int, Key, Str, Texts
from benchmark.errors import UserError
from methods.base import Method


def _key_for(annotation) -> Key | None:
    """The key of a constructor annotation (bool, int, float, str, a sequence of str, each
    possibly `| None`); None for what cannot be checked from the type alone."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _key_for(rest[0]) if len(rest) == 1 else None
        return None if inner is None else type(inner)(**{**inner.__dict__, "null": True})
    if annotation is bool:
        return Bool()
    if annotation is int:
        return Int()
    if annotation is float:
        return Float()
    if annotation is str:
        return Str()
    if origin is not None and issubclass(origin, Sequence) and args and args[0] is str:
        return Texts()
    return None


def method_keys(target: str) -> dict[str, Key | None]:
    """The options of the method class `target`, each with the key its constructor
    annotation declares (None: not annotated); `**options` is followed to the base class."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 (hydra raises several kinds; instantiation says why)
        return {}
    keys: dict[str, Key | None] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            hints = typing.get_type_hints(klass.__init__)
        except Exception:  # noqa: BLE001 (an annotation that does not resolve: no check)
            hints = {}
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            keys.setdefault(p.name, _key_for(hints[p.name]) if p.name in hints else None)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return keys



def instantiate_method(method_cfg: DictConfig) -> Method:
    """The method `method_cfg` configures; an unknown class or option is a one-line
    `UserError` naming the method."""
    try:
        method = instantiate(method_cfg)
    except InstantiationException as err:
        cause = err.__cause__ or err
        message = " ".join(str(cause).split())
        raise UserError(f"method {method_cfg.get('name')}: {message}") from None
    if not isinstance(method, Method):
        raise UserError(
            f"method._target_ {method_cfg.get('_target_')} is not a methods.base.Method subclass"
        )
    return method


def check_method(cfg: DictConfig) -> Method:
    """The method of a composed configuration, instantiated (unknown options and classes fail
    here) and its width-dependent options checked against the backbone's stage widths."""
    method = instantiate_method(cfg.method)
    check_widths = getattr(method, "check_widths", None)  # options that depend on the widths
    if check_widths is not None:
        try:
            check_widths([cfg.backbone.embed_dim * 2**s for s in range(len(cfg.backbone.depths))])
        except ValueError as err:
            raise UserError(f"method {cfg.method.name}: {err}") from None
    return method
