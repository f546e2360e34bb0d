"""Prepare example bank data: one CSV per site from the Caravan (CoIL 2000) data.

Each bank gets a label-skewed share of the 5,822 customers, with the 85 coded features,
the label ``Purchase`` and a ``customer_ref`` column of random pseudonyms (not derived
from any identifier, so not personal data on their own). ``--plant-iban`` adds an
``iban`` column of synthetic, checksum-valid IBANs; ``site-with-iban.toml`` declares no
feature list, so the IBANs would be trained on and the site's own preflight refuses the
job (PCI DSS 3.5.1, GLBA 16 CFR 314.4(c)(1)(ii), GDPR Art. 5(1)(c)).

    python clients/bank/prepare_data.py --sites 3 --out clients/bank/data
"""

from __future__ import annotations

import argparse
import csv
import secrets
import sys
from pathlib import Path

import numpy as np

from fedinfra.data.caravan import LABEL, read_caravan
from fedinfra.data.partition import dirichlet_partition


def synthetic_iban() -> str:
    """A random German IBAN with valid ISO 13616 mod-97 check digits (no real account)."""
    bban = f"{secrets.randbelow(10**18):018d}"
    numeric = "".join(str(int(ch, 36)) for ch in bban + "DE00")
    return f"DE{98 - int(numeric) % 97:02d}{bban}"


def main() -> None:
    """Write one CSV per site."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plant-iban", action="store_true", help="add a synthetic IBAN column")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()

    names, x, y = read_caravan()
    parts = dirichlet_partition(y, num_sites=args.sites, alpha=args.alpha, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for site, idx in enumerate(parts):
        path = args.out / f"bank-{site + 1}.csv"
        extra = ["iban"] if args.plant_iban else []
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["customer_ref", *extra, *names, LABEL])
            for i in idx:
                ref = f"C-{secrets.token_hex(6)}"
                planted = [synthetic_iban()] if args.plant_iban else []
                writer.writerow([ref, *planted, *(int(v) for v in x[i]), "Yes" if y[i] else "No"])
        sys.stdout.write(f"{path}: {len(idx)} rows, {int(np.sum(y[idx]))} purchases\n")


if __name__ == "__main__":
    main()
