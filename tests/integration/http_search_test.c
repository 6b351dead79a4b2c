/*
 * http_search_test.c — POST /v1/search on --http-search-listen: curl gets
 * hits, the answers equal the nng client's, and the limits, errors and
 * status codes are those of the query socket (docs/protocol.md, HTTP).
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <math.h>

#include "srvtest.h"

#define DIM 16
#define N   2000

static char *dir;
static float *base;
static struct st_server srv;
static int port;

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("httpsearch");
	assert_non_null(dir);
	base = st_build(dir, "tracks", N, DIM, 5, "l2", "track:", "--refine fp16 --no-tune");
	port = st_free_port();
	char extra[256];
	snprintf(extra, sizeof(extra),
	    "--threads 1 --max-k 50 --max-message 64K --http-search-listen 127.0.0.1:%d", port);
	assert_int_equal(st_start(&srv, dir, "http", extra), 0);
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	free(base);
	tu_rmdir(dir);
	return 0;
}

/* vectors_json writes rows [row, row+n) of base as a JSON array. */
static char *
vectors_json(size_t row, size_t n)
{
	cdx_buf b = { 0 };
	cdx_buf_append(&b, "[", 1);
	for (size_t i = 0; i < n * DIM; i++)
		cdx_buf_printf(&b, "%s%.9g", i ? "," : "", (double) base[row * DIM + i]);
	cdx_buf_append(&b, "]", 2);
	return b.data;
}

static json_t *
post(const char *body, const char *headers, int want_code)
{
	char *resp = NULL;
	int code = st_http(port, "POST", "/v1/search", headers, body, &resp);
	if (code != want_code)
		fail_msg("HTTP %d (wanted %d): %s", code, want_code, resp ? resp : "");
	json_error_t jerr;
	json_t *j = json_loads(resp, 0, &jerr);
	if (j == NULL)
		fail_msg("not JSON (%s): %s", jerr.text, resp);
	free(resp);
	return j;
}

/* The acceptance check: curl, as any language would call it. */
static void
test_curl_returns_hits(void **state)
{
	(void) state;
	char *vec = vectors_json(7, 1), *path = tu_path(dir, "query.json");
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "{\"collection\":\"tracks\",\"dim\":%d,\"vectors\":%s,\"k\":10}", DIM, vec);
	fclose(f);
	char *out = NULL;
	int rc = tu_run(&out,
	    "curl -sS --fail-with-body -H 'Content-Type: application/json' --data-binary @%s "
	    "http://127.0.0.1:%d/v1/search",
	    path, port);
	if (rc != 0)
		fail_msg("curl failed (%d): %s", rc, out);
	json_t *j = json_loads(out, 0, NULL);
	assert_non_null(j);
	json_t *hits = json_object_get(json_array_get(json_object_get(j, "results"), 0), "hits");
	assert_int_equal(json_array_size(hits), 10);
	/* the vector of item 7 finds item 7 first (ids are strings: int64) */
	assert_string_equal(json_string_value(json_object_get(json_array_get(hits, 0), "id")), "7");
	assert_string_equal(json_string_value(json_object_get(json_array_get(hits, 0), "key")), "track:7");
	assert_string_equal(json_string_value(json_object_get(j, "metric")), "l2");
	json_decref(j);
	free(out);
	free(vec);
	free(path);
}

/* The same batch over HTTP and over nng gives the same hits, in order. */
static void
test_same_answers_as_nng(void **state)
{
	(void) state;
	char *vec = vectors_json(100, 3), body[65536];
	snprintf(body, sizeof(body),
	    "{\"collection\":\"tracks\",\"dim\":%d,\"vectors\":%s,\"k\":8,\"nprobe\":4,\"refine_factor\":2,"
	    "\"excludeIds\":[\"101\"],\"exclude_keys\":[\"track:102\"]}",
	    DIM, vec);
	json_t *j = post(body, "X-Request-Id: same-1\r\n", 200);
	cdx_client *c = st_client(srv.url, 5000, 0);
	int64_t exclude_id = 101;
	const char *exclude_key = "track:102";
	struct cdx_query q = { .collection = "tracks",
		.vectors = base + 100 * DIM,
		.nvectors = 3,
		.dim = DIM,
		.k = 8,
		.nprobe = 4,
		.refine_factor = 2,
		.exclude_ids = &exclude_id,
		.n_exclude_ids = 1,
		.exclude_keys = &exclude_key,
		.n_exclude_keys = 1 };
	struct cdx_result *r = st_search(c, &q);
	json_t *results = json_object_get(j, "results");
	assert_int_equal(json_array_size(results), 3);
	for (size_t i = 0; i < 3; i++) {
		json_t *hits = json_object_get(json_array_get(results, i), "hits");
		assert_int_equal(json_array_size(hits), r->queries[i].nhits);
		for (size_t h = 0; h < r->queries[i].nhits; h++) {
			json_t *hit = json_array_get(hits, h);
			char id[32];
			snprintf(id, sizeof(id), "%lld", (long long) r->queries[i].hits[h].id);
			assert_string_equal(json_string_value(json_object_get(hit, "id")), id);
			assert_string_not_equal(id, "101");
			assert_string_not_equal(json_string_value(json_object_get(hit, "key")), "track:102");
			assert_float_equal(json_number_value(json_object_get(hit, "score")),
			    r->queries[i].hits[h].score, 1e-4 * (1 + fabs(r->queries[i].hits[h].score)));
		}
	}
	assert_int_equal(json_integer_value(json_object_get(j, "nprobe")), 4);
	assert_float_equal(json_number_value(json_object_get(j, "refineFactor")), 2, 1e-6);
	assert_string_equal(json_string_value(json_object_get(j, "indexVersion")), r->index_version);
	cdx_result_free(r);
	cdx_client_close(c);
	json_decref(j);
	free(vec);
}

static void
test_search_by_key(void **state)
{
	(void) state;
	json_t *j
	    = post("{\"collection\":\"tracks\",\"queryKeys\":[\"track:3\",\"track:4\"],\"k\":2}", NULL, 200);
	json_t *results = json_object_get(j, "results");
	assert_int_equal(json_array_size(results), 2);
	json_t *first = json_array_get(json_object_get(json_array_get(results, 1), "hits"), 0);
	assert_string_equal(json_string_value(json_object_get(first, "key")), "track:4");
	json_decref(j);
}

/* expect_error posts body and checks the HTTP code and the Response status. */
static void
expect_error(const char *body, const char *headers, int code, const char *status, const char *needle)
{
	json_t *j = post(body, headers, code);
	const char *got = json_string_value(json_object_get(j, "status"));
	const char *message = json_string_value(json_object_get(j, "message"));
	if (got == NULL || strcmp(got, status) != 0 || message == NULL || strstr(message, needle) == NULL)
		fail_msg("wanted %s with '%s', got %s: %s", status, needle, got ? got : "(none)",
		    message ? message : "(none)");
	json_decref(j);
}

static void
test_errors_and_limits(void **state)
{
	(void) state;
	/* the JSON itself */
	expect_error(
	    "{\"collection\":\"tracks\",\"vectorz\":[1]}", NULL, 400, "MALFORMED", "no field 'vectorz'");
	expect_error(
	    "{\"collection\":\"tracks\",\"k\":\"ten\"}", NULL, 400, "MALFORMED", "'ten' is not a number");
	expect_error("{\"collection\":\"tracks\",\"k\":-1}", NULL, 400, "MALFORMED", "not an integer");
	expect_error("[1,2]", NULL, 400, "MALFORMED", "expected an object");
	expect_error("{\"collection\":\"tracks\"} x", NULL, 400, "MALFORMED", "text after the JSON object");
	/* what the query socket checks, with its statuses */
	expect_error(
	    "{\"collection\":\"nope\",\"queryKeys\":[\"a\"],\"k\":1}", NULL, 404, "NOT_FOUND", "nope");
	expect_error("{\"collection\":\"tracks\",\"dim\":3,\"vectors\":[1,2,3],\"k\":1}", NULL, 400,
	    "DIMENSION_MISMATCH", "dimension 3");
	expect_error("{\"collection\":\"tracks\",\"queryKeys\":[\"track:1\"],\"k\":51}", NULL, 413,
	    "LIMIT_EXCEEDED", "max-k 50");
	expect_error("{\"collection\":\"tracks\",\"queryKeys\":[\"track:1\"]}", NULL, 400, "INVALID_ARGUMENT",
	    "k must be at least 1");
	expect_error("{\"collection\":\"tracks\",\"dim\":16,\"vectors\":[\"NaN\",0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
	             "0],\"k\":1}",
	    NULL, 400, "NON_FINITE", "NaN");
	expect_error(
	    "{\"collection\":\"tracks\",\"queryKeys\":[\"track:1\"],\"k\":1,\"modelVersion\":\"m2\"}", NULL,
	    409, "MODEL_MISMATCH", "m2");
	/* --max-message 64K: a request that packs larger is refused, as on nng */
	cdx_buf b = { 0 };
	cdx_buf_printf(&b, "{\"collection\":\"tracks\",\"dim\":%d,\"k\":1,\"vectors\":[", DIM);
	for (int i = 0; i < 20000; i++)
		cdx_buf_printf(&b, "%s0.5", i ? "," : "");
	cdx_buf_append(&b, "]}", 3);
	expect_error(b.data, NULL, 413, "LIMIT_EXCEEDED", "max-message");
	cdx_buf_fini(&b);
	/* headers */
	expect_error("{\"collection\":\"tracks\",\"queryKeys\":[\"track:1\"],\"k\":1}",
	    "X-Timeout-Ms: soon\r\n", 400, "INVALID_ARGUMENT", "X-Timeout-Ms");
	/* the request id is echoed */
	json_t *j = post(
	    "{\"collection\":\"nope\",\"queryKeys\":[\"a\"],\"k\":1}", "X-Request-Id: req-77\r\n", 404);
	assert_string_equal(json_string_value(json_object_get(j, "requestId")), "req-77");
	json_decref(j);
	/* only POST, only /v1/search */
	char *resp = NULL;
	assert_int_equal(st_http(port, "GET", "/v1/search", NULL, NULL, &resp), 405);
	free(resp);
	assert_int_equal(st_http(port, "POST", "/metrics", NULL, "{}", &resp), 404);
	free(resp);
	/* the server is still serving */
	json_decref(post("{\"collection\":\"tracks\",\"queryKeys\":[\"track:1\"],\"k\":1}", NULL, 200));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_curl_returns_hits),
		cmocka_unit_test(test_same_answers_as_nng),
		cmocka_unit_test(test_search_by_key),
		cmocka_unit_test(test_errors_and_limits),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
