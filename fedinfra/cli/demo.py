"""``fedinfra demo``: the main job on the embedded default (hospital sites, bundled data)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from fedinfra._optional import require_extra
from fedinfra.cli._common import OutputFormat, console, err_console, guarded, open_unit, positive, print_json
from fedinfra.config import JobSpec, parse_model
from fedinfra.coordinator.events import RoundResult
from fedinfra.errors import ConfigError, FedinfraError, RuntimeLaunchError


def verify_command(run_dir: Path) -> str:
    """The command that verifies a demo run's log with its sites' cosignatures and receipts.

    The witnesses are the cosigner keys the run's coordinator kit pins (key ceremony), so
    the command checks the cosigned close checkpoint, not just the coordinator's own
    signature; each site's receipts hold a checkpoint newer than any a cut-back log keeps.
    Same command as the report's "How to verify", with the run directory's absolute paths.
    """
    from fedinfra.report.collect import verify_command as command
    from fedinfra.runtime.simulation import AUDIT_STORE

    origin = f"fedinfra-audit.sim-{run_dir.name}"
    homes = run_dir / "site-homes"
    sites = sorted(p.name for p in homes.iterdir() if any((p / "receipts").glob("*/checkpoint-*.note"))) if (
        homes.is_dir()
    ) else []
    return command(AUDIT_STORE, origin, sites, simulated=True, root=f"{run_dir}/")


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


PRIVACY_MODES = ("none", "dp", "he", "dp+he", "secagg", "dp+secagg", "secagg+he", "dp+secagg+he")
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
        # Logistic regression (650 parameters against the MLP's 2,410): user-level noise is
        # added to every coordinate, so fewer coordinates carry more signal per unit of noise.
        # A server step of 3 with momentum 0.5 averages the noisy mean updates over rounds
        # (McMahan et al. 2018, server momentum in DP-FedAvg). Tuned for 50-200 devices.
        "model": {"kind": "logreg"},
        "training": {"local_epochs": 2, "batch_size": 16, "lr": 0.1, "server_lr": 3.0, "server_momentum": 0.5},
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
#: Edge scenario, user-level DP-FedAvg: the clip S on a device's whole update, matched to
#: the typical update norm (about 0.3-0.45 for the logistic regression above) rather than
#: far above it, because each device's noise share N(0, z^2 S^2 / n) scales with S whatever
#: the update's size (McMahan et al. 2018; Andrew et al. 2021 adapt S to a norm quantile).
EDGE_CLIP = 0.3
#: Above this planned user-level epsilon the demo says the guarantee is weak.
EDGE_MAX_EPSILON = 10.0


def _edge_split(seed: int) -> Any:
    """The edge scenario's train/test split (cached by :func:`load_split`)."""
    from fedinfra.site.data import load_split

    return load_split(
        JobSpec.model_validate({"scenario": "edge", "seed": seed, "data": SCENARIO_DEFAULTS["edge"]["data"]})
    )


def _edge_release_clip(noise_multiplier: float, split_over: int, seed: int) -> float:
    """L2 bound of what a device releases: its clipped update plus its noise share.

    Compression (and, under HE, the codec) clip *after* the noise, so the bound must hold
    the noised vector, not just ``S``: its norm concentrates at
    ``sqrt(S^2 + z^2 S^2 d / m)`` for ``d`` parameters and a share split over ``m = min_sites``
    devices (Laurent & Massart 2000). A tighter
    bound would shrink every update - signal and noise alike - which only lowers the server
    step. 10% margin, rounded up to 0.1, never below the former fixed bound 1.0.
    """
    import numpy as np

    split = _edge_split(seed)
    features, classes = int(split.x_train.shape[1]), int(np.unique(split.y_train).size)
    model = JobSpec.model_validate({"model": SCENARIO_DEFAULTS["edge"]["model"]}).model
    widths = [features, *(model.hidden if model.kind == "mlp" else []), classes]
    params = sum(a * b + b for a, b in itertools.pairwise(widths))
    norm = math.sqrt(EDGE_CLIP**2 + (noise_multiplier * EDGE_CLIP) ** 2 * params / split_over)
    return max(1.0, math.ceil(11 * norm) / 10)


def _largest_partition(devices: int, seed: int) -> int:
    """Most training examples one simulated device holds (the HE codec's ``example_cap``).

    The codec scales each update by ``num_examples / example_cap`` before 8-bit
    quantization; with the default cap of 10,000 a device holding 14 examples would use
    0.14% of the quantization range and its rounding error would swamp its update.
    """
    alpha = JobSpec.model_validate({"data": SCENARIO_DEFAULTS["edge"]["data"]}).data.alpha
    parts = _partition(_edge_split(seed).y_train, devices, alpha, seed, flag="--devices")
    return max(len(p) for p in parts)


def _partition(labels: Any, sites: int, alpha: float, seed: int, *, flag: str) -> list[Any]:
    """The seeded Dirichlet split every simulated site makes; an impossible one is refused here.

    Each site's ClientApp would otherwise retry the draws itself and the run would time out
    with no site admitted.
    """
    from fedinfra.data.partition import dirichlet_partition
    from fedinfra.errors import DataError

    try:
        return dirichlet_partition(labels, num_sites=sites, alpha=alpha, seed=seed)
    except DataError as exc:
        raise ConfigError(f"command line: {flag} {sites}: {exc}") from exc


def edge_caveats(job: JobSpec) -> list[str]:
    """Why the edge job's user-level DP guarantee is weak (empty when it is not).

    :func:`fedinfra.privacy.user_level_caveats` (fewer than 100 devices, or every device in
    every round), plus a planned epsilon above :data:`EDGE_MAX_EPSILON`: the demo keeps the
    noise multiplier the user chose rather than raising it silently, and says so.
    """
    if job.scenario != "edge" or job.privacy.mechanism != "user-dp":
        return []
    from fedinfra.privacy import user_level_caveats

    per_round = max(1, round(job.sites.fraction * job.sites.count))
    reasons = user_level_caveats(total_sites=job.sites.count, sites_per_round=per_round)
    eps = job.privacy.epsilon
    if eps is not None and eps > EDGE_MAX_EPSILON:
        reasons.append(
            f"planned user-level epsilon {eps:g} is above {EDGE_MAX_EPSILON:g}; "
            "raise --noise-multiplier or lower --rounds"
        )
    return reasons


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
    per_round, released = sites, 1.0
    if scenario == "edge":
        # Cross-device: user-level DP-FedAvg with each sampled device adding its share of
        # the noise, 8-bit compressed updates, a Poisson sample of devices per round.
        per_round = max(2, min(sites, round(sites * 0.2)))
        dp = "dp" in privacy
        if dp and "he" not in privacy:
            raise ConfigError(
                "command line: --privacy dp on --scenario edge is user-level DP, whose noise is split across "
                "devices and needs a secure sum; use --privacy dp+he"
            )
        # Each device's share is z S / sqrt(min_sites): any sum of at least min_sites devices
        # carries the full noise (fedinfra.privacy.distributed). Half the expected sample keeps
        # a short Poisson draw rare while the noise stays within sqrt(2) of the ideal.
        floor = max(2, per_round // 2)
        data["sites"] = {"count": sites, "fraction": per_round / sites, "min_sites": floor}
        from fedinfra.privacy import user_level_epsilon

        # The run's amplified epsilon follows from z, q and the rounds: declare it as the
        # job's target so the policy's epsilon cap is checked against it. The demo trusts
        # the coordinator's Poisson sampling (privacy.trust_sampling) and says so.
        spend = user_level_epsilon(
            noise_multiplier=noise_multiplier,
            sites_per_round=per_round,
            total_sites=sites,
            rounds=rounds,
            delta=delta,
            accountant=accountant,
        )
        data["privacy"] = {
            "mechanism": "user-dp" if dp else "none",
            "epsilon": round(spend + 0.005, 2),
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": EDGE_CLIP,
            "delta": delta,
            "accountant": accountant,
            "trust_sampling": True,
        }
        released = _edge_release_clip(noise_multiplier if dp else 0.0, floor, seed)
        data["compression"] = {"bits": 8, "clip": released}
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
            {
                "mode": "bfv",
                "quant_bits": 8,
                "max_sites": sites,  # a Poisson sample may exceed its expected size
                "clip": released,
                # User-level DP sums unweighted clipped updates (sensitivity S); without
                # it, devices weigh in by examples, scaled by the largest device's count.
                "example_cap": 1 if "dp" in privacy else _largest_partition(sites, seed),
            }
            if scenario == "edge"
            else {"mode": "bfv"}
        )
    if "secagg" in privacy:
        # Pairwise masks (SecAgg+): no shared secret, the same 20-bit codec as packed BFV.
        data["secure_aggregation"] = {
            # secagg+he: the same masks per BFV slot modulo t, under encryption.
            "mode": "secagg+he" if privacy.endswith("secagg+he") else "secagg",
            "max_sites": max(2, sites),
            "max_dropouts": 1 if sites >= 4 else 0,
            "max_colluders": 1 if sites >= 4 else 0,
            "min_contributors": min(3, max(2, sites - 1)),
        }
    try:
        job = parse_model(JobSpec, data, "command line")
    except ConfigError as exc:
        msg = str(exc).replace("field 'sites.count'", "--sites").replace("field 'rounds'", "--rounds")
        raise ConfigError(msg.replace("field 'seed'", "--seed")) from exc
    from fedinfra.site.data import load_split

    split = load_split(job)
    n_train = len(split.y_train)
    if sites * 2 > n_train:
        raise ConfigError(
            f"command line: --sites {sites} is too many for {n_train} training examples; use at most {n_train // 2}"
        )
    _partition(split.y_train, sites, job.data.alpha, job.seed, flag="--sites/--devices")
    return job


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command()
    def demo(
        scenario: str = typer.Option(
            "hospital", "--scenario", help="hospital (breast cancer), bank (Caravan) or edge (digits on devices)."
        ),
        privacy: str = typer.Option(
            "dp+he",
            "--privacy",
            help="none, dp (DP-SGD), he (packed BFV), dp+he, secagg (pairwise masks), dp+secagg, "
            "secagg+he (masks under BFV) or dp+secagg+he.",
        ),
        epsilon: float = typer.Option(
            3.0, "--epsilon", callback=positive, help="Target epsilon per site for the run (with dp)."
        ),
        delta: float = typer.Option(
            1e-5, "--delta", callback=open_unit, help="Target delta (with dp)."
        ),
        accountant: str = typer.Option("rdp", "--accountant", help="rdp (fast, the demo's default) or prv (tighter)."),
        rounds: int = typer.Option(5, "--rounds", min=1, help="Federated rounds."),
        sites: int = typer.Option(4, "--sites", min=1, help="Number of simulated sites."),
        devices: int | None = typer.Option(
            None,
            "--devices",
            min=1,
            help="Edge devices: --scenario edge (default 100), or added to hospital sites (mixed).",
        ),
        noise_multiplier: float = typer.Option(
            1.0,
            "--noise-multiplier",
            callback=positive,
            max=1e6,
            help="User-level DP noise multiplier z (--scenario edge); epsilon follows from z, the 20% "
            "sampling rate and --rounds (z=1: about 4.5 after 5 rounds, 5.8 after 10, 8.9 after 30).",
        ),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of data split, partition and model init."),
        out: Path = typer.Option(Path("runs"), "--out", help="Where run directories are written."),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
        verbose: bool = typer.Option(False, "--verbose", help="Show Flower's and Ray's logs."),
    ) -> None:
        """Federate simulated sites on Flower's simulation engine with DP, HE, audit and policy gates."""

        def _run() -> None:
            require_extra("fedinfra demo")
            from fedinfra.runtime.env import private_umask

            # The run directory holds the simulation's private keys (kits/: CA key, the
            # sites' HE secret keys), the audit log, ledgers and models: 0600/0700, as the
            # services (HIPAA 45 CFR 164.312(a)(1), least privilege).
            private_umask()
            from fedinfra.coordinator.app import new_run_id
            from fedinfra.runtime.simulation import run_simulated

            if out.exists() and not out.is_dir():
                raise ConfigError(f"--out {out}: is a file; give a directory for the run directories")
            if scenario not in SCENARIO_DEFAULTS:
                raise ConfigError(f"command line: --scenario {scenario!r} is not one of {', '.join(SCENARIO_DEFAULTS)}")
            if scenario == "edge":
                count, mixed = (100 if devices is None else devices), 0
            else:
                count, mixed = sites + (devices or 0), devices or 0
            job = _build_job(
                scenario, rounds, count, seed, privacy, epsilon, delta, accountant, noise_multiplier, mixed
            )
            caveats = edge_caveats(job)
            for reason in caveats:  # the sites also record theirs in each budget.spent audit entry
                message = f"[bold yellow]warning:[/] user-level DP is weak here: {escape(reason)}"
                err_console.print(message, highlight=False, soft_wrap=True)
            run_id = new_run_id()
            run_dir = out / run_id
            reporter = RichReporter(quiet=fmt is OutputFormat.json)
            try:
                run_simulated(job, run_id=run_id, run_dir=run_dir, reporter=reporter, verbose=verbose)
            except RuntimeError as exc:
                if isinstance(exc, FedinfraError):
                    raise
                raise RuntimeLaunchError(
                    f"the simulation engine failed ({exc}); retry, or rerun with --verbose for Flower's and Ray's logs"
                ) from exc
            finally:
                reporter.close()
                shutil.rmtree(run_dir / ".flwr", ignore_errors=True)
                shutil.rmtree(run_dir / ".ray-home", ignore_errors=True)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            reports = sorted(str(p) for p in run_dir.glob("report-*"))
            metrics["reports"] = reports
            keys_note = (
                f"{run_dir / 'kits'} holds this simulation's private keys (CA key, the sites' HE secret keys); "
                "keep the run directory private (it is 0700) or delete kits/ when done"
            )
            caveats = [*caveats, keys_note]
            metrics["warnings"] = caveats
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
            err_console.print(f"[yellow]note:[/] {escape(keys_note)}", highlight=False, soft_wrap=True)
            console.print(f"verify the audit trail: {verify_command(run_dir)}", soft_wrap=True)

        guarded(_run)
