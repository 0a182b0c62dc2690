"""the config digest beside each image verdict

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

``image_verdict.config_digest``: the digest of the image's config (the image ID docker and
podman name a container's image by), written with the verdict by the scan that read the
config, so agents can find a container's verdict whichever digest its runtime gives
(the image-verdict list pushed to agents: docs/controlplane.md). Existing rows get ''
(filled by their next scan).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('image_verdict') as batch:
        batch.add_column(sa.Column('config_digest', sa.String(128), nullable=False,
                                   server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('image_verdict') as batch:
        batch.drop_column('config_digest')
