"""The payments branch's migrations: p0002 (an order's kind and the subscription a renewal
renews), p0003 (refunds held for payments no order has yet) and p0004 (the index reconcile
reads pending orders by) come off and go back on an existing database without losing orders
or their history."""

from __future__ import annotations

from sqlalchemy import inspect, text

from kalpla_core import migrate
from kalpla_core.testing import Factories


def _order_columns(kalpla) -> set[str]:
    return {c["name"] for c in inspect(kalpla.db.engine).get_columns("payments_orders")}


def _count(kalpla, table: str) -> int:
    with kalpla.db.engine.connect() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM {table}")))  # noqa: S608


def test_p0004_p0003_and_p0002_come_off_and_back_keeping_orders_and_their_events(
        make_app, empty_database_url):
    app = make_app(database_url=empty_database_url, plugins=["payments"])
    kalpla = app.extensions["kalpla"]
    migrate.upgrade(kalpla)
    assert migrate.current(kalpla)["payments"] == "p0004"
    f = Factories(app)
    inst = f.institution("school", plugins={"payments": {}})
    user = f.user(name="Sam", roles={inst: ["student"]})
    with kalpla.db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO payments_orders (id, institution_id, user_id, description, status, "
            "currency, subtotal, discount, tax, total, tax_rate_bp, tax_inclusive, provider, "
            "amount_paid, amount_refunded, version, created_at, updated_at, kind) VALUES "
            "('o1', :inst, :user, 'Plan', 'paid', 'INR', 100, 0, 0, 100, 0, false, 'manual', "
            "100, 0, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'renewal')"),
            {"inst": inst.id, "user": user.id})
        conn.execute(text(
            "INSERT INTO payments_order_events (order_id, to_status, amount, actor, reason, "
            "created_at) VALUES ('o1', 'paid', 100, 'system', 'paid', CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO payments_held_refunds (institution_id, provider, payment_id, "
            "total_refunded, event_id, event_type, received_at) VALUES (:inst, 'stripe', "
            "'pi_1', 100, 'evt_1', 'charge.refunded', CURRENT_TIMESTAMP)"), {"inst": inst.id})

    migrate.downgrade(kalpla, "p0003")
    assert "ix_payments_orders_status_created" not in {
        i["name"] for i in inspect(kalpla.db.engine).get_indexes("payments_orders")}
    migrate.downgrade(kalpla, "p0002")
    assert "payments_held_refunds" not in inspect(kalpla.db.engine).get_table_names()
    assert (_count(kalpla, "payments_orders"), _count(kalpla, "payments_order_events")) == (1, 1)
    migrate.downgrade(kalpla, "p0001")
    assert migrate.current(kalpla)["payments"] == "p0001"
    assert not {"kind", "subscription_id"} & _order_columns(kalpla)
    assert (_count(kalpla, "payments_orders"), _count(kalpla, "payments_order_events")) == (1, 1)

    migrate.upgrade(kalpla)
    assert migrate.current(kalpla)["payments"] == "p0004"
    assert {"kind", "subscription_id"} <= _order_columns(kalpla)
    with kalpla.db.engine.connect() as conn:
        assert conn.scalar(text("SELECT kind FROM payments_orders")) == "purchase"
    assert _count(kalpla, "payments_order_events") == 1
    assert migrate.differences(kalpla) == []
