"""The public task API: any torch model, named by import path, on the one code path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import fedinfra
from fedinfra.config import JobSpec, load_job
from fedinfra.config.wire import TrainInstruction
from fedinfra.errors import ConfigError
from fedinfra.models import build_model, get_weights
from fedinfra.site.context import site_context
from fedinfra.site.round import run_round
from fedinfra.site.tasks import job_model, job_task
from fedinfra.task import Table, Task, load_task, new_model
from fedinfra.task.builtin import TabularTask
from tests.unit.task_app_site import install_task

USER_TASK = '''
from torch import nn

import fedinfra


class NormNet(fedinfra.Task):
    kind = "binary"

    def build_model(self):
        width = int(self.config.get("width", 8))
        return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2))


class Buffered(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(nn.init.ones_(nn.Linear(4, 2).weight.detach().clone()))
        self.register_buffer("seen", nn.init.zeros_(nn.Linear(1, 1).weight.detach().clone()))

    def forward(self, x):
        return x @ self.weight.t()


class BufferedTask(fedinfra.Task):
    def build_model(self):
        return nn.Sequential(Buffered())


class NotATask:
    pass


class Broken(fedinfra.Task):
    def __init__(self, config):
        super().__init__(config)
        raise ValueError("width must be even")
'''

SITE = '''
name = "clinic-a"
organisation = "Example Clinic"
jurisdiction = "DE"
sector = "health"
lawful_basis = "public-task"
art9_condition = "research-statistics"
purposes = ["medical-research"]
data_categories = ["health"]
data_subjects = ["patients"]
retention_days = 3650

[dpia]
reference = "DPIA-1"
sha256 = "ef981a790bd81402c1b1160e8acaf7e00e4086d17b4d4cf25ef2b043114cf91b"
date = 2025-03-01

[[agreements]]
kind = "dpa"
reference = "DPA-1"
signed = 2025-02-10

[budget]
epsilon_per_run = 8.0
epsilon_lifetime = 40.0
delta = 1e-5

[dataset]
path = "rows.csv"
label_column = "outcome"
feature_columns = ["a", "b", "c", "d"]
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_task_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _site(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["a,b,c,d,outcome", *(",".join(f"{v:.4f}" for v in row) + f",{t}" for row, t in zip(x, y, strict=True))]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "site.toml").write_text(SITE)
    return tmp_path / "site.toml"


def test_task_is_exported_from_the_package_root() -> None:
    assert fedinfra.Task is Task
    assert "Task" in fedinfra.__all__


def test_job_names_its_task_by_import_path_and_passes_its_config(tmp_path: Path, user_module: str) -> None:
    path = tmp_path / "job.toml"
    path.write_text(f'[task]\nref = "{user_module}:NormNet"\n[task.config]\nwidth = 6\n')
    job = load_job(path)

    task = job_task(job)

    assert type(task).__name__ == "NormNet"
    assert task.config == {"width": 6}
    assert new_model(task, seed=0)[1].num_features == 6


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_xyz:Task", "cannot be imported"),
        ("{mod}:NotATask", "not a fedinfra.Task subclass"),
        ("{mod}:Missing", "not a fedinfra.Task subclass"),
        ("{mod}:Broken", "rejected its [task.config]: width must be even"),
    ],
)
def test_a_bad_task_reference_is_one_line_naming_it(user_module: str, ref: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_task(ref.format(mod=user_module), {})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_task_ref_must_look_like_module_colon_class() -> None:
    with pytest.raises(ValueError, match="task"):
        JobSpec.model_validate({"task": {"ref": "os.system('x')"}})


def test_the_built_in_scenarios_are_tasks_with_the_old_models_weights() -> None:
    job = JobSpec.model_validate({"model": {"kind": "mlp", "hidden": [16]}, "data": {"dataset": "wine"}, "seed": 4})

    task = job_task(job)
    model, changes = job_model(job)
    old = build_model(job.model, num_features=13, num_classes=3, seed=4)

    assert isinstance(task, TabularTask)
    assert changes == ()
    assert task.expected_features() == 13
    for name, value in get_weights(old).items():
        assert np.array_equal(value, get_weights(model)[name])


def test_under_dp_sgd_batchnorm_becomes_groupnorm_at_coordinator_and_site_alike(user_module: str) -> None:
    job = JobSpec.model_validate(
        {"task": {"ref": f"{user_module}:NormNet"}, "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0}}
    )

    model, changes = job_model(job)

    assert changes == ("1: BatchNorm1d -> GroupNorm",)
    assert not any("running" in k for k in model.state_dict())


def test_a_trainable_layer_dp_sgd_cannot_cover_is_refused_naming_it(user_module: str) -> None:
    job = JobSpec.model_validate(
        {"task": {"ref": f"{user_module}:BufferedTask"}, "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0}}
    )

    with pytest.raises(ConfigError) as info:
        job_model(job)

    assert "'0' (Buffered)" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_deployed_site_trains_a_user_task_with_dp_sgd_from_its_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_module = f"deployed_task_{abs(hash(tmp_path)) % 10**8}"
    install_task(user_module, USER_TASK, tmp_path, monkeypatch)  # the task arrives inside the app the site approved
    manifest = _site(tmp_path)
    job = JobSpec.model_validate(
        {
            "task": {"ref": f"{user_module}:NormNet", "config": {"width": 4}},
            "rounds": 2,
            "sites": {"count": 2, "min_sites": 2},
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "accountant": "rdp"},
        }
    )
    ctx = site_context({"site-manifest": str(manifest), "state-dir": str(tmp_path / "home")}, job)
    weights = get_weights(job_model(job)[0])
    instruction = TrainInstruction(run_id="run-t", round=1, phase="train", job=job.model_dump(mode="json"))

    out = run_round(ctx, instruction, weights, tls=True, sampled=1)

    assert ctx.data.x.shape == (96, 4)  # 80 % of 120 rows; the rest is the evaluation part
    assert ctx.data.test_x is not None
    assert ctx.data.test_x.shape == (24, 4)
    assert out.update is not None
    assert set(out.update) == set(weights)
    assert out.report.details["model_changes"] == ["1: BatchNorm1d -> GroupNorm"]
    assert 0 < float(out.report.details["epsilon_total"]) <= 3.0  # type: ignore[arg-type]
    assert any(np.abs(v).sum() > 0 for v in out.update.values())


def test_a_task_may_bring_its_own_training_step() -> None:
    import torch
    from torch import nn

    from fedinfra.task.training import train_plain

    calls: list[int] = []

    class Counting(Task):
        def build_model(self) -> nn.Module:
            return nn.Linear(3, 2)

        def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: nn.Module) -> torch.Tensor:
            calls.append(len(x))
            out: torch.Tensor = loss(model(x), y) + 0.0 * sum(p.sum() for p in model.parameters())
            return out

    task = Counting()
    table = Table(np.ones((10, 3), dtype=np.float32), np.zeros(10, dtype=np.int64))
    data = task.load_data(fedinfra.DataSource(read=lambda: table))
    x, y = data.train.tensors  # type: ignore[attr-defined]

    train_plain(task, new_model(task, seed=0), x.numpy(), y.numpy(), epochs=1, batch_size=4, lr=0.1, seed=0)

    assert Counting.overrides_training_step()
    assert sum(calls) == len(x) == 8


COUNTING_TASK = '''
import torch
from torch import nn

import fedinfra


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]  # a function of the data that no gradient covers
        return x


class CountingTask(fedinfra.Task):
    kind = "binary"

    def build_model(self):
        return nn.Sequential(Counter(), nn.Linear(4, 2))
'''


def test_under_dp_sgd_a_buffer_changed_by_training_never_leaves_the_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"counting_task_{abs(hash(tmp_path)) % 10**8}"
    install_task(name, COUNTING_TASK, tmp_path, monkeypatch)
    manifest = _site(tmp_path)
    job = JobSpec.model_validate(
        {
            "task": {"ref": f"{name}:CountingTask"},
            "sites": {"count": 2, "min_sites": 2},
            "privacy": {"mechanism": "dp-sgd", "epsilon": 3.0, "accountant": "rdp"},
        }
    )
    ctx = site_context({"site-manifest": str(manifest), "state-dir": str(tmp_path / "home")}, job)
    weights = get_weights(job_model(job)[0])
    instruction = TrainInstruction(run_id="run-b", round=1, phase="train", job=job.model_dump(mode="json"))

    out = run_round(ctx, instruction, weights, tls=True, sampled=1)

    assert out.update is not None
    assert out.report.details["buffers_withheld"] == ["0.seen"]
    assert not out.update["0.seen"].any()
    assert out.update["1.weight"].any()
