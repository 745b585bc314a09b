"""users service, black box: every route and status of DESIGN.md §4/§8."""

import json
import re
import threading
import time
import uuid

import pytest

from conftest import (JWT_SECRET, assert_error, is_uuid, jwt_decode, jwt_sign, jwt_verify_hs256,
                      run_to_exit, service_token, unique_email, user_token)

USER_KEYS = {"id", "name", "email", "created_at"}
PASSWORD = "correct horse battery"


def new_user(users, name="Ada Lovelace", password=PASSWORD):
    email = unique_email("ada")
    u = users.create_user(name=name, email=email, password=password)
    return u, email


# ---------------------------------------------------------------------------
# health, readiness, metrics
# ---------------------------------------------------------------------------

def test_healthz(users):
    r = users.get("/healthz")
    assert r.status == 200, r


def test_readyz(users):
    r = users.get("/readyz")
    assert r.status == 200, r


def test_health_routes_need_no_token(users):
    for path in ("/healthz", "/readyz", "/metrics"):
        r = users.get(path, headers={"Authorization": "Bearer not-a-token"})
        assert r.status == 200, (path, r)


def test_metrics_prometheus_text(users):
    users.get("/healthz")
    users.get("/api/v1/nope")
    r = users.get("/metrics")
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    text = r.text
    assert "# TYPE http_requests_total counter" in text, text[:2000]
    assert "# TYPE http_request_duration_seconds histogram" in text, text[:2000]
    assert re.search(r'^http_requests_total\{[^}]*route="[^"]*"[^}]*code="\d{3}"[^}]*\} \d+',
                     text, re.M), text[:2000]
    assert re.search(r'^http_request_duration_seconds_bucket\{[^}]*le="\+Inf"[^}]*\} \d+',
                     text, re.M), text[:2000]
    assert re.search(r"^http_request_duration_seconds_count(\{[^}]*\})? \d+", text, re.M)
    assert re.search(r"^http_request_duration_seconds_sum(\{[^}]*\})? [0-9.eE+-]+", text, re.M)


# ---------------------------------------------------------------------------
# POST /api/v1/users
# ---------------------------------------------------------------------------

def test_create_user_201(users):
    email = unique_email("grace")
    r = users.post("/api/v1/users", {"name": "Grace Hopper", "email": email,
                                     "password": PASSWORD})
    assert r.status == 201, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    u = r.json()
    assert set(u) == USER_KEYS, u
    assert is_uuid(u["id"]), u
    assert u["name"] == "Grace Hopper"
    assert u["email"].lower() == email.lower()
    assert isinstance(u["created_at"], str) and u["created_at"], u
    assert PASSWORD not in r.text


def test_create_user_ids_are_distinct(users):
    ids = {users.create_user()["id"] for _ in range(5)}
    assert len(ids) == 5


def test_create_user_unicode_name_round_trips(users):
    name = "Zoë 李 \u00e9\u00e8 \U0001F600"
    u, email = new_user(users, name=name)
    assert u["name"] == name
    tok = users.login(email)
    r = users.get(f"/api/v1/users/{u['id']}", token=tok)
    assert r.status == 200, r
    assert r.json()["name"] == name


@pytest.mark.parametrize("name", ['Quote " in the middle', 'Back\\slash \\', '"\\"\\', 'end quote"'])
def test_a_name_that_needs_json_escapes_round_trips(users, name):
    """The GET answer is written by hand (no JSON library on the hot path):
    quotes and backslashes, alone, in runs and at either end, come back as
    they went in, in valid JSON."""
    u, email = new_user(users, name=name)
    assert u["name"] == name
    r = users.get(f"/api/v1/users/{u['id']}", token=users.login(email))
    assert r.status == 200, r
    assert r.json()["name"] == name, r.body


def test_create_user_email_is_trimmed(users):
    email = unique_email("trim")
    r = users.post("/api/v1/users", {"name": "Trim", "email": f"  {email}\t",
                                     "password": PASSWORD})
    assert r.status == 201, r
    assert r.json()["email"].lower() == email.lower()
    # logging in with the bare address works
    users.login(email)


@pytest.mark.parametrize("variant", ["upper", "mixed", "padded"])
def test_duplicate_email_409_case_insensitive(users, variant):
    email = unique_email("dup")
    users.create_user(email=email)
    other = {"upper": email.upper(),
             "mixed": email[0].upper() + email[1:].replace("example", "ExAmPlE"),
             "padded": "  " + email.upper() + " "}[variant]
    r = users.post("/api/v1/users", {"name": "Again", "email": other, "password": PASSWORD})
    assert_error(r, 409, "conflict")
    assert PASSWORD not in r.text


def test_duplicate_email_exact_409(users):
    email = unique_email("dup")
    users.create_user(email=email)
    r = users.post("/api/v1/users", {"name": "Again", "email": email, "password": PASSWORD})
    assert_error(r, 409, "conflict")


def test_concurrent_registrations_same_email_one_wins(users):
    """Hashing happens off the loop, so two registrations of one address can
    be in flight at once: exactly one may win."""
    email = unique_email("race")
    results = []
    lock = threading.Lock()

    def register(i):
        r = users.post("/api/v1/users", {"name": f"R{i}",
                                         "email": email if i % 2 else email.upper(),
                                         "password": PASSWORD})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(r.status for r in results)
    assert len(statuses) == 8, statuses
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 7, statuses
    for r in results:
        if r.status == 409:
            assert_error(r, 409, "conflict")


INVALID_CASES = {
    "name_missing": ({"email": "a@example.com", "password": PASSWORD}, {"name"}),
    "name_empty": ({"name": "", "email": "a@example.com", "password": PASSWORD}, {"name"}),
    "name_number": ({"name": 123, "email": "a@example.com", "password": PASSWORD}, {"name"}),
    "name_null": ({"name": None, "email": "a@example.com", "password": PASSWORD}, {"name"}),
    "email_missing": ({"name": "A", "password": PASSWORD}, {"email"}),
    "email_no_at": ({"name": "A", "email": "not-an-email", "password": PASSWORD}, {"email"}),
    "email_no_domain": ({"name": "A", "email": "a@", "password": PASSWORD}, {"email"}),
    "email_no_local": ({"name": "A", "email": "@example.com", "password": PASSWORD}, {"email"}),
    "email_spaces_inside": ({"name": "A", "email": "a b@example.com", "password": PASSWORD},
                            {"email"}),
    "email_list": ({"name": "A", "email": ["a@example.com"], "password": PASSWORD}, {"email"}),
    "password_missing": ({"name": "A", "email": "a@example.com"}, {"password"}),
    "password_short": ({"name": "A", "email": "a@example.com", "password": "1234567"},
                       {"password"}),
    "password_empty": ({"name": "A", "email": "a@example.com", "password": ""}, {"password"}),
    "password_number": ({"name": "A", "email": "a@example.com", "password": 12345678},
                        {"password"}),
    "password_object": ({"name": "A", "email": "a@example.com", "password": {"x": 1}},
                        {"password"}),
    "all_missing": ({}, {"name", "email", "password"}),
    "all_wrong_types": ({"name": True, "email": 5, "password": [1]}, {"name", "email", "password"}),
    "two_bad": ({"name": "", "email": "nope", "password": PASSWORD}, {"name", "email"}),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_create_user_422_per_field(users, case):
    body, bad = INVALID_CASES[case]
    if "email" in body and body["email"] == "a@example.com":
        body = dict(body, email=unique_email("inv"))
    r = users.post("/api/v1/users", body)
    err = assert_error(r, 422, "invalid")
    fields = err.get("fields")
    assert isinstance(fields, dict), f"422 without fields: {r.json()!r}"
    assert set(fields) == bad, f"fields {sorted(fields)} != {sorted(bad)}: {fields!r}"
    for k, msg in fields.items():
        assert isinstance(msg, str) and msg.strip(), (k, msg)
    if isinstance(body.get("password"), str) and body["password"]:
        assert body["password"] not in r.text


def test_create_user_422_creates_nothing(users):
    email = unique_email("inv")
    r = users.post("/api/v1/users", {"name": "A", "email": email, "password": "short"})
    assert_error(r, 422, "invalid")
    # the address is still free
    users.create_user(email=email)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"{\"name\": \"a\",}", b"\xff\xfe",
                                 b"{\"name\": \"A\"", b"nul\x00l"])
def test_create_user_400_bad_json(users, raw):
    r = users.post("/api/v1/users", raw_body=raw)
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("raw", [b"[]", b"\"a string\"", b"42", b"null"])
def test_create_user_non_object_json_is_rejected(users, raw):
    r = users.post("/api/v1/users", raw_body=raw)
    assert r.status in (400, 422), r
    assert_error(r, r.status)


def test_create_user_duplicate_json_keys_rejected(users):
    """Duplicate keys are ambiguous (jansson JSON_REJECT_DUPLICATES, STYLE §2)."""
    email = unique_email("dupkey")
    raw = json.dumps({"name": "A", "email": email, "password": PASSWORD})[:-1]
    raw += ', "password": "other-password-123"}'
    r = users.post("/api/v1/users", raw_body=raw.encode())
    assert r.status in (400, 422), r
    assert_error(r, r.status)


# ---------------------------------------------------------------------------
# POST /api/v1/auth/token
# ---------------------------------------------------------------------------

def test_token_200(users):
    u, email = new_user(users)
    r = users.post("/api/v1/auth/token", {"email": email, "password": PASSWORD})
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    t = r.json()
    assert set(t) == {"access_token", "token_type", "expires_in"}, t
    assert t["token_type"] == "Bearer"
    assert isinstance(t["expires_in"], int) and t["expires_in"] > 0, t
    hdr, claims, _ = jwt_decode(t["access_token"])
    assert hdr.get("alg") == "HS256", hdr
    assert jwt_verify_hs256(t["access_token"]), "token not signed with JWT_SECRET (HS256)"
    assert claims["sub"] == u["id"], claims
    assert isinstance(claims.get("exp"), int), claims
    assert abs(claims["exp"] - (time.time() + t["expires_in"])) < 120, (claims, t)
    assert claims.get("role") != "service", claims
    assert PASSWORD not in r.text


def test_token_email_case_insensitive(users):
    u, email = new_user(users)
    r = users.post("/api/v1/auth/token", {"email": "  " + email.upper() + " ",
                                          "password": PASSWORD})
    assert r.status == 200, r
    _, claims, _ = jwt_decode(r.json()["access_token"])
    assert claims["sub"] == u["id"]


def test_token_wrong_password_401(users):
    _, email = new_user(users)
    r = users.post("/api/v1/auth/token", {"email": email, "password": PASSWORD + "x"})
    assert_error(r, 401, "unauthorized")
    assert PASSWORD not in r.text


def test_token_password_is_case_sensitive(users):
    _, email = new_user(users)
    r = users.post("/api/v1/auth/token", {"email": email, "password": PASSWORD.upper()})
    assert_error(r, 401, "unauthorized")


def test_token_unknown_email_401_same_as_wrong_password(users):
    """No account enumeration: an unknown address and a wrong password look alike."""
    _, email = new_user(users)
    wrong = users.post("/api/v1/auth/token", {"email": email, "password": "wrong-password-1"})
    unknown = users.post("/api/v1/auth/token", {"email": unique_email("ghost"),
                                                "password": "wrong-password-1"})
    e1 = assert_error(wrong, 401, "unauthorized")
    e2 = assert_error(unknown, 401, "unauthorized")
    assert e1 == e2, (e1, e2)


def test_token_bad_json_400(users):
    r = users.post("/api/v1/auth/token", raw_body=b"{oops")
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("body", [{}, {"email": "a@example.com"}, {"password": PASSWORD},
                                  {"email": 1, "password": 2}])
def test_token_missing_fields_rejected(users, body):
    r = users.post("/api/v1/auth/token", body)
    assert r.status in (400, 401, 422), r
    assert_error(r, r.status)


# ---------------------------------------------------------------------------
# GET /api/v1/users/{id}
# ---------------------------------------------------------------------------

def test_token_then_get_self(users):
    u, email = new_user(users)
    tok = users.login(email)
    r = users.get(f"/api/v1/users/{u['id']}", token=tok)
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    assert r.json() == u
    assert PASSWORD not in r.text


def test_bearer_scheme_case_insensitive(users):
    u, email = new_user(users)
    tok = users.login(email)
    r = users.get(f"/api/v1/users/{u['id']}", headers={"Authorization": f"bearer {tok}"})
    assert r.status == 200, r


def test_get_user_without_token_401(users):
    u, _ = new_user(users)
    r = users.get(f"/api/v1/users/{u['id']}")
    assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz",
                                   "Bearer not.a.jwt", "Bearer a.b", "Bearer ....",
                                   "Token abc", "Bearer " + "A" * 6000])
def test_get_user_bad_authorization_header_401(users, value):
    u, _ = new_user(users)
    r = users.get(f"/api/v1/users/{u['id']}", headers={"Authorization": value})
    assert_error(r, 401, "unauthorized")


def _forged(kind, uid):
    now = int(time.time())
    good = {"sub": uid, "iat": now, "exp": now + 300}
    if kind == "alg_none":
        return jwt_sign(good, alg="none")
    if kind == "alg_none_with_signature":
        tok = jwt_sign(good, header={"alg": "none", "typ": "JWT"})
        return tok
    if kind == "alg_none_service":
        return jwt_sign({"sub": "service:evil", "role": "service", "exp": now + 300}, alg="none")
    if kind == "alg_HS512":
        return jwt_sign(good, alg="HS512")
    if kind == "alg_HS384":
        return jwt_sign(good, alg="HS384")
    if kind == "alg_RS256_header":
        return jwt_sign(good, header={"alg": "RS256", "typ": "JWT"})
    if kind == "wrong_secret":
        return jwt_sign(good, secret="another-secret-that-is-long-enough-000")
    if kind == "wrong_secret_service":
        return service_token(secret="another-secret-that-is-long-enough-000")
    if kind == "expired":
        return jwt_sign({"sub": uid, "iat": now - 7200, "exp": now - 3600})
    if kind == "expired_service":
        return service_token(ttl=-3600)
    if kind == "missing_exp":
        return jwt_sign({"sub": uid, "iat": now})
    if kind == "exp_string":
        return jwt_sign({"sub": uid, "exp": str(now + 300)})
    if kind == "missing_sub":
        return jwt_sign({"iat": now, "exp": now + 300})
    if kind == "tampered_payload":
        tok = jwt_sign({"sub": str(uuid.uuid4()), "exp": now + 300})
        h, _, s = tok.split(".")
        _, c, _ = jwt_sign(good).split(".")
        return f"{h}.{c}.{s}"
    if kind == "tampered_role":
        tok = jwt_sign(good)
        h, _, s = tok.split(".")
        _, c, _ = jwt_sign(dict(good, role="service")).split(".")
        return f"{h}.{c}.{s}"
    if kind == "truncated_signature":
        return jwt_sign(good)[:-6]
    if kind == "signature_stripped":
        return jwt_sign(good).rsplit(".", 1)[0] + "."
    raise AssertionError(kind)


FORGERIES = ["alg_none", "alg_none_with_signature", "alg_none_service", "alg_HS512", "alg_HS384",
             "alg_RS256_header", "wrong_secret", "wrong_secret_service", "expired",
             "expired_service", "missing_exp", "exp_string", "missing_sub", "tampered_payload",
             "tampered_role", "truncated_signature", "signature_stripped"]


@pytest.mark.parametrize("kind", FORGERIES)
def test_forged_token_401(users, kind):
    u, _ = new_user(users)
    r = users.get(f"/api/v1/users/{u['id']}", token=_forged(kind, u["id"]))
    assert_error(r, 401, "unauthorized")


def test_own_signed_token_accepted_control(users):
    """Control for the forgeries: the same signer with the right secret works."""
    u, _ = new_user(users)
    r = users.get(f"/api/v1/users/{u['id']}", token=user_token(u["id"]))
    assert r.status == 200, r


def test_service_token_reads_any_user(users):
    a, _ = new_user(users, name="A")
    b, _ = new_user(users, name="B")
    tok = service_token()
    for u in (a, b):
        r = users.get(f"/api/v1/users/{u['id']}", token=tok)
        assert r.status == 200, r
        assert r.json() == u


def test_service_sub_without_role_is_not_a_service(users):
    u, _ = new_user(users)
    now = int(time.time())
    tok = jwt_sign({"sub": "service:test", "exp": now + 300})
    r = users.get(f"/api/v1/users/{u['id']}", token=tok)
    assert_error(r, 403, "forbidden")


def test_other_user_403(users):
    a, email_a = new_user(users, name="A")
    b, _ = new_user(users, name="B")
    tok = users.login(email_a)
    r = users.get(f"/api/v1/users/{b['id']}", token=tok)
    assert_error(r, 403, "forbidden")
    assert b["email"] not in r.text


def test_unknown_user_404(users):
    r = users.get(f"/api/v1/users/{uuid.uuid4()}", token=service_token())
    assert_error(r, 404, "user_not_found")  # not the router's not_found: orders tells them apart


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "%00", "..", "x" * 200,
                                    "00000000-0000-0000-0000-00000000000g"])
def test_non_uuid_id_404(users, bad_id):
    r = users.get(f"/api/v1/users/{bad_id}", token=service_token())
    assert_error(r, 404, "user_not_found")


def test_uppercase_uuid_finds_user(users):
    """Ids are UUIDs; an upper-case spelling names the same user or is 404,
    never a 500."""
    u, _ = new_user(users)
    r = users.get(f"/api/v1/users/{u['id'].upper()}", token=service_token())
    assert r.status in (200, 404), r
    if r.status == 200:
        assert r.json()["id"] == u["id"]


# ---------------------------------------------------------------------------
# routing errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/api/v1/nope", "/api/v2/users", "/api/v1/users/a/b",
                                  "/healthz/x", "/api/v1/users/"])
def test_unknown_path_404_json(users, path):
    r = users.get(path, token=service_token())
    assert_error(r, 404, "not_found")


def test_unknown_path_without_token_is_404(users):
    r = users.get("/api/v1/definitely-not-here")
    assert r.status in (401, 404), r
    assert_error(r, r.status)


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/api/v1/users", "POST"),
    ("DELETE", "/api/v1/users", "POST"),
    ("GET", "/api/v1/auth/token", "POST"),
    ("PUT", "/api/v1/auth/token", "POST"),
    ("POST", "/healthz", "GET"),
    ("DELETE", "/api/v1/users/{id}", "GET"),
    ("PATCH", "/api/v1/users/{id}", "GET"),
])
def test_wrong_method_405(users, method, path, allowed):
    path = path.replace("{id}", str(uuid.uuid4()))
    r = users.request(method, path, token=service_token())
    assert_error(r, 405, "method_not_allowed")
    allow = r.headers.get("allow")
    assert allow is not None, "405 without an Allow header (RFC 9110 §15.5.6)"
    assert allowed in [m.strip() for m in allow.split(",")], allow


# ---------------------------------------------------------------------------
# secrets never leak; logs are JSON lines
# ---------------------------------------------------------------------------

def test_passwords_never_in_responses_or_log(users):
    pw_ok = "Sup3r-Secret-Passw0rd-" + uuid.uuid4().hex[:8]
    pw_bad = "Wr0ng-Passw0rd-" + uuid.uuid4().hex[:8]
    pw_short = "Qz7!" + uuid.uuid4().hex[:3]  # 7 characters: invalid
    email = unique_email("secret")
    bodies = []
    r = users.post("/api/v1/users", {"name": "S", "email": email, "password": pw_ok})
    assert r.status == 201, r
    bodies.append(r.text)
    uid = r.json()["id"]
    r = users.post("/api/v1/users", {"name": "S", "email": email, "password": pw_ok})
    assert r.status == 409, r
    bodies.append(r.text)
    r = users.post("/api/v1/users", {"name": "S", "email": unique_email(), "password": pw_short})
    assert r.status == 422, r
    bodies.append(r.text)
    r = users.post("/api/v1/users", raw_body=('{"password": "%s", ' % pw_ok).encode())
    assert r.status == 400, r
    bodies.append(r.text)
    r = users.post("/api/v1/auth/token", {"email": email, "password": pw_bad})
    assert r.status == 401, r
    bodies.append(r.text)
    r = users.post("/api/v1/auth/token", {"email": email, "password": pw_ok})
    assert r.status == 200, r
    bodies.append(r.text)
    tok = r.json()["access_token"]
    r = users.get(f"/api/v1/users/{uid}", token=tok)
    assert r.status == 200, r
    bodies.append(r.text)
    bodies.append(users.metrics())
    for pw in (pw_ok, pw_bad, pw_short):
        for b in bodies:
            assert pw not in b, f"password {pw!r} in a response: {b[:300]!r}"
    assert users.stop() == 0
    log = users.log_text()
    for pw in (pw_ok, pw_bad, pw_short):
        assert pw not in log, f"password {pw!r} in the log"


def test_tokens_never_in_log(users):
    u, email = new_user(users)
    tok = users.login(email)
    users.get(f"/api/v1/users/{u['id']}", token=tok)
    forged = _forged("wrong_secret", u["id"])
    users.get(f"/api/v1/users/{u['id']}", token=forged)
    assert users.stop() == 0
    log = users.log_text()
    for t in (tok, forged):
        sig = t.rsplit(".", 1)[1]
        assert sig not in log, "a bearer token's signature appears in the log"


def test_log_lines_are_json(users):
    users.create_user()
    users.get("/api/v1/nope")
    assert users.stop() == 0
    lines = users.log_lines()
    assert lines, "the service logged nothing at info level (start/stop lines expected)"
    for ln in lines:
        try:
            obj = json.loads(ln)
        except ValueError:
            raise AssertionError(f"log line is not JSON: {ln!r}") from None
        assert isinstance(obj, dict), ln
        for key in ("ts", "level", "msg", "service"):
            assert key in obj, f"log line without {key!r}: {ln}"
        assert obj["service"] == "users", ln


# ---------------------------------------------------------------------------
# persistence and lifecycle
# ---------------------------------------------------------------------------

def test_user_survives_restart(service_factory):
    svc = service_factory("users")
    u, email = new_user(svc)
    assert svc.stop() == 0
    again = service_factory("users", DB_PATH=svc.db_path)
    tok = again.login(email)
    r = again.get(f"/api/v1/users/{u['id']}", token=tok)
    assert r.status == 200, r
    assert r.json() == u
    r = again.post("/api/v1/users", {"name": "X", "email": email, "password": PASSWORD})
    assert_error(r, 409, "conflict")


def test_token_from_one_process_valid_in_the_next(service_factory):
    """Tokens are stateless HS256: a restart with the same secret keeps them."""
    svc = service_factory("users")
    u, email = new_user(svc)
    tok = svc.login(email)
    assert svc.stop() == 0
    again = service_factory("users", DB_PATH=svc.db_path)
    r = again.get(f"/api/v1/users/{u['id']}", token=tok)
    assert r.status == 200, r


def test_sigterm_exits_0(users):
    users.create_user()
    t0 = time.monotonic()
    rc = users.stop()
    assert rc == 0, f"exit status {rc}: {users.log_text()[-2000:]}"
    assert time.monotonic() - t0 < 10


def test_sigint_exits_0(users):
    import signal
    rc = users.stop(sig=signal.SIGINT)
    assert rc == 0, f"exit status {rc}: {users.log_text()[-2000:]}"


# ---------------------------------------------------------------------------
# configuration errors
# ---------------------------------------------------------------------------

CONFIG_ERRORS = {
    "no_jwt_secret": ({"JWT_SECRET": None}, "JWT_SECRET"),
    "empty_jwt_secret": ({"JWT_SECRET": ""}, "JWT_SECRET"),
    "short_jwt_secret": ({"JWT_SECRET": "x" * 31}, "JWT_SECRET"),
    "port_abc": ({"PORT": "abc"}, "PORT"),
    "port_zero_range": ({"PORT": "70000"}, "PORT"),
    "port_negative": ({"PORT": "-1"}, "PORT"),
    "max_body_abc": ({"HTTP_MAX_BODY_BYTES": "lots"}, "HTTP_MAX_BODY_BYTES"),
    "max_conns_abc": ({"HTTP_MAX_CONNECTIONS": "12x"}, "HTTP_MAX_CONNECTIONS"),
    "log_level_bad": ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    "pbkdf2_abc": ({"PBKDF2_ITERATIONS": "many"}, "PBKDF2_ITERATIONS"),
    "pbkdf2_zero": ({"PBKDF2_ITERATIONS": "0"}, "PBKDF2_ITERATIONS"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_error_exits_1_with_one_line(redis_server, tmp_path, case):
    env, var = CONFIG_ERRORS[case]
    rc, err = run_to_exit("users", dict(env), redis=redis_server, tmpdir=tmp_path)
    assert rc == 1, f"exit status {rc}, stderr: {err!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    assert var in lines[0], f"stderr does not name {var}: {lines[0]!r}"
    if case == "short_jwt_secret":
        assert "x" * 31 not in lines[0], "the secret itself is echoed"


def test_jwt_secret_exactly_32_bytes_is_accepted(service_factory):
    svc = service_factory("users", JWT_SECRET="k" * 32)
    u, email = new_user(svc)
    tok = svc.login(email)
    assert jwt_verify_hs256(tok, "k" * 32)
    assert not jwt_verify_hs256(tok, JWT_SECRET)


def test_port_in_use_exits_1(redis_server, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc, err = run_to_exit("users", {"PORT": str(port)}, redis=redis_server, tmpdir=tmp_path)
    assert rc != 0, f"started on a port in use? {err!r}"
    assert err.strip(), "no message on stderr"


def test_changing_iterations_keeps_existing_passwords(service_factory):
    """The iteration count is stored with each hash, so raising
    PBKDF2_ITERATIONS later does not lock anybody out."""
    svc = service_factory("users", PBKDF2_ITERATIONS=1000)
    u, email = new_user(svc)
    assert svc.stop() == 0
    again = service_factory("users", DB_PATH=svc.db_path, PBKDF2_ITERATIONS=5000)
    tok = again.login(email)
    r = again.get(f"/api/v1/users/{u['id']}", token=tok)
    assert r.status == 200, r
