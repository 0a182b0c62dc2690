"""tenants: a registry of them, and the tenant of audit entries and scanner objects

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``cp_tenant``: the tenants that exist (name, created_at, created_by, comment); filled here
with every tenant the data already names (agents, policies, enrolment and API tokens,
events) plus ``default``. ``cp_audit.tenant``: the tenant an entry belongs to (NULL: a
global change, seen by global auditors only; entries written before this revision are
NULL). ``tenant`` of ``scan_registry``, ``scan_image``, ``scan_job`` and
``kube_workload`` (existing rows: ``default``); ``kube_workload``'s unique key gains the
tenant. ``image_tenant``: which tenant has brought in which image digest (a scan job
it queued, an admission review of its cluster): scan results stay shared by digest, the
link decides who may see them.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_SCANNER = ('scan_registry', 'scan_image', 'scan_job')


def upgrade() -> None:
    op.create_table(
        'cp_tenant',
        sa.Column('name', sa.String(128), primary_key=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('created_by', sa.String(253), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False, server_default=''),
    )
    with op.batch_alter_table('cp_audit') as batch:
        batch.add_column(sa.Column('tenant', sa.String(128), nullable=True))
        batch.create_index('ix_cp_audit_tenant', ['tenant', 'id'])
    for table in _SCANNER:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('tenant', sa.String(128), nullable=False,
                                       server_default='default'))
    with op.batch_alter_table('kube_workload') as batch:
        batch.add_column(sa.Column('tenant', sa.String(128), nullable=False,
                                   server_default='default'))
        batch.drop_constraint('uq_kube_workload', type_='unique')
        batch.create_unique_constraint(
            'uq_kube_workload', ['tenant', 'cluster', 'namespace', 'kind', 'name'])
    op.create_table(
        'image_tenant',
        sa.Column('tenant', sa.String(128), nullable=False),
        sa.Column('image_digest', sa.String(128), nullable=False),
        sa.Column('first_seen', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('tenant', 'image_digest'),
    )
    op.create_index('image_tenant_digest', 'image_tenant', ['image_digest'])
    # the tenants the data names, and default
    bind = op.get_bind()
    names = {'default'}
    for table, where in (('cp_agent', ''), ('cp_policy', ''), ('cp_enrollment_token', ''),
                         ('cp_api_token', ' WHERE tenant IS NOT NULL'),
                         ('cp_event', '')):
        names.update(r[0] for r in bind.execute(
            sa.text(f"SELECT DISTINCT tenant FROM {table}{where}")))
    now = time.time()
    if names:
        bind.execute(sa.text(
            "INSERT INTO cp_tenant (name, created_at, created_by, comment) "
            "VALUES (:name, :at, 'migration 0009', '')"),
            [{"name": n, "at": now} for n in sorted(names)])
    # images already scanned or reviewed: the default tenant's (the only one before)
    bind.execute(sa.text(
        "INSERT INTO image_tenant (tenant, image_digest, first_seen) "
        "SELECT DISTINCT 'default', image_digest, :at FROM image_verdict"), {"at": now})


def downgrade() -> None:
    op.drop_index('image_tenant_digest', table_name='image_tenant')
    op.drop_table('image_tenant')
    with op.batch_alter_table('kube_workload') as batch:
        batch.drop_constraint('uq_kube_workload', type_='unique')
        batch.create_unique_constraint('uq_kube_workload',
                                       ['cluster', 'namespace', 'kind', 'name'])
        batch.drop_column('tenant')
    for table in _SCANNER:
        with op.batch_alter_table(table) as batch:
            batch.drop_column('tenant')
    with op.batch_alter_table('cp_audit') as batch:
        batch.drop_index('ix_cp_audit_tenant')
        batch.drop_column('tenant')
    op.drop_table('cp_tenant')
