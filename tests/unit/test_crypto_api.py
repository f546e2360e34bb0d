"""The public surface of fedinfra.crypto's HE codec, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import fedinfra.crypto

HE_API = {
    "CODECS",
    "KIT_PARTS",
    "EncryptedSum",
    "HEParams",
    "Kit",
    "KitSet",
    "PublicParams",
    "SiteKeys",
    "build_kits",
    "flatten",
    "generate_consortium",
    "load_coordinator_kit",
    "load_site_kit",
    "open_sum",
    "register_kit_part",
    "seal_update",
    "unflatten",
    "write_kits",
}


def test_the_he_api_is_exported():
    assert set(fedinfra.crypto.__all__) >= HE_API
    assert all(hasattr(fedinfra.crypto, name) for name in fedinfra.crypto.__all__)


def test_codecs_are_registered_by_mode():
    assert set(fedinfra.crypto.CODECS) == {"bfv", "ckks"}


def test_importing_the_codec_does_not_load_tenseal():
    code = "import sys, fedinfra.crypto, fedinfra.cli.keys; print('tenseal' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"
