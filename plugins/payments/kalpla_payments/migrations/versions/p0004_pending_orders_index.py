"""pending orders index: reconcile reads pending orders in keyset batches on created_at, id

Revision ID: p0004
Revises: p0003
Create Date: 2026-11-26 14:40:00.000000
"""
from alembic import op


revision = 'p0004'
down_revision = 'p0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_payments_orders_status_created', 'payments_orders',
                    ['status', 'created_at', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_payments_orders_status_created', table_name='payments_orders')
