import datetime as dt
from pathlib import Path

import pytest

from fedinfra.config.device import DeviceProfile, load_device
from fedinfra.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "device.toml"
    p.write_text(text)
    return p


def test_shipped_profile_loads_and_resolves_state_dir():
    profile = load_device(REPO / "edge" / "device.toml")
    assert profile.state_dir.is_absolute()
    assert profile.compression.bits == 8


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('name = "d"\n[limits]\nmax_memory_mb = 8\n', "limits.max_memory_mb"),
        ('name = "d"\n[limits]\nmax_cpu_seconds = 0\n', "limits.max_cpu_seconds"),
        ('name = "d"\n[limits]\nmax_cpu_seconds = 1e9\n', "limits.max_cpu_seconds"),
        ('name = "d"\n[conditions]\nmin_battery = 1.5\n', "conditions.min_battery"),
        ('name = "d"\n[conditions]\nwindow_start = "10:00"\nwindow_end = "10:00"\n', "conditions"),
        ('name = "d"\n[conditions]\nwindow_start = "25:00"\nwindow_end = "10:00"\n', "conditions.window_start"),
        ('name = "d"\n[conditions]\nwindow_start = "10:00"\n', "conditions"),
        ('name = "d"\n[backoff]\ninitial_s = 100\nmax_s = 10\n', "backoff"),
        ('name = "d"\nserver = "host:99999"\n', "server"),
        ('name = "d"\nserver = "http://host:80"\n', "server"),
        ('name = "d"\nlimitz = 1\n', "limitz"),
    ],
)
def test_impossible_profiles_are_refused_naming_the_field(tmp_path, body, field):
    with pytest.raises(ConfigError, match=f"field '{field}"):
        load_device(_write(tmp_path, body))


def test_memory_limit_beyond_the_device_is_refused():
    profile = DeviceProfile.model_validate({"name": "d", "limits": {"max_memory_mb": 4096}})
    with pytest.raises(ConfigError, match="exceeds this device's memory"):
        profile.check_host(total_memory_mb=1024, cpu_count=2)


def test_window_may_wrap_midnight():
    profile = DeviceProfile.model_validate(
        {"name": "d", "conditions": {"window_start": "22:00", "window_end": "06:00"}}
    )
    assert profile.conditions.window() == (dt.time(22, 0), dt.time(6, 0))
