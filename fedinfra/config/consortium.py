"""The consortium (:class:`ConsortiumConfig`), loaded from ``consortium.toml``.

It extends the HE provisioning spec (:class:`~fedinfra.config.secagg.ConsortiumSpec`:
``name``, ``sites``, ``secure_aggregation``) with what transport provisioning needs: the
address sites dial and the names the coordinator's TLS certificate must carry (RFC 6125
section 6: a client checks the name it dialled against the certificate's SANs).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from fedinfra.config._load import StrictModel, load_model
from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:port``); raise ``ValueError`` if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (e.g. coordinator.example.org:9092)")
    return host.strip("[]"), int(port)


class CoordinatorDecl(StrictModel):
    """Where sites reach the coordinator's SuperLink and how long its certificate lives."""

    address: str = Field(default="127.0.0.1:9092", description="host:port the sites dial")
    sans: list[str] = Field(default_factory=list, description="extra DNS names / IPs for the certificate")
    cert_valid_days: int = Field(default=365, ge=1, le=825)
    ca_valid_days: int = Field(default=1825, ge=1, le=3650)

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value

    @field_validator("sans")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if not name or any(c.isspace() or c in "/:@" for c in name):
                    raise ValueError(f"{name!r} is neither an IP address nor a DNS name") from None
        return value

    @property
    def host(self) -> str:
        """The host part of :attr:`address`."""
        return split_address(self.address)[0]

    def all_sans(self) -> list[str]:
        """The certificate's names: the dialled host, the extra ``sans``, then loopback.

        Loopback names let the operator's own tools (``fedinfra run``) reach the SuperLink
        on its host; anyone able to dial loopback there is already on the machine.
        """
        return list(dict.fromkeys([self.host, *self.sans, "127.0.0.1", "localhost"]))


class ConsortiumConfig(StrictModel):
    """A consortium: its sites, its coordinator and its secure-aggregation settings."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    scenario: Literal["hospital", "bank", "edge"] = "hospital"
    sites: list[str] = Field(min_length=1)
    coordinator: CoordinatorDecl = Field(default_factory=CoordinatorDecl)
    secure_aggregation: SecureAggSpec = Field(default_factory=lambda: SecureAggSpec(mode="bfv"))

    def he_spec(self) -> ConsortiumSpec:
        """The part the HE provisioning reads (validates site ids and the site cap)."""
        return ConsortiumSpec(name=self.name, sites=list(self.sites), secure_aggregation=self.secure_aggregation)


def load_consortium(path: Path | str) -> ConsortiumConfig:
    """Load and validate a ``consortium.toml`` (site ids checked as the HE spec does)."""
    from fedinfra.config._load import describe_validation_error
    from fedinfra.errors import ConfigError

    cfg = load_model(ConsortiumConfig, path)
    try:
        cfg.he_spec()
    except ValueError as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise ConfigError(describe_validation_error(exc, str(path))) from exc
        raise
    return cfg
