"""streaming sessions, playback keys, attendance, events

Revision ID: s0001
Revises: 
Create Date: 2026-11-26 11:02:23.116893
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 's0001'
down_revision = None
branch_labels = ('streaming',)
depends_on = 'c0003'  # institutions, users, courses and lessons


def upgrade() -> None:
    op.create_table('streaming_playback_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('arn', sa.String(length=200), nullable=False),
    sa.Column('public_key_pem', sa.Text(), nullable=False),
    sa.Column('private_key_encrypted', sa.Text(), nullable=False),
    sa.Column('recording_configuration_arn', sa.String(length=200), nullable=True),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_streaming_playback_keys_institution_id_institutions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_streaming_playback_keys')),
    sa.UniqueConstraint('institution_id', name=op.f('uq_streaming_playback_keys_institution_id'))
    )
    op.create_table('streaming_sessions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('lesson_id', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('scheduled_start', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('scheduled_end', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('channel_arn', sa.String(length=200), nullable=True),
    sa.Column('stream_key_arn', sa.String(length=200), nullable=True),
    sa.Column('rtmp_path', sa.String(length=100), nullable=True),
    sa.Column('ingest_endpoint', sa.String(length=500), nullable=True),
    sa.Column('playback_url', sa.String(length=1000), nullable=True),
    sa.Column('stream_key_encrypted', sa.Text(), nullable=True),
    sa.Column('recording_location', sa.String(length=1000), nullable=True),
    sa.Column('started_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("provider IN ('rtmp', 'ivs')", name=op.f('ck_streaming_sessions_provider')),
    sa.CheckConstraint("status IN ('scheduled', 'live', 'ended', 'cancelled')", name=op.f('ck_streaming_sessions_status')),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_streaming_sessions_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_streaming_sessions_institution_id_institutions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['lesson_id'], ['lessons.id'], name=op.f('fk_streaming_sessions_lesson_id_lessons'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_streaming_sessions')),
    sa.UniqueConstraint('lesson_id', name=op.f('uq_streaming_sessions_lesson_id')),
    sa.UniqueConstraint('rtmp_path', name=op.f('uq_streaming_sessions_rtmp_path'))
    )
    with op.batch_alter_table('streaming_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_streaming_sessions_channel_arn', ['channel_arn'], unique=False)
        batch_op.create_index('ix_streaming_sessions_course_start', ['course_id', 'scheduled_start', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_streaming_sessions_institution_id'), ['institution_id'], unique=False)

    op.create_table('streaming_attendance',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('joins', sa.Integer(), nullable=False),
    sa.Column('first_joined_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('live_seconds', sa.Integer(), nullable=False),
    sa.Column('recording_seconds', sa.Integer(), nullable=False),
    sa.Column('completed_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['session_id'], ['streaming_sessions.id'], name=op.f('fk_streaming_attendance_session_id_streaming_sessions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_streaming_attendance_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_streaming_attendance')),
    sa.UniqueConstraint('session_id', 'user_id', name=op.f('uq_streaming_attendance_session_id'))
    )
    with op.batch_alter_table('streaming_attendance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_streaming_attendance_user_id'), ['user_id'], unique=False)

    op.create_table('streaming_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('occurred_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['streaming_sessions.id'], name=op.f('fk_streaming_events_session_id_streaming_sessions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_streaming_events')),
    sa.UniqueConstraint('source', 'event_id', name=op.f('uq_streaming_events_source'))
    )


def downgrade() -> None:
    op.drop_table('streaming_events')
    with op.batch_alter_table('streaming_attendance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_streaming_attendance_user_id'))

    op.drop_table('streaming_attendance')
    with op.batch_alter_table('streaming_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_streaming_sessions_institution_id'))
        batch_op.drop_index('ix_streaming_sessions_course_start')
        batch_op.drop_index('ix_streaming_sessions_channel_arn')

    op.drop_table('streaming_sessions')
    op.drop_table('streaming_playback_keys')
