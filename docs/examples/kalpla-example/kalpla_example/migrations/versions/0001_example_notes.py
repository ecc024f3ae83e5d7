"""example notes

Revision ID: e0001
Revises: 
Create Date: 2026-11-26 10:05:01.289486
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 'e0001'
down_revision = None
branch_labels = ('example',)
depends_on = 'c0001'


def upgrade() -> None:
    op.create_table('example_notes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('author_id', sa.String(length=32), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_example_notes_author_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_example_notes_institution_id_institutions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_example_notes'))
    )
    with op.batch_alter_table('example_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_example_notes_institution_id'), ['institution_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('example_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_example_notes_institution_id'))

    op.drop_table('example_notes')
