"""The one parser of store URLs: ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``sqlite:///:memory:`` or
``postgres[ql]://...``. The store, the settings check, the preflight, the scheduler and the entry points all read
a URL through it, so they agree on what a URL means."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")
ALLOWED = "must be sqlite:///PATH.db (relative), sqlite:////ABS/PATH.db, sqlite:///:memory: or postgresql://..."


@dataclass(frozen=True)
class StoreUrl:
    url: str
    kind: str  # sqlite | postgresql
    path: str | None = None  # SQLite: the database path as written, or ":memory:"

    @property
    def memory(self) -> bool:
        return self.path == ":memory:"

    @property
    def file(self) -> Path | None:
        """The SQLite database file; None for PostgreSQL or an in-memory database."""
        return Path(self.path) if self.kind == "sqlite" and not self.memory else None

    def absolute(self) -> str:
        """The same URL with a relative SQLite path made absolute (a job runs from another directory)."""
        return SQLITE + str(self.file.absolute()) if self.file is not None else self.url


def parse_store_url(url: str) -> StoreUrl:
    """A store URL's kind and SQLite path; ValueError (without the password) for anything else."""
    if url.startswith(SQLITE) and len(url) > len(SQLITE):
        return StoreUrl(url, "sqlite", url.removeprefix(SQLITE))
    if url.startswith(POSTGRES):
        return StoreUrl(url, "postgresql")
    from pipeline.redact import redact_url

    raise ValueError(f"unsupported store URL {redact_url(url)!r}: {ALLOWED}")
