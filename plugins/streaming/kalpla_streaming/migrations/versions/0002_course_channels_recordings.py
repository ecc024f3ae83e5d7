"""course channels; sessions' claims, stream ids and recording files

Revision ID: s0002
Revises: s0001
Create Date: 2026-11-26 13:40:00
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 's0002'
down_revision = 's0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('streaming_channels',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('channel_arn', sa.String(length=200), nullable=True),
    sa.Column('stream_key_arn', sa.String(length=200), nullable=True),
    sa.Column('rtmp_path', sa.String(length=100), nullable=True),
    sa.Column('ingest_endpoint', sa.String(length=500), nullable=True),
    sa.Column('playback_url', sa.String(length=1000), nullable=True),
    sa.Column('stream_key_encrypted', sa.Text(), nullable=True),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("provider IN ('rtmp', 'ivs')", name=op.f('ck_streaming_channels_provider')),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_streaming_channels_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_streaming_channels_institution_id_institutions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_streaming_channels')),
    sa.UniqueConstraint('course_id', 'provider', name=op.f('uq_streaming_channels_course_id')),
    sa.UniqueConstraint('rtmp_path', name=op.f('uq_streaming_channels_rtmp_path'))
    )
    with op.batch_alter_table('streaming_channels', schema=None) as batch_op:
        batch_op.create_index('ix_streaming_channels_channel_arn', ['channel_arn'], unique=False)
        batch_op.create_index(batch_op.f('ix_streaming_channels_institution_id'), ['institution_id'], unique=False)

    with op.batch_alter_table('streaming_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('stream_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('recording_file_id', sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_streaming_sessions_channel_id_streaming_channels'), 'streaming_channels', ['channel_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_streaming_sessions_recording_file_id_files'), 'files', ['recording_file_id'], ['id'], ondelete='SET NULL')
        batch_op.create_index('ix_streaming_sessions_channel_claim', ['channel_id', 'claimed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('streaming_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_streaming_sessions_channel_claim')
        batch_op.drop_constraint(batch_op.f('fk_streaming_sessions_recording_file_id_files'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_streaming_sessions_channel_id_streaming_channels'), type_='foreignkey')
        batch_op.drop_column('recording_file_id')
        batch_op.drop_column('stream_id')
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('channel_id')

    with op.batch_alter_table('streaming_channels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_streaming_channels_institution_id'))
        batch_op.drop_index('ix_streaming_channels_channel_arn')

    op.drop_table('streaming_channels')
