"""The guides and the files shipped with them do what they say (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_license_file_holds_the_apache_text_that_pyproject_declares() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    text = (REPO / "LICENSE").read_text()

    assert "Apache-2.0" in str(declared)
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def _invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from fedinfra.cli import invoke

    capsys.readouterr()
    code = invoke(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_server_job_passes_the_example_hospital_sites_own_packs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18: server/job.toml had no DP and no secure aggregation; hospital-a's packs refused it.
    subprocess.run(
        [sys.executable, str(REPO / "clients/hospital/prepare_data.py"), "--sites", "3", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    job = tomllib.loads((REPO / "server/job.toml").read_text())
    consortium = tomllib.loads((REPO / "server/consortium.example.toml").read_text())

    code, out, err = _invoke(
        capsys, "compliance", "check", "--site", str(REPO / "clients/hospital/site.toml"), "--job",
        str(REPO / "server/job.toml"), "--data", str(tmp_path / "hospital-a.csv"), "--tls", "--audit",
        "--audit-retention-days", "2192", "--format", "json",
    )

    assert code == 0, (out, err)
    assert json.loads(out)["passed"] is True
    assert job["secure_aggregation"]["mode"] == consortium["secure_aggregation"]["mode"]
    assert job["sites"]["count"] == len(consortium["sites"])


def test_every_kit_holds_the_audit_verification_key_as_a_file_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedinfra.audit import Actor, AuditLog
    from fedinfra.audit.note import Signer

    kits = tmp_path / "kits"
    code, _, err = _invoke(
        capsys, "keys", "init", "--consortium", str(REPO / "server/consortium.example.toml"), "--out", str(kits)
    )
    assert code == 0, err
    coordinator = kits / "coordinator"
    vkey = (coordinator / "audit.vkey").read_text().strip()
    assert vkey == tomllib.loads((coordinator / "kit.toml").read_text())["audit"]["vkey"]
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        assert (kits / "sites" / site / "audit.vkey").read_text().strip() == vkey
    signer = Signer.from_skey((coordinator / "audit_signing.key").read_text().strip())
    store = tmp_path / "audit.sqlite"
    with AuditLog.open(store, origin=signer.name, signer=signer) as log:
        log.append(run_id="r", round=None, type="run.created", actor=Actor(kind="coordinator", id="c"),
                   outcome="success", details={})
        log.publish_checkpoint(run_id="r")

    code, out, err = _invoke(capsys, "audit", "verify", str(store), "--public-key", str(coordinator / "audit.vkey"))
    kit_code, kit_out, kit_err = _invoke(
        capsys, "audit", "verify", str(store), "--public-key", str(coordinator / "kit.toml")
    )

    assert code == 0, err
    assert "pinned" in out
    assert kit_code == 0, kit_err  # the guides name audit.vkey; the kit table holds the same key
    assert kit_out == out
    other = Signer.generate("fedinfra-audit.other").vkey  # a key that did not sign: refused
    (tmp_path / "other.vkey").write_text(other + "\n")
    bad_code, _, _ = _invoke(capsys, "audit", "verify", str(store), "--public-key", str(tmp_path / "other.vkey"))
    assert bad_code == 1


GUIDES = [
    "server/README.md",
    "clients/README.md",
    "clients/hospital/README.md",
    "clients/bank/README.md",
    "edge/README.md",
]


#: ``$RUN`` of the guides: the id ``fedinfra run`` printed.
SAMPLE_RUN = "20260301T090000Z-aaaaaaaaaaaa"


def documented_commands(path: Path) -> list[list[str]]:
    """Every ``fedinfra ...`` line of the guide's shell blocks, split as a shell would (comments dropped).

    ``$VAR`` takes the value the guide's own ``export VAR=...`` line gives it (``$RUN``: a run
    id); a trailing ``&`` (run in another shell) is dropped.
    """
    import shlex

    lines, in_shell, pending = [], False, ""
    for line in path.read_text().splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            in_shell = not in_shell and fence in ("```sh", "```bash", "```shell")
            continue
        if in_shell:
            if line.rstrip().endswith("\\"):  # a continued line
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append(pending + line)
            pending = ""
    values = {"RUN": SAMPLE_RUN}
    for line in lines:
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            values.update(w.split("=", 1) for w in words[1:] if "=" in w)
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if words and words[0] == "fedinfra":
            words = words[:-1] if words[-1] == "&" else words
            commands.append([_expand(w, values) for w in words[1:]])
    return commands


def _expand(word: str, values: dict[str, str]) -> str:
    import re

    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), m.group(0)), word)


def _parse(args: list[str]) -> None:
    """Parse ``args`` against the real command tree without running the command (click contexts only)."""
    import click
    import typer

    from fedinfra.cli import build_app

    command: click.Command = typer.main.get_command(build_app())
    name, parent, rest = "fedinfra", None, args
    while True:
        ctx = command.make_context(name, rest, parent=parent)
        if not isinstance(command, click.Group):
            return
        remaining = [*ctx._protected_args, *ctx.args]  # click keeps the sub-command there
        found, sub, rest = command.resolve_command(ctx, remaining)
        assert sub is not None
        assert found is not None
        name, parent, command = found, ctx, sub


@pytest.mark.parametrize("guide", GUIDES)
def test_every_documented_command_exists_with_the_documented_options(guide: str) -> None:
    """The guides' shell blocks, taken literally, parse against the CLI (issue 18: guides that work as written)."""
    import click

    commands = documented_commands(REPO / guide)
    broken = []
    for args in commands:
        try:
            _parse(args)
        except click.exceptions.Exit:  # --help
            continue
        except click.ClickException as exc:
            broken.append(f"fedinfra {' '.join(args)}: {exc.format_message()}")
    assert not broken, "\n".join(broken)
    print(f"{guide}: {len(commands)} documented fedinfra commands parse")


def test_the_guide_parser_refuses_what_the_cli_refuses() -> None:
    import click

    _parse(["audit", "verify", "STORE", "--public-key", "kits/coordinator/audit.vkey"])
    with pytest.raises(click.ClickException, match="No such option"):
        _parse(["audit", "verify", "STORE", "--no-such-flag"])
    with pytest.raises(click.ClickException, match="No such command"):
        _parse(["audit", "verfy", "STORE"])
