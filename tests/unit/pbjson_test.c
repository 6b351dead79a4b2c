/*
 * pbjson_test.c — the protobuf JSON mapping (src/wire/pbjson.c): what it
 * accepts, what it refuses and why, and that writing then reading gives
 * back the same message.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "candex.pb-c.h"
#include "testutil.h"
#include "wire/pbjson.h"

static Candex__V1__SearchRequest *
read_search(const char *json, int want)
{
	ProtobufCMessage *m = NULL;
	int rc = cdx_pbjson_read(&candex__v1__search_request__descriptor, json, strlen(json), &m);
	if (rc != want)
		fail_msg(
		    "%s: got %s (%s), wanted %s", json, cdx_errname(rc), cdx_last_error(), cdx_errname(want));
	return (Candex__V1__SearchRequest *) m;
}

/* refused checks that json is refused with a message containing needle. */
static void
refused(const char *json, const char *needle)
{
	assert_null(read_search(json, CDX_EPROTO));
	if (strstr(cdx_last_error(), needle) == NULL)
		fail_msg("%s: message '%s' lacks '%s'", json, cdx_last_error(), needle);
}

static char *
write_text(const ProtobufCMessage *m, unsigned flags)
{
	cdx_buf b = { 0 };
	assert_int_equal(cdx_pbjson_write(m, flags, &b), CDX_OK);
	cdx_buf_append(&b, "", 1);
	return b.data;
}

static void
test_read_search_request(void **state)
{
	(void) state;
	Candex__V1__SearchRequest *s
	    = read_search(" {\"collection\": \"tr\\u00e9cks\", \"dim\": 2,"
	                  " \"vectors\": [1, -2.5e0, 3E-1, \"NaN\"], \"query_keys\": [],"
	                  " \"k\": 10.0, \"nprobe\": \"8\", \"refineFactor\": null,"
	                  " \"excludeIds\": [\"-9223372036854775808\", 42],"
	                  " \"excludeKeys\": [\"a\\\"b\", \"\\ud83d\\ude00\"],"
	                  " \"recallTarget\": 0.9 }\n",
	        CDX_OK);
	assert_string_equal(s->collection,
	    "tr\xc3\xa9"
	    "cks");
	assert_int_equal(s->dim, 2);
	assert_int_equal(s->n_vectors, 4);
	assert_float_equal(s->vectors[1], -2.5, 0);
	assert_float_equal(s->vectors[2], 0.3f, 0);
	assert_true(isnan(s->vectors[3]));
	assert_int_equal(s->n_query_keys, 0);
	assert_int_equal(s->k, 10);
	assert_int_equal(s->nprobe, 8);
	assert_float_equal(s->refine_factor, 0, 0);
	assert_int_equal(s->n_exclude_ids, 2);
	assert_true(s->exclude_ids[0] == INT64_MIN);
	assert_int_equal(s->exclude_ids[1], 42);
	assert_string_equal(s->exclude_keys[0], "a\"b");
	assert_string_equal(s->exclude_keys[1], "\xf0\x9f\x98\x80");
	assert_float_equal(s->recall_target, 0.9f, 0);
	protobuf_c_message_free_unpacked(&s->base, NULL);
}

static void
test_refusals(void **state)
{
	(void) state;
	refused("", "expected an object");
	refused("{\"k\":1", "expected ',' or '}'");
	refused("{\"k\":1,}", "expected a string");
	refused("{\"topK\":1}", "has no field 'topK'");
	refused("{\"k\":1,\"k\":2}", "given twice");
	refused("{\"k\":1, \"k\" :2}", "given twice");
	refused("{\"k\":4294967296}", "not an integer in [0, 4294967295]");
	refused("{\"k\":1.5}", "not an integer");
	refused("{\"k\":-1e0}", "not an integer");
	refused("{\"k\":01}", "expected ',' or '}'");
	refused("{\"k\":\"12x\"}", "'12x' is not a number");
	refused("{\"k\":true}", "expected a number");
	refused("{\"excludeIds\":[9223372036854775808]}", "not an integer");
	refused("{\"vectors\":[1e39]}", "out of the range of a float");
	refused("{\"vectors\":[1,null]}", "null inside an array");
	refused("{\"vectors\":[1 2]}", "expected ',' or ']'");
	refused("{\"vectors\":1}", "expected an array");
	refused("{\"collection\":1}", "expected a string");
	refused("{\"collection\":\"a\nb\"}", "control character");
	refused("{\"collection\":\"\\x\"}", "bad escape");
	refused("{\"collection\":\"\\ud800\"}", "unpaired surrogate");
	refused("{\"collection\":\"\\u0000\"}", "\\u0000");
	refused("{\"collection\":\"\xff\"}", "not valid UTF-8");
	refused("{\"collection\":\"abc", "unterminated string");
	refused("{} {}", "text after the JSON object");
}

/* A oneof takes one member: two are an error, not "the last one wins". */
/* bytes fields are base64 (padded on write; URL-safe and unpadded read too) */
static void
test_bytes_base64(void **state)
{
	(void) state;
	static const uint8_t raw[][5] = { { 0 }, { 0xfb }, { 0xfb, 0xff }, { 0xfb, 0xff, 0x01 },
		{ 0xfb, 0xff, 0x01, 0x80 }, { 0xfb, 0xff, 0x01, 0x80, 0x7f } };
	static const char *const text[] = { "", "+w==", "+/8=", "+/8B", "+/8BgA==", "+/8BgH8=" };
	for (size_t n = 1; n <= 5; n++) {
		Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
		sr.exclude_ids_packed.data = (uint8_t *) raw[n];
		sr.exclude_ids_packed.len = n;
		char *json = write_text(&sr.base, 0), want[64];
		snprintf(want, sizeof(want), "{\"excludeIdsPacked\":\"%s\"}", text[n]);
		assert_string_equal(json, want);
		Candex__V1__SearchRequest *back = read_search(json, CDX_OK);
		assert_int_equal(back->exclude_ids_packed.len, n);
		assert_memory_equal(back->exclude_ids_packed.data, raw[n], n);
		protobuf_c_message_free_unpacked(&back->base, NULL);
		free(json);
	}
	Candex__V1__SearchRequest *u = read_search("{\"excludeIdsPacked\":\"-_8BgA\"}", CDX_OK);
	assert_int_equal(u->exclude_ids_packed.len, 4);
	assert_memory_equal(u->exclude_ids_packed.data, raw[4], 4);
	protobuf_c_message_free_unpacked(&u->base, NULL);
	refused("{\"excludeIdsPacked\":\"a*b=\"}", "not base64");
	refused("{\"excludeIdsPacked\":\"abcde\"}", "not base64");
}

static void
test_oneof(void **state)
{
	(void) state;
	const char *json = "{\"protocolVersion\":1,\"requestId\":\"r\",\"health\":{},\"info\":{}}";
	ProtobufCMessage *m = NULL;
	assert_int_equal(
	    cdx_pbjson_read(&candex__v1__request__descriptor, json, strlen(json), &m), CDX_EPROTO);
	assert_non_null(strstr(cdx_last_error(), "oneof"));
	json = "{\"protocolVersion\":1,\"search\":{\"collection\":\"c\",\"k\":3},\"timeout_ms\":20}";
	assert_int_equal(cdx_pbjson_read(&candex__v1__request__descriptor, json, strlen(json), &m), CDX_OK);
	Candex__V1__Request *r = (Candex__V1__Request *) m;
	assert_int_equal(r->body_case, CANDEX__V1__REQUEST__BODY_SEARCH);
	assert_string_equal(r->search->collection, "c");
	assert_int_equal(r->search->k, 3);
	assert_int_equal(r->timeout_ms, 20);
	/* an empty message is written as {} and read back as a set member */
	char *text = write_text(m, 0);
	assert_string_equal(
	    text, "{\"protocolVersion\":1,\"timeoutMs\":20,\"search\":{\"collection\":\"c\",\"k\":3}}");
	free(text);
	protobuf_c_message_free_unpacked(m, NULL);
	Candex__V1__Request h = CANDEX__V1__REQUEST__INIT;
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	h.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	h.health = &hr;
	text = write_text(&h.base, 0);
	assert_string_equal(text, "{\"health\":{}}");
	assert_int_equal(cdx_pbjson_read(&candex__v1__request__descriptor, text, strlen(text), &m), CDX_OK);
	assert_int_equal(((Candex__V1__Request *) m)->body_case, CANDEX__V1__REQUEST__BODY_HEALTH);
	protobuf_c_message_free_unpacked(m, NULL);
	free(text);
}

static void
test_write_response(void **state)
{
	(void) state;
	Candex__V1__Hit h[2] = { CANDEX__V1__HIT__INIT, CANDEX__V1__HIT__INIT };
	Candex__V1__Hit *hp[2] = { &h[0], &h[1] };
	h[0].id = 9007199254740993LL; /* not exact as a double: a string keeps it */
	h[0].key = (char *) "k\x01\xff";
	h[0].score = 0.1f;
	h[1].score = -INFINITY;
	Candex__V1__QueryResult q = CANDEX__V1__QUERY_RESULT__INIT;
	Candex__V1__QueryResult *qp = &q;
	q.n_hits = 2;
	q.hits = hp;
	Candex__V1__SearchResponse s = CANDEX__V1__SEARCH_RESPONSE__INIT;
	s.n_results = 1;
	s.results = &qp;
	s.nprobe = 4;
	s.server_time_us = 12;
	char *text = write_text(&s.base, 0);
	assert_string_equal(text,
	    "{\"results\":[{\"hits\":[{\"id\":\"9007199254740993\",\"key\":\"k\\u0001\xef\xbf\xbd\","
	    "\"score\":0.1},"
	    "{\"score\":\"-Infinity\"}]}],\"nprobe\":4,\"serverTimeUs\":\"12\"}");
	free(text);
	text = write_text(&s.base, CDX_PBJSON_DEFAULTS | CDX_PBJSON_PROTO_NAMES | CDX_PBJSON_INT64_NUMBERS);
	assert_non_null(strstr(text,
	    "{\"id\":0,\"key\":\"\",\"score\":\"-Infinity\",\"collection\":\"\","
	    "\"explore\":false,\"propensity\":0,\"rank\":0}"));
	assert_non_null(strstr(text, "\"index_version\":\"\""));
	assert_non_null(strstr(text, "\"server_time_us\":12,"));
	free(text);
	/* the enum by name; an unknown value as its number */
	Candex__V1__Response r = CANDEX__V1__RESPONSE__INIT;
	r.status = CANDEX__V1__STATUS__DEADLINE_EXCEEDED;
	text = write_text(&r.base, 0);
	assert_string_equal(text, "{\"status\":\"DEADLINE_EXCEEDED\"}");
	free(text);
	r.status = (Candex__V1__Status) 99;
	text = write_text(&r.base, 0);
	assert_string_equal(text, "{\"status\":99}");
	free(text);
}

/* Whatever is written reads back to the same message (floats exactly). */
static void
test_round_trip(void **state)
{
	(void) state;
	cdx_rng rng;
	cdx_rng_seed(&rng, 7);
	float v[64];
	for (int i = 0; i < 64; i++)
		v[i] = (float) (cdx_rng_normal(&rng) * pow(10, (int) (cdx_rng_next(&rng) % 60) - 30));
	int64_t ids[3] = { INT64_MIN, -1, INT64_MAX };
	char *keys[2] = { (char *) "spotify:track:1", (char *) "\xe2\x82\xac \"quoted\" \\ /" };
	Candex__V1__SearchRequest s = CANDEX__V1__SEARCH_REQUEST__INIT;
	s.collection = (char *) "tracks";
	s.dim = 64;
	s.n_vectors = 64;
	s.vectors = v;
	s.k = 100;
	s.n_exclude_ids = 3;
	s.exclude_ids = ids;
	s.n_exclude_keys = 2;
	s.exclude_keys = keys;
	s.refine_factor = 1.5f;
	for (unsigned flags = 0; flags < 16; flags++) {
		char *text = write_text(&s.base, flags);
		Candex__V1__SearchRequest *back = read_search(text, CDX_OK);
		assert_int_equal(back->n_vectors, 64);
		assert_memory_equal(back->vectors, v, sizeof(v));
		assert_memory_equal(back->exclude_ids, ids, sizeof(ids));
		assert_string_equal(back->exclude_keys[1], keys[1]);
		assert_int_equal(back->k, 100);
		assert_float_equal(back->refine_factor, 1.5f, 0);
		size_t a = protobuf_c_message_get_packed_size(&s.base),
		       b = protobuf_c_message_get_packed_size(&back->base);
		assert_int_equal(a, b);
		protobuf_c_message_free_unpacked(&back->base, NULL);
		free(text);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_read_search_request),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_bytes_base64),
		cmocka_unit_test(test_oneof),
		cmocka_unit_test(test_write_response),
		cmocka_unit_test(test_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
