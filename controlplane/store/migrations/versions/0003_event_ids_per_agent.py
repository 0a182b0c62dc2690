"""event ids unique per agent: cp_event's unique (id) becomes unique (agent_id, id)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Before, an event id was unique across all agents, so an agent's event whose id another
agent had used was dropped as a duplicate. Rows already stored keep their ids (they were
unique across agents, so they are unique per agent). SQLite cannot drop the unnamed
constraint of revision 0001 in place: the table is copied into the new shape. Downgrade
fails if two agents have since stored the same id.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _event_table(unique: sa.UniqueConstraint) -> sa.Table:
    return sa.Table(
        'cp_event', sa.MetaData(),
        sa.Column('seq', BIG_ID, primary_key=True, autoincrement=True, nullable=False),
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('agent_id', sa.String(length=64), nullable=False),
        sa.Column('tenant', sa.String(length=128), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('time_ms', sa.BigInteger(), nullable=False),
        sa.Column('received_at', sa.Float(), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        unique,
        sa.Index('ix_cp_event_agent_time', 'agent_id', 'time_ms'),
        sa.Index('ix_cp_event_type', 'type'),
    )


def _id_constraints() -> list[str]:
    """Names of the unique constraints on cp_event (id) alone (PostgreSQL: cp_event_id_key)."""
    found = sa.inspect(op.get_bind()).get_unique_constraints('cp_event')
    return [c['name'] for c in found if c['column_names'] == ['id'] and c['name']]


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        # the old table's shape with the new constraint: the copy leaves the old one out
        new = _event_table(sa.UniqueConstraint('agent_id', 'id', name='uq_cp_event_agent_id'))
        with op.batch_alter_table('cp_event', copy_from=new, recreate='always'):
            pass
        return
    for name in _id_constraints():
        op.drop_constraint(name, 'cp_event', type_='unique')
    op.create_unique_constraint('uq_cp_event_agent_id', 'cp_event', ['agent_id', 'id'])


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        old = _event_table(sa.UniqueConstraint('id'))
        with op.batch_alter_table('cp_event', copy_from=old, recreate='always'):
            pass
        return
    op.drop_constraint('uq_cp_event_agent_id', 'cp_event', type_='unique')
    op.create_unique_constraint('cp_event_id_key', 'cp_event', ['id'])
