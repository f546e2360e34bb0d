"""``fedinfra demo``: the main job on the embedded default (hospital sites, bundled data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from fedinfra._optional import require_extra
from fedinfra.cli._common import OutputFormat, console, guarded, print_json
from fedinfra.config import JobSpec, parse_model
from fedinfra.coordinator.events import RoundResult
from fedinfra.errors import ConfigError


class RichReporter:
    """Shows rounds with a rich progress bar and one line per round."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=True,
        )
        self.task: Any = None

    def run_started(self, run_id: str, rounds: int, sites: int) -> None:
        """Start the bar."""
        if not self.quiet:
            console.print(f"run [bold]{run_id}[/]: {sites} sites admitted, {rounds} rounds")
        self.progress.start()
        self.task = self.progress.add_task("rounds", total=rounds)

    def round_done(self, result: RoundResult) -> None:
        """Advance and print the round's figures."""
        if not self.quiet:
            self.progress.console.print(
                f"round {result.round:>3}: loss {result.test_loss:.4f}  accuracy {result.test_accuracy:.4f}  "
                f"({result.replies} replies, {result.seconds:.1f} s)"
            )
        self.progress.advance(self.task)

    def close(self) -> None:
        """Stop the bar."""
        self.progress.stop()


PRIVACY_MODES = ("none", "dp", "he", "dp+he")
SCENARIO_DEFAULTS: dict[str, dict[str, object]] = {
    "hospital": {
        "purpose": "medical-research",
        "policy_packs": ["gdpr", "hipaa"],
        "data": {"dataset": "breast_cancer"},
    },
    "edge": {
        "purpose": "on-device-model-improvement",
        "policy_packs": ["gdpr"],
        "data": {"dataset": "digits"},
        "model": {"kind": "mlp", "hidden": [32]},
        "training": {"local_epochs": 2, "batch_size": 16, "lr": 0.1, "server_lr": 1.0},
        "compression": {"bits": 8, "clip": 1.0},
    },
    "bank": {
        "purpose": "insurance-propensity-modelling",
        "policy_packs": ["gdpr", "pci-dss", "glba"],
        "data": {"dataset": "caravan"},
    },
}
#: Training and clip bound when a scenario runs sample-level DP-SGD (``--privacy dp``/``dp+he``):
#: full-batch noisy steps (a batch larger than any site, so every site's Poisson rate is 1),
#: one step per round, step size and clip tuned in ``bench/utility.py`` (De et al. 2022,
#: "Unlocking high-accuracy differentially private image classification through scale":
#: large batches, tuned clip and step size).
DP_SGD_DEFAULTS: dict[str, dict[str, object]] = {
    "hospital": {
        "training": {"local_epochs": 1, "batch_size": 100_000, "lr": 1.6, "server_lr": 1.0, "server_momentum": 0.0},
        "max_grad_norm": 1.0,
    },
}


def _build_job(
    scenario: str,
    rounds: int,
    sites: int,
    seed: int,
    privacy: str = "none",
    epsilon: float = 3.0,
    delta: float = 1e-5,
    accountant: str = "rdp",
    noise_multiplier: float = 1.0,
    devices: int = 0,
) -> JobSpec:
    if privacy not in PRIVACY_MODES:
        raise ConfigError(f"command line: --privacy {privacy!r} is not one of {', '.join(PRIVACY_MODES)}")
    data: dict[str, object] = {
        "scenario": scenario,
        "rounds": rounds,
        "seed": seed,
        "sites": {"count": sites, "min_sites": min(2, max(1, sites)), "devices": devices},
        **SCENARIO_DEFAULTS[scenario],
    }
    per_round = sites
    if scenario == "edge":
        # Cross-device: user-level DP-FedAvg with each sampled device adding its share of
        # the noise, 8-bit compressed updates, a sample of devices per round.
        per_round = max(2, min(sites, round(sites * 0.2)))
        data["sites"] = {"count": sites, "fraction": per_round / sites, "min_sites": 2}
        from fedinfra.privacy import user_level_epsilon

        # The run's user-level epsilon follows from z, q and the rounds: declare it as the
        # job's target so the policy's epsilon cap is checked against it.
        spend = user_level_epsilon(
            noise_multiplier=noise_multiplier,
            sites_per_round=per_round,
            total_sites=sites,
            rounds=rounds,
            delta=delta,
            accountant=accountant,
        )
        data["privacy"] = {
            "mechanism": "user-dp" if "dp" in privacy else "none",
            "epsilon": round(spend + 0.005, 2),
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": 1.0,
            "delta": delta,
            "accountant": accountant,
        }
    elif "dp" in privacy:
        dp_sgd: dict[str, object] = {"mechanism": "dp-sgd", "epsilon": epsilon, "delta": delta}
        dp_sgd["accountant"] = accountant
        tuned = DP_SGD_DEFAULTS.get(scenario)
        if tuned is not None:
            data["training"] = tuned["training"]
            dp_sgd["max_grad_norm"] = tuned["max_grad_norm"]
        data["privacy"] = dp_sgd
    if "he" in privacy:
        # Edge updates are 8-bit compressed: under encryption the codec's 8-bit lanes are
        # that quantization (one rounding), sized for the devices sampled per round.
        data["secure_aggregation"] = (
            {"mode": "bfv", "quant_bits": 8, "max_sites": per_round} if scenario == "edge" else {"mode": "bfv"}
        )
    try:
        job = parse_model(JobSpec, data, "command line")
    except ConfigError as exc:
        msg = str(exc).replace("field 'sites.count'", "--sites").replace("field 'rounds'", "--rounds")
        raise ConfigError(msg.replace("field 'seed'", "--seed")) from exc
    from fedinfra.site.data import load_split

    n_train = len(load_split(job).y_train)
    if sites * 2 > n_train:
        raise ConfigError(
            f"command line: --sites {sites} is too many for {n_train} training examples; use at most {n_train // 2}"
        )
    return job


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command()
    def demo(
        scenario: str = typer.Option("hospital", "--scenario", help="hospital (breast cancer) or bank (Caravan)."),
        privacy: str = typer.Option("dp+he", "--privacy", help="none, dp (DP-SGD), he (packed BFV) or dp+he."),
        epsilon: float = typer.Option(3.0, "--epsilon", help="Target epsilon per site for the run (with dp)."),
        delta: float = typer.Option(1e-5, "--delta", help="Target delta (with dp)."),
        accountant: str = typer.Option("rdp", "--accountant", help="rdp (fast, the demo's default) or prv (tighter)."),
        rounds: int = typer.Option(5, "--rounds", help="Federated rounds."),
        sites: int = typer.Option(4, "--sites", help="Number of simulated sites."),
        devices: int | None = typer.Option(
            None, "--devices", help="Edge devices: --scenario edge (default 100), or added to hospital sites (mixed)."
        ),
        noise_multiplier: float = typer.Option(
            1.0, "--noise-multiplier", help="User-level DP noise multiplier (--scenario edge)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of data split, partition and model init."),
        out: Path = typer.Option(Path("runs"), "--out", help="Where run directories are written."),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
        verbose: bool = typer.Option(False, "--verbose", help="Show Flower's and Ray's logs."),
    ) -> None:
        """Federate simulated sites on Flower's simulation engine with DP, HE, audit and policy gates."""

        def _run() -> None:
            require_extra("fedinfra demo")
            from fedinfra.coordinator.app import new_run_id
            from fedinfra.runtime.simulation import AUDIT_STORE, run_simulated

            if scenario not in SCENARIO_DEFAULTS:
                raise ConfigError(f"command line: --scenario {scenario!r} is not one of {', '.join(SCENARIO_DEFAULTS)}")
            if scenario == "edge":
                count, mixed = (100 if devices is None else devices), 0
            else:
                count, mixed = sites + (devices or 0), devices or 0
            job = _build_job(
                scenario, rounds, count, seed, privacy, epsilon, delta, accountant, noise_multiplier, mixed
            )
            run_id = new_run_id()
            run_dir = out / run_id
            reporter = RichReporter(quiet=fmt is OutputFormat.json)
            try:
                run_simulated(job, run_id=run_id, run_dir=run_dir, reporter=reporter, verbose=verbose)
            finally:
                reporter.close()
                shutil.rmtree(run_dir / ".flwr", ignore_errors=True)
                shutil.rmtree(run_dir / ".ray-home", ignore_errors=True)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            reports = sorted(str(p) for p in run_dir.glob("report-*"))
            metrics["reports"] = reports
            if fmt is OutputFormat.json:
                print_json(metrics)
                return
            console.print(
                f"final accuracy [bold]{metrics['final_accuracy']:.4f}[/] in "
                f"{metrics['timings']['total_s']:.1f} s; artifacts in {run_dir}",
                soft_wrap=True,
            )
            for path in reports:
                console.print(f"report: {path}", soft_wrap=True)
            console.print(f"verify the audit trail: fedinfra audit verify {run_dir / AUDIT_STORE}", soft_wrap=True)

        guarded(_run)
