"""scanner tables on migrations: vulnerability data, layer cache, scan jobs, verdicts,
registered registries and images

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Before this revision ``ScanStore`` created its tables itself on SQLite (``CREATE TABLE IF
NOT EXISTS``). A table that already exists is adopted, not recreated: ``scan_job`` gets
its new columns (jobs already in it get a unique ``job_key``, so they are never taken
for duplicates) and its new indexes.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
ACTIVE_JOB = "status IN ('queued', 'running')"


def _tables() -> list[tuple[str, list[Any]]]:
    return [
        ('scanstore_meta', [
            sa.Column('key', sa.String(64), nullable=False),
            sa.Column('value', sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint('key')]),
        ('vuln_advisory', [
            sa.Column('id', sa.String(256), nullable=False),
            sa.Column('aliases', sa.Text(), nullable=False),
            sa.Column('summary', sa.Text(), nullable=False),
            sa.Column('severity', sa.String(32), nullable=False),
            sa.Column('cvss_score', sa.Float(), nullable=True),
            sa.Column('modified', sa.String(64), nullable=False),
            sa.Column('sources', sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint('id')]),
        ('vuln_alias', [
            sa.Column('alias', sa.String(256), nullable=False),
            sa.Column('advisory_id', sa.String(256), nullable=False),
            sa.PrimaryKeyConstraint('alias', 'advisory_id')]),
        ('vuln_affected', [
            sa.Column('advisory_id', sa.String(256), nullable=False),
            sa.Column('source', sa.String(64), nullable=False),
            sa.Column('origin', sa.Text(), nullable=False),
            sa.Column('ecosystem', sa.String(64), nullable=False),
            sa.Column('release', sa.String(128), nullable=False),
            sa.Column('package', sa.Text(), nullable=False),
            sa.Column('status', sa.String(32), nullable=False),
            sa.Column('ranges', sa.Text(), nullable=False),
            sa.Column('versions', sa.Text(), nullable=False),
            sa.Column('fixed', sa.Text(), nullable=False)]),
        ('vuln_import', [
            sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
            sa.Column('path', sa.Text(), nullable=False),
            sa.Column('records', sa.Integer(), nullable=False),
            sa.Column('rows', sa.Integer(), nullable=False),
            sa.Column('skipped', sa.Integer(), nullable=False),
            sa.Column('imported_at', sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint('id')]),
        ('scan_layer_cache', [
            sa.Column('digest', sa.String(128), nullable=False),
            sa.Column('version', sa.String(64), nullable=False),
            sa.Column('result', sa.Text(), nullable=False),
            sa.Column('created', sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint('digest', 'version')]),
        ('scan_job', [
            sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
            sa.Column('image', sa.Text(), nullable=False),
            sa.Column('policy', sa.Text(), nullable=False),
            sa.Column('status', sa.String(16), nullable=False),
            sa.Column('worker', sa.Text(), server_default='', nullable=False),
            sa.Column('lease_until', sa.Float(), server_default='0', nullable=False),
            sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
            sa.Column('digest', sa.Text(), server_default='', nullable=False),
            sa.Column('error', sa.Text(), server_default='', nullable=False),
            sa.Column('created', sa.Float(), nullable=False),
            sa.Column('updated', sa.Float(), nullable=False),
            *_job_columns(),
            sa.PrimaryKeyConstraint('id')]),
        ('image_verdict', [
            sa.Column('image_digest', sa.String(128), nullable=False),
            sa.Column('policy', sa.String(253), nullable=False),
            sa.Column('passed', sa.Boolean(), nullable=False),
            sa.Column('reasons', sa.Text(), nullable=False),
            sa.Column('vulndb_generation', sa.Integer(), nullable=False),
            sa.Column('image', sa.Text(), nullable=False),
            sa.Column('created', sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint('image_digest', 'policy')]),
        ('scan_registry', [
            sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
            sa.Column('registry', sa.String(300), nullable=False),
            sa.Column('repositories', sa.JSON(), nullable=False),
            sa.Column('credentials', sa.Text(), nullable=False),
            sa.Column('insecure', sa.Boolean(), nullable=False),
            sa.Column('interval_seconds', sa.Float(), nullable=False),
            sa.Column('policy', sa.Text(), nullable=False),
            sa.Column('next_run', sa.Float(), nullable=False),
            sa.Column('last_run', sa.Float(), nullable=True),
            sa.Column('last_images', sa.Integer(), nullable=False),
            sa.Column('last_error', sa.Text(), nullable=False),
            sa.Column('created', sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint('id')]),
        ('scan_image', [
            sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
            sa.Column('image', sa.Text(), nullable=False),
            sa.Column('credentials', sa.Text(), nullable=False),
            sa.Column('insecure', sa.Boolean(), nullable=False),
            sa.Column('interval_seconds', sa.Float(), nullable=False),
            sa.Column('policy', sa.Text(), nullable=False),
            sa.Column('next_run', sa.Float(), nullable=False),
            sa.Column('last_run', sa.Float(), nullable=True),
            sa.Column('created', sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint('id')]),
    ]


def _job_columns() -> list[sa.Column[object]]:
    return [
        sa.Column('insecure', sa.Boolean(), server_default=sa.text('false'), nullable=False),
        sa.Column('credentials', sa.Text(), server_default='', nullable=False),
        sa.Column('job_key', sa.String(64), server_default='', nullable=False),
        sa.Column('generation', sa.Integer(), server_default='0', nullable=False),
    ]


INDEXES: list[tuple[str, str, list[str], dict[str, Any]]] = [
    ('vuln_affected_pkg', 'vuln_affected', ['ecosystem', 'package'], {}),
    ('vuln_affected_origin', 'vuln_affected', ['source', 'origin'], {}),
    ('scan_job_status', 'scan_job', ['status', 'lease_until'], {}),
    ('scan_job_image', 'scan_job', ['image'], {}),
    ('uq_scan_job_active', 'scan_job', ['job_key'],
     {'unique': True, 'sqlite_where': sa.text(ACTIVE_JOB),
      'postgresql_where': sa.text(ACTIVE_JOB)}),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, items in _tables():
        if name not in existing:
            op.create_table(name, *items)
    if 'scan_job' in existing:  # a ScanStore-made table: add what it lacks
        have = {c['name'] for c in inspector.get_columns('scan_job')}
        with op.batch_alter_table('scan_job') as batch_op:
            for column in _job_columns():
                if column.name not in have:
                    batch_op.add_column(column)
        op.execute("UPDATE scan_job SET job_key = 'legacy-' || CAST(id AS TEXT) "
                   "WHERE job_key = ''")
    for name, table, columns, kw in INDEXES:
        if table in existing and name in {i['name'] for i in inspector.get_indexes(table)}:
            continue
        op.create_index(name, table, columns, **kw)


def downgrade() -> None:
    for name, table, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    for name, _ in reversed(_tables()):
        op.drop_table(name)
