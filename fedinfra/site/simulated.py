"""Manifests of simulated sites (the demo's hospitals and banks).

A simulated site is a partition of a bundled data set; its manifest mirrors the examples
in ``clients/hospital/site.toml`` and ``clients/bank/site.toml`` with its own name and a
jurisdiction spread over EEA member states, so every policy gate runs for real on it.
"""

from __future__ import annotations

import datetime as dt

from fedinfra.config import JobSpec, SiteManifest, parse_model

_EEA = ["DE", "FR", "NL", "IE", "ES", "IT", "BE", "AT", "SE", "DK"]

_HOSPITAL: dict[str, object] = {
    "role": "controller",
    "sector": "health",
    "lawful_basis": "public-task",  # GDPR Art. 6(1)(e)
    "art9_condition": "research-statistics",  # GDPR Art. 9(2)(j)
    "purposes": ["medical-research"],
    "data_categories": ["health"],
    "data_subjects": ["patients"],
    "retention_days": 3650,
    "transfer_safeguard": "none",
    "dpia": {"reference": "DPIA-SIM-001", "sha256": "0" * 64, "date": dt.date(2025, 3, 1)},
    "agreements": [{"kind": "dpa", "reference": "DPA-SIM-001", "signed": dt.date(2025, 2, 10)}],
    "budget": {"epsilon_per_run": 8.0, "epsilon_lifetime": 40.0, "delta": 1e-5},
}

_BANK: dict[str, object] = {
    "role": "controller",
    "sector": "finance",
    "lawful_basis": "legitimate-interests",  # GDPR Art. 6(1)(f)
    "purposes": ["insurance-propensity-modelling"],
    "data_categories": ["financial", "demographic"],
    "data_subjects": ["customers"],
    "retention_days": 730,
    "transfer_safeguard": "none",
    "agreements": [{"kind": "service-provider-contract", "reference": "SPC-SIM-001", "signed": dt.date(2025, 7, 1)}],
    "budget": {"epsilon_per_run": 8.0, "epsilon_lifetime": 40.0, "delta": 1e-5},
}


_DEVICE: dict[str, object] = {
    "role": "controller",
    "sector": "device",
    "lawful_basis": "consent",  # GDPR Art. 6(1)(a)
    "consent": {"reference": "CONSENT-FORM-V3", "status": "given", "recorded": dt.date(2025, 9, 1)},
    "purposes": ["on-device-model-improvement"],
    "data_categories": ["usage"],
    "data_subjects": ["device-users"],
    "retention_days": 365,
    "transfer_safeguard": "none",
    "budget": {"epsilon_per_run": 10.0, "epsilon_lifetime": 50.0, "delta": 1e-5},
}


_BEDSIDE: dict[str, object] = {
    **_DEVICE,
    "lawful_basis": "consent",  # GDPR Art. 6(1)(a)
    "art9_condition": "explicit-consent",  # GDPR Art. 9(2)(a): patients opted in on the device
    "purposes": ["medical-research"],
    "data_categories": ["health"],
    "data_subjects": ["patients"],
    "agreements": [{"kind": "dpa", "reference": "DPA-DEVICE-001", "signed": dt.date(2025, 2, 10)}],
}


def simulated_manifest(job: JobSpec, site: str) -> SiteManifest:
    """The manifest of simulated site ``site`` (``<scenario>-<index>`` or ``device-<index>``)."""
    tail = site.rsplit("-", 1)[-1]
    index = int(tail) if tail.isdigit() else 0
    if site.startswith("device-") and job.scenario != "edge":
        base = _BEDSIDE  # an edge device inside a hospital federation (mixed job)
    else:
        base = {"bank": _BANK, "edge": _DEVICE}.get(job.scenario, _HOSPITAL)
    raw = {
        **base,
        "name": site,
        "organisation": f"Simulated {'device' if site.startswith('device-') else job.scenario} {index}",
        "jurisdiction": _EEA[index % len(_EEA)],
        "dpo": {"name": "Data Protection Office", "email": f"dpo@{site}.example"},
    }
    return parse_model(SiteManifest, raw, f"simulated manifest of {site}")
