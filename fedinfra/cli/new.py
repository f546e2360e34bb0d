"""``fedinfra new NAME``: scaffold a task project, as ``flwr new`` scaffolds a Flower App.

The project holds a ``pyproject.toml``, a task module (a :class:`fedinfra.Task` subclass),
a ``job.toml`` naming it, a ``site.toml`` declaring a site's data, a small data file and a
test; ``fedinfra simulate --job NAME/job.toml`` runs it as written.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from fedinfra.cli._common import OutputFormat, console, guarded, print_json

PYPROJECT = """[project]
name = "{name}"
version = "0.1.0"
description = "A fedinfra task"
requires-python = ">=3.11"
dependencies = ["fedinfra"]

[tool.pytest.ini_options]
pythonpath = ["."]
"""

TASK = '''"""The {name} task: the model and how a site's data becomes torch datasets."""

from __future__ import annotations

from torch import nn

import fedinfra


class {cls}(fedinfra.Task):
    """A small MLP over the rows of the site's table (see site.toml's [dataset])."""

    kind = "binary"  # or "multiclass" / "regression": fixes the loss default and the metrics

    def build_model(self) -> nn.Module:
        """Any torch.nn.Module; the framework seeds torch first, so every party builds the same."""
        hidden = int(self.config.get("hidden", 16))
        return nn.Sequential(nn.Linear(int(self.config["features"]), hidden), nn.ReLU(), nn.Linear(hidden, 2))
'''

JOB = """# A job: which task, on which data, with which protection.
name = "{name}"
scenario = "hospital"
rounds = 5
policy_packs = ["gdpr", "hipaa"]

[task]
ref = "{module}:{cls}"

[task.config]
features = 4
hidden = 16

[data.source]        # simulation: this data set is split among sites.count simulated sites
path = "data/rows.csv"
format = "csv"
label_column = "outcome"

[data]
partition = "iid"

[sites]
count = 3
min_sites = 2

[training]
local_epochs = 1
batch_size = 100000
lr = 1.0

[privacy]
mechanism = "dp-sgd"
epsilon = 8.0
delta = 1e-5
max_grad_norm = 1.0
accountant = "rdp"

[secure_aggregation]
mode = "secagg"
max_sites = 3
max_dropouts = 0
max_colluders = 0
min_contributors = 2
"""

SITE = """# A deployed site's manifest: who it is, on which basis it takes part, what data it holds.
name = "site-a"
organisation = "Example Hospital"
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
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
date = 2025-01-01

[[agreements]]
kind = "dpa"
reference = "DPA-1"
signed = 2025-01-01

[budget]
epsilon_per_run = 8.0
epsilon_lifetime = 40.0
delta = 1e-5

[dataset]
path = "data/rows.csv"
format = "csv"
label_column = "outcome"
feature_columns = ["a", "b", "c", "d"]
"""

TEST = '''"""The task builds its model and learns from one site's rows."""

from __future__ import annotations

import torch
from fedinfra.task import new_model

from {module} import {cls}


def test_the_model_maps_four_features_to_two_logits() -> None:
    task = {cls}({{"features": 4}})

    model = new_model(task, seed=0)

    assert model(torch.zeros(3, 4)).shape == (3, 2)
'''


def _rows() -> str:
    import math

    lines = ["a,b,c,d,outcome"]
    for i in range(200):
        a, b = math.sin(i * 0.7), math.cos(i * 1.3)
        c, d = math.sin(i * 0.11 + 1), math.cos(i * 0.23 + 2)
        lines.append(f"{a:.4f},{b:.4f},{c:.4f},{d:.4f},{int(a + b > 0)}")
    return "\n".join(lines) + "\n"


def scaffold(name: str, parent: Path) -> Path:
    """Write the project ``parent/name``; refuse a name that is not an identifier or a folder that exists."""
    from fedinfra.errors import ConfigError

    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise ConfigError("NAME must be lower-case letters, digits and _ (a Python module name), e.g. xray_task")
    root = parent / name
    if root.exists():
        raise ConfigError(f"{root}: already exists; choose another NAME or remove it")
    module = f"{name}_task" if not name.endswith("_task") else name
    suffix = "" if name.endswith("_task") else "Task"
    cls = "".join(part.capitalize() for part in name.split("_") if part) + suffix
    values = {"name": name, "module": module, "cls": cls}
    (root / "data").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT.format(**values))
    (root / f"{module}.py").write_text(TASK.format(**values))
    (root / "job.toml").write_text(JOB.format(**values))
    (root / "site.toml").write_text(SITE)
    (root / "data" / "rows.csv").write_text(_rows())
    (root / "tests" / f"test_{module}.py").write_text(TEST.format(**values))
    return root


def register(app: typer.Typer) -> None:
    """Add ``new`` to ``app``."""

    @app.command("new")
    def new(
        name: str = typer.Argument(..., help="Project and module name (lower-case, e.g. xray)."),
        parent: Path = typer.Option(Path("."), "--dir", help="Where to create the project folder."),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
    ) -> None:
        """Scaffold a task project: pyproject, task module, job.toml, site.toml, data and a test."""
        root = guarded(lambda: scaffold(name, parent))
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if fmt is OutputFormat.json:
            print_json({"project": str(root), "files": files})
            return
        console.print(f"created {root}: {', '.join(files)}", highlight=False, soft_wrap=True)
        console.print(f"run it: fedinfra simulate --job {root / 'job.toml'}", highlight=False, soft_wrap=True)
