"""Prepare example hospital data: one CSV per site from the Wisconsin breast-cancer data.

Each hospital gets a label-skewed share of the 569 cases (Dirichlet, as in the demo),
written with the columns declared in ``site.toml``: 30 numeric features, the label
``diagnosis`` (1 = benign, 0 = malignant, as in scikit-learn) and an ``mrn`` column of
synthetic medical record numbers. ``mrn`` is a HIPAA identifier (45 CFR
164.514(b)(2)(i)(H)); it is deliberately *not* a feature, so the site's preflight reports
it as excluded instead of blocking. Pass ``--leak-mrn`` to write a site whose declared
features include it, to see the preflight refuse the job.

    python clients/hospital/prepare_data.py --sites 3 --out clients/hospital/data
"""

from __future__ import annotations

import argparse
import csv
import secrets
import sys
from pathlib import Path

import numpy as np

from fedinfra.data.partition import dirichlet_partition


def column_names() -> list[str]:
    """Feature names as snake_case column names."""
    from sklearn.datasets import load_breast_cancer

    return [n.replace(" ", "_") for n in load_breast_cancer().feature_names]


def main() -> None:
    """Write one CSV per site."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()

    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = column_names()
    parts = dirichlet_partition(bunch.target, num_sites=args.sites, alpha=args.alpha, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for site, idx in enumerate(parts):
        path = args.out / f"hospital-{chr(ord('a') + site)}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["mrn", *names, "diagnosis"])
            for i in idx:
                mrn = f"MRN{secrets.randbelow(10**8):08d}"
                writer.writerow([mrn, *(f"{v:.6g}" for v in bunch.data[i]), int(bunch.target[i])])
        sys.stdout.write(f"{path}: {len(idx)} rows, {int(np.sum(bunch.target[idx]))} benign\n")


if __name__ == "__main__":
    main()
