"""The coordinator host's settings (:class:`ServerConfig`), loaded from ``server.toml``.

Relative paths are resolved against the directory of ``server.toml``, so the file means
the same thing whatever the working directory of the service manager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from fedinfra.config._load import StrictModel, load_model

ReportFormat = Literal["html", "pdf", "json"]
_ALL_FORMATS: tuple[ReportFormat, ...] = ("html", "pdf", "json")


class ServerConfig(StrictModel):
    """Where the SuperLink listens and where it keeps its state."""

    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 only behind a firewall")
    port: int = Field(default=9092, ge=1, le=65535)
    public_address: str | None = Field(
        default=None, description="host:port sites dial, if not host:port (checked against the certificate)"
    )
    state_dir: Path = Field(default=Path("state"), description="SuperLink database, logs, Flower home")
    database: Path | None = Field(default=None, description="SuperLink state database; default state_dir/superlink.db")
    runs_dir: Path = Field(default=Path("runs"), description="where runs write runs/<run-id>/")
    app_dir: Path = Field(default=Path("."), description="directory of the Flower App manifest (pyproject.toml)")
    kit: Path | None = Field(default=None, description="the coordinator kit; --kit overrides")
    audit_store: str | None = Field(
        default=None,
        description="the consortium's one audit log: SQLite path or postgresql+psycopg:// URL; "
        "default state_dir/audit.sqlite",
    )
    report_formats: list[ReportFormat] = Field(
        default_factory=lambda: list(_ALL_FORMATS), description="report formats written when a run ends"
    )
    start_timeout_s: float = Field(default=60.0, gt=0, le=600)

    def resolved(self, base: Path) -> ServerConfig:
        """A copy with every relative path made absolute against ``base``."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

        state = fix(self.state_dir)
        assert state is not None
        store = self.audit_store or str(state / "audit.sqlite")  # one log for every run of the consortium
        if "://" not in store:
            store = str(fix(Path(store)))
        return self.model_copy(
            update={
                "state_dir": state,
                "database": fix(self.database) or state / "superlink.db",
                "runs_dir": fix(self.runs_dir),
                "app_dir": fix(self.app_dir),
                "kit": fix(self.kit),
                "audit_store": store,
            }
        )


def load_server(path: Path | str) -> ServerConfig:
    """Load ``server.toml``; relative paths resolve against its directory."""
    p = Path(path)
    return load_model(ServerConfig, p).resolved(p.resolve().parent)
