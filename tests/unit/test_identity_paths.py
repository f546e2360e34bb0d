"""Site names and run ids are slugs; a site is the node key it authenticated with.

The attacks replayed here were run against the old code: a hello naming
``a/../../../../outside/x`` wrote a manifest outside the coordinator's run directory; a
coordinator-sent absolute ``run_id`` wrote a site's model outside its home; a second node
claiming ``hospital-a`` was admitted as ``hospital-a``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedinfra.config.names import check_slug, is_slug
from fedinfra.config.wire import SiteHello, TrainInstruction
from fedinfra.coordinator.artifacts import RunArtifacts
from fedinfra.coordinator.identity import NodeIdentity, identity_refusal, node_identities
from fedinfra.crypto.tls import generate_node_auth_key, public_key_der
from fedinfra.errors import ConfigError
from fedinfra.runtime.apps import parse_run_config
from fedinfra.site.home import SiteHome

TRAVERSAL = "a/../../../../outside/x"
BAD_NAMES = [TRAVERSAL, "/etc/passwd", "..", ".hidden", "a/b", "", "x" * 200, "a\\..\\b", "a\nb"]


@pytest.mark.parametrize("name", ["hospital-a", "site0", "20261202T020000Z-0123456789ab", "bank.eu_1"])
def test_plain_names_are_slugs(name: str) -> None:
    assert check_slug(name, "site name") == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_traversal_absolute_and_hidden_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_slug(name, "site name")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("site name ")
    assert len(name) < 3 or name not in message  # the refused value is not echoed


def test_a_hello_naming_a_traversal_path_does_not_validate() -> None:
    with pytest.raises(ValidationError):
        SiteHello.model_validate({"site": TRAVERSAL})


def test_coordinator_refuses_to_write_a_site_manifest_outside_the_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    with pytest.raises(ConfigError):
        RunArtifacts(run_dir).write_sites({TRAVERSAL: {"name": "x"}})
    assert not (tmp_path / "outside").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("run_id", ["/tmp/elsewhere", "../../escape", "..", "a/b"])
def test_a_coordinator_sent_run_id_that_is_a_path_is_refused_at_the_site(tmp_path: Path, run_id: str) -> None:
    home = SiteHome(root=tmp_path / "home", kit=None)
    with pytest.raises(ConfigError, match="run_id"):
        home.save_weights(run_id, "final-model", {})
    with pytest.raises(ValidationError):
        TrainInstruction.model_validate({"run_id": run_id, "round": 1, "job": {}})
    assert [p for p in tmp_path.rglob("*.npz")] == []


def test_the_server_app_refuses_an_absolute_run_id_in_its_run_config() -> None:
    with pytest.raises(ConfigError, match="run-id"):
        parse_run_config({"job": "{}", "run-id": "/abs/path", "runs-dir": "/tmp/x", "kit": "k"})


# -- identity --------------------------------------------------------------------------


def _identity(name: str) -> tuple[NodeIdentity, bytes]:
    pair = generate_node_auth_key()
    pem_like = pair.public  # OpenSSH; the SuperLink reports PEM, both normalise to DER
    return NodeIdentity(name=name, public_key=pem_like), public_key_der(pair.public)


def test_a_second_node_claiming_a_registered_name_is_refused() -> None:
    real, real_key = _identity("hospital-a")
    intruder, intruder_key = _identity("hospital-b")
    pinned = {"hospital-a": real_key, "hospital-b": intruder_key}

    assert identity_refusal("hospital-a", real, pinned=pinned, admitted=[]) == ""
    reason = identity_refusal("hospital-a", intruder, pinned=pinned, admitted=[])
    assert "registered" in reason


def test_a_node_whose_key_is_not_the_pinned_key_for_its_name_is_refused() -> None:
    node, _ = _identity("hospital-a")
    _, other_key = _identity("hospital-a")
    reason = identity_refusal("hospital-a", node, pinned={"hospital-a": other_key}, admitted=[])
    assert "key" in reason


def test_a_name_already_admitted_is_refused_even_in_simulation() -> None:
    assert identity_refusal("site0", None, pinned=None, admitted=[]) == ""
    assert identity_refusal("site0", None, pinned=None, admitted=["site0"]) != ""
    assert identity_refusal(TRAVERSAL, None, pinned=None, admitted=[]) != ""


def test_a_deployed_node_without_a_registered_name_is_refused() -> None:
    _, key = _identity("site0")
    assert identity_refusal("site0", NodeIdentity("", b""), pinned={"site0": key}, admitted=[]) != ""


def test_node_identities_read_flower_node_info() -> None:
    from flwr.proto.node_pb2 import NodeInfo

    pair = generate_node_auth_key()
    infos = [NodeInfo(node_id=7, name="site0", public_key=pair.public)]
    assert node_identities(infos) == {7: NodeIdentity("site0", pair.public)}
    assert is_slug("site0")
