"""Finding a task by its import path and building its model the same way everywhere."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedinfra.errors import ConfigError
from fedinfra.task.api import KINDS, Task

if TYPE_CHECKING:
    from torch import nn


def load_task(ref: str, config: Mapping[str, Any] | None = None) -> Task:
    """Import ``module:Class`` and construct it with ``config``.

    The module must already be importable (deployed: it ships inside the signed Flower
    App the site approved; simulated: it sits next to the job file). Nothing is fetched.
    """
    module_name, sep, class_name = ref.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"task.ref {ref!r} must be 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"task.ref {ref!r}: module {module_name!r} cannot be imported ({type(exc).__name__}); "
            "put it next to the job file or install it in the site's environment"
        ) from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Task):
        raise ConfigError(f"task.ref {ref!r}: {class_name!r} is not a fedinfra.Task subclass in {module_name!r}")
    if cls.kind not in KINDS:
        raise ConfigError(f"task {ref!r}: kind {cls.kind!r} is not one of {list(KINDS)}")
    try:
        return cls(dict(config or {}))
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"task {ref!r} rejected its [task.config]: {exc}") from exc


def new_model(task: Task, *, seed: int) -> nn.Module:
    """Build the task's model with torch seeded from ``seed``.

    The coordinator and every site call this with the same arguments, so they hold the
    same architecture and initial weights.
    """
    import torch

    torch.manual_seed(seed)
    try:
        model = task.build_model()
    except NotImplementedError as exc:
        raise ConfigError(str(exc)) from exc
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{type(task).__name__}.build_model returned {type(model).__name__}, not a torch.nn.Module")
    return model
