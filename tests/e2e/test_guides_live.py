"""The operator's and the sites' guides, run as written, on loopback (issue 18: guides that work as written).

``server/README.md`` and ``clients/README.md`` mark every shell block that belongs to the
consortium's life with its step and party on its first line (``# step c, operator``). This
test reads those blocks from the files, sorts them by step (a, b, c ... in letter order, file
order within a step) and runs each command line **literally** with ``bash -c``, in the
directory of the party that runs it: ``release/`` (the release manager), ``coordinator/``
(the operator, holding a copy of ``server/``) and ``sites/<id>/`` (one per site, with the
clients guide's variables ``SITE KIT STATE PORT`` bound to that site). Only these are the
test's:

* the placeholders the guides name: the free loopback port in ``server.toml`` and in the
  copy of ``consortium.example.toml`` (``coordinator.address``), the site variables, and
  ``RUN`` = the id ``fedinfra run`` printed;
* the files that cross between parties, as the ceremony table's "what crosses" column
  says (requests and the release key to the operator, bundles, sealed HE keys and the
  release record to the sites);
* each site's data (``clients/hospital/prepare_data.py``) and its ``site.toml`` (the
  hospital example with its own ``name`` and CSV);
* commands a guide says to leave running (``server start``, ``client start``) or ends with
  ``&`` run in the background and are stopped at the end.

A command that fails as written fails the test: fix the guide or the code, not this file.
Step m starts a second run, reads its log with ``runs logs`` while it is live, stops it with
``runs stop`` and checks that ``runs ls`` and the audit log say it was stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from fedinfra.runtime.env import hardened_env
from fedinfra.runtime.procs import free_port

#: Steps a-l took 17 min on the shared 2-core machine (load 13-20); step m adds a run start and a stop.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GUIDES = ("server/README.md", "clients/README.md")
STEP = re.compile(r"^#\s*step\s+([a-z])\s*,\s*(.+)$")
SERVICES = (("server", "start"), ("client", "start"))
SITE_VARIABLES = {"SITE", "KIT", "STATE", "PORT"}


@dataclass(frozen=True)
class Block:
    """One marked shell block of a guide."""

    guide: str
    step: str
    who: str
    lines: tuple[str, ...]


def _shell_blocks(text: str) -> Iterator[list[str]]:
    block: list[str] | None = None
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if block is not None:
                yield block
                block = None
            elif fence in ("```sh", "```bash", "```shell"):
                block = []
            continue
        if block is not None:
            block.append(line)


def _joined(lines: list[str]) -> list[str]:
    out, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def guide_blocks(guide: str) -> list[Block]:
    """The guide's shell blocks whose first line is ``# step X, who``, commands only."""
    found = []
    for raw in _shell_blocks((REPO / guide).read_text()):
        lines = _joined(raw)
        head = STEP.match(lines[0].strip()) if lines else None
        if head is None:
            continue
        commands = tuple(ln.strip() for ln in lines[1:] if ln.strip() and not ln.strip().startswith("#"))
        found.append(Block(guide, head.group(1), head.group(2).strip(), commands))
    return found


def exported_variables(guide: str) -> set[str]:
    """Names a guide's ``export A=... B=...`` lines define."""
    names: set[str] = set()
    for raw in _shell_blocks((REPO / guide).read_text()):
        for line in _joined(raw):
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                names |= {w.split("=", 1)[0] for w in words[1:] if "=" in w}
    return names


def ceremony() -> list[Block]:
    """Both guides' marked blocks in step order (stable: server guide first within a step)."""
    blocks = [b for g in GUIDES for b in guide_blocks(g)]
    return sorted(blocks, key=lambda b: b.step)


@dataclass
class Proc:
    """A background command in its own session; output in ``log``."""

    line: str
    popen: subprocess.Popen[bytes]
    log: Path
    tree: set[int] = field(default_factory=set)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.tree |= {p.pid for p in psutil.Process(self.popen.pid).children(recursive=True)}
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        for pid in self.tree:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@dataclass
class Consortium:
    """One directory per party, the guides' variables per party, and what is left running."""

    root: Path
    sites: list[str]
    port: int
    variables: dict[str, dict[str, str]] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    results: list[tuple[str, str, subprocess.CompletedProcess[str]]] = field(default_factory=list)

    def home(self, party: str) -> Path:
        return self.root / ("sites/" + party if party in self.sites else party)

    def parties(self, who: str) -> list[str]:
        """The parties a block's ``who`` names."""
        for prefix, parties in (
            ("release manager", ["release"]),
            ("operator", ["coordinator"]),
            ("each site", self.sites),
            ("one site", self.sites[:1]),
            ("every other site", self.sites[1:]),
        ):
            if who.startswith(prefix):
                return parties
        raise AssertionError(f"a guide names an unknown party: {who!r}")

    def env(self, party: str) -> dict[str, str]:
        env = hardened_env()
        env.pop("FLWR_HOME", None)
        env.update(HOME=str(self.home(party)), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        env.update(self.variables.get(party, {}))
        return env

    def run(self, party: str, line: str, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", line], cwd=self.home(party), env=self.env(party), capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        self.results.append((party, line, done))
        return done

    def background(self, party: str, line: str) -> Proc:
        log = self.root / "logs" / f"{party}-{len(self.procs)}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ["bash", "-c", "exec " + line.rstrip("& ").rstrip()], cwd=self.home(party), env=self.env(party),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = Proc(line, popen, log)
        self.procs.append(proc)
        return proc


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _prepare(root: Path) -> Consortium:
    """The placeholders and the sites' own files; nothing the guides' commands make."""
    port = free_port()
    sites = [s for s in re.findall(r'"([a-z0-9-]+)"', _toml_line(REPO / "server/consortium.example.toml", "sites"))]
    fed = Consortium(root, sites, port)
    for party in ("release", "coordinator", *sites):
        fed.home(party).mkdir(parents=True)
    # The release manager and the operator hold the app folder (this repository's server/).
    for party in ("release", "coordinator"):
        shutil.copytree(REPO / "server", fed.home(party) / "server", ignore=shutil.ignore_patterns("state", "runs"))
    # Operator: consortium.toml = the example with the loopback address; server.toml's port.
    example = (REPO / "server/consortium.example.toml").read_text()
    edited = re.sub(r'(?m)^address = ".*"', f'address = "127.0.0.1:{port}"', example)
    edited = re.sub(r"(?m)^sans = \[.*\]", "sans = []", edited)
    assert edited != example
    (fed.home("coordinator") / "consortium.toml").write_text(edited)
    server_toml = fed.home("coordinator") / "server/server.toml"
    text = server_toml.read_text()
    server_toml.write_text(re.sub(r"(?m)^port = \d+", f"port = {port}", text))
    # Sites: their own data and site.toml (the hospital example, with their name and file).
    data = root / "data"
    subprocess.run([sys.executable, str(REPO / "clients/hospital/prepare_data.py"), "--sites", str(len(sites)),
                    "--out", str(data)], check=True, capture_output=True)
    example_site = (REPO / "clients/hospital/site.toml").read_text()
    for site in sites:
        home = fed.home(site)
        (home / "data").mkdir()
        shutil.copy(data / f"{site}.csv", home / "data" / f"{site}.csv")
        manifest = re.sub(r'(?m)^name = ".*"', f'name = "{site}"', example_site)
        manifest = re.sub(r'(?m)^path = "data/.*?"', f'path = "data/{site}.csv"', manifest)
        (home / "site.toml").write_text(manifest)
        fed.variables[site] = {"SITE": site, "KIT": str(home / "kit"), "STATE": str(home / "state"),
                               "PORT": str(free_port())}
    return fed


def _toml_line(path: Path, key: str) -> str:
    return next(ln for ln in path.read_text().splitlines() if ln.startswith(f"{key} ="))


def _deliver(fed: Consortium, step: str) -> None:
    """What crosses before ``step`` (server/README.md's ceremony table)."""
    op = fed.home("coordinator")
    if step == "c":  # requests and the release key to the operator
        (op / "release").mkdir(exist_ok=True)
        shutil.copy(fed.home("release") / "release/release_signing.pub", op / "release")
        for site in fed.sites:
            shutil.copy(fed.home(site) / "kit" / f"request-{site}.json", op)
    elif step == "d":  # each site's public bundle back to it
        for site in fed.sites:
            shutil.copytree(op / "kits/sites" / site, fed.home(site) / "bundle")
    elif step == "f":  # the sealed HE keys, relayed by the operator to their addressees
        for sealed in sorted((fed.home(fed.sites[0]) / "sealed").glob("he-key-*-to-*.json")):
            addressee = sealed.stem.rsplit("-to-", 1)[1]
            shutil.copy(sealed, fed.home(addressee))
    elif step == "h":  # the signed release record (and the app folder it was signed from) to all
        records = sorted(fed.home("release").glob("fedinfra_fedinfra-app-*.json"))
        assert len(records) == 1, records
        shutil.copy(records[0], op)
        for site in fed.sites:
            shutil.copy(records[0], fed.home(site))
            shutil.copytree(fed.home("release") / "server", fed.home(site) / "server")


def _is_service(line: str) -> bool:
    words = shlex.split(line)
    return line.endswith("&") or tuple(words[1:3]) in SERVICES


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    fed = _prepare(tmp_path_factory.mktemp("guides-live"))
    try:
        yield fed
    finally:
        for proc in reversed(fed.procs):
            proc.stop()


def test_the_guides_mark_every_step_once_and_bind_only_documented_variables() -> None:
    blocks = ceremony()
    assert "".join(sorted({b.step for b in blocks})) == "abcdefghijklm"
    commands = [shlex.split(line) for b in blocks for line in b.lines]
    assert all(words[0] == "fedinfra" for words in commands), [w for w in commands if w[0] != "fedinfra"]
    ran = {" ".join(w[1:3]) for w in commands}
    for needed in ("keys request", "keys issue", "keys accept", "keys he-share", "keys he-open", "app keygen",
                   "app sign", "app approve", "server start", "client start", "run --job", "runs ls", "runs show",
                   "runs logs", "runs stop", "audit verify", "compliance report"):
        assert needed in ran, needed
    used = {v for b in blocks for line in b.lines for v in re.findall(r"\$(\w+)", line)}
    assert used <= SITE_VARIABLES | {"RUN"}, used
    assert exported_variables("clients/README.md") >= SITE_VARIABLES  # the guide says how to set them


def test_the_documented_commands_run_as_written_on_loopback(consortium: Consortium) -> None:
    fed = consortium
    timings: dict[str, float] = {}
    for step in "abcdefghijklm":
        _deliver(fed, step)
        t0 = time.monotonic()
        for block in (b for b in ceremony() if b.step == step):
            for party in fed.parties(block.who):
                for line in block.lines:
                    _run_line(fed, step, party, line)
        timings[step] = round(time.monotonic() - t0, 1)
    print(f"\nguide steps, seconds: {json.dumps(timings)}")


def _run_line(fed: Consortium, step: str, party: str, line: str) -> None:
    if _is_service(line):
        proc = fed.background(party, line)
        if "server start" in line:
            _wait_for(lambda: "SuperLink listening" in proc.text() or not proc.alive(), 120, "the SuperLink")
        elif "client start" in line:
            _wait_for(lambda: "connected" in proc.text() or not proc.alive(), 180, f"{party} to connect")
        else:  # 'fedinfra run ... &': the shell that started it prints the run id
            _wait_for(lambda: "submitted" in proc.text() or not proc.alive(), 120, "the run id")
            fed.variables.setdefault(party, {})["RUN"] = _run_id(proc.text())
            _live_run(fed, party, proc)
        assert proc.alive(), f"{party}: {line}\n{proc.text()[-3000:]}"
        return
    if "runs stop" in line:  # the stop of step m: the log showed the run live just before
        done = fed.run(party, line)
        assert done.returncode == 0, _said(party, line, done)
        (proc,) = [p for p in fed.procs if "fedinfra run" in p.line]
        _wait_for(lambda: not proc.alive(), 180, "the stopped run's 'fedinfra run' to end")
        assert proc.popen.returncode == 1, proc.text()[-2000:]  # not finished:completed
        assert "finished:stopped: stopped by the operator" in " ".join(proc.text().split()), proc.text()[-2000:]
        return
    done = fed.run(party, line)
    assert done.returncode == 0, _said(party, line, done)
    _check(fed, step, party, line, done)


def _said(party: str, line: str, done: subprocess.CompletedProcess[str]) -> str:
    return f"{party}: {line}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _run_id(text: str) -> str:
    found = re.search(r"run (\S+) submitted", text)
    assert found, text[-2000:]
    return found.group(1)


def _live_run(fed: Consortium, party: str, proc: Proc) -> None:
    """Step m: the run is live until stopped; its Flower log has lines for 'runs logs' to show."""
    run_dir = fed.home(party) / "server/runs" / fed.variables[party]["RUN"]
    # What an operator sees before reaching for 'runs logs': the run's Flower log has begun.
    _wait_for(lambda: (run_dir / "flower.log").exists() and (run_dir / "flower.log").stat().st_size > 0, 120,
              "the live run's Flower log")


def _check(fed: Consortium, step: str, party: str, line: str, done: subprocess.CompletedProcess[str]) -> None:
    """What a documented command must have said or left (beyond exit 0)."""
    words = shlex.split(line)
    run = fed.variables.get(party, {}).get("RUN")
    if words[1:3] == ["run", "--job"]:  # step k
        fed.variables.setdefault(party, {})["RUN"] = rid = _run_id(done.stdout)
        assert f"run {rid}: finished:completed" in done.stdout, done.stdout[-2000:]
        assert (fed.home(party) / "server/runs" / rid / f"report-{rid}.pdf").stat().st_size > 0
    elif words[1:3] == ["runs", "ls"] and step == "l":
        assert run is not None
        row = next(ln for ln in done.stdout.splitlines() if run in ln)  # uncut, though not a terminal
        assert "completed" in row, done.stdout
    elif words[1:3] == ["runs", "ls"] and step == "m":  # after 'runs stop'
        shown = fed.run(party, line + " --format json")
        listed = {r["run_id"]: r for r in json.loads(shown.stdout)}
        assert run is not None
        assert listed[run]["status"].startswith("stopped"), listed[run]
        assert listed[run]["audit_status"] == "stopped", listed[run]
    elif words[1:3] == ["runs", "logs"]:
        assert "flower.log" in done.stdout, done.stdout
        assert len(done.stdout.splitlines()) > 1, done.stdout
    elif words[1:3] == ["audit", "verify"]:
        assert "pinned" in done.stdout, done.stdout
        assert "cosign" in done.stdout.lower(), done.stdout
    elif words[1:3] == ["audit", "show"] and "run.failed" in line:  # step m: the log says it was stopped
        shown = fed.run(party, line + " --format json")
        (entry,) = json.loads(shown.stdout)
        assert "stopped by the operator" in entry["details"]["reason"], entry
    elif words[1:3] == ["audit", "show"]:  # step l: the run's end, as the log records it
        shown = fed.run(party, line + " --format json")
        (entry,) = json.loads(shown.stdout)
        assert entry["run_id"] == run, entry
        assert entry["type"] == "run.completed", entry
        assert entry["details"]["stop_reason"] == "completed", entry
    elif words[1:3] == ["compliance", "report"]:
        assert (fed.home(party) / "report" / f"report-{run}.pdf").stat().st_size > 0
    elif words[1:3] == ["server", "status"]:
        assert "running" in done.stdout.lower() or "listening" in done.stdout.lower(), done.stdout
