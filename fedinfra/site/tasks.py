"""The job's task and model, built the same way at the coordinator and at every site."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fedinfra.config import JobSpec
from fedinfra.task import Task, load_task, new_model
from fedinfra.task.builtin import TABULAR_REF

if TYPE_CHECKING:
    from torch import nn


def job_task(job: JobSpec) -> Task:
    """The task ``job`` trains: its ``[task]``, or the built-in task its ``model``/``data`` name."""
    return _task(job.model_dump_json())


@lru_cache(maxsize=16)
def _task(job_json: str) -> Task:
    job = JobSpec.model_validate_json(job_json)
    if job.task is not None:
        return load_task(job.task.ref, job.task.config)
    # The shape, not the data: a deployed site (fedinfra[edge], no scikit-learn) holds its
    # own copy of the table and must build the same model as the coordinator.
    from fedinfra.data.shapes import bundled_shape

    shape = bundled_shape(job.data.dataset)
    config = {
        "features": shape.features,
        "classes": shape.classes,
        "model": job.model.kind,
        "hidden": list(job.model.hidden),
    }
    return load_task(TABULAR_REF, config)


def eval_layout(job: JobSpec) -> tuple[tuple[str, int], ...]:
    """The layout of the job's evaluation sums, the same at the coordinator and every site."""
    return _eval_layout(job.model_dump_json())


@lru_cache(maxsize=16)
def _eval_layout(job_json: str) -> tuple[tuple[str, int], ...]:
    from fedinfra.task.metrics import sums_layout

    job = JobSpec.model_validate_json(job_json)
    task = job_task(job)
    model, _ = job_model(job, task)
    return sums_layout(task, model)


def job_model(job: JobSpec, task: Task | None = None) -> tuple[nn.Module, tuple[str, ...]]:
    """The job's initial model and the layers changed to make it trainable under DP-SGD.

    Under DP-SGD, layers that mix the examples of a batch (BatchNorm) void per-sample
    clipping (Abadi et al. 2016); Opacus' ``ModuleValidator.fix`` replaces them with
    GroupNorm. The coordinator and the sites both build the replaced model, so their
    state dicts agree; the changes are returned to be reported and audited. A layer
    Opacus cannot make private raises :class:`~fedinfra.errors.ConfigError` naming it.
    """
    model = new_model(task or job_task(job), seed=job.seed)
    if job.privacy.mechanism != "dp-sgd":
        return model, ()
    from fedinfra.privacy import make_private_compatible

    private, changes = make_private_compatible(model)
    _refuse_uncovered_layers(private)
    return private, changes


def _refuse_uncovered_layers(model: nn.Module) -> None:
    """Refuse a trainable layer that also keeps buffers: DP-SGD cannot cover them.

    A buffer updated in the forward pass (running statistics) is a function of every
    example of a batch and escapes per-sample clipping (the reason Opacus' own
    ``GradSampleModule.validate`` rejects such layers); the message names the first one.
    """
    from fedinfra.errors import ConfigError

    for name, module in model.named_modules():
        trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        if trainable and any(True for _ in module.buffers(recurse=False)):
            raise ConfigError(
                f"model layer {name or '<root>'!r} ({type(module).__name__}) is trainable and keeps buffers, which "
                "DP-SGD cannot make private; replace it (BatchNorm -> GroupNorm) or use privacy.mechanism='user-dp'"
            )


def withhold_buffers(model: nn.Module, update: dict[str, Any]) -> list[str]:
    """Zero the update of every buffer training changed; return their names.

    DP-SGD (Abadi et al. 2016) bounds and noises *gradients*: a buffer a forward pass
    updates (a counter, running statistics of a custom layer) is a function of the data
    outside that accounting, so its change never leaves the site. Under user-level DP the
    whole update, buffers included, is clipped and noised (McMahan et al. 2018) and
    nothing is withheld; under encryption alone nothing is private anyway.
    """
    import numpy as np

    params = {name for name, _ in model.named_parameters()}
    withheld = []
    for name in update:
        if name not in params and np.any(update[name] != 0):
            update[name] = np.zeros_like(update[name])
            withheld.append(name)
    return withheld
