"""Both Lightning namespaces: ``pytorch_lightning`` and the unified ``lightning.pytorch``.

They are two copies of the same code with distinct classes: a ``pytorch_lightning.Callback`` is
not a ``lightning.pytorch.Callback``, and Lightning refuses to mix them in one Trainer. The
callback therefore subclasses the ``Callback`` of every namespace that is installed (so either
Trainer and either ``LightningCLI`` accept it), and every other Lightning class it needs is taken
from the namespace of the Trainer it runs in.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

NAMESPACES = ("pytorch_lightning", "lightning.pytorch")


def installed() -> list[ModuleType]:
    """The Lightning namespaces that import here (``pytorch_lightning`` is a dependency)."""
    found = []
    for name in NAMESPACES:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    if not found:
        raise ImportError(
            "lightning_hyperopt needs PyTorch Lightning: `pip install pytorch-lightning` (or the "
            "unified `lightning` package)"
        )
    return found


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` class of every installed namespace."""
    return tuple(ns.Callback for ns in installed())


def namespace_of(obj: Any) -> ModuleType:
    """The Lightning namespace (``pytorch_lightning`` or ``lightning.pytorch``) of a Trainer,
    LightningModule or strategy instance, from the module its class (or a base) comes from."""
    for cls in type(obj).__mro__:
        module = cls.__module__
        for name in NAMESPACES:
            if module == name or module.startswith(name + "."):
                return importlib.import_module(name)
    raise TypeError(f"{type(obj).__name__} is not a PyTorch Lightning object")
