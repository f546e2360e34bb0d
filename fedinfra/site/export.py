"""``fedinfra model export``: a site writes the run's final model in portable formats.

The model is the one the site itself holds after the close wave (``final-model`` in its
home; under HE the site decrypted it - the coordinator never could). Written next to it:
``model.safetensors`` (tensors only, no pickled code, safe to load from an untrusted
source), ``model.torchscript.pt`` (when ``torch.jit.script`` compiles the model) and a
model card (``model_card.json`` + ``MODEL_CARD.md``) with what an auditor asks first:
task, data fingerprint, epsilon spent at this site (from its own ledger, never the
coordinator's figure), run id and the newest signed checkpoint the site verified.
``model.onnx`` is written with torch's ``torch.export``-based ONNX exporter when the
``onnx`` extra is installed (``onnx``, ``onnxscript``) and the task gives an example
input (:meth:`fedinfra.Task.example_input`); the batch dimension is left dynamic. When
either is missing the card says why instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedinfra.config import JobSpec
from fedinfra.errors import DataError
from fedinfra.site.home import SiteHome

if TYPE_CHECKING:
    import torch
    from torch import nn


def _ledger_figures(home: SiteHome, run_id: str) -> dict[str, Any]:
    """Epsilon this site spent on the run (its ledger's cumulative figure) and its data fingerprint."""
    if not home.ledger.exists():
        return {"epsilon": 0.0, "delta": None, "dataset_fingerprint": None, "mechanism": "none"}
    from fedinfra.privacy import PrivacyLedger

    ledger = PrivacyLedger(home.ledger)
    try:
        mine = [e for e in ledger.entries() if e.run_id == run_id]
    finally:
        ledger.close()
    if not mine:
        return {"epsilon": 0.0, "delta": None, "dataset_fingerprint": None, "mechanism": "none"}
    last = max(mine, key=lambda e: e.epsilon)
    return {
        "epsilon": last.epsilon,
        "delta": last.delta,
        "dataset_fingerprint": last.dataset_fingerprint,
        "mechanism": last.mechanism,
        "accountant": last.accountant,
    }


def _checkpoint(home: SiteHome, run_id: str) -> dict[str, Any] | None:
    if home.kit is None:
        return None
    from fedinfra.audit import latest_checkpoint
    from fedinfra.config import read_toml

    kit_toml = home.kit / "kit.toml"
    vkey = read_toml(kit_toml).get("audit", {}).get("vkey") if kit_toml.exists() else None
    if not vkey:
        return None
    cp = latest_checkpoint(home.receipts / run_id, str(vkey))
    return None if cp is None else {"tree_size": cp.size, "note": cp.note}


def _onnx(model: nn.Module, example: torch.Tensor | None, path: Path) -> str:
    """Write ``model`` as ONNX (dynamic batch); return the file name or why it was not written."""
    import torch

    if example is None:
        return "not exported: the task gives no example input (override Task.example_input)"
    from fedinfra._optional import install_hint, missing_modules

    if missing_modules("onnx"):
        return "not exported: " + install_hint("ONNX export", "onnx")
    import logging

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        # The exporter prints its progress to stdout, which carries `--format json` output.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, verbose=False, input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
            assert program is not None
            program.save(str(path))
    except Exception as exc:  # a model the exporter cannot trace is still exported as tensors
        return f"not exported: torch.onnx.export failed ({type(exc).__name__})"
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    return path.name


def export_model(*, home: SiteHome, run_id: str, job: JobSpec, out: Path) -> dict[str, Any]:
    """Write the site's final model of ``run_id`` and its card under ``out``; return the card."""
    import torch

    from fedinfra.models import set_weights
    from fedinfra.site.tasks import job_model, job_task

    weights = home.load_weights(run_id, "final-model")
    if weights is None:
        raise DataError(
            f"{home.root}: no final model of run {run_id}; the site stores it when the run's close wave reaches it"
        )
    task = job_task(job)
    model, changes = job_model(job, task)
    set_weights(model, weights)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"run_id": run_id, "task": type(task).__name__})
    files["safetensors"] = "model.safetensors"
    try:
        with warnings.catch_warnings():
            # torch 2.13 marks TorchScript deprecated in favour of torch.export, which needs
            # an example input a task does not declare; TorchScript is what the issue asks.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(model).save(str(out / "model.torchscript.pt"))  # type: ignore[no-untyped-call]
        files["torchscript"] = "model.torchscript.pt"
    except Exception as exc:  # a model TorchScript cannot compile is still exported as tensors
        files["torchscript"] = f"not exported: torch.jit.script failed ({type(exc).__name__})"
    files["onnx"] = _onnx(model, task.example_input(model), out / "model.onnx")
    card: dict[str, Any] = {
        "run_id": run_id,
        "job": job.name,
        "task": {
            "ref": job.task.ref if job.task is not None else "fedinfra.task.builtin:TabularTask",
            "kind": task.kind,
            "config": task.config,
        },
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "model_changes": list(changes),
        "privacy": {"site": _ledger_figures(home, run_id), "job": job.privacy.model_dump(mode="json")},
        "secure_aggregation": job.secure_aggregation.mode,
        "final_checkpoint": _checkpoint(home, run_id),
        "files": files,
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    (out / "MODEL_CARD.md").write_text(_markdown(card))
    return card


def _markdown(card: dict[str, Any]) -> str:
    site = card["privacy"]["site"]
    cp = card["final_checkpoint"]
    lines = [
        f"# Model card: {card['job']} (run {card['run_id']})",
        "",
        f"- Task: `{card['task']['ref']}` ({card['task']['kind']}), {card['parameters']:,} parameters",
        f"- Layers changed for DP-SGD: {', '.join(card['model_changes']) or 'none'}",
        f"- Privacy at this site: {site['mechanism']}, epsilon {site['epsilon']:.3f}"
        + (f", delta {site['delta']:g}" if site.get("delta") else ""),
        f"- Data fingerprint: `{site['dataset_fingerprint']}`",
        f"- Secure aggregation: {card['secure_aggregation']}",
        f"- Final signed checkpoint: tree size {cp['tree_size']}" if cp else "- Final signed checkpoint: not held",
        "",
        "## Files",
        *(f"- {k}: {v}" for k, v in card["files"].items()),
        "",
    ]
    return "\n".join(lines)
