"""image vulnerabilities per digest, and the workloads the admission webhook has seen

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

``image_vuln``: the vulnerabilities of an image at its last verdict (one row per id and
alias), written with the verdict. ``kube_workload`` and ``kube_workload_image``: the
inventory of workloads `moray kube-enforcer` reviewed (namespace, kind, name, their
containers' images, digests and verdicts). New tables only: nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'image_vuln',
        sa.Column('image_digest', sa.String(128), nullable=False),
        sa.Column('vuln_id', sa.String(256), nullable=False),
        sa.Column('advisory', sa.String(256), nullable=False),
        sa.Column('severity', sa.String(32), nullable=False),
        sa.Column('package', sa.String(512), nullable=False),
        sa.Column('version', sa.String(256), nullable=False),
        sa.Column('fixed_version', sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint('image_digest', 'vuln_id', 'package', 'version'))
    op.create_index('image_vuln_id', 'image_vuln', ['vuln_id'])
    op.create_table(
        'kube_workload',
        sa.Column('id', BIG_ID, primary_key=True, autoincrement=True, nullable=False),
        sa.Column('cluster', sa.String(253), nullable=False),
        sa.Column('namespace', sa.String(253), nullable=False),
        sa.Column('kind', sa.String(64), nullable=False),
        sa.Column('name', sa.String(253), nullable=False),
        sa.Column('uid', sa.String(64), nullable=False),
        sa.Column('operation', sa.String(16), nullable=False),
        sa.Column('allowed', sa.Boolean(), nullable=False),
        sa.Column('decision', sa.String(16), nullable=False),
        sa.Column('first_seen', sa.Float(), nullable=False),
        sa.Column('last_seen', sa.Float(), nullable=False),
        sa.UniqueConstraint('cluster', 'namespace', 'kind', 'name', name='uq_kube_workload'))
    op.create_table(
        'kube_workload_image',
        sa.Column('workload_id', BIG_ID, nullable=False),
        sa.Column('container_type', sa.String(16), nullable=False),
        sa.Column('container', sa.String(253), nullable=False),
        sa.Column('image', sa.Text(), nullable=False),
        sa.Column('digest', sa.String(128), nullable=False),
        sa.Column('verdict', sa.String(32), nullable=False),
        sa.Column('reasons', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('workload_id', 'container_type', 'container'))
    op.create_index('kube_workload_image_digest', 'kube_workload_image', ['digest'])


def downgrade() -> None:
    op.drop_index('kube_workload_image_digest', table_name='kube_workload_image')
    op.drop_table('kube_workload_image')
    op.drop_table('kube_workload')
    op.drop_index('image_vuln_id', table_name='image_vuln')
    op.drop_table('image_vuln')
