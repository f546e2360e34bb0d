"""A loopback federation for e2e tests: kits, a SuperLink behind nginx, one SuperNode per site.

The same steps ``test_deploy.py`` / ``test_site_trust.py`` take in their fixtures (provision
the consortium's kits, approving the release of ``app_dir`` at every site; start the
SuperLink with TLS and SuperNode authentication; start each site's SuperNode under its
verifying warm launcher), as one context manager other e2e files can share. Every socket
binds 127.0.0.1 and ``FLWR_HOME`` lives under ``root``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedinfra.config.consortium import ConsortiumConfig
from fedinfra.config.server import load_server
from fedinfra.runtime.deploy import SuperLink, start_superlink, start_supernode
from fedinfra.runtime.kit import load_coordinator_transport, load_site_transport
from fedinfra.runtime.preflight import preflight
from fedinfra.runtime.procs import FlowerProcess, free_port, stop_all
from fedinfra.runtime.provision import provision

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class LoopbackFederation:
    """A running federation: its folder, kits, SuperLink, SuperNodes and ``server.toml``."""

    root: Path
    kits: Path
    link: SuperLink
    nodes: dict[str, FlowerProcess]
    server_toml: Path

    def env(self) -> dict[str, str]:
        """The environment of a command run by the coordinator's operator."""
        return {**os.environ, "FLWR_HOME": str(self.root / "flwr-home")}

    def fedinfra(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the ``fedinfra`` CLI as the coordinator's operator."""
        return subprocess.run(
            [str(BIN / "fedinfra"), *args], capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )


@contextmanager
def loopback_federation(
    root: Path,
    manifests: dict[str, Path],
    *,
    app_dir: Path,
    secure_aggregation: str = "secagg",
    name: str = "e2e",
) -> Iterator[LoopbackFederation]:
    """Provision kits (sites approve ``app_dir``'s release), start everything; stop it on exit."""
    os.environ["FLWR_HOME"] = str(root / "flwr-home")
    port = free_port()
    consortium = ConsortiumConfig(
        name=name,
        sites=list(manifests),
        coordinator={"address": f"127.0.0.1:{port}"},
        secure_aggregation={"mode": secure_aggregation},
    )
    kits = root / "kits"
    provision(consortium, kits, app_dir=app_dir)
    server_toml = root / "server.toml"
    server_toml.write_text(
        f'host = "127.0.0.1"\nport = {port}\nstate_dir = "state"\nruns_dir = "runs"\n'
        f'app_dir = "{REPO / "server"}"\nkit = "kits/coordinator"\n'
    )
    link = start_superlink(load_server(server_toml), load_coordinator_transport(kits / "coordinator"))
    nodes: dict[str, FlowerProcess] = {}

    def start(site: str) -> FlowerProcess:
        return start_supernode(
            manifests[site],
            preflight(manifests[site]),
            load_site_transport(kits / "sites" / site),
            state_dir=root / "site-state" / site,
            port=free_port(),
        )

    try:
        with ThreadPoolExecutor(max_workers=len(manifests)) as pool:
            for site, fut in [(s, pool.submit(start, s)) for s in manifests]:
                nodes[site] = fut.result()
        yield LoopbackFederation(root, kits, link, nodes, server_toml)
    finally:
        stop_all([*nodes.values(), *link.daemons()])
        link.stop()  # its status file
