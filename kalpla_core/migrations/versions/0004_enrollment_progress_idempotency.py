"""enrollment, progress and idempotency keys

Revision ID: c0004
Revises: c0003
Create Date: 2026-11-26 10:12:25.795658
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 'c0004'
down_revision = 'c0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response_body', sa.Text(), nullable=True),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys')),
    sa.UniqueConstraint('owner', 'scope', 'key', name=op.f('uq_idempotency_keys_owner'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)

    op.create_table('enrollments',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('enrolled_by', sa.String(length=32), nullable=True),
    sa.Column('pending_plugin', sa.String(length=64), nullable=True),
    sa.Column('pending_reason', sa.String(length=500), nullable=True),
    sa.Column('pending_action', sa.JSON(), nullable=True),
    sa.Column('activated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('completed_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('dropped_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('waitlisted_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('offer_expires_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lessons_completed', sa.Integer(), nullable=False),
    sa.Column('lessons_required', sa.Integer(), nullable=False),
    sa.Column('progress_percent', sa.Integer(), nullable=False),
    sa.Column('structure_version', sa.Integer(), nullable=False),
    sa.Column('last_lesson_id', sa.String(length=32), nullable=True),
    sa.Column('last_activity_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'active', 'completed', 'dropped', 'expired', 'waitlisted')", name=op.f('ck_enrollments_status')),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_enrollments_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enrolled_by'], ['users.id'], name=op.f('fk_enrollments_enrolled_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_enrollments_institution_id_institutions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['last_lesson_id'], ['lessons.id'], name=op.f('fk_enrollments_last_lesson_id_lessons'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_enrollments_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_enrollments')),
    sa.UniqueConstraint('course_id', 'user_id', name=op.f('uq_enrollments_course_id'))
    )
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.create_index('ix_enrollments_course_status', ['course_id', 'status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_enrollments_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_enrollments_institution_id'), ['institution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_enrollments_offer_expires_at'), ['offer_expires_at'], unique=False)
        batch_op.create_index('ix_enrollments_user_status', ['user_id', 'status'], unique=False)
        batch_op.create_index('ix_enrollments_waitlist', ['course_id', 'status', 'waitlisted_at', 'id'], unique=False)

    op.create_table('lesson_progress',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('enrollment_id', sa.String(length=32), nullable=False),
    sa.Column('lesson_id', sa.String(length=32), nullable=False),
    sa.Column('first_viewed_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_event_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('position_seconds', sa.Integer(), nullable=False),
    sa.Column('max_percent', sa.Integer(), nullable=False),
    sa.Column('completed_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('completed_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['enrollment_id'], ['enrollments.id'], name=op.f('fk_lesson_progress_enrollment_id_enrollments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['lesson_id'], ['lessons.id'], name=op.f('fk_lesson_progress_lesson_id_lessons'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lesson_progress')),
    sa.UniqueConstraint('enrollment_id', 'lesson_id', name=op.f('uq_lesson_progress_enrollment_id'))
    )
    with op.batch_alter_table('lesson_progress', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lesson_progress_enrollment_id'), ['enrollment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_lesson_progress_lesson_id'), ['lesson_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('lesson_progress', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lesson_progress_lesson_id'))
        batch_op.drop_index(batch_op.f('ix_lesson_progress_enrollment_id'))

    op.drop_table('lesson_progress')
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_index('ix_enrollments_waitlist')
        batch_op.drop_index('ix_enrollments_user_status')
        batch_op.drop_index(batch_op.f('ix_enrollments_offer_expires_at'))
        batch_op.drop_index(batch_op.f('ix_enrollments_institution_id'))
        batch_op.drop_index(batch_op.f('ix_enrollments_expires_at'))
        batch_op.drop_index('ix_enrollments_course_status')

    op.drop_table('enrollments')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))

    op.drop_table('idempotency_keys')
