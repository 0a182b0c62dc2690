"""Which database objects the migrations own: the control plane's ``cp_*`` tables and the
scanner's tables (``controlplane/store/scanmodels.py``), except alembic's own version
table. Anything else that shares the database is left alone."""

from __future__ import annotations

from typing import Any

from moray.controlplane.store.scanmodels import SCANNER_TABLES


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    if type_ == "table":
        return bool(name and ((name.startswith("cp_") and name != "cp_alembic_version")
                              or name in SCANNER_TABLES))
    return True
