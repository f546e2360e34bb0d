"""The coordinator's public port: a TLS-terminating proxy that forwards Fleet traffic only.

Flower 1.41's SuperLink serves every API from one HTTP application on one port: Fleet
(``/v1/fleet/...``, what SuperNodes use), Control (``/v1/control/...``: registering nodes,
submitting and stopping runs) and the runtime API (``/v1/runtime/...``: the ServerApp
process's ``AcquireTask``, pulling and pushing messages). The open-source Control API has
only a no-op login, so anyone who completes the TLS handshake - only ``ca.crt`` is needed -
could register a node, submit a run (code execution at the coordinator and, unsigned, at
sites) or take the ServerApp's task (``../shared/notes/flower-trust.md``).

So the SuperLink binds loopback only, and the public address is served by nginx (Debian's
``nginx-light``), started and stopped with it by ``fedinfra server start``:

* TLS with the kit's server certificate (TLS 1.2/1.3 only; RFC 9325 recommendations);
* ``POST /v1/fleet/*`` is proxied to the SuperLink over TLS on loopback, verified
  against the consortium CA; SuperNode authentication (node keys) still happens in the
  SuperLink, end to end through the proxy;
* everything else - Control, runtime, health, unknown paths - answers 403 without
  reaching the SuperLink. Operator tools (``fedinfra run``, ``flwr``) and the ServerApp
  process dial the loopback port on the coordinator host; reaching them needs a login on
  that host (the operator credential), not a CA certificate. A separate network API
  with operator client certificates is left open (see server/README.md).

No access log is kept (client addresses are personal data, GDPR Art. 5(1)(c)); nginx's
error log goes to ``<state>/proxy/error.log``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fedinfra.errors import RuntimeLaunchError
from fedinfra.runtime.env import HARDENED_ENV, private_dir
from fedinfra.runtime.procs import FlowerProcess, can_connect, flower_env

#: The only path prefix reachable from the network: Flower's Fleet API.
FLEET_PREFIX = "/v1/fleet/"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

_CONF = """# Written by fedinfra server start (fedinfra/runtime/proxy.py); regenerated at every start.
daemon off;
worker_processes 1;
{keep_env}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size {max_body};
    upstream superlink {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen {listen} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        location {fleet} {{
            limit_except POST {{ deny all; }}
            proxy_pass https://superlink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
        location / {{
            return 403;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class ProxySpec:
    """Where the proxy listens, where the SuperLink is, and the TLS material."""

    listen_host: str
    listen_port: int
    upstream_port: int
    cert: Path
    key: Path
    ca: Path
    max_body: str = "64m"


def nginx_bin() -> str:
    """The nginx executable; a one-line error naming the package if there is none."""
    found = shutil.which("nginx") or next((c for c in NGINX_CANDIDATES if Path(c).is_file()), None)
    if found is None:
        raise RuntimeLaunchError(
            "nginx not found: the coordinator's public port is an nginx proxy; "
            "install it (Debian: apt-get install nginx-light) and start again"
        )
    return found


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_config(spec: ProxySpec, prefix: Path) -> str:
    """The nginx configuration for ``spec`` with its files under ``prefix``."""
    # nginx clears its workers' environment (all but TZ); `env NAME;` keeps the hardened
    # settings in every process of the coordinator's tree (nothing phones home).
    keep_env = "".join(f"env {name};\n" for name in sorted(HARDENED_ENV))
    return _CONF.format(
        keep_env=keep_env,
        prefix=prefix,
        listen=_listen(spec.listen_host, spec.listen_port),
        upstream_port=spec.upstream_port,
        cert=spec.cert,
        key=spec.key,
        ca=spec.ca,
        fleet=FLEET_PREFIX,
        max_body=spec.max_body,
    )


def start_proxy(spec: ProxySpec, state: Path, *, timeout: float = 30.0) -> FlowerProcess:
    """Write the configuration, start nginx in the foreground, wait until it listens."""
    binary = nginx_bin()
    prefix = private_dir(state / "proxy")
    private_dir(prefix / "tmp")
    conf = prefix / "nginx.conf"
    conf.write_text(render_config(spec, prefix))
    proc = FlowerProcess(
        "Fleet proxy (nginx)",
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        env=flower_env(state / "flwr"),
        log_path=prefix / "nginx.out",
        cwd=prefix,
    )
    proc.start()
    dial = "127.0.0.1" if spec.listen_host in ("0.0.0.0", "") else spec.listen_host  # noqa: S104 - comparing
    dial = "::1" if dial == "::" else dial
    try:
        proc.wait_until(lambda: can_connect(dial, spec.listen_port), timeout=timeout, what="listening")
    except BaseException as exc:
        proc.stop()
        detail = (prefix / "error.log").read_text(errors="replace").strip().splitlines() if (
            prefix / "error.log").exists() else []
        if detail:
            raise RuntimeLaunchError(f"the Fleet proxy did not start: {detail[-1]}") from exc
        raise
    return proc


__all__ = ["FLEET_PREFIX", "ProxySpec", "nginx_bin", "render_config", "start_proxy"]
