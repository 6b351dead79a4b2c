/*
 * interop_test.c — the wire format with tools candex did not write:
 * requests encoded by `protoc --encode` from proto/candex.proto, sent by
 * `nngcat` (nng-utils), replies decoded by `protoc --decode`. Skipped, with
 * a message, when protoc or nngcat is not installed.
 */
#include "srvtest.h"

#define N   2000
#define DIM 8

static char *dir;
static float *base;
static struct st_server srv;
static char tcp_url[64];

static int
setup(void **state)
{
	if (tu_run(NULL, "command -v protoc && command -v nngcat") != 0) {
		fprintf(
		    stderr, "protoc or nngcat not found (Debian protobuf-compiler, nng-utils): skipping\n");
		return 0;
	}
	dir = tu_tmpdir("srvinterop");
	base = st_build(
	    dir, "tracks", N, DIM, 41, "l2", "spotify:track:", "--factory Flat --model-version m7");
	snprintf(tcp_url, sizeof(tcp_url), "tcp://127.0.0.1:%d", st_free_port());
	char extra[128];
	snprintf(extra, sizeof(extra), "--threads 1 --listen %s", tcp_url);
	assert_int_equal(st_start(&srv, dir, "interop", extra), 0);
	return 0;
}

static int
teardown(void **state)
{
	if (dir == NULL)
		return 0;
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	free(base);
	tu_rmdir(dir);
	return 0;
}

/* roundtrip encodes text (protobuf text format of a candex.v1.Request),
 * sends it to url with nngcat and returns the decoded Response as text. */
static char *
roundtrip(const char *url, const char *text)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/req.txt", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	char *out = NULL;
	int rc = tu_run(&out,
	    "cd %s && protoc --encode=candex.v1.Request -I%s/proto %s/proto/candex.proto < req.txt > req.bin "
	    "&& "
	    "nngcat --req0 --dial %s --file req.bin --raw --recv-timeout 5 > resp.bin && "
	    "protoc --decode=candex.v1.Response -I%s/proto %s/proto/candex.proto < resp.bin",
	    dir, CANDEX_SOURCE_DIR, CANDEX_SOURCE_DIR, url, CANDEX_SOURCE_DIR, CANDEX_SOURCE_DIR);
	if (rc != 0)
		fprintf(stderr, "interop round trip failed (%d): %s\n", rc, out);
	assert_int_equal(rc, 0);
	return out;
}

static void
test_search(void **state)
{
	if (dir == NULL)
		skip();
	char vec[DIM * 24] = "", req[1024];
	size_t used = 0;
	for (size_t j = 0; j < DIM; j++)
		used += (size_t) snprintf(
		    vec + used, sizeof(vec) - used, "%s%.9g", j ? ", " : "", (double) base[3 * DIM + j]);
	snprintf(req, sizeof(req),
	    "protocol_version: 1\nrequest_id: \"from-protoc\"\n"
	    "search { collection: \"tracks\" dim: %d k: 4 vectors: [%s] model_version: \"m7\" }\n",
	    DIM, vec);
	const char *urls[2] = { srv.url, tcp_url };
	for (int i = 0; i < 2; i++) {
		char *out = roundtrip(urls[i], req);
		assert_non_null(strstr(out, "request_id: \"from-protoc\""));
		assert_null(strstr(out, "status:")); /* OK is proto3's default: not printed */
		const char *first = strstr(out, "hits {");
		assert_non_null(first);
		assert_true(strstr(first, "key: \"spotify:track:3\"") < strstr(first + 1, "hits {"));
		assert_non_null(strstr(out, "id: 3\n"));
		assert_non_null(strstr(out, "metric: \"l2\""));
		char ver[128];
		snprintf(ver, sizeof(ver), "index_version: \"%.63s\"", st_current(dir, "tracks"));
		assert_non_null(strstr(out, ver));
		free(out);
	}
}

static void
test_health_info_and_errors(void **state)
{
	if (dir == NULL)
		skip();
	char *out = roundtrip(srv.url, "protocol_version: 1\nhealth {}\n");
	assert_non_null(strstr(out, "serving: true"));
	assert_non_null(strstr(out, "collections: 1"));
	free(out);

	out = roundtrip(tcp_url, "protocol_version: 1\ninfo { collection: \"tracks\" }\n");
	assert_non_null(strstr(out, "name: \"tracks\""));
	assert_non_null(strstr(out, "items: 2000"));
	assert_non_null(strstr(out, "model_version: \"m7\""));
	free(out);

	out = roundtrip(srv.url,
	    "protocol_version: 1\nrequest_id: \"e1\"\n"
	    "search { collection: \"tracks\" dim: 3 k: 4 vectors: [1, 2, 3] }\n");
	assert_non_null(strstr(out, "status: DIMENSION_MISMATCH"));
	assert_non_null(strstr(out, "request_id: \"e1\""));
	free(out);

	out = roundtrip(srv.url, "protocol_version: 1\nreload {}\n");
	assert_non_null(strstr(out, "status: PERMISSION_DENIED"));
	free(out);

	/* the admin listener takes the same bytes */
	out = roundtrip(srv.admin, "protocol_version: 1\nreload {}\n");
	assert_null(strstr(out, "status:"));
	assert_non_null(strstr(out, "reload {"));
	assert_non_null(strstr(out, "name: \"tracks\""));
	free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_search),
		cmocka_unit_test(test_health_info_and_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
