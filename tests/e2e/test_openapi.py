"""Every service describes its API (issue 17): GET /api/v1/openapi.json, an
OpenAPI 3.1 document built from the routes and what each declares beside it
(include/ripple/openapi.h), and GET /api/docs, a page rendering it.

- Both ways: the routes a module registered -- listed by the runtime itself
  at LOG_LEVEL=debug ("route GET /api/v1/users/{id}"), a walk of the router
  separate from the document's -- are exactly the document's operations, none
  undocumented; and for every documented path the router's own 405 Allow
  header names exactly the documented methods.
- Answers: each route is driven through realistic requests, error cases
  included, and every answer validates against its documented schema
  (python3-jsonschema, draft 2020-12); and the last test of the session
  validates every answer any e2e test got from a documented route
  (conftest.record_answer; RIPPLE_OPENAPI_ANSWERS=<file> writes what it
  checked there).
- The documents pass a real OpenAPI linter (@redocly/cli lint, pinned in
  tests/openapi, installed by tests/openapi/setup: `make e2e` runs it).
- The committed docs/openapi/<module>.json equal what the modules serve, in
  a monolith and each alone (`make openapi` rewrites them).
- /api/docs answers 200 and, in Debian's headless chromium (playwright-core,
  tests/browser), renders the operations from the service's own files, with
  no request leaving 127.0.0.1.
"""

import json
import os
import re
import shutil
import subprocess

import pytest
from jsonschema import Draft202012Validator, FormatChecker, RefResolver

from conftest import (ANSWERS, HOST, MODULE_NAMES, REPO, http_request, service_token,
                      stable_port, unique_email, user_token, wait_until)

DOCS = REPO / "docs" / "openapi"
MODULES = MODULE_NAMES + ("console",)
LINT_DIR = REPO / "tests" / "openapi"
REDOCLY = LINT_DIR / "node_modules" / ".bin" / "redocly"
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FAST = {"CONSUMER_BLOCK_MS": 200, "RECLAIM_IDLE_MS": 2000, "PBKDF2_ITERATIONS": 1000,
        "LOG_LEVEL": "debug"}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def stack(host_factory):
    """One host of the five modules (the monolith), each on its own port,
    logging at debug (the route listing); the four of the saga ready."""
    ports = {n: stable_port() for n in MODULES}
    views = host_factory(list(MODULES), shared=FAST, ports=ports,
                         per={"orders": {"USERS_URL": f"http://{HOST}:{ports['users']}"}})
    for n in MODULE_NAMES:
        views[n].wait_ready()
    return views


def served(svc):
    r = svc.get("/api/v1/openapi.json")
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("application/json"), r.headers
    return r.json()


def operations(doc):
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def listed_routes(svc):
    """The routes the runtime logged for this module at start."""
    routes = set()
    for line in svc.log_lines():
        msg = json.loads(line).get("msg", "")
        m = re.fullmatch(r"route (\S+) (\S+)( \(public\))?", msg)
        if m:
            routes.add((m.group(1), m.group(2), bool(m.group(3))))
    return routes


def template_regex(path):
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")


def find_operation(doc, method, path):
    path = path.split("?", 1)[0]
    for tpl, item in doc["paths"].items():
        op = item.get(method.lower())
        if op is not None and template_regex(tpl).match(path):
            return tpl, op
    return None, None


def problems_of(doc, method, path, resp):
    """What is wrong with resp as an answer of the documented operation
    (an empty list when it validates); None when the route is not
    documented (another path or method)."""
    tpl, op = find_operation(doc, method, path)
    if op is None:
        return None
    where = f"{method} {path} -> {resp.status}"
    responses = op["responses"]
    r = responses.get(str(resp.status)) or responses.get(f"{resp.status // 100}XX")
    if r is None and resp.status >= 400:
        r = responses.get("default")
    if r is None:
        return [f"{where}: status not documented for {method} {tpl}"]
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    content = r.get("content", {})
    media = content.get(ctype) or content.get(ctype.split("/")[0] + "/*") or content.get("*/*")
    if media is None:
        return [f"{where}: content-type {ctype!r} not documented ({sorted(content)})"]
    if ctype != "application/json":
        return []
    try:
        body = json.loads(resp.body)
    except ValueError as exc:
        return [f"{where}: not JSON ({exc})"]
    validator = Draft202012Validator(media["schema"], resolver=RefResolver.from_schema(doc),
                                     format_checker=FormatChecker())
    return [f"{where}: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in validator.iter_errors(body)]


class Checker:
    """Sends requests to the stack's modules and validates every answer
    against the module's served document."""

    def __init__(self, views):
        self.views = views
        self.docs = {n: served(v) for n, v in views.items()}
        self.problems = []
        self.seen = set()  # (module, method, template, status)

    def __call__(self, module, method, path, expect, **kw):
        svc = self.views[module]
        resp = http_request(svc.host, svc.port, method, path, **kw)
        assert resp.status == expect, f"{module} {method} {path}: {resp.status} {resp.body[:300]!r}"
        found = problems_of(self.docs[module], method, path, resp)
        assert found is not None, f"{module} {method} {path} is not documented"
        self.problems += found
        tpl, _ = find_operation(self.docs[module], method, path)
        self.seen.add((module, method, tpl, resp.status))
        return resp


# ---------------------------------------------------------------------------
# Both ways: routed <=> documented
# ---------------------------------------------------------------------------

def test_every_route_is_documented_and_every_documented_route_is_routed(stack):
    for name, svc in stack.items():
        doc = served(svc)
        assert doc["openapi"].startswith("3.1."), doc["openapi"]
        assert doc["info"]["title"] == name and doc["info"]["version"], doc["info"]
        scheme = doc["components"]["securitySchemes"]["bearer"]
        assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer",
                                                                               "JWT")
        assert doc["security"] == [{"bearer": []}]
        assert all(not s["url"].startswith("http") for s in doc.get("servers", [])), doc["servers"]

        routes = listed_routes(svc)
        assert len(routes) >= 8, f"{name}: the runtime listed {routes}"
        ops = operations(doc)
        assert {(m, p) for m, p, _ in routes} == ops, f"{name}: routed != documented"
        for method, path, public in routes:
            op = doc["paths"][path][method.lower()]
            assert "x-ripple-undocumented" not in op, f"{name}: {method} {path} is undocumented"
            assert op["summary"] and op["responses"], (name, method, path)
            assert (op.get("security") == []) == public, f"{name}: {method} {path} public={public}"
            if not public:
                assert "401" in op["responses"], (name, method, path)
            for p in re.findall(r"\{([^}]+)\}", path):
                assert any(x["in"] == "path" and x["name"] == p and x["required"]
                           for x in op["parameters"]), (name, method, path, p)

        # The router's own answer: a method no route takes is 405 with Allow
        # naming exactly the methods routed on that path.
        for path, item in doc["paths"].items():
            concrete = re.sub(r"\{[^}]+\}", "x1", path)
            r = svc.request("PROPFIND", concrete)
            assert r.status == 405, f"{name}: PROPFIND {concrete}: {r.status}"
            allowed = {m.strip() for m in r.headers["allow"].split(",")}
            assert allowed == {m.upper() for m in item if m in METHODS}, (name, path, allowed)


# ---------------------------------------------------------------------------
# The answers
# ---------------------------------------------------------------------------

def drive_users(check):
    email = unique_email("oa")
    user = check("users", "POST", "/api/v1/users",
                 201, body={"name": "Ann", "email": email, "password": "correct horse battery"}).json()
    check("users", "POST", "/api/v1/users", 409,
          body={"name": "Ann", "email": email, "password": "correct horse battery"})
    check("users", "POST", "/api/v1/users", 422, body={"name": "", "email": "no", "password": "x"})
    check("users", "POST", "/api/v1/users", 400, raw_body="[1,2]")
    token = check("users", "POST", "/api/v1/auth/token", 200,
                  body={"email": email, "password": "correct horse battery"}).json()["access_token"]
    check("users", "POST", "/api/v1/auth/token", 401, body={"email": email, "password": "wrong!!!"})
    check("users", "POST", "/api/v1/auth/token", 422, body={"email": 5})
    check("users", "POST", "/api/v1/auth/token", 400, raw_body="{")
    check("users", "GET", f"/api/v1/users/{user['id']}", 200, token=token)
    check("users", "GET", f"/api/v1/users/{user['id']}", 401)
    check("users", "GET", f"/api/v1/users/{user['id']}", 403,
          token=user_token("00000000-0000-4000-8000-000000000001"))
    check("users", "GET", "/api/v1/users/not-a-uuid", 404, token=service_token())
    return user, token


def drive_orders(check, user, token):
    items = {"items": [{"sku": "SKU-1", "qty": 1}]}
    key = {"Idempotency-Key": "oa-" + user["id"]}
    order = check("orders", "POST", "/api/v1/orders", 202, body=items, token=token,
                  headers=key).json()
    check("orders", "POST", "/api/v1/orders", 202, body=items, token=token, headers=key)
    check("orders", "POST", "/api/v1/orders", 422, body={"items": [{"sku": "SKU-1", "qty": 0}]},
          token=token)
    check("orders", "POST", "/api/v1/orders", 422, body=items, token=service_token())
    check("orders", "POST", "/api/v1/orders", 400, raw_body="nope", token=token)
    check("orders", "POST", "/api/v1/orders", 401, body=items)
    check("orders", "POST", "/api/v1/orders", 403, body=items, token=user_token("bob"))
    check("orders", "GET", "/api/v1/orders?limit=5", 200, token=token)
    check("orders", "GET", f"/api/v1/orders?user_id={user['id']}", 200, token=service_token())
    check("orders", "GET", "/api/v1/orders?limit=0", 422, token=token)
    check("orders", "GET", "/api/v1/orders?user_id=00000000-0000-4000-8000-000000000001", 403,
          token=token)
    check("orders", "GET", f"/api/v1/orders/{order['id']}", 200, token=token)
    check("orders", "GET", "/api/v1/orders/00000000-0000-4000-8000-000000000001", 404, token=token)
    return order


def drive_inventory(check):
    page = check("inventory", "GET", "/api/v1/products?limit=2", 200).json()
    check("inventory", "GET", f"/api/v1/products?after={page['next']}", 200)
    check("inventory", "GET", "/api/v1/products?limit=x", 422)
    check("inventory", "GET", "/api/v1/products/SKU-1", 200)
    check("inventory", "GET", "/api/v1/products/NOPE", 404)


def drive_payments(check, stack, user, token, order):
    payments = stack["payments"]
    wait_until(lambda: payments.get(f"/api/v1/payments/{order['id']}",
                                    token=token).status == 200, 20, what="the payment")
    check("payments", "GET", f"/api/v1/accounts/{user['id']}", 200, token=token)
    check("payments", "GET", f"/api/v1/accounts/{user['id']}", 403,
          token=user_token("00000000-0000-4000-8000-000000000001"))
    check("payments", "GET", "/api/v1/accounts/00000000-0000-4000-8000-000000000001", 404,
          token=service_token())
    check("payments", "GET", f"/api/v1/payments/{order['id']}", 200, token=token)
    check("payments", "GET", f"/api/v1/payments/{order['id']}", 404,
          token=user_token("00000000-0000-4000-8000-000000000001"))
    check("payments", "GET", f"/api/v1/payments/{order['id']}", 401)


def drive_console(check, order):
    check("console", "GET", "/", 200)
    check("console", "GET", f"/orders/{order['id']}", 200)
    check("console", "GET", "/assets/app.js", 200)
    check("console", "GET", "/assets/nope.js", 404)
    check("console", "GET", "/api/v1/console/info", 200)
    check("console", "GET", "/api/v1/console/services", 200)
    check("console", "GET", "/api/v1/console/streams", 200)
    check("console", "GET", "/api/v1/console/orders?limit=3", 200)
    check("console", "GET", "/api/v1/console/orders?limit=0", 422)
    check("console", "GET", f"/api/v1/console/orders/{order['id']}", 200)
    check("console", "GET", "/api/v1/console/orders/not-a-uuid", 404)
    replay = "/api/v1/console/streams/orders.commands/dlq/1-1/replay"
    check("console", "POST", replay, 401)
    check("console", "POST", replay, 403, token=service_token())


def test_every_route_answers_as_documented(stack):
    check = Checker(stack)
    for name in MODULES:
        check(name, "GET", "/healthz", 200)
        check(name, "GET", "/readyz", 200)
        check(name, "GET", "/metrics", 200)
        check(name, "GET", "/api/v1/openapi.json", 200)
        check(name, "GET", "/api/docs", 200)
        check(name, "GET", "/api/docs/swagger-ui.css", 200)
        check(name, "GET", "/api/docs/nope.js", 404)
    user, token = drive_users(check)
    order = drive_orders(check, user, token)
    drive_inventory(check)
    drive_payments(check, stack, user, token, order)
    drive_console(check, order)
    assert check.problems == [], "answers that do not match their schemas:\n" + \
        "\n".join(check.problems)
    # every documented operation was driven at least once
    driven = {(m, method, tpl) for m, method, tpl, _ in check.seen}
    for name in MODULES:
        for method, path in operations(check.docs[name]):
            assert (name, method, path) in driven, f"{name} {method} {path} was never driven"


@pytest.mark.last
def test_every_answer_the_session_saw_matches_its_schema():
    """Runs last: the answers every e2e test of this session got from a
    documented route (conftest.record_answer) against the committed
    documents (which test_committed_documents_are_what_the_services_serve
    holds equal to the served ones)."""
    docs = {n: json.loads((DOCS / f"{n}.json").read_text()) for n in MODULES}
    problems, checked, report = [], 0, []
    for (name, method, path, status), answers in sorted(ANSWERS.items(), key=str):
        if name not in docs:
            continue  # a module of an example, not documented here
        for resp in answers:
            found = problems_of(docs[name], method, path, resp)
            if found is not None:
                checked += 1
                problems += [f"{name}: {p}" for p in found]
                report.append({"module": name, "method": method, "path": path, "status": status,
                               "route": find_operation(docs[name], method, path)[0],
                               "problems": found})
    if os.environ.get("RIPPLE_OPENAPI_ANSWERS"):  # a file of what was checked, for people
        with open(os.environ["RIPPLE_OPENAPI_ANSWERS"], "w") as f:
            json.dump(report, f, indent=1)
    assert checked > 0, "no answer of a documented route was recorded"
    assert problems == [], f"{len(problems)} of {checked} answers do not match:\n" + \
        "\n".join(sorted(set(problems))[:60])


# ---------------------------------------------------------------------------
# The documents: committed copies, the linter
# ---------------------------------------------------------------------------

def test_committed_documents_are_what_the_services_serve(stack, service_factory):
    """docs/openapi/<module>.json is what the module serves, hosted in a
    monolith or alone (`make openapi` rewrites them)."""
    for name in MODULES:
        path = DOCS / f"{name}.json"
        assert path.exists(), f"{path} is missing: run `make openapi`"
        committed = json.loads(path.read_text())
        assert served(stack[name]) == committed, \
            f"{path} differs from what {name} serves: run `make openapi` and commit it"
    alone = service_factory("payments")
    assert served(alone) == json.loads((DOCS / "payments.json").read_text())


def test_the_documents_pass_the_openapi_linter(stack, tmp_path):
    if not REDOCLY.exists():
        pytest.fail(f"{REDOCLY} is missing: run tests/openapi/setup (make e2e does)")
    files = []
    for name, svc in stack.items():
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(served(svc)))
        files.append(str(f))
    env = dict(os.environ, REDOCLY_TELEMETRY="off", REDOCLY_SUPPRESS_UPDATE_NOTICE="true",
               NO_COLOR="1")
    run = subprocess.run([str(REDOCLY), "lint", "--config", str(LINT_DIR / "redocly.yaml"),
                          "--format", "stylish", *files], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"redocly lint failed:\n{out[-6000:]}"
    assert re.search(r"\b\d+ (warning|error)", out) is None and "valid" in out, \
        f"redocly lint warned:\n{out[-6000:]}"


# ---------------------------------------------------------------------------
# The docs page
# ---------------------------------------------------------------------------

def test_the_docs_page_is_served_by_the_service(stack):
    for name in ("users", "console"):
        svc = stack[name]
        page = svc.get("/api/docs")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp, csp
        srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert "/api/docs/swagger-ui-bundle.js" in srcs, srcs
        for src in srcs:
            if src.startswith("data:"):
                continue
            assert src.startswith("/api/docs/"), f"the page loads {src} from elsewhere"
            r = svc.get(src)
            assert r.status == 200 and len(r.body) > 100, (src, r.status)
        bundle = svc.get("/api/docs/swagger-ui-bundle.js")
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert len(bundle.body) > 500000, len(bundle.body)


def browser_ready():
    missing = [what for what, ok in (
        (CHROMIUM, os.access(CHROMIUM, os.X_OK)),
        ("node", shutil.which("node") is not None),
        ("tests/browser/node_modules", (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()),
    ) if not ok]
    if not missing:
        return
    why = f"missing {', '.join(missing)}: run `make browser-deps`"
    if os.environ.get("RIPPLE_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


def test_the_docs_page_renders_the_operations_in_a_browser(stack, tmp_path):
    browser_ready()
    for name in ("users", "orders"):
        svc = stack[name]
        run = subprocess.run(
            ["node", str(BROWSER_DIR / "apidocs.mjs"), "--url", svc.base, "--out",
             str(tmp_path / f"{name}.png"), "--deadline-ms", "60000"],
            cwd=str(BROWSER_DIR), capture_output=True, text=True, timeout=90,
            env=dict(os.environ, CHROMIUM=CHROMIUM))
        assert run.returncode == 0, f"apidocs.mjs failed:\n{run.stderr[-4000:]}"
        rep = json.loads(run.stdout.strip().splitlines()[-1])
        assert rep["offhost"] == [], f"requests left 127.0.0.1: {rep['offhost']}"
        assert rep["errors"] == [], f"the page logged errors: {rep['errors']}"
        want = {f"{m} {p}" for m, p in operations(served(svc))}
        assert set(rep["operations"]) == want, (name, sorted(rep["operations"]), sorted(want))
        assert rep["title"] == name, rep["title"]
        assert (tmp_path / f"{name}.png").stat().st_size > 10000
