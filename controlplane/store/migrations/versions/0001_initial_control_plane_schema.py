"""initial control plane schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:

    op.create_table('cp_agent',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('hostname', sa.String(length=253), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('cert_serial', sa.String(length=64), nullable=False),
    sa.Column('cert_sha256', sa.String(length=64), nullable=False),
    sa.Column('enrolled_at', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('status', sa.JSON(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cert_serial')
    )
    with op.batch_alter_table('cp_agent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cp_agent_tenant'), ['tenant'], unique=False)

    op.create_table('cp_api_token',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('cp_audit',
    sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=253), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=512), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cp_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cp_audit_at'), ['at'], unique=False)

    op.create_table('cp_enrollment_token',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=253), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=True),
    sa.Column('used_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('cp_event',
    sa.Column('seq', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('cp_event', schema=None) as batch_op:
        batch_op.create_index('ix_cp_event_agent_time', ['agent_id', 'time_ms'], unique=False)
        batch_op.create_index(batch_op.f('ix_cp_event_type'), ['type'], unique=False)

    op.create_table('cp_policy',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('removed', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'name', name='uq_cp_policy_tenant_name')
    )
    op.create_table('cp_agent_policy',
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('policy_name', sa.String(length=253), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('tiers', sa.JSON(), nullable=False),
    sa.Column('acked_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['cp_agent.id'], ),
    sa.PrimaryKeyConstraint('agent_id', 'policy_name')
    )
    op.create_table('cp_policy_version',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('removed', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(length=1024), nullable=False),
    sa.Column('author', sa.String(length=253), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('signature', sa.LargeBinary(), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['cp_policy.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('policy_id', 'version', name='uq_cp_policy_version')
    )
    with op.batch_alter_table('cp_policy_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cp_policy_version_policy_id'), ['policy_id'],
                              unique=False)




def downgrade() -> None:

    with op.batch_alter_table('cp_policy_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cp_policy_version_policy_id'))

    op.drop_table('cp_policy_version')
    op.drop_table('cp_agent_policy')
    op.drop_table('cp_policy')
    with op.batch_alter_table('cp_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cp_event_type'))
        batch_op.drop_index('ix_cp_event_agent_time')

    op.drop_table('cp_event')
    op.drop_table('cp_enrollment_token')
    with op.batch_alter_table('cp_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cp_audit_at'))

    op.drop_table('cp_audit')
    op.drop_table('cp_api_token')
    with op.batch_alter_table('cp_agent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cp_agent_tenant'))

    op.drop_table('cp_agent')

