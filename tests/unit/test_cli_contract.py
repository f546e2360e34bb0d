"""The CLI contract (DESIGN.md), for every command the typer app has - including ones added later.

One line and exit 2 for bad input, 1 for a failed check, 0 for success; ``--debug`` adds a
traceback and never changes the exit code; ``--format json`` makes errors JSON on stdout.
Commands are discovered from the app, so a command another module registers is covered
without touching this file.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer

from fedinfra.cli import build_app, invoke
from fedinfra.cli._common import walk

REPO = Path(__file__).resolve().parents[2]
TREE = typer.main.get_command(build_app())  # built once: rebuilding it costs ~0.1 s per call


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run(capsys: pytest.CaptureFixture[str], *args: str, timeout: int = 60) -> Result:
    capsys.readouterr()

    def _alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"fedinfra {' '.join(args)} did not stop within {timeout} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        code = invoke(list(args), TREE)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_one_line_error(result: Result, code: int = 2, *, debug: bool = False) -> str:
    assert result.code == code, (result.code, result.err)
    if not debug:
        assert "Traceback" not in result.err, result.err
        assert len(result.err_lines) == 1, result.err
    line = result.err_lines[-1]
    assert line.startswith("error: "), result.err
    assert line.strip() != "error:", result.err
    return line


# --- the enumeration ---------------------------------------------------------------------------


def _bad_values(param: click.Parameter, regular_file: Path) -> list[str]:
    """Values no option of that type can accept."""
    kind = param.type
    if isinstance(param, click.Option) and (param.is_flag or param.count):
        return []
    if isinstance(kind, click.Choice):
        return ["bogus-choice"]
    if isinstance(kind, click.types.BoolParamType):
        return ["maybe"]
    if isinstance(kind, click.types.IntParamType):
        return ["x", "-1"]
    if isinstance(kind, click.types.FloatParamType):
        return ["x", "nan", "-1"]
    if isinstance(kind, click.Path):
        return [str(regular_file / "sub")]
    if isinstance(kind, click.types.StringParamType):
        return [""]
    return []


def _placeholder(param: click.Parameter, tmp: Path) -> str:
    """A value that passes parsing, for the required parameters around the one under test."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, click.types.IntParamType):
        return "1"
    if isinstance(kind, click.types.FloatParamType):
        return "0.5"
    if isinstance(kind, click.Path):
        return str(tmp / "placeholder")
    return "placeholder"


def _args(param: click.Parameter, value: str) -> list[str]:
    if isinstance(param, click.Option):
        return [param.opts[0], value]
    return [value]


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]
    param: str
    value: str
    argv: tuple[str, ...]
    names: tuple[str, ...]
    json_capable: bool


def _has_json_format(command: click.Command) -> bool:
    for p in command.params:
        if isinstance(p, click.Option) and "--format" in p.opts:
            kind = p.type
            return "json" in kind.choices if isinstance(kind, click.Choice) else True
    return False


def enumerate_cases(tmp: Path) -> Iterator[Case]:
    regular_file = tmp / "a-regular-file"
    regular_file.write_text("not a directory\n")
    root = TREE
    for path, command in walk(root):
        params = [p for p in command.params if p.name not in ("help",)]
        for param in params:
            for value in _bad_values(param, regular_file):
                argv: list[str] = [*path]
                for other in params:  # declaration order: positional arguments stay in place
                    if other is param:
                        argv += _args(param, value)
                    elif other.required:
                        argv += _args(other, _placeholder(other, tmp))
                names = tuple(getattr(param, "opts", [])) or (param.human_readable_name,)
                yield Case(path, param.name or "", value, tuple(argv), names, _has_json_format(command))


def test_every_command_and_option_refuses_bad_values_per_the_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = list(enumerate_cases(tmp_path))
    commands = {c.command for c in cases}
    broken: list[str] = []
    runs = 0
    for case in cases:
        variants: list[tuple[str, list[str]]] = [("plain", list(case.argv)), ("debug", ["--debug", *case.argv])]
        if case.json_capable and case.param != "fmt" and "--format" not in case.names:
            variants.append(("json", [*case.argv, "--format", "json"]))
        for kind, argv in variants:
            runs += 1
            result = run(capsys, *argv, timeout=30)
            try:
                line = assert_one_line_error(result, 2, debug=kind == "debug")
                assert any(name.strip("-").lower() in line.lower() for name in case.names), line
                if kind == "json":
                    payload = json.loads(result.out)
                    assert payload["exit_code"] == 2
                    assert payload["error"]
            except (AssertionError, ValueError) as exc:
                broken.append(f"fedinfra {' '.join(argv)!s} -> {result.code}: {exc!s:.200}")
    print(  # the count the issue asks for (pytest -s / -rP shows it)
        f"CLI contract: {len(commands)} commands x their options = {len(cases)} bad inputs, "
        f"{runs} invocations (plain, --debug, --format json)"
    )
    assert len(commands) >= 15
    assert not broken, "\n".join(broken)


def test_every_command_that_prints_takes_format_json() -> None:
    root = TREE
    missing = [" ".join(path) for path, command in walk(root) if not _has_json_format(command)]
    assert not missing, f"no --format json: {missing}"


def test_every_command_accepts_dash_h(capsys: pytest.CaptureFixture[str]) -> None:
    root = TREE
    groups = [(), *{path[:i] for path, _ in walk(root) for i in range(1, len(path))}]
    for path in [*groups, *(p for p, _ in walk(root))]:
        result = run(capsys, *path, "-h")
        assert result.code == 0, (path, result.err)
        assert "Usage" in result.out, path


# --- the defects the issue lists, one test each ----------------------------------------------------


def test_a_bare_fedinfra_prints_the_help_and_a_real_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys)
    line = assert_one_line_error(result, 2)
    assert "a command is required" in line
    assert "demo" in result.out


def test_a_typo_suggests_the_command_once(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_one_line_error(run(capsys, "privacy", "epsilom"))
    assert line.count("Did you mean") == 1, line


def test_keys_init_into_a_regular_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "kits"
    target.write_text("a file\n")
    line = assert_one_line_error(
        run(capsys, "keys", "init", "--consortium", str(REPO / "server/consortium.example.toml"), "--out", str(target))
    )
    assert str(target) in line


def test_demo_into_a_regular_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "runs"
    target.write_text("a file\n")
    line = assert_one_line_error(run(capsys, "demo", "--out", str(target)))
    assert "--out" in line


@pytest.mark.parametrize(
    ("flag", "value"), [("--port", "-1"), ("--superlink", "nonsense"), ("--connect-timeout", "-3")]
)
def test_client_start_refuses_bad_flags_before_anything_runs(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = assert_one_line_error(
        run(capsys, "client", "start", "--site", str(tmp_path / "s.toml"), "--kit", str(tmp_path), flag, value)
    )
    assert flag in line


def test_an_overflowing_noise_multiplier_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["privacy", "epsilon", "--noise-multiplier", "1e300", "--sample-rate", "0.1", "--steps", "10"]
    line = assert_one_line_error(run(capsys, *args, "--delta", "1e-5"))
    assert "--noise-multiplier" in line


def test_debug_adds_a_traceback_and_keeps_the_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.toml"
    job.write_text("rounds = 0\n")
    args = ["compliance", "check", "--site", str(REPO / "clients/hospital/site.toml"), "--job", str(job)]
    plain = run(capsys, *args)
    debug = run(capsys, "--debug", *args)
    assert_one_line_error(plain, 2)
    assert_one_line_error(debug, 2, debug=True)
    assert "Traceback" in debug.err


def test_an_empty_job_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.toml"
    job.write_text("# nothing here\n")
    args = ["compliance", "check", "--site", str(REPO / "clients/hospital/site.toml"), "--job", str(job)]
    line = assert_one_line_error(run(capsys, *args))
    assert "job.toml" in line
    assert "empty" in line


def test_a_bad_site_id_names_the_field_without_a_model_repr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "consortium.toml"
    cfg.write_text('name = "c"\nsites = ["Not A Slug"]\n[secure_aggregation]\nmode = "bfv"\n')
    line = assert_one_line_error(run(capsys, "keys", "init", "--consortium", str(cfg), "--out", str(tmp_path / "k")))
    assert "Not A Slug" in line
    assert "SecureAggSpec(" not in line
    assert "mode=" not in line


def test_server_status_when_down_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text('state_dir = "state"\n')
    result = run(capsys, "server", "status", "--config", str(cfg), "--format", "json")
    assert result.code == 1
    payload = json.loads(result.out)
    assert payload["running"] is False
    assert "no SuperLink is running" in payload["error"]


def test_a_usage_error_with_format_json_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "privacy", "epsilon", "--format", "json")
    assert result.code == 2
    assert "Missing option" in json.loads(result.out)["error"]


def _audit_store(tmp_path: Path) -> Path:
    from fedinfra.audit import Actor, AuditLog, Signer

    path = tmp_path / "audit.sqlite"
    with AuditLog.open(path, origin="fedinfra.test/log", signer=Signer.generate("fedinfra.test/log")) as log:
        log.append(run_id="run-1", round=None, type="run.created", actor=Actor(kind="coordinator", id="c"),
                   outcome="success", details={})
        log.publish_checkpoint(run_id="run-1")
    return path


def test_audit_show_of_an_unknown_run_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _audit_store(tmp_path)
    line = assert_one_line_error(run(capsys, "audit", "show", str(store), "--run", "does-not-exist"))
    assert "does-not-exist" in line
    assert run(capsys, "audit", "show", str(store), "--run", "run-1").code == 0


def test_audit_prove_takes_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _audit_store(tmp_path)
    as_json = run(capsys, "audit", "prove", str(store), "--seq", "0", "--format", "json")
    assert as_json.code == 0, as_json.err
    assert "checkpoint" in json.loads(as_json.out)
    as_text = run(capsys, "audit", "prove", str(store), "--seq", "0", "--format", "text")
    assert as_text.code == 0
    assert as_text.out.startswith("receipt for entry 0")


def _site_with_an_identifier(tmp_path: Path, name: str) -> Path:
    lines = ["email,x,label"] + [f"person{i}@example.org,{i % 7}.5,{i % 2}" for i in range(60)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    text = (REPO / "clients/hospital/site.toml").read_text()
    head = text[: text.index("[dataset]")].replace('name = "hospital-a"', f'name = "{name}"')
    site = tmp_path / "site.toml"
    site.write_text(
        head + '[dataset]\npath = "data.csv"\nformat = "csv"\nlabel_column = "label"\n'
        'feature_columns = ["email", "x"]\n'
    )
    return site


def test_a_phi_failure_exits_the_same_from_client_and_edge_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site_with_an_identifier(tmp_path, "dev-1")
    client = run(capsys, "client", "start", "--site", str(site), "--kit", str(tmp_path / "kit"))
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.toml").write_text(
        '[kit]\nformat = "fedinfra-kit/1"\nrole = "site"\nsite_id = "dev-1"\n'
        '[tls]\nca_file = "ca.crt"\nsuperlink = "127.0.0.1:9092"\n'
        '[supernode]\nauth_key_file = "supernode_auth.key"\nauth_public_file = "supernode_auth.pub"\n'
    )
    (kit / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (kit / "supernode_auth.key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    device = tmp_path / "device.toml"
    device.write_text('name = "dev-1"\nserver = "127.0.0.1:9092"\nstate_dir = "state"\n')
    edge = run(capsys, "edge", "start", "--device", str(device), "--kit", str(kit), "--site", str(site))
    client_line = assert_one_line_error(client, 2)
    edge_line = assert_one_line_error(edge, 2)
    assert "email" in client_line
    assert "email" in edge_line


def test_demo_help_names_every_scenario_on_the_scenario_option(capsys: pytest.CaptureFixture[str]) -> None:
    import click

    from fedinfra.cli.demo import SCENARIO_DEFAULTS

    demo = TREE.commands["demo"]  # type: ignore[attr-defined]
    option = next(p for p in demo.params if isinstance(p, click.Option) and "--scenario" in p.opts)

    assert run(capsys, "demo", "-h").code == 0
    for scenario in SCENARIO_DEFAULTS:
        assert scenario in (option.help or ""), scenario
