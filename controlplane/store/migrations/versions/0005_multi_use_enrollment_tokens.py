"""multi-use, revocable enrolment tokens; each agent remembers the token it enrolled with

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``cp_enrollment_token`` gains ``max_uses`` (NULL: unlimited until it expires or is
revoked), ``uses`` (enrolments made with it), ``revoked_at``, ``revoked_by`` and
``comment``; ``used_at``/``used_by`` now name the last use. A token stored before this
revision was one-time: ``max_uses`` 1 and ``uses`` 1 if it was spent, else 0.
``cp_agent.enrollment_token_id``: the token an agent enrolled with (NULL for agents
enrolled before this revision), so ``moray token list`` can count the agents of a token.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cp_enrollment_token') as batch_op:
        batch_op.add_column(sa.Column('max_uses', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('uses', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('revoked_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('revoked_by', sa.String(253), nullable=True))
        batch_op.add_column(sa.Column('comment', sa.String(253), nullable=False,
                                      server_default=''))
    op.execute("UPDATE cp_enrollment_token SET max_uses = 1, "
               "uses = CASE WHEN used_at IS NULL THEN 0 ELSE 1 END")
    with op.batch_alter_table('cp_agent') as batch_op:
        batch_op.add_column(sa.Column('enrollment_token_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_cp_agent_enrollment_token_id', ['enrollment_token_id'])
    op.execute("UPDATE cp_agent SET enrollment_token_id = (SELECT t.id FROM "
               "cp_enrollment_token t WHERE t.used_by = cp_agent.id)")


def downgrade() -> None:
    with op.batch_alter_table('cp_agent') as batch_op:
        batch_op.drop_index('ix_cp_agent_enrollment_token_id')
        batch_op.drop_column('enrollment_token_id')
    with op.batch_alter_table('cp_enrollment_token') as batch_op:
        for column in ('comment', 'revoked_by', 'revoked_at', 'uses', 'max_uses'):
            batch_op.drop_column(column)
