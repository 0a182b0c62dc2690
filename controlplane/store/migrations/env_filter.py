"""Which database objects the migrations own: the ``cp_*`` tables, except alembic's own
version table. Tables that share the database (the scanner's) are left alone."""

from __future__ import annotations

from typing import Any


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    if type_ == "table":
        return bool(name and name.startswith("cp_") and name != "cp_alembic_version")
    return True
