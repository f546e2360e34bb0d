"""``fedinfra privacy epsilon|plan`` and ``fedinfra budget show``: privacy accounting commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedinfra.cli._common import OutputFormat, console, guarded, open_unit, positive, print_json, rate
from fedinfra.errors import ConfigError, StoreError

privacy_app = typer.Typer(name="privacy", help="Privacy accounting: epsilon of a plan, noise for a target.",
                          no_args_is_help=True)
budget_app = typer.Typer(name="budget", help="A site's privacy ledger.", no_args_is_help=True)

#: Above these the accountants' floating-point arithmetic overflows (sigma^2 in the RDP
#: orders); no useful mechanism comes near them, so they are refused as bad input.
MAX_NOISE = 1e6
MAX_STEPS = 10**9

_ACCOUNTANT_HELP = "prv (tight, default), rdp, or rdp-classic (Mironov 2017 conversion)."


@privacy_app.command("epsilon")
def epsilon_cmd(
    noise_multiplier: float = typer.Option(
        ..., "--noise-multiplier", callback=positive, max=MAX_NOISE, help="Noise std / clip bound (sigma)."
    ),
    sample_rate: float = typer.Option(
        ..., "--sample-rate", callback=rate, help="Poisson sampling rate q per step."
    ),
    steps: int = typer.Option(
        ..., "--steps", min=1, max=MAX_STEPS, help="Number of steps (or rounds for user-level DP)."
    ),
    delta: float = typer.Option(..., "--delta", callback=open_unit, help="Target delta."),
    accountant: str = typer.Option("prv", "--accountant", help=_ACCOUNTANT_HELP),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Print the epsilon of a sampled Gaussian mechanism."""
    from fedinfra.privacy import compute_epsilon

    def run() -> float:
        try:
            return compute_epsilon(
                noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta,
                accountant=accountant,
            )
        except ArithmeticError as exc:
            raise ConfigError("the accountant cannot evaluate these figures (numeric overflow); check them") from exc

    eps = guarded(run)
    if fmt is OutputFormat.json:
        print_json({"epsilon": eps, "delta": delta, "noise_multiplier": noise_multiplier,
                    "sample_rate": sample_rate, "steps": steps, "accountant": accountant})
    else:
        console.print(f"epsilon = {eps:.6g}  (delta = {delta:g}, accountant = {accountant})", highlight=False)


@privacy_app.command("plan")
def plan_cmd(
    target_epsilon: float = typer.Option(
        ..., "--target-epsilon", callback=positive, help="Epsilon to stay within."
    ),
    delta: float = typer.Option(..., "--delta", callback=open_unit, help="Target delta."),
    sample_rate: float = typer.Option(
        ..., "--sample-rate", callback=rate, help="Poisson sampling rate q per step."
    ),
    steps: int = typer.Option(..., "--steps", min=1, max=MAX_STEPS, help="Number of steps."),
    accountant: str = typer.Option("prv", "--accountant", help=_ACCOUNTANT_HELP),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Print the smallest noise multiplier whose epsilon stays within the target."""
    from fedinfra.privacy import compute_epsilon, plan_noise_multiplier

    def run() -> tuple[float, float]:
        try:
            z = plan_noise_multiplier(
                target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
            )
            eps = compute_epsilon(noise_multiplier=z, sample_rate=sample_rate, steps=steps, delta=delta,
                                  accountant=accountant)
        except ArithmeticError as exc:
            raise ConfigError("the accountant cannot evaluate these figures (numeric overflow); check them") from exc
        return z, eps

    z, eps = guarded(run)
    if fmt is OutputFormat.json:
        print_json({"noise_multiplier": z, "epsilon": eps, "target_epsilon": target_epsilon, "delta": delta,
                    "sample_rate": sample_rate, "steps": steps, "accountant": accountant})
    else:
        console.print(f"noise multiplier = {z:.6g}  (epsilon = {eps:.4g} <= {target_epsilon:g}, "
                      f"accountant = {accountant})", highlight=False)


@budget_app.command("show")
def budget_show_cmd(
    ledger: Path = typer.Option(..., "--ledger", help="The site's ledger file (SQLite)."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Print every spend in a privacy ledger with totals per dataset."""
    from fedinfra.privacy import PrivacyLedger

    def load() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        if not ledger.is_file():
            raise StoreError(f"{ledger}: no such ledger file; check the path")
        if ledger.stat().st_size == 0:
            raise StoreError(f"{ledger}: empty file, not a privacy ledger; check the path")
        book = PrivacyLedger(ledger, readonly=True)  # a reader never creates or changes the file
        try:
            entries = [vars(e) for e in book.entries()]
            totals = [vars(t) for t in book.totals()]
        finally:
            book.close()
        return entries, totals

    entries, totals = guarded(load)
    if fmt is OutputFormat.json:
        print_json({"entries": entries, "totals": totals})
        return
    spends = Table(title=f"privacy spends in {ledger}")
    for col in ("run", "round", "mechanism", "accountant", "epsilon (run, cumulative)", "delta", "dataset"):
        spends.add_column(col)
    for e in entries:
        spends.add_row(str(e["run_id"]), str(e["round"]), str(e["mechanism"]), str(e["accountant"]),
                       f"{e['epsilon']:.4g}", f"{e['delta']:g}", str(e["dataset_fingerprint"])[:23])
    console.print(spends)
    sums = Table(title="totals per dataset (basic composition across runs)")
    for col in ("dataset", "runs", "rounds", "epsilon", "delta"):
        sums.add_column(col)
    for t in totals:
        sums.add_row(str(t["dataset_fingerprint"]), str(t["runs"]), str(t["rounds"]), f"{t['epsilon']:.4g}",
                     f"{t['delta']:g}")
    console.print(sums)


def register(app: typer.Typer) -> None:
    """Add the ``privacy`` and ``budget`` command groups to ``app``."""
    app.add_typer(privacy_app, name="privacy")
    app.add_typer(budget_app, name="budget")
