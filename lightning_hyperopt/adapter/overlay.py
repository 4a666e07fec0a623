"""The tuned values as a LightningCLI overlay: ``fit --config config.yaml --config tuned.yaml``
(without the callback) trains with them fixed.

Each tuned value is written where the run's config set its starting value, found by name and
value:

    WeightDecay     the optimizer's ``weight_decay`` (``optimizer.init_args``), else a model
                    argument ``weight_decay`` / ``wd`` equal to λ₀
    LearningRate    the optimizer's ``lr``, else a model argument ``lr`` / ``learning_rate`` equal
                    to the configured base learning rate; the value written is λ · that rate,
                    and the schedule's other rates beside it (``final_lr``, ``min_lr``, a
                    scheduler's ``eta_min``, …) are multiplied by λ too: λ scaled the whole
                    schedule, η_t = λ · lr_t
    Momentum        the optimizer's ``momentum`` or ``betas`` entry, else a model argument
    adopted dropout a model argument holding the dropout rate p = 1 − λ₀ (``dropout``, ``p``, …);
                    the value written is p = 1 − λ
    a declared λ    a model argument equal to λ₀ named as the hyperparameter, or ``init_<name>``
                    / ``<name>_init``, or a longer word it abbreviates (``lam`` → ``init_lambda``)

A value with no such place, or two values for one place, is not written: the note says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """One tuned value and where it may go.

    Attributes:
        name: the hyperparameter's name (as logged).
        names: the config keys that may hold it, by priority.
        matches: whether a config value is the starting value (λ₀, or what it was derived from).
        value: what to write there, given the config's value (e.g. [λ, β₂] for ``betas``).
        optimizer: the optimizer's own arguments are a place for it (param-group settings).
        scale: a learning-rate factor λ: the schedule's other rates (:func:`schedule_rates`)
            are multiplied by it too.
        abbreviates: a one-word config key (``init_`` / ``_init`` aside) that begins with one
            of ``names`` is a place too (``lam`` for ``init_lambda``, not ``lam_bounds``).
    """

    name: str
    names: tuple[str, ...]
    matches: Callable[[Any], bool]
    value: Callable[[Any], Any]
    optimizer: bool = False
    scale: float | None = None
    abbreviates: bool = False


def close(a: Any, b: float) -> bool:
    """``a`` is a number (not a bool) equal to ``b`` up to float round-off."""
    if isinstance(a, bool) or not isinstance(a, int | float):
        return False
    return math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-15)


def _sections(config: Mapping[str, Any], optimizer: bool) -> list[tuple[KeyPath, Mapping]]:
    """The config sections a value may go in: the optimizer's arguments (where LightningCLI
    configures the optimizer), then the model's (its ``init_args`` in subclass mode)."""
    found: list[tuple[KeyPath, Mapping]] = []
    for key in ("optimizer", "model") if optimizer else ("model",):
        section = config.get(key)
        if not isinstance(section, Mapping):
            continue
        if isinstance(section.get("init_args"), Mapping):
            found.append(((key, "init_args"), section["init_args"]))
        elif "class_path" not in section:
            found.append(((key,), section))
    return found


def _keys(section: Mapping[str, Any], entry: Entry) -> list[str]:
    """The keys of ``section`` that may hold ``entry``, by priority."""
    keys = [name for name in entry.names if name in section]
    if entry.abbreviates:
        words = [k.removeprefix("init_").removesuffix("_init") for k in section]
        keys += [
            k
            for k, word in zip(section, words)
            if k not in keys
            and any(word.startswith(n) and "_" not in word[len(n) :] for n in entry.names)
        ]
    return keys


def place(config: Mapping[str, Any], entry: Entry) -> tuple[KeyPath, Any] | None:
    """(the key path of ``entry``'s value in ``config``, the value to write there), or None."""
    for prefix, section in _sections(config, entry.optimizer):
        for name in _keys(section, entry):
            if entry.matches(section[name]):
                return (*prefix, name), entry.value(section[name])
    return None


SCHEDULE_RATES = ("eta_min", "min_lr", "max_lr", "final_lr", "end_lr", "base_lr", "lr_min")


def schedule_rates(config: Mapping[str, Any], path: KeyPath) -> dict[KeyPath, float]:
    """The learning rates of the schedule around the rate at ``path``: the numeric keys named
    in :data:`SCHEDULE_RATES` beside it and in LightningCLI's ``lr_scheduler`` arguments."""
    sections: list[tuple[KeyPath, Mapping]] = []
    parent: Any = config
    for key in path[:-1]:
        parent = parent[key]
    sections.append((path[:-1], parent))
    scheduler = config.get("lr_scheduler")
    if isinstance(scheduler, Mapping):
        args = scheduler.get("init_args")
        if isinstance(args, Mapping):
            sections.append((("lr_scheduler", "init_args"), args))
        elif "class_path" not in scheduler:
            sections.append((("lr_scheduler",), scheduler))
    found = {}
    for prefix, section in sections:
        for key, value in section.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if key in SCHEDULE_RATES and numeric and (*prefix, key) != path:
                found[(*prefix, key)] = float(value)
    return found


def tuned_overlay(
    config: Mapping[str, Any], entries: Sequence[Entry]
) -> tuple[dict[str, Any], list[str]]:
    """(the overlay, a note per value it leaves out): each entry at its :func:`place`."""
    placed: dict[KeyPath, list[tuple[str, Any]]] = {}
    notes = []
    for entry in entries:
        found = place(config, entry)
        if found is None:
            notes.append(f"{entry.name}: no config entry holds its starting value")
            continue
        placed.setdefault(found[0], []).append((entry.name, found[1]))
        if entry.scale is not None:
            for path, rate in schedule_rates(config, found[0]).items():
                placed.setdefault(path, []).append((entry.name, rate * entry.scale))
    overlay: dict[str, Any] = {}
    for path, values in placed.items():
        if len({repr(v) for _, v in values}) > 1:
            names = ", ".join(n for n, _ in values)
            notes.append(f"{names}: one config entry ({'.'.join(path)}) for different values")
            continue
        target = overlay
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = values[0][1]
    _keep_class_paths(config, overlay)
    return overlay, notes


def _keep_class_paths(config: Mapping[str, Any], overlay: dict[str, Any]) -> None:
    """A section given in subclass mode keeps its ``class_path`` beside the new ``init_args``."""
    for key, section in overlay.items():
        original = config.get(key)
        if not isinstance(section, dict):
            continue
        if "init_args" in section and isinstance(original, Mapping) and "class_path" in original:
            overlay[key] = {"class_path": original["class_path"], **section}


def write_overlay(path: Path, overlay: Mapping[str, Any], header: Sequence[str]) -> None:
    """``overlay`` as YAML at ``path``, after ``header`` as comment lines."""
    lines = [f"# {line}" if line else "#" for line in header]
    body = yaml.safe_dump(dict(overlay), sort_keys=False) if overlay else "{}\n"
    path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
