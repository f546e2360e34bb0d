"""The coordinator parses an encrypted update one ciphertext at a time (issue 17).

SEAL's memory pool never returns memory, so what a fold parsed at once stays in the
process's RSS: the growth over adding a second update is what that fold held. Measured in
a fresh coordinator process that only loads its kit and the two signed updates (sealing
there would pre-grow the pool). On the old code (``load_ciphertexts`` of the whole update,
then ``add_inplace``) a 2M-value update's 245 parsed ciphertexts (2 x 4096 x 8 bytes each,
15.3 MiB) stayed resident; now one is parsed at a time and the growth is a few of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from fedinfra.config.secagg import ConsortiumSpec, SecureAggSpec
from fedinfra.crypto import seal_update
from fedinfra.crypto.kits import build_kits, load_site_kit, write_kits

_COORDINATOR = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fedinfra.crypto import EncryptedSum
    from fedinfra.crypto.kits import load_coordinator_kit

    def rss():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))

    d = Path(sys.argv[1])
    total = EncryptedSum(load_coordinator_kit(d / "kits" / "coordinator"), run_id="r", round_id=1)
    total.add((d / "a.bin").read_bytes())
    second = (d / "b.bin").read_bytes()
    before = rss()
    total.add(second)
    print(json.dumps({"growth": rss() - before, "sites": list(total.sites)}))
    """
)


def test_adding_an_encrypted_update_holds_one_parsed_ciphertext_not_the_whole_update(tmp_path: Path) -> None:
    spec = SecureAggSpec(mode="bfv", quant_bits=20, clip=0.05, max_sites=4, example_cap=100)
    write_kits(build_kits(ConsortiumSpec(name="t", sites=["a", "b"], secure_aggregation=spec)), tmp_path / "kits")
    values = np.full(2_000_000, 0.01)
    for site in ("a", "b"):
        keys = load_site_kit(tmp_path / "kits" / "sites" / site)
        (tmp_path / f"{site}.bin").write_bytes(seal_update(values, 50, keys, run_id="r", round_id=1))

    out = subprocess.run(
        [sys.executable, "-c", _COORDINATOR, str(tmp_path)], capture_output=True, text=True, check=True, timeout=600
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["sites"] == ["a", "b"]
    assert result["growth"] < 4 * 1024 * 1024, result  # the whole update parsed at once: >= 15.3 MiB
