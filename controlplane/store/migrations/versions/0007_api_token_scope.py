"""API tokens scoped to a tenant, and expiring

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

``cp_api_token.tenant``: the one tenant a token may see and change (NULL: every tenant,
what every token before this revision was); ``cp_api_token.expires_at`` (NULL: until
revoked).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cp_api_token') as batch:
        batch.add_column(sa.Column('tenant', sa.String(128), nullable=True))
        batch.add_column(sa.Column('expires_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cp_api_token') as batch:
        batch.drop_column('expires_at')
        batch.drop_column('tenant')
