"""Where the tuner meets Lightning's (and torchmetrics', torch's) internals: both Lightning
namespaces, every read of private state, and the one way objects are patched.

**Both namespaces.** ``pytorch_lightning`` and the unified ``lightning.pytorch`` are two copies
of the same code with distinct classes: a ``pytorch_lightning.Callback`` is not a
``lightning.pytorch.Callback``, and Lightning refuses to mix them in one Trainer. The callback
therefore subclasses the ``Callback`` of every namespace that is installed (so either Trainer
and either ``LightningCLI`` accept it), and every other Lightning class it needs is taken from
the namespace of the Trainer it runs in.

**Private state.** Each function below that reads a private attribute names the versions it
was checked against: pytorch-lightning and lightning 2.6.6, torchmetrics 1.9.0, torch 2.13.0.
Nothing else in the package reads private state of another library.

**Patches.** An attribute of one object replaced for a while (``LightningModule.backward``,
``optimizer.step``, ``LightningModule.log``) is a :class:`Patch`: set on the instance,
shadowing its class's, and put back exactly as it was.

**Lightning's conventions.** A configuration error is a :class:`ConfigurationError` (or
:class:`ConfigurationTypeError`): a ``MisconfigurationException`` of every installed namespace,
and still the ``ValueError`` (``TypeError``) it was; messages reach the user through the
namespace's ``rank_zero_info`` and ``rank_zero_warn``, on rank 0 only.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

NAMESPACES = ("pytorch_lightning", "lightning.pytorch")

#: Lightning objects, typed loosely: the adapter serves both Lightning namespaces
Trainer = Any
LightningModule = Any


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


def _misconfiguration_bases() -> tuple[type, ...]:
    """The ``MisconfigurationException`` of every installed namespace (``lightning_fabric``'s
    for ``pytorch_lightning``, ``lightning.fabric``'s for ``lightning.pytorch``)."""
    bases: list[type] = []
    for ns in installed():
        cls = importlib.import_module(
            f"{ns.__name__}.utilities.exceptions"
        ).MisconfigurationException
        if cls not in bases:
            bases.append(cls)
    return tuple(bases)


class ConfigurationError(*_misconfiguration_bases(), ValueError):  # type: ignore[misc]
    """A setting the tuner cannot work with, found before training (Lightning's
    ``MisconfigurationException``, and a ``ValueError``)."""


class ConfigurationTypeError(*_misconfiguration_bases(), TypeError):  # type: ignore[misc]
    """A setting of the wrong type, found before training (Lightning's
    ``MisconfigurationException``, and a ``TypeError``)."""


@contextlib.contextmanager
def configuration_errors() -> Iterator[None]:
    """Within the context, a ``ValueError`` becomes a :class:`ConfigurationError` and a
    ``TypeError`` a :class:`ConfigurationTypeError`, with the same message (the original is
    kept as the cause)."""
    try:
        yield
    except (ConfigurationError, ConfigurationTypeError):
        raise
    except TypeError as err:
        raise ConfigurationTypeError(str(err)) from err
    except ValueError as err:
        raise ConfigurationError(str(err)) from err


def save_config_of(trainer: Trainer) -> Any:
    """The ``SaveConfigCallback`` LightningCLI gave ``trainer`` (its ``config`` is the run's
    parsed configuration), or ``None`` for a run LightningCLI did not configure."""
    cli = importlib.import_module(f"{namespace_of(trainer).__name__}.cli")
    return next((c for c in trainer.callbacks if isinstance(c, cli.SaveConfigCallback)), None)


def saves_weights_only(trainer: Trainer) -> bool:
    """Whether one of the Trainer's ``ModelCheckpoint`` callbacks saves the weights only (and so
    no callback state)."""
    return any(getattr(c, "save_weights_only", False) for c in trainer.checkpoint_callbacks)


def info(obj: Any, message: str) -> None:
    """``message`` through ``rank_zero_info`` of ``obj``'s Lightning namespace (rank 0 only)."""
    name = namespace_of(obj).__name__
    importlib.import_module(f"{name}.utilities.rank_zero").rank_zero_info(message)


# ----------------------------------------------------------------------------------- patches
_MISSING = object()


class Patch:
    """``obj.name = value`` on the instance (shadowing the class's attribute, or replacing the
    instance's own) until :meth:`restore` puts back what was there, or removes it.

    Set with ``object.__setattr__``: no ``__setattr__`` of the object's class (``nn.Module``'s
    bookkeeping) runs, and restoring leaves no trace."""

    def __init__(self, obj: Any, name: str, value: Any) -> None:
        self.obj, self.name = obj, name
        self._saved = vars(obj).get(name, _MISSING)
        object.__setattr__(obj, name, value)

    def restore(self) -> None:
        """Put back the attribute as it was (idempotent)."""
        obj, self.obj = self.obj, None
        if obj is None:
            return
        if self._saved is _MISSING:
            if self.name in vars(obj):
                object.__delattr__(obj, self.name)
        else:
            object.__setattr__(obj, self.name, self._saved)


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """A :class:`Patch` for the duration of the context."""
    patch = Patch(obj, name, value)
    try:
        yield
    finally:
        patch.restore()


# ---------------------------------------------------------------------- logging cadence
def should_log(trainer: Trainer) -> bool:
    """Whether Lightning writes the metrics logged at the end of this training batch, called
    after its optimizer step: every ``log_every_n_steps`` optimizer steps, and at the last one.
    Public state only (``global_step`` has counted this batch's step; it is the stepped-batch
    count Lightning's logger connector tests, one ahead of it at this point)."""
    every = trainer.log_every_n_steps
    return every > 0 and (trainer.global_step % every == 0 or trainer.should_stop)


# ---------------------------------------------------------------------- private state: reads
def fit_validation_loader(trainer: Trainer) -> Any:
    """The fit's validation dataloader(s) as Lightning resolved them (``val_dataloaders`` of
    ``fit``, the datamodule's or the module's ``val_dataloader()``), or ``None``. Reads
    ``trainer.fit_loop.epoch_loop.val_loop._data_source`` (pytorch-lightning / lightning 2.6.6)."""
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    return source.dataloader() if source is not None and source.is_defined() else None


def before_batch_transfer(pl_module: LightningModule, batch: Any) -> Any:
    """The module's and datamodule's ``on_before_batch_transfer`` hooks on ``batch``, as
    Lightning's loops call them. Calls ``LightningModule._on_before_batch_transfer``
    (pytorch-lightning / lightning 2.6.6)."""
    return pl_module._on_before_batch_transfer(batch, dataloader_idx=0)


def grad_scaler_state(
    trainer: Trainer, optimizer: torch.optim.Optimizer
) -> tuple[Tensor | None, Tensor | None]:
    """(the loss scale the back-propagated losses carried, whether the scaler will skip this
    step) under a mixed-precision grad scaler (16-mixed on CUDA), else (None, None). Both stay
    on the device; at ``on_before_optimizer_step`` Lightning has already unscaled ``p.grad``.
    Reads ``torch.amp.GradScaler._per_optimizer_states`` and ``._scale`` (torch 2.13.0, through
    Lightning 2.6.6's ``precision_plugin.scaler``)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None, None
    found = scaler._per_optimizer_states[id(optimizer)].get("found_inf_per_device", {})
    skipped = torch.stack([f.reshape(()) for f in found.values()]).sum() > 0 if found else None
    return scaler._scale, skipped


def own_iterator(loader: Any) -> Iterator[Any]:
    """An iterator of the tuner's own over a DataLoader with persistent workers (``iter()``
    hands every caller the same one, which Lightning's validation loop would reset under us).
    Calls ``DataLoader._get_iterator`` (torch 2.13.0)."""
    return loader._get_iterator()


#: the torchmetrics ``Metric`` attributes besides its states that an update changes
_METRIC_COUNTERS = ("_update_count", "_computed", "_forward_cache")


def metric_state(metric: Any) -> dict[str, Any]:
    """A copy of a torchmetrics ``Metric``'s states and update counters, for
    :func:`restore_metric`. Reads ``Metric._defaults``, ``._update_count``, ``._computed`` and
    ``._forward_cache`` (torchmetrics 1.9.0)."""
    state = {name: _copy(getattr(metric, name)) for name in metric._defaults}
    for name in _METRIC_COUNTERS:
        state[name] = getattr(metric, name, None)
    return state


def restore_metric(metric: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`metric_state` copied."""
    with torch.no_grad():
        for name, value in state.items():
            setattr(metric, name, value)


def _copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    return list(value) if isinstance(value, list) else value
