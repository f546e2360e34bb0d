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
