"""jobs and files: index on (status, created_at)

Revision ID: c0008
Revises: c0007
Create Date: 2026-11-26 13:40:00

The job reaper looks for running and queued jobs only, and the purge of abandoned uploads for
old pending files only; with these indexes each reads those rows instead of the whole table.
"""
from alembic import op

revision = 'c0008'
down_revision = 'c0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index('ix_files_status_created', ['status', 'created_at', 'id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_status_created')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_created')
