"""Users and their sessions (the console's sign-in)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

``cp_user``: name, argon2 password hash, role, tenant (NULL: every tenant), disabled;
``cp_session``: one row per signed-in browser, keyed by the SHA-256 of its cookie,
deleted with its user.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cp_user',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(253), nullable=False),
        sa.Column('password_hash', sa.String(512), nullable=False),
        sa.Column('role', sa.String(32), nullable=False),
        sa.Column('tenant', sa.String(128), nullable=True),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('password_changed_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'cp_session',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('token_sha256', sa.String(64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('csrf_token', sa.String(64), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_seen', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['cp_user.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_sha256'),
    )
    with op.batch_alter_table('cp_session') as batch:
        batch.create_index(batch.f('ix_cp_session_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cp_session') as batch:
        batch.drop_index(batch.f('ix_cp_session_user_id'))
    op.drop_table('cp_session')
    op.drop_table('cp_user')
