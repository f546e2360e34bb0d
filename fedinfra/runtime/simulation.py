"""Run a job on Flower's simulation engine (Ray), kept on loopback.

Ray binds the host's address unless told otherwise; ``_node_ip_address=127.0.0.1`` plus
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keep every socket on loopback, and the dashboard
(an HTTP listener) is not started.

A simulated run is provisioned like a real one: kits are written under
``<run>/kits`` (HE secret key for sites only, audit signing key for the coordinator), each
site keeps its ledger and receipts under ``<run>/site-homes/<site>``, the coordinator
writes its audit store to ``<run>/audit.sqlite``, and the report is generated at the end.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fedinfra._optional import require_extra
from fedinfra.config import JobSpec
from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.coordinator.events import Reporter
from fedinfra.coordinator.persist import RunState
from fedinfra.errors import FedinfraError, RuntimeLaunchError
from fedinfra.runtime.env import LOOPBACK, harden, ray_home
from fedinfra.site.home import HOME_ENV, KIT_ROOT_ENV

AUDIT_STORE = "audit.sqlite"


def backend_config(num_cpus: int | None = None) -> dict[str, dict[str, object]]:
    """Ray settings that keep the simulation on loopback and within this machine's cores."""
    cpus = num_cpus or max(1, min(2, os.cpu_count() or 1))
    return {
        "init_args": {
            "num_cpus": cpus,
            "_node_ip_address": LOOPBACK,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }


def site_names(job: JobSpec) -> list[str]:
    """Names of the simulated sites, as the ClientApp derives them."""
    from fedinfra.config.job import simulated_site_name

    s = job.sites
    return [simulated_site_name(job.scenario, i, s.count, s.devices) for i in range(s.count)]


def provision_simulation(job: JobSpec, run_id: str, run_dir: Path) -> Path:
    """Write the kits of a simulated consortium; return the kits directory."""
    from fedinfra.runtime.provision import provision

    consortium = ConsortiumConfig(
        name=f"sim-{run_id}",
        scenario=job.scenario,
        sites=site_names(job),
        secure_aggregation=job.secure_aggregation,
    )
    kits = run_dir / "kits"
    provision(consortium, kits)
    return kits


def run_simulated(
    job: JobSpec,
    *,
    run_id: str,
    run_dir: Path,
    reporter: Reporter | None = None,
    verbose: bool = False,
    report_formats: tuple[str, ...] = ("html", "pdf", "json"),
    client_app: Any = None,
) -> RunState:
    """Run ``job`` with ``job.sites.count`` simulated sites; return the coordinator's state.

    ``client_app`` replaces fedinfra's ClientApp (the malicious-site tests, ``tests/adversarial``).
    """
    require_extra("Flower's simulation engine (Ray)", modules=("ray",))
    harden(flwr_home=run_dir / ".flwr")
    from flwr.simulation import run_simulation

    from fedinfra.coordinator.app import make_server_app
    from fedinfra.runtime.coordinator_kit import settings_from_kit, write_report
    from fedinfra.site.app import app as fedinfra_client

    client_app = client_app or fedinfra_client

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    kits = provision_simulation(job, run_id, run_dir)
    # Inherited by Ray's worker processes, where the ClientApps run.
    os.environ[HOME_ENV] = str(run_dir / "site-homes")
    os.environ[KIT_ROOT_ENV] = str(kits / "sites")
    store = str(run_dir / AUDIT_STORE)
    settings = settings_from_kit(
        kits / "coordinator", store=store, tls=False, in_process=True, he=job.secure_aggregation.encrypted
    )
    def report(directory: Path, rid: str) -> None:  # inside the app: the sites cosign after it
        if report_formats:
            write_report(store, directory, rid, signer=settings.signer, formats=report_formats)

    server_app, outcome = make_server_app(
        job, run_id=run_id, run_dir=run_dir, settings=settings, reporter=reporter, after=report
    )
    with ray_home(run_dir / ".ray-home"):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=job.sites.count,
            backend_config=backend_config(),  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
    err = outcome.get("error")
    if isinstance(err, FedinfraError):
        raise err
    if isinstance(err, BaseException):
        raise RuntimeLaunchError(f"the simulated run failed: {err}") from err
    state = outcome.get("state")
    if not isinstance(state, RunState):
        raise RuntimeLaunchError("the simulated run ended without a result; rerun with --debug for Flower's log")
    from fedinfra.runtime.tracking import track_after_run

    track_after_run(run_dir, job.tracking)  # after the report, so it goes along as an artifact
    return state
