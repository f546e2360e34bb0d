"""``import fedinfra`` (and its config and CLI modules) must not load heavy dependencies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "tenseal", "opacus", "flwr")

_PROBE = """
import json, sys
import {modules}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""


def _loaded_after_import(*modules: str) -> list[str]:
    code = _PROBE.format(modules=", ".join(modules), heavy=set(HEAVY))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_fedinfra_config_and_cli_loads_no_heavy_dependency() -> None:
    assert _loaded_after_import("fedinfra", "fedinfra.config", "fedinfra.cli") == []


@pytest.mark.parametrize(
    "module", ["fedinfra", "fedinfra.config", "fedinfra.cli", "fedinfra.errors", "fedinfra.aggregation"]
)
def test_each_light_module_alone_loads_no_heavy_dependency(module: str) -> None:
    assert _loaded_after_import(module) == []


def test_the_probe_does_see_a_heavy_import() -> None:
    # Guards the test itself: a module that does import flwr must be reported.
    assert "flwr" in _loaded_after_import("fedinfra", "flwr")
