"""The registries and images the server scans on a schedule (``scan_registry``,
``scan_image``): registered by ``add_registry`` / ``add_image``, removed by
``remove_*``; ``next_run`` is moved by the scheduler each time it lists or queues one
(``claim_due``), so two server replicas never list the same registry twice; a listing's
outcome is kept by ``registry_listed``. Each belongs to a tenant (revision 0009): the
scan jobs it queues are that tenant's, and so are the images they find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, insert, select, update

from moray.api.tenants import DEFAULT_TENANT
from moray.controlplane.store.scan.base import ScanStoreBase, locked
from moray.controlplane.store.scanmodels import scan_image, scan_registry


@dataclass(frozen=True, slots=True)
class RegisteredRegistry:
    id: int
    registry: str          # host[:port]
    repositories: list[str]  # [] = every repository in the catalog
    credentials: str
    insecure: bool
    interval_seconds: float
    policy: str
    next_run: float
    last_run: float | None = None
    last_images: int = 0
    last_error: str = ""
    tenant: str = DEFAULT_TENANT   # its images' scan jobs are this tenant's

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "registry": self.registry,
                "repositories": self.repositories,
                "credentials": self.credentials, "insecure": self.insecure,
                "interval_seconds": self.interval_seconds, "has_policy": bool(self.policy),
                "next_run": self.next_run, "last_run": self.last_run,
                "last_images": self.last_images, "last_error": self.last_error}


@dataclass(frozen=True, slots=True)
class RegisteredImage:
    id: int
    image: str
    credentials: str
    insecure: bool
    interval_seconds: float
    policy: str
    next_run: float
    last_run: float | None = None
    tenant: str = DEFAULT_TENANT

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "image": self.image,
                "credentials": self.credentials,
                "insecure": self.insecure, "interval_seconds": self.interval_seconds,
                "has_policy": bool(self.policy), "next_run": self.next_run,
                "last_run": self.last_run}


_R = scan_registry.c
_I = scan_image.c
_TABLES = {"scan_registry": scan_registry, "scan_image": scan_image}


def _registries() -> Select[Any]:
    return select(_R.id, _R.registry, _R.repositories, _R.credentials, _R.insecure,
                  _R.interval_seconds, _R.policy, _R.next_run, _R.last_run, _R.last_images,
                  _R.last_error, _R.tenant)


def _registry(r: Any) -> RegisteredRegistry:
    return RegisteredRegistry(int(r[0]), r[1], list(r[2]), r[3], bool(r[4]), float(r[5]),
                              r[6], float(r[7]), r[8], int(r[9]), r[10], r[11])


def _owned(where: ColumnElement[bool], column: ColumnElement[str],
           tenant: str | None) -> ColumnElement[bool]:
    return where if tenant is None else and_(where, column == tenant)


def _images() -> Select[Any]:
    return select(_I.id, _I.image, _I.credentials, _I.insecure, _I.interval_seconds,
                  _I.policy, _I.next_run, _I.last_run, _I.tenant)


def _image(r: Any) -> RegisteredImage:
    return RegisteredImage(int(r[0]), r[1], r[2], bool(r[3]), float(r[4]), r[5],
                           float(r[6]), r[7], r[8])


class ScanTargets(ScanStoreBase):
    @locked
    def add_registry(self, registry: str, *, repositories: list[str] | None = None,
                     credentials: str = "", insecure: bool = False,
                     interval_seconds: float = 3600.0, policy: str = "",
                     tenant: str = DEFAULT_TENANT) -> RegisteredRegistry:
        now = self._clock()
        with self._conn() as c:
            row_id = c.scalar(insert(scan_registry).values(
                tenant=tenant, registry=registry, repositories=sorted(set(repositories or [])),
                credentials=credentials, insecure=insecure, interval_seconds=interval_seconds,
                policy=policy, next_run=now, last_images=0, last_error="", created=now)
                .returning(_R.id))
        assert row_id is not None
        found = self.registry(int(row_id))
        assert found is not None
        return found

    @locked
    def registry(self, registry_id: int) -> RegisteredRegistry | None:
        with self._conn() as c:
            r = c.execute(_registries().where(_R.id == registry_id)).first()
        return _registry(r) if r else None

    @locked
    def registries(self, tenant: str | None = None) -> list[RegisteredRegistry]:
        """The registered registries (``tenant``: that tenant's only)."""
        query = _registries() if tenant is None else _registries().where(_R.tenant == tenant)
        with self._conn() as c:
            return [_registry(r) for r in c.execute(query.order_by(_R.id))]

    @locked
    def remove_registry(self, registry_id: int, tenant: str | None = None) -> bool:
        """False when there is no such registry (of ``tenant``, when given)."""
        where = _owned(_R.id == registry_id, _R.tenant, tenant)
        with self._conn() as c:
            return c.execute(delete(scan_registry).where(where)).rowcount == 1

    @locked
    def add_image(self, image: str, *, credentials: str = "", insecure: bool = False,
                  interval_seconds: float = 86400.0, policy: str = "",
                  tenant: str = DEFAULT_TENANT) -> RegisteredImage:
        now = self._clock()
        with self._conn() as c:
            row_id = c.scalar(insert(scan_image).values(
                tenant=tenant, image=image, credentials=credentials, insecure=insecure,
                interval_seconds=interval_seconds, policy=policy, next_run=now, created=now)
                .returning(_I.id))
        assert row_id is not None
        found = self.image(int(row_id))
        assert found is not None
        return found

    @locked
    def image(self, image_id: int) -> RegisteredImage | None:
        with self._conn() as c:
            r = c.execute(_images().where(_I.id == image_id)).first()
        return _image(r) if r else None

    @locked
    def images(self, tenant: str | None = None) -> list[RegisteredImage]:
        """The registered images (``tenant``: that tenant's only)."""
        query = _images() if tenant is None else _images().where(_I.tenant == tenant)
        with self._conn() as c:
            return [_image(r) for r in c.execute(query.order_by(_I.id))]

    @locked
    def remove_image(self, image_id: int, tenant: str | None = None) -> bool:
        """False when there is no such image (of ``tenant``, when given)."""
        where = _owned(_I.id == image_id, _I.tenant, tenant)
        with self._conn() as c:
            return c.execute(delete(scan_image).where(where)).rowcount == 1

    @locked
    def due_registries(self) -> list[RegisteredRegistry]:
        with self._conn() as c:
            return [_registry(r) for r in c.execute(
                _registries().where(_R.next_run <= self._clock()).order_by(_R.next_run))]

    @locked
    def due_images(self) -> list[RegisteredImage]:
        with self._conn() as c:
            return [_image(r) for r in c.execute(
                _images().where(_I.next_run <= self._clock()).order_by(_I.next_run))]

    @locked
    def claim_due(self, table: str, row_id: int, seen_next_run: float,
                  interval_seconds: float) -> bool:
        """Move a due row's ``next_run`` on by its interval, if nobody else did since it was
        read: the caller that wins lists (or queues) it, the others skip it."""
        if table not in _TABLES:
            raise ValueError(table)
        t = _TABLES[table]
        now = self._clock()
        with self._conn() as c:
            return c.execute(update(t).where(t.c.id == row_id, t.c.next_run == seen_next_run)
                             .values(next_run=now + interval_seconds, last_run=now)
                             ).rowcount == 1

    @locked
    def registry_listed(self, registry_id: int, images: int, error: str = "") -> None:
        with self._conn() as c:
            c.execute(update(scan_registry).where(_R.id == registry_id)
                      .values(last_images=images, last_error=error[:2000]))

    @locked
    def run_registry_now(self, registry_id: int, tenant: str | None = None) -> bool:
        where = _owned(_R.id == registry_id, _R.tenant, tenant)
        with self._conn() as c:
            return c.execute(update(scan_registry).where(where)
                             .values(next_run=0)).rowcount == 1
