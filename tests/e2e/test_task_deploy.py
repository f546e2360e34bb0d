"""A user's task on a loopback deployment: the diabetes example inside the signed app (issue 17).

The example's own job and task module (``examples/diabetes``) run through real Flower
processes: a SuperLink behind nginx with TLS and SuperNode authentication, three sites
each holding its share of the table in a CSV its ``site.toml`` declares, DP-SGD at the
sites and pairwise-masked secure aggregation. The task module reaches the sites only
inside the Flower App the release manager built (``fedinfra app build --job``) and signed,
and every site approved (``provision(..., app_dir=...)``).

Changed from the example's job for a three-site loopback on a 2-core machine: ``sites``
(3, not 4), the secagg bounds that follow from it, and ``rounds`` (2, not 5).
"""

from __future__ import annotations

import json
import runpy
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedinfra.config import JobSpec
from fedinfra.runtime.loopback import write_demo_sites
from fedinfra.task.packaging import build_task_app
from tests.e2e.loopback_federation import REPO, LoopbackFederation, loopback_federation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXAMPLE = REPO / "examples" / "diabetes"
SITES = ["site0", "site1", "site2"]


def _job(project: Path) -> Path:
    doc = tomllib.loads((EXAMPLE / "job.toml").read_text())
    doc["rounds"] = 2
    doc["sites"] = {"count": len(SITES), "min_sites": len(SITES)}
    doc["secure_aggregation"].update(max_sites=len(SITES), max_dropouts=0, max_colluders=1, min_contributors=3)
    path = project / "job.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _sites(root: Path, job: dict[str, object]) -> dict[str, Path]:
    """Each site's share of the diabetes table, declared in its manifest like the example's source."""
    source = job["data"]["source"]  # type: ignore[index]
    table = (root / "project" / source["path"]).read_text().splitlines()
    header, rows = table[0], table[1:]
    order = np.random.default_rng(0).permutation(len(rows))
    manifests = write_demo_sites(JobSpec(), SITES, root / "sites")  # hospital declarations (GDPR, HIPAA)
    for i, (_site, manifest) in enumerate(manifests.items()):
        (manifest.parent / "data.csv").unlink()
        share = [rows[j] for j in sorted(order[i :: len(SITES)])]
        (manifest.parent / "diabetes.csv").write_text("\n".join([header, *share]) + "\n")
        kept = manifest.read_text().split("\n[dataset]")[0]
        manifest.write_text(
            kept + '\n[dataset]\npath = "diabetes.csv"\nformat = "csv"\n'
            f'label_column = "{source["label_column"]}"\nfeature_columns = {json.dumps(source["feature_columns"])}\n'
        )
    return manifests


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackFederation, Path, Path]]:
    root = tmp_path_factory.mktemp("task-deploy")
    project = root / "project"
    project.mkdir()
    shutil.copy(EXAMPLE / "diabetes_task.py", project)
    runpy.run_path(str(EXAMPLE / "prepare.py"), run_name="example")["main"](project)
    job = _job(project)
    app = build_task_app(job, root / "app", base=REPO / "server").app_dir
    manifests = _sites(root, tomllib.loads(job.read_text()))
    shutil.rmtree(project / "data")  # the coordinator holds no rows; each site holds its own
    with loopback_federation(root, manifests, app_dir=app, name="diabetes") as fed:
        yield fed, job, app


def test_the_stock_app_is_refused_for_a_task_job_before_anything_is_submitted(
    deployed: tuple[LoopbackFederation, Path, Path],
) -> None:
    fed, job, _ = deployed
    done = fed.fedinfra("run", "--job", str(job), "--config", str(fed.server_toml), timeout=120)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "does not carry task module 'diabetes_task'" in done.stderr
    assert not (fed.root / "runs").exists() or not any((fed.root / "runs").iterdir())


def test_the_diabetes_task_trains_on_deployed_sites_from_the_signed_app_with_dp_and_secagg(
    deployed: tuple[LoopbackFederation, Path, Path],
) -> None:
    fed, job, app = deployed
    done = fed.fedinfra(
        "run", "--job", str(job), "--config", str(fed.server_toml), "--app-dir", str(app),
        "--format", "json", "--timeout", "700", timeout=800,
    )

    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    result = json.loads(done.stdout)
    metrics = json.loads(Path(result["metrics"]).read_text())
    task = metrics["task"]
    assert task["ref"] == "diabetes_task:DiabetesRegression"
    assert task["kind"] == "regression"
    assert set(task["metrics"]) >= {"mse", "mae"}
    # The target is scaled by 1/100 (variance ~0.59): predicting its mean scores MSE ~0.6.
    assert 0 < task["metrics"]["mse"] < 5.0
    assert metrics["secure_aggregation"] == "secagg"
    assert metrics["privacy"]["mechanism"] == "dp-sgd"
    assert sorted(metrics["privacy"]["epsilon_per_site"]) == SITES
    assert all(0 < e <= 8.0 for e in metrics["privacy"]["epsilon_per_site"].values())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all({"mse", "mae"} <= set(r["details"]["metrics"]) for r in metrics["rounds"])
    # Every site ran the task from the app it approved: Flower installed it in the site's own home.
    for site in SITES:
        assert list((fed.root / "site-state" / site / "flwr" / "apps").glob("*/diabetes_task.py")), site
    # The compliance report written at the end of the run shows the task's metrics.
    html = Path(result["report"]).read_text()
    assert "Task metrics (regression)" in html
    assert f"final <b>MSE {task['metrics']['mse']:.4f}</b>" in html


PLANTED = '''
"""Left in a site's working directory: importing it leaves a mark."""
from pathlib import Path

Path(__file__).with_name("PLANTED-RAN").write_text("imported")

from torch import nn

import fedinfra


class PlantedTask(fedinfra.Task):
    kind = "regression"

    def build_model(self):
        return nn.Sequential(nn.Linear(9, 1))
'''


def test_a_coordinator_naming_a_task_outside_the_approved_app_is_refused_at_every_site(
    deployed: tuple[LoopbackFederation, Path, Path],
) -> None:
    """The attack: skip 'fedinfra run' and submit the approved app with a job naming other code.

    ``planted_task`` sits in each site's working directory (where its SuperNode runs, so on
    the ClientApp's ``sys.path``); the app the sites approved does not carry it.
    """
    from flwr.cli.install import install_from_fab

    from fedinfra.config import load_job
    from fedinfra.runtime.apps import run_config
    from fedinfra.runtime.deploy import CONNECTION, flwr_cli
    from fedinfra.runtime.release import build_app_fab
    from fedinfra.runtime.submit import run_status

    fed, job_path, app = deployed
    # The coordinator is the attacker: it can import the module itself (here: dropped into its
    # own install of the approved app, which Flower reuses), so the job reaches the sites.
    coordinator_copy = install_from_fab(build_app_fab(app).content, fed.link.flwr_home, skip_prompt=True)
    (coordinator_copy / "planted_task.py").write_text(PLANTED)
    site_dirs = [fed.root / "sites" / s for s in SITES]
    for d in site_dirs:
        (d / "planted_task.py").write_text(PLANTED)
    job = load_job(job_path)
    assert job.task is not None
    planted = job.task.model_copy(update={"ref": "planted_task:PlantedTask"})
    job = job.model_copy(update={"name": "planted", "task": planted})
    overrides = fed.root / "planted-run-config.toml"
    config = run_config(job, run_id="planted-run", runs_dir=fed.root / "runs", kit=fed.kits / "coordinator")
    overrides.write_text("".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}\n"
                                 for k, v in config.items()))
    answer = flwr_cli(["run", str(app), CONNECTION, "--run-config", str(overrides)], flwr_home=fed.link.flwr_home)
    assert answer.get("success") is True, answer  # the SuperLink takes it: the app is the approved one

    deadline = time.monotonic() + 420
    status = "unknown"
    while time.monotonic() < deadline:
        status = run_status(str(answer["run-id"]), flwr_home=fed.link.flwr_home)
        if status.startswith("finished"):
            break
        time.sleep(2)

    assert status.startswith("finished"), status
    assert status != "finished:completed", status
    assert not [d for d in site_dirs if (d / "PLANTED-RAN").exists()]  # no site imported it
    assert (coordinator_copy / "PLANTED-RAN").exists()  # the coordinator did import it
    error = json.loads((fed.root / "runs" / "planted-run" / "error.json").read_text())
    # Every site answered admission with a refusal (403: the one-line ConfigError), so none took part.
    assert error["message"] == "only 0 sites passed admission; the job needs sites.min_sites=3", error
