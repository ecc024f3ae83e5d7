"""catalog: search terms and an index per filter and ordering

Revision ID: c0005
Revises: c0004
Create Date: 2026-11-27 09:00:00.000000

- ``course_search_terms``: the words of each course's title and summary, folded, one row
  each; the catalog matches query words as prefixes of them. Portable on purpose (a plain
  table and B-tree index, no FTS5 table or pg_trgm extension); the index uses
  text_pattern_ops on PostgreSQL so that a prefix LIKE is indexed under any collation.
  Existing courses are indexed here.
- Composite indexes (filter, status, sort key, id) for the institution, language and level
  filters with each catalog ordering; they replace the single-column language and level
  indexes.
"""
from alembic import op
import sqlalchemy as sa

# (name, columns) of the catalog indexes added here.
CATALOG_INDEXES = [
    ('ix_courses_institution_title', ['institution_id', 'status', 'title', 'id']),
    ('ix_courses_institution_popularity', ['institution_id', 'status', 'enrollment_count', 'id']),
    ('ix_courses_language_newest', ['language', 'status', 'published_at', 'id']),
    ('ix_courses_language_title', ['language', 'status', 'title', 'id']),
    ('ix_courses_language_popularity', ['language', 'status', 'enrollment_count', 'id']),
    ('ix_courses_level_newest', ['level', 'status', 'published_at', 'id']),
    ('ix_courses_level_title', ['level', 'status', 'title', 'id']),
    ('ix_courses_level_popularity', ['level', 'status', 'enrollment_count', 'id']),
]


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

    with op.batch_alter_table('courses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_courses_level'))
        batch_op.drop_index(batch_op.f('ix_courses_language'))
        for name, columns in CATALOG_INDEXES:
            batch_op.create_index(name, columns, unique=False)

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
    with op.batch_alter_table('courses', schema=None) as batch_op:
        for name, _columns in reversed(CATALOG_INDEXES):
            batch_op.drop_index(name)
        batch_op.create_index(batch_op.f('ix_courses_language'), ['language'], unique=False)
        batch_op.create_index(batch_op.f('ix_courses_level'), ['level'], unique=False)

    with op.batch_alter_table('course_search_terms', schema=None) as batch_op:
        batch_op.drop_index('ix_course_search_terms_term')

    op.drop_table('course_search_terms')
