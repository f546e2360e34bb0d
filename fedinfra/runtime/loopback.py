"""A whole federation on one machine: demo sites with their own CSV files (tests, bench, docs).

Each site gets one Dirichlet partition (label skew, Hsu et al. 2019) of the job's bundled
training split, written as ``<out>/<site>/data.csv`` with a ``site.toml`` that declares it,
exactly as a real site declares its table, with the declarations the GDPR and HIPAA packs
check at the site gate (the example in ``clients/hospital/site.toml``).

Features are written standardised with the mean and standard deviation of the job's
training split: the same transform the coordinator applies to its held-out split, standing
for the preprocessing a consortium agrees on before training. Raw breast-cancer features
span five orders of magnitude (areas in the thousands, fractal dimensions near 0.06); SGD on
them with the job's learning rate diverges, which is a data-preparation fault, not a
federation one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fedinfra.config import JobSpec

_HOSPITAL_DECLARATIONS = """role = "controller"
lawful_basis = "public-task"              # GDPR Art. 6(1)(e)
art9_condition = "research-statistics"    # GDPR Art. 9(2)(j)
purposes = ["medical-research"]
data_categories = ["health"]
data_subjects = ["patients"]
retention_days = 3650
transfer_safeguard = "none"

[dpia]
reference = "DPIA-LOOPBACK-001"
sha256 = "{dpia}"
date = 2025-03-01

[[agreements]]
kind = "dpa"
reference = "DPA-LOOPBACK-001"
signed = 2025-02-10

[dpo]
name = "Data Protection Office"
email = "dpo@{name}.example"

[budget]
epsilon_per_run = 8.0
epsilon_lifetime = 40.0
delta = 1e-5
"""


def write_demo_sites(job: JobSpec, names: list[str], out: Path, *, jurisdiction: str = "DE") -> dict[str, Path]:
    """Write one site directory per name; return ``{name: path of site.toml}``."""
    import hashlib

    from fedinfra.data import dirichlet_partition
    from fedinfra.site.data import load_split

    split = load_split(job)
    parts = dirichlet_partition(split.y_train, num_sites=len(names), alpha=job.data.alpha, seed=job.seed)
    manifests: dict[str, Path] = {}
    for name, idx in zip(names, parts, strict=True):
        site_dir = out / name
        site_dir.mkdir(parents=True, exist_ok=True)
        with (site_dir / "data.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*split.feature_names, "label"])
            for x, y in zip(split.x_train[idx], split.y_train[idx], strict=True):
                writer.writerow([*(f"{v:.6g}" for v in x), int(y)])
        dpia = hashlib.sha256(f"DPIA of {name}".encode()).hexdigest()
        manifest = site_dir / "site.toml"
        manifest.write_text(
            f"name = {json.dumps(name)}\norganisation = {json.dumps(name + ' (demo)')}\n"
            f'jurisdiction = "{jurisdiction}"\nsector = "health"\n'
            + _HOSPITAL_DECLARATIONS.format(dpia=dpia, name=name)
            + '\n[dataset]\npath = "data.csv"\nlabel_column = "label"\n'
        )
        manifests[name] = manifest
    return manifests


__all__ = ["write_demo_sites"]
