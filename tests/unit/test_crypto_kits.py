"""`fedinfra keys init` and key separation: the coordinator holds and loads no secret key."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedinfra.cli import build_app
from fedinfra.crypto import (
    EncryptedSum,
    PublicParams,
    load_coordinator_kit,
    load_site_kit,
    open_sum,
    seal_update,
)
from fedinfra.crypto.kits import HE_SECRET_FILE, SIGNING_FILE
from fedinfra.errors import ConfigError, CryptoError

CONSORTIUM = """\
name = "acme-health"
sites = ["hospital-a", "hospital-b"]

[secure_aggregation]
mode = "bfv"
quant_bits = 16
clip = 0.5
max_sites = 4
example_cap = 500
"""


def _init(tmp_path: Path, *extra: str, text: str = CONSORTIUM):
    cfg = tmp_path / "consortium.toml"
    cfg.write_text(text)
    return CliRunner().invoke(
        build_app(), ["keys", "init", "--consortium", str(cfg), "--out", str(tmp_path / "kits"), *extra]
    )


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kits")
    result = _init(tmp)
    assert result.exit_code == 0, result.output
    return tmp / "kits"


def test_keys_init_writes_one_kit_per_site_and_one_for_the_coordinator(kits):
    assert (kits / "coordinator" / "kit.toml").is_file()
    for site in ("hospital-a", "hospital-b"):
        assert (kits / "sites" / site / HE_SECRET_FILE).is_file()
        assert (kits / "sites" / site / SIGNING_FILE).is_file()


def test_secret_files_are_readable_by_their_owner_only(kits):
    for site in ("hospital-a", "hospital-b"):
        for name in (HE_SECRET_FILE, SIGNING_FILE):
            assert stat.S_IMODE((kits / "sites" / site / name).stat().st_mode) == 0o600
        assert stat.S_IMODE((kits / "sites" / site).stat().st_mode) == 0o700


def test_keys_init_refuses_to_overwrite_without_force(tmp_path):
    assert _init(tmp_path).exit_code == 0
    before = (tmp_path / "kits" / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes()

    again = _init(tmp_path)

    assert again.exit_code == 2
    assert "--force" in again.output
    assert (tmp_path / "kits" / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes() == before


def test_keys_init_with_force_replaces_the_keys(tmp_path):
    assert _init(tmp_path).exit_code == 0
    before = (tmp_path / "kits" / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes()

    again = _init(tmp_path, "--force", "--format", "json")

    assert again.exit_code == 0
    assert json.loads(again.output)["he"]["mode"] == "bfv"
    assert (tmp_path / "kits" / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes() != before


def test_keys_init_refuses_parameters_that_could_overflow(tmp_path):
    result = _init(tmp_path, text=CONSORTIUM.replace("max_sites = 4", "max_sites = 4\nplain_modulus_bits = 58"))

    assert result.exit_code == 2
    assert "plain_modulus_bits=58 exceeds the decryption-noise bound" in result.output


def test_sites_share_parameters_and_the_coordinator_knows_their_verification_keys(kits):
    a, b = load_site_kit(kits / "sites" / "hospital-a"), load_site_kit(kits / "sites" / "hospital-b")
    public = load_coordinator_kit(kits / "coordinator")

    assert a.params == b.params == public.params
    assert a.he_secret_key == b.he_secret_key
    assert set(public.site_keys) == {"hospital-a", "hospital-b"}
    assert "secrets hidden" in repr(a)


def test_the_coordinator_kit_holds_no_secret_key(kits):
    # Other kit parts (TLS, audit signing) add the coordinator's own keys; none is a site's.
    secret = (kits / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes()
    signing = [(kits / "sites" / s / SIGNING_FILE).read_bytes() for s in ("hospital-a", "hospital-b")]
    coordinator_files = {p.name: p.read_bytes() for p in (kits / "coordinator").rglob("*") if p.is_file()}

    assert "kit.toml" in coordinator_files
    assert HE_SECRET_FILE not in coordinator_files
    assert SIGNING_FILE not in coordinator_files
    for content in coordinator_files.values():
        for chunk in (secret[100:132], secret[-32:], *signing, *(s.hex().encode() for s in signing)):
            assert chunk not in content
    assert not any(isinstance(v, bytes) and len(v) > 64 for v in vars(load_coordinator_kit(kits / "coordinator")))


def test_the_coordinator_kit_cannot_decrypt(kits):
    a = load_site_kit(kits / "sites" / "hospital-a")
    public = load_coordinator_kit(kits / "coordinator")
    agg = EncryptedSum(public, run_id="r", round_id=1)
    agg.add(seal_update(np.full(10, 0.25), 3, a, run_id="r", round_id=1))
    blob = agg.to_bytes()

    with pytest.raises(CryptoError, match="holds no HE secret key"):
        open_sum(blob, public, run_id="r", round_id=1)  # type: ignore[arg-type]
    assert not hasattr(public, "he_secret_key")
    assert isinstance(public, PublicParams)


def test_a_key_made_from_the_public_parameters_cannot_open_the_sum(kits):
    # What the coordinator could do with its kit: make its own key for the same parameters.
    from fedinfra.crypto import SiteKeys
    from fedinfra.crypto.codec import context_for

    a = load_site_kit(kits / "sites" / "hospital-a")
    public = load_coordinator_kit(kits / "coordinator")
    agg = EncryptedSum(public, run_id="r", round_id=1)
    agg.add(seal_update(np.full(5000, 0.25), 3, a, run_id="r", round_id=1))
    forged = SiteKeys(
        params=public.params,
        consortium=public.consortium,
        site_id="coordinator",
        he_secret_key=context_for(public.params).new_secret_key(),
        signing_key=a.signing_key,
    )

    with pytest.raises(CryptoError, match="ciphertext rejected"):
        open_sum(agg.to_bytes(), forged, run_id="r", round_id=1)


def test_a_coordinator_kit_with_a_secret_file_is_refused(tmp_path):
    assert _init(tmp_path).exit_code == 0
    coordinator = tmp_path / "kits" / "coordinator"
    (coordinator / HE_SECRET_FILE).write_bytes(
        (tmp_path / "kits" / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes()
    )

    with pytest.raises(ConfigError, match="must not hold a secret key"):
        load_coordinator_kit(coordinator)


def test_a_site_kit_is_not_a_coordinator_kit(kits):
    with pytest.raises(ConfigError, match="this is a 'site' kit"):
        load_coordinator_kit(kits / "sites" / "hospital-a")


def test_an_edited_parameter_is_detected(tmp_path):
    assert _init(tmp_path).exit_code == 0
    kit_file = tmp_path / "kits" / "coordinator" / "kit.toml"
    kit_file.write_text(kit_file.read_text().replace('"clip" = 0.5', '"clip" = 0.25'))

    with pytest.raises(ConfigError, match="param_id mismatch"):
        load_coordinator_kit(tmp_path / "kits" / "coordinator")


def test_a_group_readable_secret_is_refused(tmp_path):
    assert _init(tmp_path).exit_code == 0
    site = tmp_path / "kits" / "sites" / "hospital-b"
    (site / HE_SECRET_FILE).chmod(0o640)

    with pytest.raises(ConfigError, match="chmod 600"):
        load_site_kit(site)


_SCAN = textwrap.dedent(
    """
    import sys, re
    from pathlib import Path
    import numpy as np
    from fedinfra.crypto import EncryptedSum, load_coordinator_kit, load_site_kit, seal_update
    kits, role = Path(sys.argv[1]), sys.argv[2]
    # Patterns arrive split in halves so this process never holds them contiguously.
    halves = [(bytes.fromhex(sys.argv[i]), bytes.fromhex(sys.argv[i + 1])) for i in range(3, len(sys.argv), 2)]
    updates = [Path(p).read_bytes() for p in sorted((kits.parent / "updates").iterdir())]
    if role == "coordinator":
        agg = EncryptedSum(load_coordinator_kit(kits / "coordinator"), run_id="r", round_id=1)
        for u in updates:
            agg.add(u)
        agg.to_bytes()
    else:
        keys = load_site_kit(kits / "sites" / "hospital-a")
        seal_update(np.zeros(100), 1, keys, run_id="r", round_id=1)
    found = [False] * len(halves)
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
        regions = [line.split() for line in maps]
        for fields in regions:
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                chunk = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            for k, (head, tail) in enumerate(halves):
                start = chunk.find(head)
                while start != -1 and not found[k]:
                    if chunk[start + len(head) : start + len(head) + len(tail)] == tail:
                        found[k] = True
                    start = chunk.find(head, start + 1)
            del chunk
    print("".join("1" if f else "0" for f in found))
    """
)


def test_the_coordinator_process_memory_holds_no_secret_key(kits, tmp_path):
    # Prepare: two real encrypted updates on disk, and secret-key byte patterns: the serialized
    # key file and the key's NTT coefficients as SEAL holds them in memory.
    from fedinfra.crypto._seal import secret_key_coefficients
    from fedinfra.crypto.codec import _secret_key

    (kits.parent / "updates").mkdir(exist_ok=True)
    for name in ("hospital-a", "hospital-b"):
        keys = load_site_kit(kits / "sites" / name)
        blob = seal_update(np.full(100, 0.1), 5, keys, run_id="r", round_id=1)
        (kits.parent / "updates" / name).write_bytes(blob)
    keys = load_site_kit(kits / "sites" / "hospital-a")
    coeffs = secret_key_coefficients(_secret_key(keys), 8)
    in_memory = b"".join(c.to_bytes(8, "little") for c in coeffs)
    file_bytes = (kits / "sites" / "hospital-a" / HE_SECRET_FILE).read_bytes()[200:264]
    signing = (kits / "sites" / "hospital-a" / SIGNING_FILE).read_bytes()
    args = []
    for pattern in (in_memory, file_bytes, signing):
        half = len(pattern) // 2
        args += [pattern[:half].hex(), pattern[half:].hex()]

    def scan(role: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", _SCAN, str(kits), role, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return out.stdout.strip()

    # Positive control: a site process that loaded its kit does hold all three patterns.
    assert scan("site") == "111"
    # The coordinator, after loading its kit and summing real updates, holds none.
    assert scan("coordinator") == "000"
