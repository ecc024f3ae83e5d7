"""held refunds: a gateway's refund of a payment no order has yet, kept until one does

Revision ID: p0003
Revises: p0002
Create Date: 2026-11-26 14:10:00.000000
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 'p0003'
down_revision = 'p0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('payments_held_refunds',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('payment_id', sa.String(length=200), nullable=False),
    sa.Column('total_refunded', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('received_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('total_refunded > 0', name=op.f('ck_payments_held_refunds_total_refunded')),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_payments_held_refunds_institution_id_institutions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments_held_refunds'))
    )
    op.create_index('ix_payments_held_refunds_payment', 'payments_held_refunds',
                    ['institution_id', 'provider', 'payment_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_payments_held_refunds_payment', table_name='payments_held_refunds')
    op.drop_table('payments_held_refunds')
