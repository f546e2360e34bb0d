import datetime as dt
from pathlib import Path

import pytest

from fedinfra.config.device import ConditionsSpec
from fedinfra.edge.probe import LinuxProbe, Readings, StaticProbe, evaluate, in_window, make_probe
from fedinfra.errors import ConfigError

NOON = dt.datetime(2025, 1, 1, 12, 0)


def _supply(root: Path, name: str, **files: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    for key, value in files.items():
        (d / key).write_text(value + "\n")


def _loadavg(tmp_path: Path, load1: float) -> Path:
    p = tmp_path / "loadavg"
    p.write_text(f"{load1} 0.50 0.40 1/200 1234\n")
    return p


def test_linux_probe_reads_a_laptop_on_battery(tmp_path):
    ps = tmp_path / "ps"
    _supply(ps, "AC", type="Mains", online="0")
    _supply(ps, "BAT0", type="Battery", capacity="42", status="Discharging")
    r = LinuxProbe(power_supply=ps, loadavg=_loadavg(tmp_path, 1.0), cpu_count=4).read()
    assert r == Readings(on_power=False, battery=0.42, load_per_core=0.25)


def test_linux_probe_without_supplies_counts_as_fixed_power(tmp_path):
    r = LinuxProbe(power_supply=tmp_path / "missing", loadavg=_loadavg(tmp_path, 0.2), cpu_count=2).read()
    assert r.on_power is None
    assert r.battery is None
    assert evaluate(ConditionsSpec(), r, NOON).ok


def test_linux_probe_reads_this_machine():
    r = LinuxProbe().read()
    assert r.load_per_core >= 0


def test_unreadable_loadavg_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="load average"):
        LinuxProbe(power_supply=tmp_path, loadavg=tmp_path / "nope").read()


@pytest.mark.parametrize(
    ("readings", "failing"),
    [
        (Readings(on_power=False, battery=0.9, load_per_core=0.1), "power"),
        (Readings(on_power=True, battery=0.2, load_per_core=0.1), "battery"),
        (Readings(on_power=True, battery=0.9, load_per_core=0.9), "idle"),
    ],
)
def test_each_condition_can_block_training(readings, failing):
    report = evaluate(ConditionsSpec(), readings, NOON)
    assert not report.ok
    assert [c.name for c in report.checks if not c.ok] == [failing]


def test_time_window_blocks_outside_and_wraps_midnight():
    spec = ConditionsSpec(window_start="22:00", window_end="06:00")
    fine = Readings(on_power=True, battery=1.0, load_per_core=0.0)
    assert not evaluate(spec, fine, NOON).ok
    assert evaluate(spec, fine, dt.datetime(2025, 1, 1, 23, 30)).ok
    assert in_window(dt.time(5, 59), dt.time(22), dt.time(6))
    assert not in_window(dt.time(6, 0), dt.time(22), dt.time(6))


def test_probe_registry():
    assert isinstance(make_probe("static"), StaticProbe)
    with pytest.raises(ConfigError, match="unknown probe"):
        make_probe("nope")
