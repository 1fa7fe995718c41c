"""Shaping a backbone: which parameters train, and replacing its linears by wrappers.

- `freeze`, `unfreeze_norms`: the trainability every method starts from;
- `FrozenLinearWrapper`: the base of a layer built around a frozen `nn.Linear` (`.base`);
- `inject`: replaces named `nn.Linear` modules anywhere inside a module by wrappers built
  by a factory, so that methods place their layers without knowing the host's layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze_norms(module: nn.Module) -> nn.Module:
    """Make the weight and bias of every `nn.LayerNorm` inside `module` trainable."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.requires_grad_(True)
    return module


def frozen_linear(base: nn.Linear) -> nn.Linear:
    """`base`, checked to be an `nn.Linear`, with its parameters frozen."""
    if not isinstance(base, nn.Linear):
        raise TypeError(f"a low-rank wrapper needs an nn.Linear, got {type(base).__name__}")
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def dropout_module(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class FrozenLinearWrapper(nn.Module):
    """A layer built around a frozen `nn.Linear` kept as `self.base`: it has the base's
    feature counts, so code that reads `in_features`/`out_features` sees no difference."""

    base: nn.Linear

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


def inject(
    module: nn.Module,
    targets: Iterable[str],
    factory: Callable[[nn.Linear], nn.Module],
) -> list[str]:
    """Replace the `nn.Linear`s of `module` named by `targets` with `factory(linear)`.

    A target matches a linear whose dotted path inside `module` equals it or ends with
    `.target` (`qkv` matches every `....attn.qkv`, `attn.proj` the attention projections
    only). Linears already wrapped (the `.base` of a `FrozenLinearWrapper`) are left alone.
    Returns the replaced paths; a target that matches nothing is an error (a misspelt name
    must not silently train nothing).
    """
    targets = list(targets)
    found: list[str] = []
    for path, child in module.named_modules():
        if type(child) is not nn.Linear or not path:
            continue
        parent_path, _, _ = path.rpartition(".")
        if isinstance(module.get_submodule(parent_path), FrozenLinearWrapper):
            continue
        if any(path == t or path.endswith("." + t) for t in targets):
            found.append(path)
    unmatched = [t for t in targets if not any(p == t or p.endswith("." + t) for p in found)]
    if unmatched:
        raise ValueError(f"no nn.Linear named {unmatched} to adapt")
    for path in found:
        parent_path, _, leaf = path.rpartition(".")
        parent = module.get_submodule(parent_path)
        setattr(parent, leaf, factory(getattr(parent, leaf)))
    return found
