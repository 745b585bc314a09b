"""examples/notifications, built out of tree against the INSTALLED runtime
(DESIGN.md §13; install.py says where the binaries come from): an order
placed through the four services produces a notification readable over
HTTP and a notification.sent on notifications.events; an order.confirmed
delivered again (the same event id, or the same order under a new id) takes
effect once; bad input gets its 4xx or its dead letter. Both ways of running
it: `notifications` beside the four services (five processes), and
`ripple-plus`, the example composed with the four installed modules in ONE
process."""

import json
import re

import pytest

from conftest import assert_error, is_uuid, service_token, wait_until
from install import EXAMPLE_SRC, REPO, example_bin, prefix, run  # noqa: F401 - fixtures
from test_saga import FAST, FINAL, Stack

pytestmark = pytest.mark.fresh_redis  # the streams hold only what these tests wrote
NOTES = "/api/v1/notifications"


@pytest.fixture(params=["split", "composed"])
def shop(request, service_factory, host_factory, redis_server, example_bin):  # noqa: F811
    """(stack, notifications): the four services as processes of their own
    beside `notifications`, or all five modules in one `ripple-plus`."""
    views = {}

    def host_start(names, **kw):
        views.update(host_factory([*names, "notifications"], exe=example_bin / "ripple-plus",
                                  **kw))
        return views

    if request.param == "composed":
        st = Stack(service_factory, redis_server, FAST, {}, "monolith", host_start).boot()
        note = views["notifications"]
    else:
        st = Stack(service_factory, redis_server, FAST, {}, "split").boot()
        note = service_factory("notifications", exe=example_bin / "notifications", **FAST)
    note.wait_ready()
    yield st, note
    st.close()


def notes(svc, token, query=""):
    r = svc.get(f"{NOTES}{query}", token=token)
    assert r.status == 200, r
    return r.json()


def entries(r, stream, **match):
    """The entries of stream (fields, data parsed) whose data has match."""
    out = []
    for entry_id, fields in r.xrange(stream):
        data = json.loads(fields["data"])
        if all(data.get(k) == v for k, v in match.items()):
            out.append({**fields, "entry_id": entry_id, "data": data})
    return out


def wait_consumed(r, stream, entry_id, group="notifications"):
    """Until group has read entry_id of stream and acked it (XACK follows
    the commit)."""
    def done():
        g = next(g for g in r.xinfo_groups(stream) if g["name"] == group)
        last = tuple(map(int, g["last-delivered-id"].split("-")))
        return last >= tuple(map(int, entry_id.split("-"))) and g["pending"] == 0
    wait_until(done, 15, what=f"{group} consumed {stream} {entry_id}")


def ordered(st, token, items):
    order = st.wait_final(st.place(token, items)["id"])
    assert order["status"] in FINAL
    return order


def test_orders_notify_their_user_once(shop, r):
    st, note = shop
    user, token = st.new_user("note")
    other, other_token = st.new_user("other")
    paid = ordered(st, token, [{"sku": "SKU-1", "qty": 2}])
    assert paid["status"] == "CONFIRMED", paid
    broke = ordered(st, token, [{"sku": "SKU-3", "qty": 3}])  # 15000 cents > the 10000 credit
    assert (broke["status"], broke["reason"]) == ("CANCELLED", "insufficient_funds"), broke

    page = wait_until(lambda: (lambda p: p if len(p["items"]) == 2 else None)(notes(note, token)),
                      15, what="two notifications")
    newest, oldest = page["items"]
    assert page["next"] is None
    assert (newest["order_id"], newest["kind"]) == (broke["id"], "cancelled")
    assert (oldest["order_id"], oldest["kind"]) == (paid["id"], "confirmed")
    assert newest["message"] == f"Your order {broke['id']} was cancelled: insufficient_funds."
    assert oldest["message"] == f"Your order {paid['id']} is confirmed: 500 cents paid."
    assert all(is_uuid(n["id"]) and n["user_id"] == user["id"] for n in page["items"])

    # notification.sent, through the outbox, with the saga's trace.
    sent = wait_until(lambda: entries(r, "notifications.events", order_id=paid["id"]), 15,
                      what="notification.sent")
    assert len(sent) == 1 and sent[0]["type"] == "notification.sent", sent
    assert sent[0]["data"] == {"notification_id": oldest["id"], "user_id": user["id"],
                               "order_id": paid["id"], "kind": "confirmed"}
    assert sent[0]["source"] == "notifications" and sent[0]["trace"] == paid["id"]

    # The same order.confirmed again (its event id), then under a new id.
    confirmed = entries(r, "orders.events", order_id=paid["id"])
    confirmed = [e for e in confirmed if e["type"] == "order.confirmed"]
    assert len(confirmed) == 1, confirmed
    fields = {k: v for k, v in confirmed[0].items() if k != "entry_id"}
    fields["data"] = json.dumps(fields["data"])
    wait_consumed(r, "orders.events", r.xadd("orders.events", fields))
    del fields["id"]
    wait_consumed(r, "orders.events", r.xadd("orders.events", fields))
    assert notes(note, token)["items"] == page["items"]
    assert len(entries(r, "notifications.events", order_id=paid["id"])) == 1

    # Paging, newest first; others see nothing of it; a service token all.
    first = notes(note, token, "?limit=1")
    assert first["items"] == [newest] and first["next"]
    assert notes(note, token, f"?limit=1&after={first['next']}") == {"items": [oldest],
                                                                      "next": None}
    assert notes(note, other_token)["items"] == []
    assert_error(note.get(f"{NOTES}?user_id={user['id']}", token=other_token), 403, "forbidden")
    assert notes(note, token, f"?user_id={user['id'].upper()}")["items"] == page["items"]
    assert notes(note, service_token(), f"?user_id={user['id']}")["items"] == page["items"]
    assert len(notes(note, service_token())["items"]) == 2
    assert notes(note, service_token(), f"?user_id={other['id']}")["items"] == []


def test_bad_input_gets_its_error_and_the_service_keeps_running(service_factory, example_bin,
                                                                   r):  # noqa: F811
    note = service_factory("notifications", exe=example_bin / "notifications", **FAST)
    note.wait_ready()
    assert_error(note.get(NOTES), 401, "unauthorized")
    err = assert_error(note.get(f"{NOTES}?user_id=nope&limit=0", token=service_token()), 422,
                       "invalid")
    assert set(err["fields"]) == {"user_id", "limit"}, err
    assert_error(note.get(f"{NOTES}?after=x", token=service_token()), 422, "invalid")
    # A payload that breaks orders' declaration: dead-lettered with its reason.
    bad = r.xadd("orders.events", {"type": "order.confirmed",
                                   "data": json.dumps({"order_id": "nope", "user_id": "x"})})
    dead = wait_until(lambda: r.xrange("orders.events.dlq"), 15, what="a dead letter")
    assert dead[0][1]["group"] == "notifications" and "data.order_id" in dead[0][1]["error"]
    wait_consumed(r, "orders.events", bad)
    assert note.alive() and notes(note, service_token())["items"] == []


def test_the_ripple_plus_catalog_checks_the_example_against_orders(example_bin):  # noqa: F811
    """The composed host's --catalog: the example's declarations beside the
    installed modules', its consumer specs equal to orders' (it fails
    otherwise)."""
    out = run([str(example_bin / "ripple-plus"), "--catalog"])
    assert re.search(r"^\| notifications\.events \| `notification\.sent` \| notifications \|",
                     out, re.M), out
    for t in ("confirmed", "cancelled", "rejected"):
        assert re.search(rf"^\| orders\.events \| `order\.{t}` \| orders \| notifications \|",
                         out, re.M), out


def test_the_guide_quotes_the_example_as_it_is():
    """docs/writing-a-service.md quotes every line of the example's files, in
    order (blocks marked <!-- quote: FILE -->, blank lines between them
    skipped), and states the true number of lines of C."""
    guide = (REPO / "docs" / "writing-a-service.md").read_text()
    quotes = {}
    for path, block in re.findall(r"<!-- quote: (\S+) -->\n```\w*\n(.*?)\n```\n", guide, re.S):
        quotes.setdefault(path, []).append(block.split("\n"))
    files = sorted(str(p.relative_to(REPO)) for p in EXAMPLE_SRC.iterdir()
                   if p.name in ("Makefile", "schema.sql") or p.suffix in (".c", ".h"))
    assert sorted(quotes) == files
    for path, blocks in quotes.items():
        lines, at = (REPO / path).read_text().split("\n"), 0
        for block in blocks:
            while at < len(lines) and lines[at] == "" and block[0] != "":
                at += 1
            assert lines[at:at + len(block)] == block, f"{path}: the quote at line {at + 1} differs"
            at += len(block)
        assert not "".join(lines[at:]), f"{path}: lines from {at + 1} are not quoted"
    c_lines = sum(len(p.read_text().splitlines()) for p in EXAMPLE_SRC.glob("*.[ch]"))
    assert c_lines <= 150 and f"It is {c_lines} lines of C" in guide, c_lines
