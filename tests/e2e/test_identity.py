"""Who a token speaks for, the same in every service (issue 12).

A user id is a UUID, and a UUID is the same id in upper or lower case
(RFC 9562): users, payments and orders all compare a token's `sub` with the
id asked for through core/auth's auth_is_subject, on canonical (lower-case)
UUIDs. So a user reads their own record, account, payments and orders
whatever the case of the id in the path or query, or of the `sub` in their
token; another user's id is refused in any case (users and accounts 403,
payments 404, an orders list for someone else 403).

Tokens with an upper-case `sub` are signed here with the shared secret, as a
service minting tokens could; the users service itself issues lower case.
Each test gets its own redis-server, so payments consumes only the events
the test writes.
"""

import json
import uuid

import pytest

from conftest import service_token, unique_email, user_token, wait_until

pytestmark = pytest.mark.fresh_redis

CASES = [("lower", "lower"), ("lower", "upper"), ("upper", "lower"), ("upper", "upper"),
         ("mixed", "upper")]


def spell(uid, case):
    if case == "upper":
        return uid.upper()
    if case == "mixed":
        return "".join(ch.upper() if i % 2 else ch for i, ch in enumerate(uid))
    return uid.lower()


def token_for(uid, case):
    return user_token(spell(uid, case))


@pytest.fixture
def payments(service_factory):
    svc = service_factory("payments", CONSUMER_BLOCK_MS=200)
    svc.wait_ready()
    return svc


def open_account(r, payments, user_id):
    """An account for user_id, opened the way payments opens every account:
    from user.registered on users.events."""
    data = {"user_id": user_id, "name": "Id Test", "email": unique_email("id")}
    r.xadd("users.events", {"type": "user.registered", "data": json.dumps(data)})
    wait_until(lambda: payments.get(f"/api/v1/accounts/{user_id}",
                                    token=service_token()).status == 200,
               15, what=f"the account of {user_id}")


def charge(r, payments, user_id):
    """A payment by user_id for a new order; returns the order id."""
    order_id = str(uuid.uuid4())
    data = {"order_id": order_id, "user_id": user_id, "amount_cents": 100}
    r.xadd("payments.commands", {"type": "payment.charge", "data": json.dumps(data)})
    wait_until(lambda: payments.get(f"/api/v1/payments/{order_id}",
                                    token=service_token()).status == 200,
               15, what=f"the payment for order {order_id}")
    return order_id


# ---------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sub_case,path_case", CASES)
def test_users_own_record_in_any_case(users, sub_case, path_case):
    u = users.create_user()
    r = users.get(f"/api/v1/users/{spell(u['id'], path_case)}",
                      token=token_for(u["id"], sub_case))
    assert r.status == 200, f"sub {sub_case}, path {path_case}: {r}"
    assert r.json()["id"] == u["id"]  # answered in the canonical spelling


def test_users_issued_token_reads_upper_case_path(users):
    u = users.create_user()
    tok = users.login(u["email"])
    r = users.get(f"/api/v1/users/{u['id'].upper()}", token=tok)
    assert r.status == 200, r


@pytest.mark.parametrize("sub_case,path_case", CASES)
def test_users_other_record_403_in_any_case(users, sub_case, path_case):
    me, other = users.create_user(), users.create_user()
    r = users.get(f"/api/v1/users/{spell(other['id'], path_case)}",
                      token=token_for(me["id"], sub_case))
    assert r.status == 403, r


# ---------------------------------------------------------------------------
# payments
# ---------------------------------------------------------------------------

def test_payments_own_account_and_payment_in_any_case(payments, r):
    me, other = str(uuid.uuid4()), str(uuid.uuid4())
    for uid in (me, other):
        open_account(r, payments, uid)
    mine, theirs = charge(r, payments, me), charge(r, payments, other)
    for sub_case, path_case in CASES:
        tok = token_for(me, sub_case)
        resp = payments.get(f"/api/v1/accounts/{spell(me, path_case)}", token=tok)
        assert resp.status == 200, f"own account, sub {sub_case}, path {path_case}: {resp}"
        assert resp.json()["user_id"] == me
        resp = payments.get(f"/api/v1/accounts/{spell(other, path_case)}", token=tok)
        assert resp.status == 403, f"other's account, sub {sub_case}: {resp}"
        resp = payments.get(f"/api/v1/payments/{spell(mine, path_case)}", token=tok)
        assert resp.status == 200, f"own payment, sub {sub_case}, path {path_case}: {resp}"
        resp = payments.get(f"/api/v1/payments/{spell(theirs, path_case)}", token=tok)
        assert resp.status == 404, f"other's payment, sub {sub_case}: {resp}"


# ---------------------------------------------------------------------------
# orders
# ---------------------------------------------------------------------------

def test_orders_list_own_in_any_case(service_factory):
    orders = service_factory("orders", USERS_URL="http://127.0.0.1:1")
    orders.wait_ready()
    me, other = str(uuid.uuid4()), str(uuid.uuid4())
    for sub_case, query_case in CASES:
        tok = token_for(me, sub_case)
        resp = orders.get(f"/api/v1/orders?user_id={spell(me, query_case)}", token=tok)
        assert resp.status == 200, f"own orders, sub {sub_case}, query {query_case}: {resp}"
        resp = orders.get(f"/api/v1/orders?user_id={spell(other, query_case)}", token=tok)
        assert resp.status == 403, f"other's orders, sub {sub_case}: {resp}"
