"""Condition probes: whether the device is on power, charged, idle and inside its window.

A probe only *reads* the device (:class:`Readings`); :func:`evaluate` decides, as a pure
function of the readings, the profile's conditions and the time, so decisions are tested
without hardware. Probes register by name (``device.toml``'s ``probe``).

The Linux probe reads the kernel's power-supply class (``/sys/class/power_supply/*/type``,
``online``, ``capacity``; Linux ABI ``sysfs-class-power``) and the load average
(``/proc/loadavg``, proc(5)). A host with no battery and no mains entry (a server, a
container) reports ``on_power=None``: it has no battery to drain, so it counts as powered.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fedinfra.config.device import ConditionsSpec
from fedinfra.errors import ConfigError


@dataclass(frozen=True)
class Readings:
    """What a probe saw. ``None`` means the device has no such sensor."""

    on_power: bool | None
    battery: float | None
    load_per_core: float


class ConditionProbe(Protocol):
    """Anything that can read the device's state."""

    def read(self) -> Readings:
        """Return the current readings."""
        ...


@dataclass
class StaticProbe:
    """A probe that returns fixed, settable readings (tests, or a device without sensors)."""

    readings: Readings = field(
        default_factory=lambda: Readings(on_power=True, battery=1.0, load_per_core=0.0)
    )

    def read(self) -> Readings:
        """Return the readings set on this probe."""
        return self.readings


class LinuxProbe:
    """Reads ``/sys/class/power_supply`` and ``/proc/loadavg`` (roots injectable for tests)."""

    def __init__(
        self,
        *,
        power_supply: Path = Path("/sys/class/power_supply"),
        loadavg: Path = Path("/proc/loadavg"),
        cpu_count: int | None = None,
    ) -> None:
        self.power_supply = power_supply
        self.loadavg = loadavg
        self.cpu_count = cpu_count or os.cpu_count() or 1

    @staticmethod
    def _text(path: Path) -> str | None:
        try:
            return path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def read(self) -> Readings:
        """Read power, battery and load; an unreadable loadavg raises :class:`ConfigError`."""
        mains: list[bool] = []
        batteries: list[float] = []
        battery_discharging = False
        supplies = sorted(self.power_supply.iterdir()) if self.power_supply.is_dir() else []
        for supply in supplies:
            kind = self._text(supply / "type")
            if kind in ("Mains", "USB", "USB_C", "USB_PD"):
                mains.append(self._text(supply / "online") == "1")
            elif kind == "Battery":
                capacity = self._text(supply / "capacity")
                if capacity is not None and capacity.isdigit():
                    batteries.append(min(100, int(capacity)) / 100.0)
                if self._text(supply / "status") == "Discharging":
                    battery_discharging = True
        if mains:
            on_power: bool | None = any(mains)
        elif batteries:
            on_power = not battery_discharging
        else:
            on_power = None
        text = self._text(self.loadavg)
        try:
            load1 = float((text or "").split()[0])
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"{self.loadavg}: cannot read the load average; is /proc mounted?") from exc
        return Readings(
            on_power=on_power,
            battery=min(batteries) if batteries else None,
            load_per_core=load1 / self.cpu_count,
        )


@dataclass(frozen=True)
class Check:
    """One condition's outcome."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ConditionReport:
    """All conditions at one moment; the device trains only if :attr:`ok`."""

    checks: tuple[Check, ...]
    readings: Readings

    @property
    def ok(self) -> bool:
        """True when every condition holds."""
        return all(c.ok for c in self.checks)

    def failing(self) -> list[str]:
        """Return one line per failing condition."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready form (stable keys)."""
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "readings": {
                "on_power": self.readings.on_power,
                "battery": self.readings.battery,
                "load_per_core": round(self.readings.load_per_core, 4),
            },
        }


def in_window(now: dt.time, start: dt.time, end: dt.time) -> bool:
    """Whether ``now`` is in ``[start, end)``; a window with ``end < start`` wraps midnight."""
    if start < end:
        return start <= now < end
    return now >= start or now < end


def evaluate(conditions: ConditionsSpec, readings: Readings, now: dt.datetime) -> ConditionReport:
    """Decide every condition of ``conditions`` from ``readings`` at local time ``now``."""
    checks: list[Check] = []
    if conditions.require_power:
        if readings.on_power is None:
            checks.append(Check("power", True, "no battery or mains sensor: fixed power assumed"))
        else:
            detail = "on power" if readings.on_power else "on battery"
            checks.append(Check("power", readings.on_power, detail))
    if readings.battery is None:
        checks.append(Check("battery", True, "no battery"))
    else:
        ok = readings.battery >= conditions.min_battery
        checks.append(Check("battery", ok, f"{readings.battery:.0%} (minimum {conditions.min_battery:.0%})"))
    if conditions.require_idle:
        ok = readings.load_per_core <= conditions.max_load
        detail = f"load {readings.load_per_core:.2f} per core (maximum {conditions.max_load:.2f})"
        checks.append(Check("idle", ok, detail))
    window = conditions.window()
    if window is not None:
        ok = in_window(now.time(), *window)
        where = "inside" if ok else "outside"
        checks.append(Check("window", ok, f"{now:%H:%M} is {where} {window[0]:%H:%M}-{window[1]:%H:%M}"))
    return ConditionReport(tuple(checks), readings)


#: Probes by name, as ``device.toml`` names them.
PROBES: dict[str, Callable[[], ConditionProbe]] = {
    "linux": LinuxProbe,
    "static": StaticProbe,
}


def make_probe(name: str) -> ConditionProbe:
    """Build the probe registered as ``name``."""
    try:
        return PROBES[name]()
    except KeyError:
        raise ConfigError(f"unknown probe {name!r}; use one of {', '.join(sorted(PROBES))}") from None
