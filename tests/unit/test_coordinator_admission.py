"""The coordinator's admission, without processes: a fake Grid carries real Flower Messages.

The grid replaces only the transport (SuperLink + SuperNodes); every message the
coordinator builds is a real ``flwr.app.Message`` and every reply a real reply to it, so
admission, identity binding and the site gate run exactly as in a deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedinfra.audit import Signer
from fedinfra.config import JobSpec
from fedinfra.config.wire import CONFIG, DOC, SiteHello
from fedinfra.coordinator.server import Coordinator, CoordinatorSettings
from fedinfra.coordinator.trail import AuditTrail
from fedinfra.errors import PolicyViolation
from fedinfra.policy import load_packs
from fedinfra.policy.scan import scan_table
from fedinfra.site.simulated import simulated_manifest

pytestmark = pytest.mark.usefixtures("flower_run")

Answer = Callable[[Message], Message]


@dataclass
class _NodeInfo:
    node_id: int
    name: str
    public_key: bytes = b""


class FakeGrid:
    """Delivers each pushed message to its node's handler and queues the real reply."""

    def __init__(self, handlers: dict[int, Answer], names: dict[int, str] | None = None) -> None:
        self.handlers = handlers
        self.names = names or {}
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.handlers)

    def get_nodes(self) -> Iterable[_NodeInfo]:
        return [_NodeInfo(n, self.names.get(n, "")) for n in self.handlers]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # what Flower's grids do on push
            self.sent.append(msg)
            self.replies[msg.metadata.message_id] = self.handlers[msg.metadata.dst_node_id](msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def _job() -> JobSpec:
    return JobSpec.model_validate(
        {"scenario": "hospital", "purpose": "medical-research", "rounds": 1, "sites": {"count": 3, "min_sites": 2}}
    )


def _hello(job: JobSpec, site: str, **changes: object) -> SiteHello:
    scan = scan_table({"x": ["1.5", "2.5", "3.5"], "label": ["0", "1", "0"]})
    doc = {
        "site": site,
        "num_examples": 100,
        "num_features": 30,
        "dataset_fingerprint": "hmac-sha256:" + "ab" * 32,
        "manifest": simulated_manifest(job, site).model_dump(mode="json"),
        "scan": scan.model_dump(mode="json"),
        **changes,
    }
    return SiteHello.model_validate(doc)


def _answers(hello: SiteHello) -> Answer:
    def answer(msg: Message) -> Message:
        return Message(RecordDict({CONFIG: ConfigRecord({DOC: hello.model_dump_json()})}), reply_to=msg)

    return answer


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Coordinator, AuditTrail, list[object]]:
    job = _job()
    signer = Signer.generate("fedinfra.test/coordinator")
    settings = CoordinatorSettings(store=str(tmp_path / "audit.db"), signer=signer, in_process=True, node_wait_s=1)
    coordinator = Coordinator(job, run_id="run-1", run_dir=tmp_path / "run", settings=settings)
    trail = coordinator._open()  # the coordinator's own audit trail (and witnessing) on a real store
    return coordinator, trail, list(load_packs(job.policy_packs or ["gdpr", "hipaa"]))


def _rejections(trail: AuditTrail) -> dict[str, str]:
    out = {}
    for entry in trail.log.entries(run_id="run-1", type="site.rejected"):
        details = entry.details
        out[str(details.get("site") or details.get("node"))] = str(details.get("reason"))
    return out


def test_sites_that_pass_their_own_and_the_coordinators_gate_are_admitted(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, trail, packs = setup
    job = coordinator.job
    grid = FakeGrid({n: _answers(_hello(job, f"hospital-{n}")) for n in (1, 2, 3)})

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-2", "hospital-3"]
    assert all(m.metadata.message_type == "query" for m in grid.sent)


def test_a_site_whose_own_preflight_refused_is_not_admitted(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, trail, packs = setup
    job = coordinator.job
    refuses = _hello(job, "hospital-2", preflight_passed=False, preflight_reason="epsilon cap exceeded")
    grid = FakeGrid(
        {1: _answers(_hello(job, "hospital-1")), 2: _answers(refuses), 3: _answers(_hello(job, "hospital-3"))}
    )

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-3"]
    assert "own preflight refused" in _rejections(trail)["hospital-2"]


def test_a_sites_own_preflight_reason_is_audited_as_a_check_without_its_text(setup) -> None:  # type: ignore[no-untyped-def]
    """``preflight_reason`` is the site's free text (up to 1,000 characters): never stored."""
    coordinator, trail, packs = setup
    job = coordinator.job
    leak = "PolicyViolation: /srv/kits/sites/hospital-2/data.csv column mrn holds 0042-4711 (John Doe)"
    refuses = _hello(job, "hospital-2", preflight_passed=False, preflight_reason=leak)
    grid = FakeGrid(
        {1: _answers(_hello(job, "hospital-1")), 2: _answers(refuses), 3: _answers(_hello(job, "hospital-3"))}
    )

    coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    stored = b"".join(e.canonical() for e in trail.log.entries())
    stored += Path(coordinator.settings.store).read_bytes()  # the database file itself, every page
    for fragment in (b"/srv/kits", b"data.csv", b"4711", b"John Doe", b"PolicyViolation"):
        assert fragment not in stored, fragment
    [entry] = list(trail.log.entries(run_id="run-1", type="site.rejected"))
    assert (entry.actor.id, entry.details["check"]) == ("hospital-2", "site.preflight")


def test_a_site_with_the_wrong_number_of_features_is_not_admitted(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, trail, packs = setup
    job = coordinator.job
    wrong = _hello(job, "hospital-3", num_features=7)
    grid = FakeGrid(
        {1: _answers(_hello(job, "hospital-1")), 2: _answers(_hello(job, "hospital-2")), 3: _answers(wrong)}
    )

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-2"]
    assert "features" in _rejections(trail)["hospital-3"]


def test_a_second_node_claiming_an_admitted_name_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, trail, packs = setup
    job = coordinator.job
    grid = FakeGrid({n: _answers(_hello(job, "hospital-1" if n < 3 else "hospital-3")) for n in (1, 2, 3)})

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-3"]
    # replies arrive in any order: whichever of nodes 1 and 2 answered second is refused
    loser = {"1", "2"} - {str(s.node_id) for s in admitted}
    assert len(loser) == 1
    assert "already holds this site name" in _rejections(trail)[loser.pop()]


def test_a_malformed_hello_is_rejected_and_the_run_goes_on(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, trail, packs = setup
    job = coordinator.job

    def garbage(msg: Message) -> Message:
        return Message(RecordDict({CONFIG: ConfigRecord({DOC: '{"site": "x"'})}), reply_to=msg)

    grid = FakeGrid({1: _answers(_hello(job, "hospital-1")), 2: garbage, 3: _answers(_hello(job, "hospital-3"))})

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-3"]
    assert "2" in _rejections(trail)


def test_too_few_admitted_sites_stop_the_run(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, trail, packs = setup
    job = coordinator.job
    refuse = {"preflight_passed": False, "preflight_reason": "no"}
    grid = FakeGrid(
        {
            1: _answers(_hello(job, "hospital-1")),
            2: _answers(_hello(job, "hospital-2", **refuse)),
            3: _answers(_hello(job, "hospital-3", **refuse)),
        }
    )

    with pytest.raises(PolicyViolation, match="min_sites=2"):
        coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]


def test_sampling_is_poisson_at_the_job_rate_with_at_least_min_sites(setup) -> None:  # type: ignore[no-untyped-def]
    coordinator, _, _ = setup
    from fedinfra.coordinator.server import Site

    sites = [Site(n, _hello(coordinator.job, f"hospital-{n}")) for n in range(1, 21)]
    coordinator.job = coordinator.job.model_copy(
        update={"sites": coordinator.job.sites.model_copy(update={"count": 20, "fraction": 0.3, "min_sites": 2})}
    )

    sizes = []
    for _ in range(300):
        sample = coordinator._sample(sites)
        assert len(sample) >= 2
        assert len({s.node_id for s in sample}) == len(sample)
        assert {s.node_id for s in sample} <= {s.node_id for s in sites}
        sizes.append(len(sample))
    # Binomial(20, 0.3): mean 6, sd 2.05; the mean of 300 draws is within 0.6 of 6 w.p. > 0.9999.
    assert abs(sum(sizes) / len(sizes) - 6.0) < 0.6
    assert len(set(sizes)) > 3  # the size varies: not a fixed-k sample


def test_a_site_announcing_another_cosigner_key_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    """Issue 15: cosigner keys come from the key ceremony, not from the site's hello."""
    from fedinfra.audit.cosign import Cosigner

    job = _job()
    pinned = {f"hospital-{n}": Cosigner.generate(f"fedinfra-site.hospital-{n}") for n in (1, 2, 3)}
    settings = CoordinatorSettings(
        store=str(tmp_path / "audit.db"),
        signer=Signer.generate("fedinfra.test/coordinator"),
        in_process=True,
        node_wait_s=1,
        site_cosigner_keys={s: c.vkey for s, c in pinned.items()},
    )
    coordinator = Coordinator(job, run_id="run-1", run_dir=tmp_path / "run", settings=settings)
    trail = coordinator._open()
    impostor = Cosigner.generate("fedinfra-site.hospital-2")  # same name, a key the ceremony never saw
    announced = {1: pinned["hospital-1"].vkey, 2: impostor.vkey, 3: pinned["hospital-3"].vkey}
    grid = FakeGrid({n: _answers(_hello(job, f"hospital-{n}", cosigner=announced[n])) for n in (1, 2, 3)})

    admitted = coordinator.admit(grid, trail, list(load_packs(["gdpr", "hipaa"])))  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-3"]
    reason = _rejections(trail)["hospital-2"]
    assert "cosigner key is not the key the coordinator kit pins" in reason
    assert impostor.vkey not in reason
    assert impostor.witness.key_id not in reason
    assert set(coordinator.witnessing.keys) == {"hospital-1", "hospital-3"}


def test_a_site_error_reply_is_audited_as_a_code_without_the_sites_exception_text(setup) -> None:  # type: ignore[no-untyped-def]
    """A failing ClientApp's reason is its exception text: it may carry a kit path or a value."""
    from flwr.app import Error

    coordinator, trail, packs = setup
    job = coordinator.job
    leak = "ConfigError: /srv/kits/sites/hospital-2/cosigner.key: patient 4711 John Doe"

    def failing(msg: Message) -> Message:
        return Message(Error(code=3, reason=leak), reply_to=msg)

    grid = FakeGrid({1: _answers(_hello(job, "hospital-1")), 2: failing, 3: _answers(_hello(job, "hospital-3"))})

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-3"]
    [entry] = [e for e in trail.log.entries(run_id="run-1", type="site.rejected") if e.details.get("node") == "2"]
    assert entry.details["check"] == "site-error"
    assert entry.details["error_code"] == "3"
    stored = b"".join(e.canonical() for e in trail.log.entries())
    stored += Path(coordinator.settings.store).read_bytes()  # the database file itself, every page
    for fragment in (b"cosigner.key", b"/srv/kits", b"4711", b"John Doe"):
        assert fragment not in stored


# -- what admission writes to the audit log (issue 20: found by mutation testing) --------


def test_site_details_keep_the_sites_declared_facts_for_the_auditor() -> None:
    """A known answer: the simulated hospital's manifest and hello, as the admission entry keeps them."""
    from fedinfra.coordinator.admission import GateContext, evaluate_site, site_details

    job = _job()
    hello = _hello(job, "site-a", epsilon_spent_lifetime=1.5)
    _, manifest = evaluate_site(job, list(load_packs(["gdpr"])), GateContext(True, True, 2190), hello)

    details = site_details(hello, manifest)

    assert details == {
        "site": "site-a",
        "organisation": "Simulated hospital 0",
        "role": "controller",
        "jurisdiction": "DE",
        "sector": "health",
        "lawful_basis": "public-task",
        "art9_condition": "research-statistics",
        "transfer_safeguard": "none",
        "consent_status": None,
        "consent_reference": None,
        "purposes": ["medical-research"],
        "data_categories": ["health"],
        "data_subjects": ["patients"],
        "retention_days": 3650,
        "dataset_fingerprint": "hmac-sha256:" + "ab" * 32,
        "num_examples": 100,
        "budget": {"epsilon_per_run": 8.0, "epsilon_lifetime": 40.0},
        "epsilon_spent_lifetime": 1.5,
        "scan": {"rows": 3, "k_anonymity": None},
        "dpia": {"reference": "DPIA-SIM-001", "sha256": "0" * 64, "date": "2025-03-01"},
        "agreements": [{"kind": "dpa", "reference": "DPA-SIM-001", "signed": "2025-02-10"}],
    }
    assert site_details(_hello(job, "site-a", scan=None), manifest)["scan"] is None


def test_a_site_gate_evaluation_is_audited_with_packs_counts_findings_and_evidence(setup) -> None:  # type: ignore[no-untyped-def]
    from fedinfra.coordinator.admission import GateContext, evaluate_site, record_evaluation

    _, trail, packs = setup
    job = _job()
    evaluation, _ = evaluate_site(job, packs, GateContext(True, True, 2190), _hello(job, "site-a"))

    record_evaluation(trail, evaluation, gate="site", round=3, site="site-a")

    entry = trail.log.entries(run_id="run-1", type="policy.evaluated")[-1]
    details = entry.details
    first = evaluation.findings[0]
    assert (entry.outcome, entry.round) == ("success", 3)
    assert (details["gate"], details["site"], details["passed"]) == ("site", "site-a", True)
    assert details["packs"] == [{"name": n, "sha256": h} for n, h in sorted(evaluation.pack_hashes.items())]
    assert [p["name"] for p in details["packs"]] == ["gdpr", "hipaa"]
    assert details["counts"] == evaluation.counts() == {"pass": 17, "fail": 0, "warn": 0, "manual": 0}
    assert details["not_applicable"] == []
    assert len(details["findings"]) == 17
    assert details["findings"][0] == {
        **first.to_dict(),
        "evidence": [{"name": k, "value": v} for k, v in (first.evidence or {}).items()],
    }
    assert details["findings"][0]["evidence"][0] == {"name": "site.lawful_basis", "value": "public-task"}


# -- the site gate's budget, scan and the job gate (issue 20: admission's mutation survivors) --


def _dp_job() -> JobSpec:
    """The hospital job under DP-SGD at epsilon 8: the simulated hospitals' per-run cap (lifetime cap 40)."""
    return _job().model_copy(
        update={"privacy": _job().privacy.model_copy(update={"mechanism": "dp-sgd", "epsilon": 8.0})}
    )


def _coordinator(tmp_path: Path, job: JobSpec) -> tuple[Coordinator, AuditTrail]:
    signer = Signer.generate("fedinfra.test/coordinator")
    settings = CoordinatorSettings(store=str(tmp_path / "audit.db"), signer=signer, in_process=True, node_wait_s=1)
    coordinator = Coordinator(job, run_id="run-1", run_dir=tmp_path / "run", settings=settings)
    return coordinator, coordinator._open()


def _site_evaluations(trail: AuditTrail) -> dict[str, tuple[str, dict[str, dict[str, object]]]]:
    """Per site: the outcome of its ``policy.evaluated`` entry and its findings by rule id."""
    out = {}
    for entry in trail.log.entries(run_id="run-1", type="policy.evaluated"):
        if entry.details["gate"] == "site":
            findings = {str(f["rule_id"]): f for f in entry.details["findings"]}
            out[str(entry.details["site"])] = (entry.outcome, findings)
    return out


def test_a_sites_recorded_lifetime_spend_decides_its_admission_at_the_cap(tmp_path: Path) -> None:
    """Spent + the job's epsilon <= the lifetime cap (basic composition, Dwork & Roth 2014 Thm 3.16).

    Each site's own preflight passes; only the spend its ledger reports differs, so the
    coordinator's own site gate decides: 32 + 8 = 40 is at the cap, 32.5 + 8 is over it.
    """
    job = _dp_job()
    coordinator, trail = _coordinator(tmp_path, job)
    spent = {1: 0.0, 2: 32.0, 3: 32.5}
    grid = FakeGrid({n: _answers(_hello(job, f"hospital-{n}", epsilon_spent_lifetime=spent[n])) for n in (1, 2, 3)})

    admitted = coordinator.admit(grid, trail, list(load_packs(["gdpr"])))  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-2"]
    assert "gdpr.site-lifetime-budget" in _rejections(trail)["hospital-3"]
    evaluations = _site_evaluations(trail)
    assert [evaluations[f"hospital-{n}"][0] for n in (1, 2, 3)] == ["success", "success", "denied"]
    for n, status in ((1, "pass"), (2, "pass"), (3, "fail")):
        finding = evaluations[f"hospital-{n}"][1]["gdpr.site-lifetime-budget"]
        assert finding["status"] == status
        assert {"name": "site.epsilon_spent", "value": spent[n]} in finding["evidence"]  # type: ignore[operator]
    assert evaluations["hospital-3"][1]["gdpr.site-lifetime-budget"]["message"] == (
        "spent 32.5 + job 8 > lifetime cap 40"
    )


def test_a_site_that_withholds_its_lifetime_spend_under_dp_is_not_taken_to_have_spent_nothing(tmp_path: Path) -> None:
    """Fail closed (issue 20): the gate once read a missing spend as 0.0 and admitted the site."""
    job = _dp_job()
    coordinator, trail = _coordinator(tmp_path, job)
    grid = FakeGrid(
        {
            1: _answers(_hello(job, "hospital-1", epsilon_spent_lifetime=0.0)),
            2: _answers(_hello(job, "hospital-2", epsilon_spent_lifetime=1.0)),
            3: _answers(_hello(job, "hospital-3")),  # no epsilon_spent_lifetime in its hello
        }
    )

    admitted = coordinator.admit(grid, trail, list(load_packs(["gdpr"])))  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-2"]
    outcome, findings = _site_evaluations(trail)["hospital-3"]
    assert outcome == "denied"
    assert findings["gdpr.site-lifetime-budget"]["status"] == "fail"
    assert "the site's lifetime epsilon spent is not known" in str(findings["gdpr.site-lifetime-budget"]["message"])


def test_a_site_without_a_scan_summary_is_refused_by_the_site_gate_not_by_a_crash(setup) -> None:  # type: ignore[no-untyped-def]
    """The scan rules fail closed on missing evidence; the refusal is a policy evaluation on record."""
    coordinator, trail, packs = setup
    job = coordinator.job
    grid = FakeGrid(
        {
            1: _answers(_hello(job, "hospital-1")),
            2: _answers(_hello(job, "hospital-2", scan=None)),
            3: _answers(_hello(job, "hospital-3")),
        }
    )

    admitted = coordinator.admit(grid, trail, packs)  # type: ignore[arg-type]

    assert [s.hello.site for s in admitted] == ["hospital-1", "hospital-3"]
    outcome, findings = _site_evaluations(trail)["hospital-2"]
    assert outcome == "denied"
    failed = {rule: f["message"] for rule, f in findings.items() if f["status"] == "fail"}
    assert failed
    assert all("no PHI/PII scan summary" in str(m) for m in failed.values())
    assert "no PHI/PII scan summary" in _rejections(trail)["hospital-2"]


def test_site_details_keep_consent_k_anonymity_and_an_absent_dpia() -> None:
    """A consent-based site without a DPIA, whose scan found a quasi-identifier (k = 2)."""
    from fedinfra.coordinator.admission import GateContext, evaluate_site, site_details

    job = _job()
    manifest = simulated_manifest(job, "site-b").model_dump(mode="json")
    manifest.update(lawful_basis="consent", consent={"reference": "CONSENT-FORM-v3", "status": "withdrawn"}, dpia=None)
    table = {
        "age": ["34", "34", "35", "35", "35"],
        "x": ["1.5", "2.5", "3.5", "1", "2"],
        "label": ["0", "1", "0", "1", "1"],
    }
    hello = _hello(job, "site-b", manifest=manifest, scan=scan_table(table).model_dump(mode="json"))
    _, parsed = evaluate_site(job, list(load_packs(["gdpr"])), GateContext(True, True, 2190), hello)

    details = site_details(hello, parsed)

    assert (details["lawful_basis"], details["consent_status"], details["consent_reference"]) == (
        "consent",
        "withdrawn",
        "CONSENT-FORM-v3",
    )
    assert details["dpia"] is None
    assert details["scan"] == {"rows": 5, "k_anonymity": 2}
    assert details["epsilon_spent_lifetime"] is None


@pytest.mark.parametrize(
    ("gate", "failed"),
    [
        ((True, False, 2190), set()),  # a deployment with TLS, logs kept six years
        ((False, True, 183), set()),  # in-process on loopback: no network link; retention exactly six months
        ((False, False, 182), {"gdpr.security-of-transfer", "ai-act.art19"}),  # a network link without TLS
    ],
)
def test_the_job_gate_judges_the_deployments_tls_audit_log_and_retention(
    gate: tuple[bool, bool, int], failed: set[str]
) -> None:
    """GDPR Art. 32(1)(a) TLS on every network link; AI Act Art. 12 logging and Art. 19(1) six months' retention."""
    from fedinfra.coordinator.admission import GateContext, evaluate_job

    tls, _, days = gate
    evaluation = evaluate_job(_dp_job(), list(load_packs(["gdpr", "eu-ai-act"])), GateContext(*gate))

    statuses = {f.rule_id: f.status for f in evaluation.findings}
    assert {r for r, s in statuses.items() if s == "fail"} == failed
    assert {f.rule_id for f in evaluation.blocking} == failed
    assert {"gdpr.security-of-transfer", "ai-act.art12", "ai-act.art19"} <= set(statuses)
    assert {f.gate for f in evaluation.findings} == {"job"}
    evidence = {k: v for f in evaluation.findings for k, v in (f.evidence or {}).items()}
    assert (evidence["job.tls"], evidence["job.audit_enabled"], evidence["job.audit_retention_days"]) == (
        tls,
        True,
        days,
    )
    assert statuses["ai-act.art12"] == "pass"
    assert evaluation.pack_hashes.keys() == {"gdpr", "eu-ai-act"}
