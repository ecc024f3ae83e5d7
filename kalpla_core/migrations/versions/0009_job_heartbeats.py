"""jobs: heartbeat_at

Revision ID: c0009
Revises: c0008
Create Date: 2026-11-26 14:40:00

A running job's worker refreshes ``heartbeat_at`` while the job runs, so the reaper tells a
slow job from one whose worker is gone. Rows claimed before this revision keep it NULL and are
judged by their timeout alone, as before.
"""
import sqlalchemy as sa
from alembic import op

import kalpla_core.db

revision = 'c0009'
down_revision = 'c0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'heartbeat_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
