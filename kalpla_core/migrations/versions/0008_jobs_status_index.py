"""jobs: index on (status, created_at)

Revision ID: c0008
Revises: c0007
Create Date: 2026-11-26 13:40:00

The job reaper looks for running and queued jobs only; with this index its sweep reads those
rows instead of the whole table of finished jobs.
"""
from alembic import op

revision = 'c0008'
down_revision = 'c0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_created')
