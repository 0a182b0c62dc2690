"""the console's event filters: columns taken from the payload, and their indexes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``cp_event`` gets the columns the console filters on (rule, priority, container name,
image), the container's id and the event's node (shown, not indexed: a node is filtered
as its agents' host name), an enforcement decision's ``action`` and, for exec and fork
events, the process's ``exec_id`` (the ancestry's lookup key), all set when a row is
stored (controlplane/store/eventcols.py). Indexes: (tenant, value, seq, time_ms) per
filter (time_ms: a time window is checked in the index; partial, on the rows that have
the value), (tenant, seq, time_ms), (tenant, type, seq, time_ms), (agent_id, seq,
time_ms), (agent_id, exec_id) of exec/fork events, and the overview's partial (time_ms,
tenant, ...) indexes of alerts and of enforcement decisions. The indexes on ``type`` and
on (agent_id, time_ms) go: no query needs them any more, and each index costs ingest.

Rows already stored are filled in here, 5,000 at a time in seq order, before the indexes
are built: 6 s for 200,000 events on SQLite (~30 s a million) on the development machine.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moray.controlplane.store.eventcols import event_columns

revision = '0010'
down_revision = '0009'  # re-chained: 0008 (i-auth), 0009 (i-tenancy), 0010
branch_labels = None
depends_on = None

COLUMNS = (('rule', 253), ('priority', 16), ('container', 253), ('container_id', 128),
           ('image', 512), ('node', 253), ('action', 32), ('exec_id', 64))
PARTIAL = ('rule', 'priority', 'container', 'image')
BATCH = 5000


def _partial(name: str, columns: list[str], where: str) -> None:
    op.create_index(name, 'cp_event', columns, sqlite_where=sa.text(where),
                    postgresql_where=sa.text(where))


def _backfill() -> None:
    bind = op.get_bind()
    event = sa.table('cp_event', sa.column('seq'), sa.column('type'), sa.column('payload'),
                     *(sa.column(name) for name, _ in COLUMNS))
    update = (sa.update(event).where(event.c.seq == sa.bindparam('b_seq'))
              .values({name: sa.bindparam(f'b_{name}') for name, _ in COLUMNS}))
    last = -1
    while True:
        rows = bind.execute(sa.select(event.c.seq, event.c.type, event.c.payload)
                            .where(event.c.seq > last).order_by(event.c.seq)
                            .limit(BATCH)).all()
        if not rows:
            return
        params = []
        for seq, kind, payload in rows:
            values = event_columns(kind, payload)
            params.append({'b_seq': seq, **{f'b_{name}': value for (name, _), value
                                            in zip(COLUMNS, values, strict=True)}})
        bind.execute(update, params)
        last = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table('cp_event') as batch:
        for name, size in COLUMNS:
            batch.add_column(sa.Column(name, sa.String(size), nullable=True))
        batch.drop_index('ix_cp_event_type')
        batch.drop_index('ix_cp_event_agent_time')
    _backfill()
    op.create_index('ix_cp_event_tenant_seq', 'cp_event', ['tenant', 'seq', 'time_ms'])
    op.create_index('ix_cp_event_agent_seq', 'cp_event', ['agent_id', 'seq', 'time_ms'])
    op.create_index('ix_cp_event_tenant_type', 'cp_event', ['tenant', 'type', 'seq', 'time_ms'])
    for column in PARTIAL:
        _partial(f'ix_cp_event_tenant_{column}', ['tenant', column, 'seq', 'time_ms'],
                 f'{column} IS NOT NULL')
    _partial('ix_cp_event_exec', ['agent_id', 'exec_id'], 'exec_id IS NOT NULL')
    _partial('ix_cp_event_alert_time', ['time_ms', 'tenant', 'rule'], "type = 'alert'")
    _partial('ix_cp_event_enforce_time', ['time_ms', 'tenant', 'action'], "type = 'enforce'")


def downgrade() -> None:
    for name in ('ix_cp_event_enforce_time', 'ix_cp_event_alert_time', 'ix_cp_event_exec',
                 *(f'ix_cp_event_tenant_{c}' for c in PARTIAL), 'ix_cp_event_tenant_type',
                 'ix_cp_event_agent_seq', 'ix_cp_event_tenant_seq'):
        op.drop_index(name, 'cp_event')
    with op.batch_alter_table('cp_event') as batch:
        batch.create_index('ix_cp_event_type', ['type'])
        batch.create_index('ix_cp_event_agent_time', ['agent_id', 'time_ms'])
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
