"""``fedinfra new`` scaffolds a project that runs; ``fedinfra model export`` writes what a site holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedinfra.cli import build_app
from fedinfra.config import load_job
from fedinfra.config.wire import TrainInstruction
from fedinfra.models import get_weights
from fedinfra.privacy import PrivacyLedger
from fedinfra.site.context import site_context
from fedinfra.site.round import run_round
from fedinfra.site.tasks import job_model


def _cli(*args: str) -> Any:
    return CliRunner().invoke(build_app(), list(args))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    result = _cli("new", "lung_nodes", "--dir", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    root = tmp_path / "lung_nodes"
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("lung_nodes_task", None)


def test_new_writes_a_project_with_task_job_site_data_and_test(project: Path) -> None:
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}

    assert files == {
        "pyproject.toml",
        "lung_nodes_task.py",
        "job.toml",
        "site.toml",
        "data/rows.csv",
        "tests/test_lung_nodes_task.py",
    }
    assert load_job(project / "job.toml").task.ref == "lung_nodes_task:LungNodesTask"  # type: ignore[union-attr]


def test_the_scaffolded_projects_own_test_passes(project: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize(("name", "message"), [("Bad-Name", "lower-case"), ("lung_nodes", "already exists")])
def test_new_refuses_a_bad_or_taken_name_in_one_line(project: Path, name: str, message: str) -> None:
    result = _cli("new", name, "--dir", str(project.parent))

    assert result.exit_code == 2
    assert message in result.output


def _trained_site(project: Path, tmp_path: Path) -> tuple[Path, Any]:
    job = load_job(project / "job.toml")
    source = job.data.source.model_copy(update={"path": str(project / "data" / "rows.csv")})  # type: ignore[union-attr]
    job = job.model_copy(update={"data": job.data.model_copy(update={"source": source})})
    home = tmp_path / "home"
    ctx = site_context({"partition-id": 0, "num-partitions": 3, "state-dir": str(home)}, job)
    weights = get_weights(job_model(job)[0])
    instruction = TrainInstruction(run_id="run-export", round=1, phase="train", job=job.model_dump(mode="json"))
    out = run_round(ctx, instruction, weights, tls=True, sampled=3)
    assert out.update is not None
    final = {k: weights[k] + out.update[k] for k in weights}
    ctx.home.save_weights("run-export", "final-model", final)
    return home, final


def test_model_export_writes_safetensors_torchscript_and_a_card_from_the_sites_ledger(
    project: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    home, final = _trained_site(project, tmp_path)
    out = tmp_path / "export"

    result = _cli(
        "model", "export", "--home", str(home), "--run", "run-export", "--job", str(project / "job.toml"),
        "--out", str(out), "--format", "json",
    )

    assert result.exit_code == 0, result.output
    card = json.loads(result.output)
    tensors = load_file(str(out / "model.safetensors"))
    for name, value in final.items():
        assert np.array_equal(tensors[name].numpy(), value)
    with pytest.warns(DeprecationWarning, match="torch.jit.load"):
        scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    x = torch.randn(5, 4)
    model = job_model(load_job(project / "job.toml"))[0]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in final.items()})
    assert torch.allclose(scripted(x), model(x))
    ledger = PrivacyLedger(home / "ledger.sqlite")
    try:
        entry = max((e for e in ledger.entries() if e.run_id == "run-export"), key=lambda e: e.epsilon)
    finally:
        ledger.close()
    assert 0 < card["privacy"]["site"]["epsilon"] == entry.epsilon
    assert card["privacy"]["site"]["dataset_fingerprint"] == entry.dataset_fingerprint
    assert card["task"]["ref"] == "lung_nodes_task:LungNodesTask"
    # ONNX (torch.export-based exporter): a valid graph, batch left dynamic, same outputs.
    import onnx
    import onnxruntime

    assert card["files"]["onnx"] == "model.onnx"
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    assert np.allclose(onnx_out, model(x).detach().numpy(), atol=1e-5)
    assert (out / "MODEL_CARD.md").read_text().startswith("# Model card: lung_nodes (run run-export)")


def test_model_export_without_a_final_model_says_what_is_missing(project: Path, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()

    result = _cli(
        "model", "export", "--home", str(tmp_path / "home"), "--run", "run-x", "--job", str(project / "job.toml"),
        "--out", str(tmp_path / "o"),
    )

    assert result.exit_code == 2
    assert "no final model of run run-x" in result.output


def test_onnx_export_of_the_digits_cnn_matches_torch_and_a_cnn_without_example_input_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    import onnxruntime

    from fedinfra.site.export import _onnx
    from fedinfra.task import Task, load_task, new_model

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples" / "digits_cnn"))
    task = load_task("digits_task:DigitsCNN")
    model = new_model(task, seed=0).eval()

    assert _onnx(model, task.example_input(model), tmp_path / "cnn.onnx") == "cnn.onnx"
    onnx.checker.check_model(onnx.load(str(tmp_path / "cnn.onnx")), full_check=True)
    x = torch.randn(7, 1, 8, 8)
    (got,) = onnxruntime.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )
    assert np.allclose(got, model(x).detach().numpy(), atol=1e-5)
    # Without the override the base class cannot tell a CNN's input shape: the card says so.
    assert Task.example_input(task, model) is None
    assert _onnx(model, None, tmp_path / "no.onnx").startswith("not exported: the task gives no example input")
    sys.modules.pop("digits_task", None)
