"""what each enrolled client is: the host agent, a MicroEnforcer, ...

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

``cp_agent.kind``: declared by the client at enrolment (``EnrollRequest.kind``): "agent"
(the host agent), "micro" (``moray micro``), "nano" ...; agents enrolled before this
revision, and clients that do not say, are "agent".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cp_agent') as batch:
        batch.add_column(sa.Column('kind', sa.String(32), nullable=False,
                                   server_default='agent'))


def downgrade() -> None:
    with op.batch_alter_table('cp_agent') as batch:
        batch.drop_column('kind')
