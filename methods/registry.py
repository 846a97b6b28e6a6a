"""The method registry (timm-style): ``@register_method("byol", ...)``, ``list_methods()``,
``get_method(name)``. Duplicate names are an error; an unknown name lists the valid ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from sslbench.benchmark.errors import unknown_name
from sslbench.methods.base import InputSpec, Method


@dataclass(frozen=True)
class MethodEntry:
    """A registered method.

    Attributes:
        name: registry name.
        cls: the :class:`Method` subclass; built as ``cls(encoder, feature_dim, config)``.
        config: the dataclass of the method's hyperparameters (validated at the boundary).
        family: e.g. "contrastive", "distillation".
        paper: short citation with a link.
        default_recipe: the recipe ``sslbench pretrain --method NAME`` starts from.
        needs_num_samples: the method keeps per-image state (InstDisc's memory bank) and is
            built with the training split's size as ``num_samples=`` (see :meth:`build`).
        needs_color: the method learns across colour channels (CMC, colorization): the engine
            refuses 1-channel data with a clear error.
        needs_input: the method converts pixels and is built with the data's
            :class:`~sslbench.methods.base.InputSpec` as ``input_spec=``.
    """

    name: str
    cls: Callable[..., Method]  # a Method subclass, built as cls(encoder, feature_dim, config)
    config: type
    family: str
    paper: str
    default_recipe: str
    needs_num_samples: bool = False
    needs_color: bool = False
    needs_input: bool = False

    def build(self, encoder: nn.Module, feature_dim: int, args: Mapping[str, Any],
              num_samples: int = 0, input_spec: InputSpec | None = None) -> Method:
        """Validates ``args`` against the method's config dataclass and builds the method.

        Args:
            encoder: the backbone.
            feature_dim: its output dimension.
            args: the method's hyperparameters (``Config.method_args``).
            num_samples: size of the training split (only methods with ``needs_num_samples``
                receive it; they reject 0).
            input_spec: the training input (only methods with ``needs_input`` receive it).
        """
        cfg = self.config(**args)
        extra: dict[str, Any] = {}
        if self.needs_num_samples:
            extra["num_samples"] = num_samples
        if self.needs_input:
            if input_spec is None:
                raise ValueError(f"method '{self.name}' needs input_spec")
            extra["input_spec"] = input_spec
        return self.cls(encoder, feature_dim, cfg, **extra)


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, *, config: type, family: str, paper: str, default_recipe: str,
                    needs_num_samples: bool = False, needs_color: bool = False,
                    needs_input: bool = False) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that registers a method under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is already registered by {_METHODS[name].cls}")
        _METHODS[name] = MethodEntry(name, cls, config, family, paper, default_recipe, needs_num_samples,
                                     needs_color, needs_input)
        return cls

    return wrap


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> MethodEntry:
    """Looks a method up.

    Raises:
        UnknownNameError: no such method; the message lists the valid names.
    """
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS, "`sslbench methods` lists them.")
    return _METHODS[name]
