"""The registered checks. Each is a pure function of (parameters, facts) -> Outcome.

A check never decides severity or gate - the pack does. A check that needs an unknown
fact raises :class:`EvidenceUnavailable`; any other exception is a failing finding too
(the engine fails closed). Evidence values are codes, numbers and column names only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedinfra.config.site import ART9_POINT, LAWFUL_BASIS_POINT, LawfulBasis, Role
from fedinfra.policy._facts import Facts, need
from fedinfra.policy._reference import adequacy_list, eea_members
from fedinfra.policy._registry import NoParams, Outcome, Params, register_check

# ---------------------------------------------------------------- job gate


def tls_enabled(_: NoParams, f: Facts) -> Outcome:
    """Transport encryption is on for every link (HIPAA 164.312(e)(1), GDPR Art. 32(1)(a))."""
    if f.job.in_process and not f.job.tls:
        return Outcome(True, "no network link: in-process simulation on loopback (deployments must use TLS)")
    on = bool(need(f.job.tls, "whether TLS is on"))
    return Outcome(on, "TLS is on for every link" if on else "TLS is off; start without --insecure")


class ProtectionParams(Params):
    """Which protection the job must use."""

    require: Literal["any", "dp", "secure-aggregation", "both"] = "any"


def update_protection(p: ProtectionParams, f: Facts) -> Outcome:
    """Updates are protected by DP and/or secure aggregation (GDPR Art. 25(1), 32(1))."""
    dp = f.job.spec.privacy.mechanism != "none"
    sa = f.job.spec.secure_aggregation.mode != "none"
    ok = {"any": dp or sa, "dp": dp, "secure-aggregation": sa, "both": dp and sa}[p.require]
    ev = {"dp": dp, "secure_aggregation": sa, "required": p.require}
    if ok:
        return Outcome(True, f"updates protected (dp={dp}, secure aggregation={sa})", ev)
    return Outcome(
        False,
        f"updates unprotected for requirement '{p.require}'; set privacy.mechanism and/or secure_aggregation.mode",
        ev,
    )


class EpsilonCapParams(Params):
    """The largest epsilon per run a regulation-driven pack accepts."""

    max_epsilon: float = Field(gt=0)
    require_dp: bool = True


def epsilon_cap(p: EpsilonCapParams, f: Facts) -> Outcome:
    """Differential privacy is on with a target epsilon no larger than the cap."""
    priv = f.job.spec.privacy
    if priv.mechanism == "none":
        msg = (
            "differential privacy is off; set privacy.mechanism"
            if p.require_dp
            else "no DP in this job; no epsilon to cap"
        )
        return Outcome(not p.require_dp, msg, {"max_epsilon": p.max_epsilon})
    if priv.epsilon is None:
        return Outcome(
            False,
            "privacy.epsilon is not set, so the cap cannot be checked; set a target epsilon",
            {"max_epsilon": p.max_epsilon},
        )
    ok = priv.epsilon <= p.max_epsilon
    return Outcome(
        ok, f"epsilon {priv.epsilon:g} {'<=' if ok else '>'} cap {p.max_epsilon:g}", {"max_epsilon": p.max_epsilon}
    )


class MinSitesParams(Params):
    """Fewest sites whose updates may form one aggregate."""

    min: int = Field(ge=1)


def min_sites(p: MinSitesParams, f: Facts) -> Outcome:
    """The job never aggregates fewer than ``min`` sites (no single site is exposed)."""
    got = f.job.spec.sites.min_sites
    ok = got >= p.min
    return Outcome(ok, f"sites.min_sites = {got} {'>=' if ok else '<'} {p.min}", {"required": p.min})


def audit_enabled(_: NoParams, f: Facts) -> Outcome:
    """The tamper-evident audit log is on (HIPAA 164.312(b), PCI DSS 10.2.1, AI Act Art. 12)."""
    on = bool(need(f.job.audit_enabled, "whether the audit log is on"))
    return Outcome(on, "audit log enabled" if on else "audit log disabled; enable it in the server config")


class RetentionParams(Params):
    """Minimum retention of audit records, in days."""

    min_days: int = Field(gt=0)


def audit_retention(p: RetentionParams, f: Facts) -> Outcome:
    """Audit records are kept at least ``min_days``."""
    days = int(need(f.job.audit_retention_days, "the audit retention period"))
    ok = days >= p.min_days
    return Outcome(
        ok, f"audit retention {days} days {'>=' if ok else '<'} required {p.min_days}", {"required_days": p.min_days}
    )


# ---------------------------------------------------------------- site gate


class LawfulBasisParams(Params):
    """Bases the pack accepts; empty = any Art. 6(1) basis."""

    allowed: list[LawfulBasis] = Field(default_factory=list)


def lawful_basis(p: LawfulBasisParams, f: Facts) -> Outcome:
    """The site declares a lawful basis under GDPR Art. 6(1)."""
    basis = f.need_site().lawful_basis
    if basis is None:
        return Outcome(False, "no lawful basis declared; set lawful_basis in site.toml (GDPR Art. 6(1))")
    if p.allowed and basis not in p.allowed:
        return Outcome(
            False, f"lawful basis {LAWFUL_BASIS_POINT[basis]} not accepted here", {"point": LAWFUL_BASIS_POINT[basis]}
        )
    return Outcome(True, f"lawful basis {LAWFUL_BASIS_POINT[basis]} ({basis})", {"point": LAWFUL_BASIS_POINT[basis]})


#: The special categories of personal data of GDPR Art. 9(1), by the words a site may use for them in
#: ``data_categories`` (compared in lower case, with "_" and " " read as "-").
SPECIAL_CATEGORIES: dict[str, str] = {
    "health": "health",
    "medical": "health",
    "genetic": "genetic",
    "biometric": "biometric",
    "racial-origin": "racial or ethnic origin",
    "ethnic-origin": "racial or ethnic origin",
    "racial-or-ethnic-origin": "racial or ethnic origin",
    "political-opinions": "political opinions",
    "religious-beliefs": "religious or philosophical beliefs",
    "philosophical-beliefs": "religious or philosophical beliefs",
    "religious-or-philosophical-beliefs": "religious or philosophical beliefs",
    "trade-union-membership": "trade union membership",
    "sex-life": "sex life or sexual orientation",
    "sexual-orientation": "sex life or sexual orientation",
}


def special_categories(sector: str | None, data_categories: list[str]) -> list[str]:
    """The Art. 9(1) categories a site declares, in the Regulation's words (sector ``health`` is health data)."""
    found = ["health"] if sector == "health" else []
    for declared in data_categories:
        name = SPECIAL_CATEGORIES.get(declared.strip().lower().replace("_", "-").replace(" ", "-"))
        if name is not None and name not in found:
            found.append(name)
    return found


def art9_condition(_: NoParams, f: Facts) -> Outcome:
    """Special-category data (health, genetic, biometric, ...) has an Art. 9(2) condition for processing."""
    site = f.need_site()
    special = special_categories(site.sector, site.data_categories)
    if not special:
        return Outcome(True, "no special-category data declared")
    if site.art9_condition is None:
        return Outcome(
            False, f"{', '.join(special)} data without an Art. 9(2) condition; set art9_condition in site.toml"
        )
    return Outcome(
        True, f"{ART9_POINT[site.art9_condition]} ({site.art9_condition})", {"point": ART9_POINT[site.art9_condition]}
    )


def purpose_limitation(_: NoParams, f: Facts) -> Outcome:
    """The job's purpose is one the site declared (GDPR Art. 5(1)(b))."""
    site = f.need_site()
    purpose = f.job.spec.purpose
    ok = purpose in site.purposes
    return Outcome(ok, f"purpose '{purpose}' {'is' if ok else 'is not'} among the site's purposes")


def consent_valid(_: NoParams, f: Facts) -> Outcome:
    """Consent, where it is the basis, is recorded and not withdrawn (Art. 7(3), 9(2)(a))."""
    site = f.need_site()
    relies = site.lawful_basis == "consent" or site.art9_condition == "explicit-consent"
    consent = site.consent
    if consent is not None and consent.status == "withdrawn":
        return Outcome(False, f"consent {consent.reference} withdrawn; stop processing for this purpose")
    if not relies:
        return Outcome(True, "consent is not the basis of processing")
    if consent is None:
        return Outcome(False, "consent is the basis but no consent record is declared; add [consent]")
    ok = consent.status == "given"
    return Outcome(ok, f"consent {consent.reference} is {consent.status}")


def transfer_allowed(_: NoParams, f: Facts) -> Outcome:
    """Sharing model updates with this site is a lawful transfer (GDPR Art. 44-46).

    Models trained on personal data may themselves be personal data (EDPB Opinion 28/2024),
    so every participant outside the EEA needs an adequacy decision (Art. 45) or an
    appropriate safeguard (Art. 46).
    """
    site = f.need_site()
    code = site.jurisdiction
    eea_as_of, eea = eea_members()
    ref = adequacy_list()
    ev: dict[str, object] = {"eea_list_as_of": eea_as_of.isoformat(), "adequacy_list_as_of": ref.as_of.isoformat()}
    if code in eea:
        return Outcome(True, f"{code} is in the EEA (no Chapter V transfer)", ev)
    if site.transfer_safeguard != "none":
        return Outcome(True, f"{code}: Art. 46 safeguard declared ({site.transfer_safeguard})", ev)
    decision = ref.countries.get(code)
    if decision is None:
        return Outcome(
            False, f"{code} is outside the EEA, has no adequacy decision and no Art. 46 safeguard is declared", ev
        )
    ev["decision"] = decision.decision
    if decision.valid_until is not None and f.today > decision.valid_until:
        return Outcome(
            False,
            f"{code}: adequacy decision lapsed on {decision.valid_until} per the reference list; "
            "declare an Art. 46 safeguard or refresh the list",
            ev,
        )
    if decision.scope == "partial":
        return Outcome(None, f"{code}: adequacy covers only {decision.covered}; confirm the recipient is covered", ev)
    return Outcome(True, f"{code} has an adequacy decision (Art. 45)", ev)


class IdentifierParams(Params):
    """Identifier kinds that block; empty = every kind the scanner detects."""

    kinds: list[str] = Field(default_factory=list)


def no_identifiers(p: IdentifierParams, f: Facts) -> Outcome:
    """No direct identifier is among the training columns (HIPAA 164.514(b)(2), Art. 5(1)(c))."""
    scan = f.need_scan()
    hits = [c for c in scan.blocking if not p.kinds or c.identifier in p.kinds]
    ev = {
        "identifier_columns": [f"{c.column}:{c.identifier}" for c in hits],
        "excluded_identifier_columns": [c.column for c in scan.flagged if not c.in_training],
    }
    if hits:
        return Outcome(
            False,
            f"{len(hits)} training column(s) hold identifiers: "
            + ", ".join(f"{c.column} ({c.identifier})" for c in hits)
            + "; drop them from feature_columns or de-identify the data",
            ev,
        )
    return Outcome(True, "no identifier among the training columns", ev)


class KAnonParams(Params):
    """Smallest acceptable group over the quasi-identifiers."""

    min_k: int = Field(ge=2)


def k_anonymity(p: KAnonParams, f: Facts) -> Outcome:
    """The training data is k-anonymous over its quasi-identifiers (Sweeney 2002)."""
    scan = f.need_scan()
    if scan.k_anonymity is None and not scan.quasi_identifiers:
        return Outcome(True, "no quasi-identifier columns found")
    # quasi-identifiers without k (a summary a site sent without it) is an unknown fact, never a pass
    k: int = need(scan.k_anonymity, f"k-anonymity over {', '.join(scan.quasi_identifiers)}")
    ok = k >= p.min_k
    return Outcome(
        ok,
        f"k = {k} over {len(scan.quasi_identifiers)} quasi-identifier(s) {'>=' if ok else '<'} {p.min_k}",
        {"rows_in_small_groups": scan.rows_in_small_groups},
    )


class DpiaParams(Params):
    """How old a DPIA may be before it must be reviewed."""

    max_age_days: int | None = Field(default=None, gt=0)


def dpia(p: DpiaParams, f: Facts) -> Outcome:
    """A DPIA is on record (GDPR Art. 35(1); health data at scale is high-risk, Art. 35(3)(b))."""
    d = f.need_site().dpia
    if d is None:
        return Outcome(False, "no DPIA declared; add [dpia] with reference, sha256 and date")
    if d.date > f.today:
        return Outcome(False, f"DPIA {d.reference} is dated in the future ({d.date})")
    age = (f.today - d.date).days
    if p.max_age_days is not None and age > p.max_age_days:
        return Outcome(False, f"DPIA {d.reference} is {age} days old (> {p.max_age_days}); review it (Art. 35(11))")
    return Outcome(True, f"DPIA {d.reference} dated {d.date}")


class AgreementParams(Params):
    """Which agreement must exist, and for which roles."""

    kinds: list[Literal["baa", "dpa", "joint-controller-arrangement", "service-provider-contract"]] = Field(
        min_length=1
    )
    roles: list[Role] = Field(default_factory=list, description="roles that need it; empty = every role")


def agreement(p: AgreementParams, f: Facts) -> Outcome:
    """A required agreement (BAA, DPA, ...) is on record."""
    site = f.need_site()
    if p.roles and site.role not in p.roles:
        return Outcome(True, f"not required for role {site.role}")
    found = [a for a in site.agreements if a.kind in p.kinds]
    if not found:
        return Outcome(False, f"no {' or '.join(p.kinds)} on record; add it under [[agreements]]")
    return Outcome(True, ", ".join(f"{a.kind} {a.reference} signed {a.signed}" for a in found))


def site_run_budget(_: NoParams, f: Facts) -> Outcome:
    """The job's epsilon fits the site's per-run cap."""
    cap = f.need_site().budget.epsilon_per_run
    priv = f.job.spec.privacy
    if priv.mechanism == "none":
        return Outcome(True, "no differential privacy spend")
    eps = need(priv.epsilon, "the job's target epsilon")
    ok = eps <= cap
    return Outcome(ok, f"job epsilon {eps:g} {'<=' if ok else '>'} site per-run cap {cap:g}")


def site_lifetime_budget(_: NoParams, f: Facts) -> Outcome:
    """Spent plus the job's epsilon fits the site's lifetime cap (basic composition)."""
    cap = f.need_site().budget.epsilon_lifetime
    priv = f.job.spec.privacy
    if priv.mechanism == "none":
        return Outcome(True, "no differential privacy spend")
    spent = float(need(f.site_epsilon_spent, "the site's lifetime epsilon spent"))
    eps = need(priv.epsilon, "the job's target epsilon")
    ok = spent + eps <= cap
    return Outcome(ok, f"spent {spent:g} + job {eps:g} {'<=' if ok else '>'} lifetime cap {cap:g}")


class SiteRetentionParams(Params):
    """Bounds on how long the site keeps the data."""

    max_days: int | None = Field(default=None, gt=0)


def data_retention(p: SiteRetentionParams, f: Facts) -> Outcome:
    """The site declares how long it keeps the data (GDPR Art. 5(1)(e)), within any maximum."""
    days = f.need_site().retention_days
    if days is None:
        return Outcome(False, "no retention period declared; set retention_days in site.toml")
    if p.max_days is not None and days > p.max_days:
        return Outcome(False, f"retention {days} days exceeds {p.max_days}")
    return Outcome(True, f"retention {days} days")


def dpo_contact(_: NoParams, f: Facts) -> Outcome:
    """A DPO contact is declared (GDPR Art. 37(7)); the contact itself is never logged."""
    ok = f.need_site().dpo is not None
    return Outcome(ok, "DPO contact declared" if ok else "no DPO contact; add [dpo]")


def dataset_declared(_: NoParams, f: Facts) -> Outcome:
    """The training data is declared with label, features and schema (EU AI Act Art. 10(2))."""
    d = f.need_site().dataset
    if d is None:
        return Outcome(False, "no [dataset] declared")
    missing = [k for k, v in (("feature_columns", d.feature_columns), ("columns", d.columns)) if not v]
    if missing:
        return Outcome(False, f"dataset declaration lacks {', '.join(missing)}")
    return Outcome(True, f"{len(d.feature_columns)} feature column(s) with schema declared")


class ManualParams(Params):
    """What a human must confirm."""

    question: str = Field(min_length=1)


def manual(p: ManualParams, _: Facts) -> Outcome:
    """A control a program cannot verify: recorded for a human, never silently passed."""
    return Outcome(None, p.question)


# ---------------------------------------------------------------- round and close gates


class ParticipantsParams(Params):
    """Fewest sites in one aggregate."""

    min: int = Field(ge=1)


def round_participants(p: ParticipantsParams, f: Facts) -> Outcome:
    """The round aggregates at least ``min`` (and the job's min_sites) sites."""
    r = f.need_round()
    need_n = max(p.min, f.job.spec.sites.min_sites)
    ok = r.participants >= need_n
    return Outcome(ok, f"round {r.round}: {r.participants} site(s) {'>=' if ok else '<'} {need_n}")


def epsilon_spent(_: NoParams, f: Facts) -> Outcome:
    """Cumulative epsilon stays within the job's target (round or close)."""
    priv = f.job.spec.privacy
    if priv.mechanism == "none":
        return Outcome(True, "no differential privacy spend")
    spent = f.close.epsilon_spent if f.close is not None else f.need_round().epsilon_spent
    spent = float(need(spent, "the epsilon spent"))
    target = float(need(priv.epsilon, "the job's target epsilon"))
    ok = spent <= target * (1 + 1e-9)
    return Outcome(ok, f"epsilon spent {spent:.4g} {'<=' if ok else '>'} target {target:g}")


def audit_verified(_: NoParams, f: Facts) -> Outcome:
    """The audit log verifies end to end (HIPAA 164.312(c)(1) integrity, PCI DSS 10.3.2)."""
    got = f.close.audit_verified if f.close is not None else f.need_round().audit_verified
    ok = bool(need(got, "whether the audit log verifies"))
    return Outcome(ok, "audit log verifies" if ok else "audit log does NOT verify; stop and investigate")


# ---------------------------------------------------------------- registration
# Each check is registered here, after its definition, rather than with ``@register_check`` on the
# function: mutmut 3 does not mutate a decorated function, and this module is in [tool.mutmut]
# only_mutate. The calls keep the definition order (the registry's insertion order), the names and
# the parameter models; the summary is still the docstring's first line.
register_check("tls-enabled", NoParams)(tls_enabled)
register_check("update-protection", ProtectionParams)(update_protection)
register_check("epsilon-cap", EpsilonCapParams)(epsilon_cap)
register_check("min-sites", MinSitesParams)(min_sites)
register_check("audit-enabled", NoParams)(audit_enabled)
register_check("audit-retention", RetentionParams)(audit_retention)
register_check("lawful-basis", LawfulBasisParams)(lawful_basis)
register_check("art9-condition", NoParams)(art9_condition)
register_check("purpose-limitation", NoParams)(purpose_limitation)
register_check("consent-valid", NoParams)(consent_valid)
register_check("transfer-allowed", NoParams)(transfer_allowed)
register_check("no-identifiers-in-training", IdentifierParams)(no_identifiers)
register_check("k-anonymity", KAnonParams)(k_anonymity)
register_check("dpia", DpiaParams)(dpia)
register_check("agreement", AgreementParams)(agreement)
register_check("site-run-budget", NoParams)(site_run_budget)
register_check("site-lifetime-budget", NoParams)(site_lifetime_budget)
register_check("data-retention", SiteRetentionParams)(data_retention)
register_check("dpo-contact", NoParams)(dpo_contact)
register_check("dataset-declared", NoParams)(dataset_declared)
register_check("manual", ManualParams)(manual)
register_check("round-participants", ParticipantsParams)(round_participants)
register_check("epsilon-spent", NoParams)(epsilon_spent)
register_check("audit-verified", NoParams)(audit_verified)
