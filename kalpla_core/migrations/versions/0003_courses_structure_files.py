"""courses, structure and files

Revision ID: c0003
Revises: c0002
Create Date: 2026-11-26 10:10:59.803996
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 'c0003'
down_revision = 'c0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('courses',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('summary', sa.String(length=500), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('language', sa.String(length=16), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('cover_file_id', sa.String(length=32), nullable=True),
    sa.Column('capacity', sa.Integer(), nullable=True),
    sa.Column('enrollment_opens_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('enrollment_closes_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('access_days', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('published_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('archived_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('enrollment_count', sa.Integer(), nullable=False),
    sa.Column('structure_version', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('draft', 'published', 'archived')", name=op.f('ck_courses_status')),
    sa.CheckConstraint('capacity IS NULL OR capacity >= 0', name=op.f('ck_courses_capacity')),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_courses_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_courses_institution_id_institutions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_courses')),
    sa.UniqueConstraint('institution_id', 'slug', name=op.f('uq_courses_institution_id'))
    )
    with op.batch_alter_table('courses', schema=None) as batch_op:
        batch_op.create_index('ix_courses_catalog_newest', ['status', 'published_at', 'id'], unique=False)
        batch_op.create_index('ix_courses_catalog_popularity', ['status', 'enrollment_count', 'id'], unique=False)
        batch_op.create_index('ix_courses_catalog_title', ['status', 'title', 'id'], unique=False)
        batch_op.create_index('ix_courses_institution_status', ['institution_id', 'status', 'published_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_courses_language'), ['language'], unique=False)
        batch_op.create_index(batch_op.f('ix_courses_level'), ['level'], unique=False)

    op.create_table('files',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('course_id', sa.String(length=32), nullable=True),
    sa.Column('lesson_id', sa.String(length=32), nullable=True),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('storage_key', sa.String(length=500), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_files_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_files_institution_id_institutions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_files_owner_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files')),
    sa.UniqueConstraint('storage_key', name=op.f('uq_files_storage_key'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_course_id'), ['course_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_institution_id'), ['institution_id'], unique=False)

    op.create_table('course_instructors',
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_course_instructors_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_course_instructors_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('course_id', 'user_id', name=op.f('pk_course_instructors'))
    )
    with op.batch_alter_table('course_instructors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_course_instructors_user_id'), ['user_id'], unique=False)

    op.create_table('course_modules',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('summary', sa.String(length=500), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_course_modules_course_id_courses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_course_modules'))
    )
    with op.batch_alter_table('course_modules', schema=None) as batch_op:
        batch_op.create_index('ix_course_modules_course_position', ['course_id', 'position'], unique=False)

    op.create_table('course_prerequisites',
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('required_course_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_course_prerequisites_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['required_course_id'], ['courses.id'], name=op.f('fk_course_prerequisites_required_course_id_courses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('course_id', 'required_course_id', name=op.f('pk_course_prerequisites'))
    )
    with op.batch_alter_table('course_prerequisites', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_course_prerequisites_required_course_id'), ['required_course_id'], unique=False)

    op.create_table('course_tags',
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('tag', sa.String(length=50), nullable=False),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_course_tags_course_id_courses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('course_id', 'tag', name=op.f('pk_course_tags'))
    )
    with op.batch_alter_table('course_tags', schema=None) as batch_op:
        batch_op.create_index('ix_course_tags_tag_course', ['tag', 'course_id'], unique=False)

    op.create_table('lessons',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('module_id', sa.String(length=32), nullable=False),
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('video_url', sa.String(length=2000), nullable=True),
    sa.Column('file_id', sa.String(length=32), nullable=True),
    sa.Column('duration_seconds', sa.Integer(), nullable=True),
    sa.Column('is_preview', sa.Boolean(), nullable=False),
    sa.Column('is_required', sa.Boolean(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_lessons_course_id_courses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_lessons_file_id_files'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['module_id'], ['course_modules.id'], name=op.f('fk_lessons_module_id_course_modules'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lessons'))
    )
    with op.batch_alter_table('lessons', schema=None) as batch_op:
        batch_op.create_index('ix_lessons_course', ['course_id'], unique=False)
        batch_op.create_index('ix_lessons_module_position', ['module_id', 'position'], unique=False)

    # Foreign keys that close a cycle (courses -> files -> lessons -> files), added last.
    with op.batch_alter_table('courses', schema=None) as batch_op:
        batch_op.create_foreign_key(op.f('fk_courses_cover_file_id_files'), 'files',
                                    ['cover_file_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_foreign_key(op.f('fk_files_lesson_id_lessons'), 'lessons',
                                    ['lesson_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_files_lesson_id_lessons'), type_='foreignkey')
    with op.batch_alter_table('courses', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_courses_cover_file_id_files'), type_='foreignkey')
    with op.batch_alter_table('lessons', schema=None) as batch_op:
        batch_op.drop_index('ix_lessons_module_position')
        batch_op.drop_index('ix_lessons_course')

    op.drop_table('lessons')
    with op.batch_alter_table('course_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_course_tags_tag_course')

    op.drop_table('course_tags')
    with op.batch_alter_table('course_prerequisites', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_course_prerequisites_required_course_id'))

    op.drop_table('course_prerequisites')
    with op.batch_alter_table('course_modules', schema=None) as batch_op:
        batch_op.drop_index('ix_course_modules_course_position')

    op.drop_table('course_modules')
    with op.batch_alter_table('course_instructors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_course_instructors_user_id'))

    op.drop_table('course_instructors')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_institution_id'))
        batch_op.drop_index(batch_op.f('ix_files_course_id'))

    op.drop_table('files')
    with op.batch_alter_table('courses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_courses_level'))
        batch_op.drop_index(batch_op.f('ix_courses_language'))
        batch_op.drop_index('ix_courses_institution_status')
        batch_op.drop_index('ix_courses_catalog_title')
        batch_op.drop_index('ix_courses_catalog_popularity')
        batch_op.drop_index('ix_courses_catalog_newest')

    op.drop_table('courses')
