"""the bucket of an institution's recording configuration

Revision ID: s0003
Revises: s0002
Create Date: 2026-11-26 14:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = 's0003'
down_revision = 's0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('streaming_playback_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recording_bucket', sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('streaming_playback_keys', schema=None) as batch_op:
        batch_op.drop_column('recording_bucket')
