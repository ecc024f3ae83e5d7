"""file listing and lesson file indexes

Revision ID: c0006
Revises: c0005
Create Date: 2026-11-26 11:20:00
"""
from alembic import op

revision = 'c0006'
down_revision = 'c0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index('ix_files_course_listing',
                              ['course_id', 'purpose', 'status', 'created_at', 'id'],
                              unique=False)
    with op.batch_alter_table('lessons', schema=None) as batch_op:
        batch_op.create_index('ix_lessons_file', ['file_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('lessons', schema=None) as batch_op:
        batch_op.drop_index('ix_lessons_file')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_course_listing')
