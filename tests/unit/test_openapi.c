/* test_openapi.c -- openapi_build: the document of a router's routes, and
 * the loud failure of every kind of wrong description. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include <jansson.h>

#include <ripple/http_router.h>
#include <ripple/openapi.h>

static void h(struct http_request *req, const struct auth_claims *who, void *data)
{
    (void)req, (void)who, (void)data;
}

static const struct openapi_schema schemas[] = {
    {"Thing", "{\"type\":\"object\",\"properties\":{\"id\":" OPENAPI_UUID "}}"},
    {NULL, NULL},
};
static const struct openapi_info info = {"things", "1.2.3", "Things.", schemas};

static const struct openapi_route doc_get = {
    .summary = "Read a thing",
    .params = (const struct openapi_param[]){OPENAPI_PATH("id", "Its id.", OPENAPI_UUID),
                                             OPENAPI_QUERY("full", NULL, NULL), OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){OPENAPI_ANSWER(200, "The thing.", OPENAPI_REF("Thing")),
                                          OPENAPI_ERROR(404, "No such thing."), OPENAPI_END},
};

static const struct openapi_route doc_post = {
    .summary = "Make a thing",
    .request = OPENAPI_REF("Thing"),
    .responses =
        (const struct openapi_response[]){OPENAPI_ANSWER(201, "Made.", OPENAPI_REF("Thing")),
                                          OPENAPI_END},
};

static json_t *build(struct http_router *r, char *err, size_t len, int *rc)
{
    json_t *doc = NULL;

    *rc = openapi_build(r, &info, &doc, err, len);
    return doc;
}

static const json_t *op(const json_t *doc, const char *path, const char *method)
{
    return json_object_get(json_object_get(json_object_get(doc, "paths"), path), method);
}

Test(openapi, a_document_of_every_route)
{
    struct http_router *r;
    char err[256] = "";
    int rc;
    json_t *doc;
    const json_t *get, *post, *undoc;

    cr_assert_eq(http_router_new(&r), 0);
    cr_assert_eq(http_router_add_doc(r, "GET", "/things/{id}", 0, &doc_get, h, NULL), 0);
    cr_assert_eq(http_router_add_doc(r, "POST", "/things", HTTP_ROUTE_PUBLIC, &doc_post, h, NULL),
                 0);
    cr_assert_eq(http_router_add(r, "DELETE", "/things/{id}", 0, h, NULL), 0);
    doc = build(r, err, sizeof(err), &rc);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_str_eq(json_string_value(json_object_get(doc, "openapi")), "3.1.0");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(doc, "info"), "version")),
                     "1.2.3");
    get = op(doc, "/things/{id}", "get");
    post = op(doc, "/things", "post");
    undoc = op(doc, "/things/{id}", "delete");
    cr_assert(get && post && undoc);
    cr_assert_str_eq(json_string_value(json_object_get(get, "summary")), "Read a thing");
    cr_assert_eq(json_array_size(json_object_get(get, "parameters")), 2);
    cr_assert_null(json_object_get(get, "security"), "not public: the document's bearer applies");
    cr_assert_not_null(json_object_get(json_object_get(get, "responses"), "401"));
    cr_assert_not_null(json_object_get(json_object_get(get, "responses"), "default"));
    cr_assert_eq(json_array_size(json_object_get(post, "security")), 0, "public: no security");
    cr_assert_null(json_object_get(json_object_get(post, "responses"), "401"));
    cr_assert_not_null(json_object_get(post, "requestBody"));
    /* an undocumented route is in the document, marked, its {id} a parameter */
    cr_assert(json_is_true(json_object_get(undoc, "x-ripple-undocumented")));
    cr_assert_eq(json_array_size(json_object_get(undoc, "parameters")), 1);
    cr_assert_not_null(
        json_object_get(json_object_get(json_object_get(doc, "components"), "schemas"), "Error"));
    json_decref(doc);
    http_router_free(r);
}

/* Builds a router of one route described by doc; returns openapi_build's
 * return value and the error line in err. */
static int build_one(const char *pattern, const struct openapi_route *doc, char *err, size_t len)
{
    struct http_router *r;
    json_t *out = NULL;
    int rc;

    cr_assert_eq(http_router_new(&r), 0);
    cr_assert_eq(http_router_add_doc(r, "GET", pattern, 0, doc, h, NULL), 0);
    rc = openapi_build(r, &info, &out, err, len);
    json_decref(out);
    http_router_free(r);
    return rc;
}

static const struct openapi_route bad_json = {
    .summary = "x",
    .responses =
        (const struct openapi_response[]){OPENAPI_ANSWER(200, "ok", "{\"type\":"), OPENAPI_END},
};
static const struct openapi_route not_object = {
    .summary = "x",
    .responses = (const struct openapi_response[]){OPENAPI_ANSWER(200, "ok", "[1]"), OPENAPI_END},
};
static const struct openapi_route bad_ref = {
    .summary = "x",
    .responses = (const struct openapi_response[]){OPENAPI_ANSWER(200, "ok", OPENAPI_REF("Nope")),
                                                   OPENAPI_END},
};
static const struct openapi_route bad_param = {
    .summary = "x",
    .params = (const struct openapi_param[]){OPENAPI_PATH("idd", NULL, NULL), OPENAPI_END_PARAMS},
    .responses = (const struct openapi_response[]){OPENAPI_ERROR(404, "no"), OPENAPI_END},
};
static const struct openapi_route no_summary = {
    .responses = (const struct openapi_response[]){OPENAPI_ERROR(404, "no"), OPENAPI_END},
};
static const struct openapi_route no_answer = {
    .summary = "x",
    .responses = (const struct openapi_response[]){OPENAPI_END},
};
static const struct openapi_route twice = {
    .summary = "x",
    .responses = (const struct openapi_response[]){OPENAPI_ERROR(404, "no"),
                                                   OPENAPI_ERROR(404, "no"), OPENAPI_END},
};
static const struct openapi_route bad_request = {
    .summary = "x",
    .request = "{\"type\":\"object\",\"type\":\"array\"}", /* duplicate key */
    .responses = (const struct openapi_response[]){OPENAPI_ERROR(404, "no"), OPENAPI_END},
};

Test(openapi, a_wrong_description_fails_naming_the_route)
{
    static const struct {
        const struct openapi_route *doc;
        const char *says;
    } cases[] = {
        {&bad_json, "response 200: not JSON"},
        {&not_object, "must be a JSON object"},
        {&bad_ref, "$ref #/components/schemas/Nope names no schema"},
        {&bad_param, "parameter idd: the pattern has no {idd}"},
        {&no_summary, "a summary is required"},
        {&no_answer, "no response documented"},
        {&twice, "response 404: documented twice"},
        {&bad_request, "request body: not JSON"},
    };
    char err[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(build_one("/things/{id}", cases[i].doc, err, sizeof(err)), -EINVAL, "%zu", i);
        cr_assert(strstr(err, "route GET /things/{id}") != NULL, "%zu: %s", i, err);
        cr_assert(strstr(err, cases[i].says) != NULL, "%zu: %s", i, err);
    }
}

Test(openapi, a_wrong_module_schema_fails)
{
    static const struct openapi_schema wrong[] = {{"A", OPENAPI_REF("B")}, {NULL, NULL}};
    struct openapi_info i2 = {"things", "1", NULL, wrong};
    struct http_router *r;
    char err[256] = "";
    json_t *out = NULL;

    cr_assert_eq(http_router_new(&r), 0);
    cr_assert_eq(openapi_build(r, &i2, &out, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "A: $ref #/components/schemas/B names no schema") != NULL, "%s", err);
    cr_assert_null(out);
    http_router_free(r);
}

Test(openapi, the_docs_page_and_its_files_are_embedded)
{
    const struct openapi_asset *page = openapi_asset_find("index.html");
    const struct openapi_asset *bundle = openapi_asset_find("swagger-ui-bundle.js");

    cr_assert_not_null(page);
    cr_assert_not_null(bundle);
    cr_assert(strstr((const char *)page->data, "/api/docs/swagger-ui-bundle.js") != NULL);
    cr_assert_gt(bundle->len, 500000);
    cr_assert_not_null(openapi_asset_find("swagger-ui.css"));
    cr_assert_not_null(openapi_asset_find("LICENSE"));
    cr_assert_null(openapi_asset_find("nope.js"));
}
