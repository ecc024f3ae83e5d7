"""course search terms: the catalog's free-text index

Revision ID: c0005
Revises: c0004
Create Date: 2026-11-27 09:00:00.000000

Words of each course's title and summary, folded, one row each; the catalog matches query
words as prefixes of them. Portable on purpose (a plain table and B-tree index, no FTS5 table
or pg_trgm extension); the index uses text_pattern_ops on PostgreSQL so that prefix LIKE is
indexed under any collation. Existing courses are indexed here.
"""
from alembic import op
import sqlalchemy as sa


revision = 'c0005'
down_revision = 'c0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('course_search_terms',
    sa.Column('course_id', sa.String(length=32), nullable=False),
    sa.Column('term', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['course_id'], ['courses.id'], name=op.f('fk_course_search_terms_course_id_courses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('course_id', 'term', name=op.f('pk_course_search_terms'))
    )
    with op.batch_alter_table('course_search_terms', schema=None) as batch_op:
        batch_op.create_index('ix_course_search_terms_term', ['term', 'course_id'], unique=False, postgresql_ops={'term': 'text_pattern_ops'})

    _index_existing_courses()


def _index_existing_courses() -> None:
    from kalpla_core.courses.catalog import course_terms

    conn = op.get_bind()
    terms = sa.table('course_search_terms', sa.column('course_id'), sa.column('term'))
    rows = conn.execute(sa.text('SELECT id, title, summary FROM courses'))
    batch = []
    for course_id, title, summary in rows:
        batch.extend({'course_id': course_id, 'term': t} for t in course_terms(title, summary))
    if batch:
        conn.execute(terms.insert(), batch)


def downgrade() -> None:
    with op.batch_alter_table('course_search_terms', schema=None) as batch_op:
        batch_op.drop_index('ix_course_search_terms_term')

    op.drop_table('course_search_terms')
