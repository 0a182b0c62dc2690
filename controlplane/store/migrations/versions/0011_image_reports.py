"""an image's secrets, malware and SBOM beside its verdict

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``image_report``: per image digest, what its last scan found besides vulnerabilities
(secret findings without their text, malware findings) and its CycloneDX SBOM, written by
the scan worker with the verdict, read by the console's images page.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'image_report',
        sa.Column('image_digest', sa.String(128), primary_key=True),
        sa.Column('findings', sa.Text(), nullable=False),
        sa.Column('secrets', sa.Integer(), nullable=False),
        sa.Column('malware', sa.Integer(), nullable=False),
        sa.Column('sbom', sa.Text(), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('image_report')
