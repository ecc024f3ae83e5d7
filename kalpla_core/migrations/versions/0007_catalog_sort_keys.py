"""catalog: sort keys beside tags, instructors and search words

Revision ID: c0007
Revises: c0006
Create Date: 2026-11-26 13:30:00

``course_tags``, ``course_instructors`` and ``course_search_terms`` get copies of their
course's catalog sort keys (status; ``newest_at``, the publication time of a published course
and the creation time of others; title; enrollment count), filled here from ``courses``, and
an index (value, status, sort key, course_id) per ordering. A page filtered by tag, instructor
or word then reads its rows in order from one index. Those indexes start with the value, so
they replace the plain (tag, course_id), (user_id) and (term, course_id) ones.
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db

# table -> (filtered column, the index this revision replaces, its columns).
TABLES = {
    'course_tags': ('tag', 'ix_course_tags_tag_course', ['tag', 'course_id']),
    'course_instructors': ('user_id', 'ix_course_instructors_user_id', ['user_id']),
    'course_search_terms': ('term', 'ix_course_search_terms_term', ['term', 'course_id']),
}
SORTS = (('newest', 'newest_at'), ('title', 'title'), ('popularity', 'enrollment_count'))
# The copied columns, each as read from the course.
COPIES = {
    'status': 'status',
    'newest_at': "CASE WHEN status = 'published' THEN COALESCE(published_at, created_at) "
                 "ELSE created_at END",
    'title': 'title',
    'enrollment_count': 'enrollment_count',
}


revision = 'c0007'
down_revision = 'c0006'
branch_labels = None
depends_on = None


def _ops(table: str, column: str) -> dict[str, dict[str, str]]:
    if table != 'course_search_terms':
        return {}
    return {'postgresql_ops': {column: 'text_pattern_ops'}}


def _columns(nullable: bool) -> list[sa.Column]:
    return [
        sa.Column('status', sa.String(length=16), nullable=nullable),
        sa.Column('newest_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=nullable),
        sa.Column('title', sa.String(length=200), nullable=nullable),
        sa.Column('enrollment_count', sa.Integer(), nullable=nullable),
    ]


def upgrade() -> None:
    for table, (column, old_index, _old_columns) in TABLES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for col in _columns(nullable=True):
                batch_op.add_column(col)
        sets = ', '.join(f'{name} = (SELECT {value} FROM courses '
                         f'WHERE courses.id = {table}.course_id)'
                         for name, value in COPIES.items())
        op.execute(f'UPDATE {table} SET {sets}')
        with op.batch_alter_table(table, schema=None) as batch_op:
            for col in _columns(nullable=False):
                batch_op.alter_column(col.name, existing_type=col.type, nullable=False)
            batch_op.drop_index(old_index)
            for name, key in SORTS:
                batch_op.create_index(f'ix_{table}_{name}', [column, 'status', key, 'course_id'],
                                      unique=False, **_ops(table, column))


def downgrade() -> None:
    for table, (column, old_index, old_columns) in reversed(TABLES.items()):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, _key in reversed(SORTS):
                batch_op.drop_index(f'ix_{table}_{name}')
            batch_op.create_index(old_index, old_columns, unique=False, **_ops(table, column))
            for col in reversed(_columns(nullable=True)):
                batch_op.drop_column(col.name)
