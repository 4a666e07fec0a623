"""Models of the paper's experiments, as LightningModules that declare their hyperparameters.

Import them from their modules (``experiments.models.mlp.MLP``), as the configs do.
Each is a ``pytorch_lightning.LightningModule`` whose logic lives in a namespace-free base class;
:func:`for_namespace` builds the same model on the unified ``lightning.pytorch`` package's
``LightningModule``, for programs that train with ``lightning.pytorch`` Trainers (Lightning
refuses to mix the two namespaces in one Trainer).
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_hyperopt._lightning import NAMESPACES

__all__ = ["MODELS", "for_namespace"]

#: short names of the models :func:`for_namespace` accepts, and their classes' dotted paths
MODELS = {
    "mlp": "experiments.models.mlp.MLP",
    "lstm_lm": "experiments.models.lstm_lm.LSTMLanguageModel",
}

_TWINS: dict[tuple[type, str], type] = {}


def _resolve(model: type | str) -> type:
    if not isinstance(model, str):
        return model
    path = MODELS.get(model, model)
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"model {model!r} not found; accepted: a LightningModule class, one of "
            f"{sorted(MODELS)}, or a dotted class path"
        ) from err


def _lightning_base(cls: type) -> tuple[str, type] | None:
    """(namespace, its ``LightningModule``) for a direct base of ``cls``, if any."""
    for name in NAMESPACES:
        try:
            ns = importlib.import_module(name)
        except ImportError:
            continue
        if ns.LightningModule in cls.__bases__:
            return name, ns.LightningModule
    return None


def for_namespace(model: type | str, namespace: str = "lightning.pytorch") -> Any:
    """``model``'s class built on ``namespace``'s ``LightningModule`` (cached: one class per
    model and namespace).

    ``model``: a class declared as ``class M(Logic, <namespace>.LightningModule)`` (as every model
    here is), a short name in :data:`MODELS` or a dotted class path. The twin has the same name,
    signature, methods and ``state_dict`` keys; it differs only in its Lightning base. A class
    already on ``namespace`` is returned as it is.
    """
    if namespace not in NAMESPACES:
        raise ValueError(f"namespace={namespace!r} is not supported; accepted: {list(NAMESPACES)}")
    cls = _resolve(model)
    found = _lightning_base(cls) if isinstance(cls, type) else None
    if found is None:
        raise TypeError(
            f"{cls!r} is not a model declared as `class M(Logic, LightningModule)`: for_namespace "
            "rebuilds the class over its Lightning-free bases"
        )
    own, base = found
    if own == namespace:
        return cls
    logic = tuple(b for b in cls.__bases__ if b is not base)
    own_body = [k for k in vars(cls) if k == "__init__" or not k.startswith("__")]
    if not logic or own_body:
        raise TypeError(
            f"{cls.__qualname__} defines its logic in its own body, not in a Lightning-free base "
            "class: for_namespace cannot rebuild it on another namespace"
        )
    key = (cls, namespace)
    if key not in _TWINS:
        target = importlib.import_module(namespace).LightningModule
        _TWINS[key] = type(
            cls.__name__,
            (*logic, target),
            {
                "__module__": cls.__module__,
                "__qualname__": f"{cls.__qualname__}[{namespace}]",
                "__doc__": cls.__doc__,
            },
        )
    return _TWINS[key]
