"""How the CLI was told to reach the queue (kept free of heavy imports: every command parses it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from memq.errors import UserError


@dataclass(frozen=True)
class RootOptions:
    """How the CLI was told to reach the queue."""

    root: str | None = None
    db: str | None = None
    db_mode: str | None = None

    def resolve_root(self) -> Path:
        raw = self.root or os.environ.get("MEMQ_ROOT")
        if not raw:
            raise UserError("no memq root given", where="--root",
                            hint="pass --root DIR or export MEMQ_ROOT=/shared/path/memq")
        return Path(raw).expanduser().absolute()

    def db_url(self) -> str | None:
        return self.db or os.environ.get("MEMQ_DB") or None
