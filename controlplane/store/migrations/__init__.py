"""Alembic migrations for the control plane tables (controlplane/store/models.py).

Run by ``controlplane.store.db.migrate`` at server start; a new revision is written with
``alembic -c controlplane/store/migrations/alembic.ini revision --autogenerate -m ...``
against a database at head.
"""
