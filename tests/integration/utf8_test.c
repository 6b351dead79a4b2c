/*
 * utf8_test.c — every text a `candex serve` answers with is valid UTF-8,
 * checked by a strict decoder (iconv), even when the text is cut to a byte
 * limit in the middle of multi-byte characters a client sent: error
 * messages quoting a collection name, a key or a model version, and the
 * request_id echoed from a request too large or too malformed to decode.
 * (A strict protobuf client, Python's, refuses a whole Response otherwise.)
 */
#include "srvtest.h"

#define N   1000
#define DIM 8

static char *dir;
static struct st_server srv;

static int
setup(void **state)
{
	dir = tu_tmpdir("utf8");
	free(st_build(dir, "tracks", N, DIM, 1, "l2", "t:", "--factory Flat"));
	return st_start(&srv, dir, "utf8", "--threads 1 --max-message 8192");
}

static int
teardown(void **state)
{
	int rc = st_stop(&srv, SIGTERM);
	tu_rmdir(dir);
	return rc == 0 ? 0 : -1;
}

/* euros returns n euro signs (3 bytes each) in a static buffer. */
static char *
euros(int n, char *buf)
{
	buf[0] = '\0';
	for (int i = 0; i < n; i++)
		strcat(buf, "\xe2\x82\xac");
	return buf;
}

static void
assert_utf8_response(const Candex__V1__Response *r)
{
	assert_non_null(r);
	if (!tu_utf8_strict(r->message, strlen(r->message)))
		fail_msg("message is not valid UTF-8: %s", r->message);
	if (!tu_utf8_strict(r->request_id, strlen(r->request_id)))
		fail_msg("request_id is not valid UTF-8: %s", r->request_id);
}

static Candex__V1__Response *
search(const char *coll, const char *key, const char *model, const char *id)
{
	static float v[DIM];
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	char *keys[1] = { (char *) key };
	req.protocol_version = 1;
	req.request_id = (char *) id;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	sr.collection = (char *) coll;
	sr.k = 3;
	if (key != NULL) {
		sr.n_query_keys = 1;
		sr.query_keys = keys;
	} else {
		sr.dim = DIM;
		sr.n_vectors = DIM;
		sr.vectors = v;
	}
	sr.model_version = (char *) (model ? model : "");
	return st_raw_request(srv.url, &req, 5000);
}

/* Names, keys and model versions quoted in errors are cut at 100, 200 and
 * 128 bytes: never inside a character. */
static void
test_quoted_client_text(void **state)
{
	char a[1024], b[1024];
	Candex__V1__Response *r = search(euros(50, a), NULL, NULL, "id-1");
	assert_utf8_response(r);
	assert_int_equal(r->status, CDX_ENOTFOUND);
	assert_non_null(strstr(r->message, "unknown collection"));
	candex__v1__response__free_unpacked(r, NULL);

	r = search("tracks", euros(100, a), NULL, euros(10, b));
	assert_utf8_response(r);
	assert_int_equal(r->status, CDX_ENOTFOUND);
	assert_non_null(strstr(r->message, "unknown key"));
	assert_string_equal(r->request_id, b); /* a valid id is echoed as sent */
	candex__v1__response__free_unpacked(r, NULL);

	r = search("tracks", NULL, euros(60, a), "id-3");
	assert_utf8_response(r);
	assert_int_equal(r->status, CDX_EMODEL);
	candex__v1__response__free_unpacked(r, NULL);
}

/* A request id that is not UTF-8 goes back with the bad bytes replaced. */
static void
test_invalid_request_id(void **state)
{
	Candex__V1__Response *r = search("tracks", NULL, NULL,
	    "abc\xff\xfe"
	    "def\xe2\x82");
	assert_utf8_response(r);
	assert_int_equal(r->status, CDX_OK);
	assert_string_equal(r->request_id, "abc??def");
	candex__v1__response__free_unpacked(r, NULL);
}

/* The request_id of a request that is not decoded (too large, malformed)
 * is read from the raw bytes and cut to 127 bytes: on a boundary. */
static void
test_peeked_request_id(void **state)
{
	char id[1024];
	euros(60, id); /* 180 bytes: 127 would split the 43rd character */
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	req.protocol_version = 1;
	req.request_id = id;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	sr.collection = (char *) "tracks";
	sr.k = 1;
	sr.dim = DIM;
	sr.n_vectors = 3000; /* 12 KB: over --max-message 8192, under the 2x nng drops */
	sr.vectors = calloc(sr.n_vectors, sizeof(float));
	Candex__V1__Response *r = st_raw_request(srv.url, &req, 5000);
	free(sr.vectors);
	assert_utf8_response(r);
	assert_int_equal(r->status, CDX_ELIMIT);
	assert_int_equal(strlen(r->request_id), 126); /* 42 whole characters */
	assert_memory_equal(r->request_id, id, 126);
	candex__v1__response__free_unpacked(r, NULL);

	/* malformed after the id: a truncated field 10 */
	uint8_t raw[512];
	size_t n = 0;
	raw[n++] = 0x08; /* protocol_version = 1 */
	raw[n++] = 1;
	raw[n++] = 0x12; /* request_id, 180 bytes */
	raw[n++] = (uint8_t) (0x80 | (180 & 0x7f));
	raw[n++] = 180 >> 7;
	memcpy(raw + n, id, 180);
	n += 180;
	raw[n++] = 0x52; /* search, claims 100 bytes, has 2 */
	raw[n++] = 100;
	raw[n++] = 0x0a;
	raw[n++] = 0x00;
	r = st_raw_call(srv.url, raw, n, 5000);
	assert_utf8_response(r);
	assert_int_equal(r->status, CDX_EPROTO);
	assert_int_equal(strlen(r->request_id), 126);
	candex__v1__response__free_unpacked(r, NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quoted_client_text),
		cmocka_unit_test(test_invalid_request_id),
		cmocka_unit_test(test_peeked_request_id),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
