"""renewal orders: an order's kind and the subscription a renewal renews

Revision ID: p0002
Revises: p0001
Create Date: 2026-11-26 13:20:00.000000

On SQLite the kind's check constraint goes inline with the column in a plain ALTER TABLE: a
batch "move and copy" would drop ``payments_orders``, and with foreign keys on that deletes
every row of the tables that cascade from it (order events, refunds).
"""
from alembic import op
import sqlalchemy as sa


revision = 'p0002'
down_revision = 'p0001'
branch_labels = None
depends_on = None

KIND_CHECK = "kind IN ('purchase', 'renewal')"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == 'sqlite'


def upgrade() -> None:
    if _sqlite():
        op.execute("ALTER TABLE payments_orders ADD COLUMN kind VARCHAR(16) "
                   "DEFAULT 'purchase' NOT NULL "
                   f"CONSTRAINT ck_payments_orders_kind CHECK ({KIND_CHECK})")
    else:
        op.add_column('payments_orders', sa.Column(
            'kind', sa.String(length=16), server_default='purchase', nullable=False))
        op.create_check_constraint(op.f('ck_payments_orders_kind'), 'payments_orders',
                                   KIND_CHECK)
    op.add_column('payments_orders', sa.Column(
        'subscription_id', sa.String(length=32), nullable=True))
    op.create_index(op.f('ix_payments_orders_subscription_id'), 'payments_orders',
                    ['subscription_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_payments_orders_subscription_id'), table_name='payments_orders')
    if _sqlite():  # SQLite (3.35+) drops a column with its own inline check
        op.execute("ALTER TABLE payments_orders DROP COLUMN subscription_id")
        op.execute("ALTER TABLE payments_orders DROP COLUMN kind")
    else:
        op.drop_column('payments_orders', 'subscription_id')
        op.drop_constraint(op.f('ck_payments_orders_kind'), 'payments_orders', type_='check')
        op.drop_column('payments_orders', 'kind')
