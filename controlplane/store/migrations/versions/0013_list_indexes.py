"""the console's lists page from indexes: agents, images, the audit log's filters

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

- ``cp_agent``: (enrolled_at, id) and (tenant, enrolled_at, id): ``GET /api/v1/agents``
  pages in enrolment order (keyset ``after`` an agent id), every tenant's or one's.
- ``image_verdict``: (image, image_digest, passed): ``GET /api/v1/images`` pages by
  reference (keyset ``after`` a digest), its verdict filter read from the index.
- ``cp_audit``: (actor, id) and (action, id): the audit log's filters (``action`` with
  text_pattern_ops on PostgreSQL, so that a prefix ``policy.`` ranges over the index
  whatever the database's collation).

Indexes only: nothing is rewritten (building them over 1,000,000 audit entries takes
seconds).
"""

from __future__ import annotations

from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_cp_agent_enrolled', 'cp_agent', ['enrolled_at', 'id'])
    op.create_index('ix_cp_agent_tenant_enrolled', 'cp_agent', ['tenant', 'enrolled_at', 'id'])
    op.create_index('image_verdict_image', 'image_verdict', ['image', 'image_digest', 'passed'])
    op.create_index('ix_cp_audit_actor', 'cp_audit', ['actor', 'id'])
    op.create_index('ix_cp_audit_action', 'cp_audit', ['action', 'id'],
                    postgresql_ops={'action': 'text_pattern_ops'})


def downgrade() -> None:
    op.drop_index('ix_cp_audit_action', 'cp_audit')
    op.drop_index('ix_cp_audit_actor', 'cp_audit')
    op.drop_index('image_verdict_image', 'image_verdict')
    op.drop_index('ix_cp_agent_tenant_enrolled', 'cp_agent')
    op.drop_index('ix_cp_agent_enrolled', 'cp_agent')
