"""Homomorphic encryption for secure aggregation (layer L2).

Recipes for the apps (STYLE.md: recipes over primitives):

* sites: :func:`seal_update` encrypts and signs an update, :func:`open_sum` decrypts the
  aggregate into the weighted mean;
* coordinator: :class:`EncryptedSum` validates and adds encrypted updates, streaming;
* provisioning: :func:`build_kits` / :func:`write_kits` (``fedinfra keys init``),
  :func:`load_site_kit`, :func:`load_coordinator_kit`, :func:`generate_consortium`.

Only :mod:`fedinfra.crypto._seal` touches ``tenseal.sealapi`` and only
:mod:`fedinfra.crypto._sign` touches ``cryptography.hazmat``; both load lazily.
"""

from fedinfra.crypto.codec import CODECS, EncryptedSum, open_sum, seal_update
from fedinfra.crypto.kits import (
    KIT_PARTS,
    Kit,
    KitSet,
    PublicParams,
    SiteKeys,
    build_kits,
    generate_consortium,
    load_coordinator_kit,
    load_site_kit,
    register_kit_part,
    write_kits,
)
from fedinfra.crypto.params import HEParams
from fedinfra.crypto.quantize import flatten, unflatten

__all__ = [
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
]
