"""An edge device's profile (:class:`DeviceProfile`), loaded from ``device.toml``.

An edge device (a wearables gateway, a bedside unit, a branch terminal) trains only when
its owner would not notice: on mains power, with enough battery, idle, inside a time
window. Each round is bounded in CPU time and memory, and an unreachable server is retried
with capped exponential backoff and jitter. Every limit is validated here, so an impossible
profile fails at load time with a one-line error, not on the device three rounds later.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from fedinfra.config._load import StrictModel, load_model
from fedinfra.errors import ConfigError

#: Below this a Python process with numpy and the Flower client cannot hold one round.
MIN_MEMORY_MB = 64
#: A round that needs more than a day of CPU is not an edge workload.
MAX_CPU_SECONDS = 86_400.0
#: Flower's fleet address form: ``host:port`` (IPv4, ``[IPv6]`` or a DNS name).
ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"


def _parse_hhmm(value: str) -> dt.time:
    try:
        return dt.time.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a time of day HH:MM") from exc


class ConditionsSpec(StrictModel):
    """When the device may train (all must hold).

    ``window_start``/``window_end`` are local times ``HH:MM``; a window may wrap midnight
    (``22:00``-``06:00``). Leave both unset to train at any time. ``max_load`` is the
    1-minute load average per CPU core above which the device counts as busy.
    """

    require_power: bool = True
    min_battery: float = Field(default=0.5, ge=0, le=1, description="battery fraction, 0-1")
    require_idle: bool = True
    max_load: float = Field(default=0.5, gt=0, le=64, description="1-min load average per core")
    window_start: str | None = None
    window_end: str | None = None

    @field_validator("window_start", "window_end")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_hhmm(value)
        return value

    @model_validator(mode="after")
    def _window_pair(self) -> ConditionsSpec:
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("set both window_start and window_end, or neither")
        if self.window_start is not None and self.window_start == self.window_end:
            raise ValueError("window_start equals window_end: the window is empty; widen it or remove both")
        return self

    def window(self) -> tuple[dt.time, dt.time] | None:
        """Return the training window as times of day, or ``None`` for always."""
        if self.window_start is None or self.window_end is None:
            return None
        return _parse_hhmm(self.window_start), _parse_hhmm(self.window_end)


class LimitsSpec(StrictModel):
    """Per-round resource limits, enforced by the edge runtime (CPU time and peak RSS)."""

    max_cpu_seconds: float = Field(default=60.0, gt=0, le=MAX_CPU_SECONDS)
    max_memory_mb: int = Field(default=512, ge=MIN_MEMORY_MB, le=1_048_576)


class BackoffSpec(StrictModel):
    """Retry schedule for an unreachable server: capped exponential backoff with jitter.

    The delay before attempt ``k`` is drawn from ``[(1 - jitter) d, d]`` with
    ``d = min(max_s, initial_s * multiplier**k)`` ("full jitter" when ``jitter = 1``):
    randomised delays keep a fleet of devices from reconnecting in lockstep after an outage
    (AWS Architecture Blog, "Exponential Backoff And Jitter", Brooker 2015).
    """

    initial_s: float = Field(default=2.0, gt=0, le=3600)
    max_s: float = Field(default=600.0, gt=0, le=86_400)
    multiplier: float = Field(default=2.0, ge=1, le=10)
    jitter: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _initial_le_max(self) -> BackoffSpec:
        if self.initial_s > self.max_s:
            raise ValueError(f"initial_s ({self.initial_s}) exceeds max_s ({self.max_s})")
        return self


class CompressionSettings(StrictModel):
    """How the device compresses its update (see :mod:`fedinfra.aggregation.compression`)."""

    bits: int = Field(default=8, ge=2, le=16)
    topk_fraction: float | None = Field(default=None, gt=0, le=1, description="share of coordinates sent")
    error_feedback: bool = True


class DeviceProfile(StrictModel):
    """An edge device: identity, server, training conditions, limits, backoff, compression.

    ``state_dir`` keeps the device's ledger, receipts and error-feedback memory across
    restarts and connectivity loss; a relative path is resolved against the profile file.
    ``probe`` names the condition probe (``linux`` reads sysfs and procfs).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    server: str | None = Field(default=None, pattern=ADDRESS_PATTERN, description="SuperLink fleet host:port")
    insecure: bool = Field(default=False, description="no TLS; loopback experiments only")
    state_dir: Path = Path("state")
    probe: str = Field(default="linux", pattern=r"^[a-z][a-z0-9_-]*$")
    poll_s: float = Field(default=30.0, gt=0, le=3600, description="seconds between condition checks")
    conditions: ConditionsSpec = Field(default_factory=ConditionsSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    compression: CompressionSettings = Field(default_factory=CompressionSettings)

    @field_validator("server")
    @classmethod
    def _port_range(cls, value: str | None) -> str | None:
        if value is not None:
            port = int(value.rsplit(":", 1)[1])
            if not 1 <= port <= 65_535:
                raise ValueError(f"port {port} is outside 1-65535")
        return value

    @model_validator(mode="after")
    def _insecure_only_on_loopback(self) -> DeviceProfile:
        """``insecure = true`` (no TLS) only towards this machine itself.

        Without TLS the update, the device's node-auth signatures and the model travel in
        clear and the coordinator is not authenticated (RFC 8446 section 1 goals; HIPAA
        45 CFR 164.312(e)(1)); over loopback nothing leaves the host.
        """
        if self.insecure and (self.server is None or not is_loopback_host(self.server.rsplit(":", 1)[0])):
            raise ValueError(
                "insecure = true is allowed only with a loopback server (127.0.0.1, ::1, localhost); "
                "remove it and use the kit's ca.crt (TLS)"
            )
        return self

    def check_host(self, *, total_memory_mb: int, cpu_count: int) -> None:
        """Refuse limits this host can never meet (a clear error instead of a crash loop).

        Raises
        ------
        ConfigError
            If ``limits.max_memory_mb`` exceeds the host's memory.
        """
        if self.limits.max_memory_mb > total_memory_mb:
            raise ConfigError(
                f"device {self.name!r}: limits.max_memory_mb={self.limits.max_memory_mb} exceeds this "
                f"device's memory ({total_memory_mb} MB); lower it"
            )
        if cpu_count < 1:  # pragma: no cover - os.cpu_count() never reports 0 cores
            raise ConfigError("this device reports no CPU")


def is_loopback_host(host: str) -> bool:
    """True if ``host`` (name or literal, brackets allowed) is this machine's loopback."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_device(path: Path | str) -> DeviceProfile:
    """Load ``device.toml``; a relative ``state_dir`` is resolved against the file's folder."""
    p = Path(path)
    profile = load_model(DeviceProfile, p)
    if not profile.state_dir.is_absolute():
        profile = profile.model_copy(update={"state_dir": (p.parent / profile.state_dir).resolve()})
    return profile
