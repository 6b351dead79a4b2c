/*
 * badinput_test.c — every bad request gets a clear error response and the
 * server keeps serving: malformed protobuf, wrong protocol version, wrong
 * dimension, NaN/Inf, k = 0 and huge k, unknown collection, empty and
 * oversized batches, oversized messages, too many exclusions, model-version
 * mismatch, reload on the query port, and clients that disconnect in the
 * middle of a request (nng and raw TCP).
 */
#include "srvtest.h"

#include <math.h>
#include <sys/un.h>

#define N   3000
#define DIM 16

static char *dir;
static float *base;
static struct st_server srv;
static char tcp_url[64];
static int tcp_port, http_port;

static int
setup(void **state)
{
	dir = tu_tmpdir("srvbad");
	base = st_build(dir, "tracks", N, DIM, 21, "l2", "t:", "--model-version m1");
	char extra[256];
	tcp_port = st_free_port();
	http_port = st_free_port();
	snprintf(tcp_url, sizeof(tcp_url), "tcp://127.0.0.1:%d", tcp_port);
	snprintf(extra, sizeof(extra),
	    "--threads 2 --max-k 100 --max-batch 8 --max-message 64K --max-excludes 10 --listen %s "
	    "--log-level debug "
	    "--http-listen 127.0.0.1:%d",
	    tcp_url, http_port);
	assert_int_equal(st_start(&srv, dir, "bad", extra), 0);
	return 0;
}

static int
teardown(void **state)
{
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	free(base);
	tu_rmdir(dir);
	return 0;
}

/* still_serving asserts that a normal search works on both listeners
 * (allowing the listener watchdog a few seconds to recreate an ipc://
 * listener that nng 1.5 stopped after a vanished peer, see watchdog.c). */
static void
still_serving(void)
{
	const char *urls[2] = { srv.url, tcp_url };
	for (int i = 0; i < 2; i++) {
		cdx_client *c = st_client(urls[i], 2000, 6);
		struct cdx_query q
		    = { .collection = "tracks", .vectors = base, .nvectors = 1, .dim = DIM, .k = 5 };
		struct cdx_result *r = st_search(c, &q);
		assert_int_equal(r->queries[0].nhits, 5);
		cdx_result_free(r);
		cdx_client_close(c);
	}
}

/* expect sends req on the query socket and checks status and message. */
static void
expect(Candex__V1__Request *req, int status, const char *needle)
{
	if (req->request_id == NULL || req->request_id[0] == '\0')
		req->request_id = (char *) "bad-1";
	Candex__V1__Response *resp = st_raw_request(srv.url, req, 5000);
	assert_non_null(resp);
	if ((int) resp->status != status || (needle && strstr(resp->message, needle) == NULL))
		fprintf(stderr, "got %d '%s', wanted %d '%s'\n", resp->status, resp->message, status,
		    needle ? needle : "");
	assert_int_equal(resp->status, status);
	if (needle != NULL)
		assert_non_null(strstr(resp->message, needle));
	assert_string_equal(resp->request_id, req->request_id);
	candex__v1__response__free_unpacked(resp, NULL);
}

static void
search_req(Candex__V1__Request *req, Candex__V1__SearchRequest *sr, float *v, size_t nfloats)
{
	candex__v1__request__init(req);
	candex__v1__search_request__init(sr);
	req->protocol_version = 1;
	req->body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req->search = sr;
	sr->collection = (char *) "tracks";
	sr->dim = DIM;
	sr->k = 10;
	sr->vectors = v;
	sr->n_vectors = nfloats;
}

static void
test_malformed(void **state)
{
	uint8_t junk[64];
	memset(junk, 0xff, sizeof(junk));
	Candex__V1__Response *resp = st_raw_call(srv.url, junk, sizeof(junk), 5000);
	assert_non_null(resp);
	assert_int_equal(resp->status, CDX_EPROTO);
	assert_non_null(strstr(resp->message, "malformed"));
	candex__v1__response__free_unpacked(resp, NULL);

	/* a valid SearchRequest sent bare, without the Request envelope:
	 * field 1 is a string there, a varint in Request: wire-type clash */
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	sr.collection = (char *) "tracks";
	uint8_t buf[64];
	size_t len = candex__v1__search_request__pack(&sr, buf);
	resp = st_raw_call(srv.url, buf, len, 5000);
	assert_non_null(resp);
	assert_int_equal(resp->status, CDX_EPROTO);
	candex__v1__response__free_unpacked(resp, NULL);
	still_serving();
}

static void
test_envelope(void **state)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	req.protocol_version = 2;
	req.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	expect(&req, CDX_EVERSION, "protocol_version 2");
	req.protocol_version = 0; /* unset */
	expect(&req, CDX_EVERSION, NULL);
	req.protocol_version = 1;
	req.body_case = CANDEX__V1__REQUEST__BODY__NOT_SET;
	expect(&req, CDX_EINVAL, "no body");
	still_serving();
}

static void
test_vectors(void **state)
{
	Candex__V1__Request req;
	Candex__V1__SearchRequest sr;
	float v[2 * DIM + 1];
	memcpy(v, base, sizeof(v));

	search_req(&req, &sr, v, DIM);
	sr.dim = 8;
	expect(&req, CDX_EDIM, "dimension 16");
	search_req(&req, &sr, v, DIM);
	sr.dim = 0;
	expect(&req, CDX_EDIM, NULL);
	search_req(&req, &sr, v, DIM + 1);
	expect(&req, CDX_EDIM, "not a whole number");

	search_req(&req, &sr, v, 2 * DIM);
	v[DIM + 3] = NAN;
	expect(&req, CDX_ENONFINITE, "query 1, component 3 is NaN");
	v[DIM + 3] = INFINITY;
	expect(&req, CDX_ENONFINITE, "infinite");
	v[DIM + 3] = 0;

	search_req(&req, &sr, NULL, 0);
	expect(&req, CDX_EEMPTY, "empty batch");

	float big[9 * DIM];
	for (size_t i = 0; i < 9 * DIM; i++)
		big[i] = base[i];
	search_req(&req, &sr, big, 9 * DIM);
	expect(&req, CDX_ELIMIT, "max-batch 8");

	/* vectors and keys at once */
	char *keys[1] = { (char *) "t:1" };
	search_req(&req, &sr, v, DIM);
	sr.query_keys = keys;
	sr.n_query_keys = 1;
	expect(&req, CDX_EINVAL, "not both");
	still_serving();
}

static void
test_k_and_params(void **state)
{
	Candex__V1__Request req;
	Candex__V1__SearchRequest sr;
	float v[DIM];
	memcpy(v, base, sizeof(v));

	search_req(&req, &sr, v, DIM);
	sr.k = 0;
	expect(&req, CDX_EINVAL, "k must be at least 1");
	sr.k = 101;
	expect(&req, CDX_ELIMIT, "max-k 100");
	sr.k = 4000000000u;
	expect(&req, CDX_ELIMIT, "max-k");
	sr.k = 10;
	sr.refine_factor = NAN;
	expect(&req, CDX_EINVAL, "refine_factor");
	sr.refine_factor = 0;
	sr.recall_target = 2;
	expect(&req, CDX_EINVAL, "recall_target");
	sr.recall_target = 0;
	int64_t ex[11] = { 0 };
	sr.exclude_ids = ex;
	sr.n_exclude_ids = 11;
	expect(&req, CDX_ELIMIT, "max-excludes 10");
	sr.n_exclude_ids = 10;
	expect(&req, CDX_OK, NULL);
	still_serving();
}

static void
test_collection_and_model(void **state)
{
	Candex__V1__Request req;
	Candex__V1__SearchRequest sr;
	float v[DIM];
	memcpy(v, base, sizeof(v));

	search_req(&req, &sr, v, DIM);
	sr.collection = (char *) "podcasts";
	expect(&req, CDX_ENOTFOUND, "unknown collection 'podcasts' (serving: tracks)");
	sr.collection = (char *) "";
	expect(&req, CDX_EINVAL, "without a collection");
	sr.collection = (char *) "tracks";
	sr.model_version = (char *) "m2";
	expect(&req, CDX_EMODEL, "model 'm2'");
	sr.model_version = (char *) "m1";
	expect(&req, CDX_OK, NULL);

	/* and through the client library: code + message */
	cdx_client *c = st_client(srv.url, 5000, 3);
	struct cdx_query q = {
		.collection = "tracks", .vectors = v, .nvectors = 1, .dim = DIM, .k = 5, .model_version = "m2"
	};
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_EMODEL);
	assert_int_equal(err.code, CDX_EMODEL);
	assert_non_null(strstr(err.message, "m1"));
	assert_null(r);
	cdx_client_close(c);
}

static void
test_oversized_message(void **state)
{
	/* 70 KB > --max-message 64K: answered LIMIT_EXCEEDED, not searched */
	size_t nf = 70 * 1024 / 4;
	nf -= nf % DIM;
	float *v = calloc(nf, sizeof(float));
	Candex__V1__Request req;
	Candex__V1__SearchRequest sr;
	search_req(&req, &sr, v, nf);
	expect(&req, CDX_ELIMIT, "max-message");

	/* beyond twice the limit nng drops the connection: no reply, but the
	 * server carries on */
	size_t nf2 = 200 * 1024 / 4;
	float *v2 = calloc(nf2, sizeof(float));
	search_req(&req, &sr, v2, nf2);
	req.request_id = (char *) "huge";
	size_t len = candex__v1__request__get_packed_size(&req);
	uint8_t *buf = malloc(len);
	candex__v1__request__pack(&req, buf);
	Candex__V1__Response *resp = st_raw_call(srv.url, buf, len, 500);
	if (resp != NULL) {
		assert_int_equal(resp->status, CDX_ELIMIT);
		candex__v1__response__free_unpacked(resp, NULL);
	}
	free(buf);
	free(v);
	free(v2);
	still_serving();
}

static void
test_reload_on_query_port(void **state)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__ReloadRequest rr = CANDEX__V1__RELOAD_REQUEST__INIT;
	req.protocol_version = 1;
	req.body_case = CANDEX__V1__REQUEST__BODY_RELOAD;
	req.reload = &rr;
	expect(&req, CDX_EPERM, "admin listener");

	cdx_client *c = st_client(tcp_url, 5000, 0);
	struct cdx_client_error err;
	assert_int_equal(cdx_client_reload(c, NULL, &err), CDX_EPERM);
	cdx_client_close(c);
	/* the admin socket accepts it */
	c = st_client(srv.admin, 5000, 0);
	assert_int_equal(cdx_client_reload(c, NULL, &err), CDX_OK);
	cdx_client_close(c);
	still_serving();
}

/* queries_searched reads candex_queries_total from /metrics. */
static double
queries_searched(void)
{
	char *body = NULL;
	assert_int_equal(st_http_get(http_port, "/metrics", &body), 200);
	const char *p = strstr(body, "\ncandex_queries_total ");
	assert_non_null(p);
	double v = strtod(p + strlen("\ncandex_queries_total "), NULL);
	free(body);
	return v;
}

static void
test_disconnect_mid_request(void **state)
{
	/* nng clients that send a heavy batch and close before the answer */
	float v[8 * DIM];
	memcpy(v, base, sizeof(v));
	Candex__V1__Request req;
	Candex__V1__SearchRequest sr;
	search_req(&req, &sr, v, 8 * DIM);
	sr.k = 100;
	sr.nprobe = 1000;
	size_t len = candex__v1__request__get_packed_size(&req);
	uint8_t buf[4096];
	assert_true(len <= sizeof(buf));
	candex__v1__request__pack(&req, buf);
	/* Raw SP peers written by hand (nothing of nng on the client side, so
	 * the client can vanish at any byte; closing an nng REQ socket right
	 * after a send can also hang inside nng 1.5 itself, nanomsg/nng#1813):
	 *   0  garbage instead of the SP handshake
	 *   1  half a handshake
	 *   2  a handshake, then a frame announcing 1000 bytes that sends 10
	 *   3  a whole heavy request, and the connection closes at once
	 * over TCP (frame = u64 length) and IPC (frame = 0x01, u64 length). */
	double before = queries_searched();
	double abandoned0 = st_metric(http_port, "candex_abandoned_total");
	static const uint8_t sp_req[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 }; /* REQ0 = 48 */
	static const uint8_t reqid[4] = { 0x80, 0, 0, 1 }; /* REQ's request id, high bit set */
	for (int round = 0; round < 24; round++) {
		int variant = round % 4, ipc = (round / 4) % 2;
		int fd;
		if (ipc) {
			struct sockaddr_un u = { .sun_family = AF_UNIX };
			snprintf(u.sun_path, sizeof(u.sun_path), "%.100s", srv.url + strlen("ipc://"));
			fd = socket(AF_UNIX, SOCK_STREAM, 0);
			assert_int_equal(connect(fd, (struct sockaddr *) &u, sizeof(u)), 0);
		} else {
			struct sockaddr_in a = { .sin_family = AF_INET,
				.sin_port = htons((uint16_t) tcp_port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
			fd = socket(AF_INET, SOCK_STREAM, 0);
			assert_int_equal(connect(fd, (struct sockaddr *) &a, sizeof(a)), 0);
		}
		uint8_t frame[8 + 9 + 4 + 4096];
		size_t flen = 0, h = 8;
		uint64_t msglen = variant == 2 ? 1000 : 4 + len;
		memcpy(frame, sp_req, 8);
		if (ipc)
			frame[h++] = 0x01;
		for (int b = 0; b < 8; b++)
			frame[h + (size_t) b] = (uint8_t) (msglen >> (56 - 8 * b));
		h += 8;
		memcpy(frame + h, reqid, 4);
		memcpy(frame + h + 4, buf, len);
		if (variant == 0) {
			memcpy(frame, "GET / HTTP/1.0\r\n\r\n", 18);
			flen = 18;
		} else if (variant == 1) {
			flen = 4;
		} else if (variant == 2) {
			flen = h + 10;
		} else {
			flen = h + 4 + len;
		}
		assert_true(write(fd, frame, flen) == (ssize_t) flen);
		if (variant < 3)
			st_sleep_ms(5);
		close(fd);
	}
	/* The six whole requests (8 queries each) were searched and their
	 * answers dropped, dropped unsearched because their client had gone
	 * by the time a worker took them (candex_abandoned_total), or
	 * discarded by nng because the connection was already gone when it
	 * read them (seen with ipc://); all are fine. Over TCP they arrive:
	 * some must have been searched or dropped by the server. */
	double after = before, abandoned = 0;
	for (int i = 0; i < 500 && after < before + 8 && abandoned < 1; i++) {
		st_sleep_ms(10);
		after = queries_searched();
		abandoned = st_metric(http_port, "candex_abandoned_total") - abandoned0;
	}
	assert_true(after >= before + 8 || abandoned >= 1);
	still_serving();
	assert_true(st_log_has(&srv, "SRV-READY"));
}

/* metric reads one sample from /metrics. */
static double
metric(const char *name)
{
	return st_metric(http_port, name);
}

static void
test_listener_recovers(void **state)
{
	/* ipc:// peers that send a whole request and close at once: with nng
	 * 1.5 this can stop the listener's accept loop (nanomsg/nng#1518);
	 * the watchdog must notice and recreate it. */
	float v[DIM];
	memcpy(v, base, sizeof(v));
	Candex__V1__Request req;
	Candex__V1__SearchRequest sr;
	search_req(&req, &sr, v, DIM);
	size_t len = candex__v1__request__get_packed_size(&req);
	uint8_t frame[9 + 4 + 1024];
	assert_true(len <= 1024);
	static const uint8_t hs[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 };
	memcpy(frame, hs, 8);
	frame[8] = 1;
	uint64_t flen = 4 + len;
	for (int b = 0; b < 8; b++)
		frame[9 + b] = (uint8_t) (flen >> (56 - 8 * b));
	static const uint8_t reqid[4] = { 0x80, 0, 0, 9 };
	memcpy(frame + 17, reqid, 4);
	candex__v1__request__pack(&req, frame + 21);
	double restarts0 = metric("candex_listener_restarts_total");
	for (int i = 0; i < 5; i++) {
		int ipc, fd = st_sp_connect(srv.url, &ipc);
		assert_true(fd >= 0);
		assert_true(write(fd, frame, 21 + len) == (ssize_t) (21 + len));
		close(fd);
	}
	/* whatever happened to the listener, a health request over ipc://
	 * must be answered again within a few seconds */
	Candex__V1__Request hreq = CANDEX__V1__REQUEST__INIT;
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	hreq.protocol_version = 1;
	hreq.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	hreq.health = &hr;
	int first_ok = -1, ok = 0;
	uint64_t t0 = cdx_now_us();
	while (!ok && cdx_now_us() - t0 < 15000000u) {
		Candex__V1__Response *resp = st_raw_request(srv.url, &hreq, 500);
		ok = resp != NULL && resp->status == 0;
		if (first_ok < 0)
			first_ok = ok;
		if (resp != NULL)
			candex__v1__response__free_unpacked(resp, NULL);
	}
	assert_true(ok);
	double restarts = metric("candex_listener_restarts_total") - restarts0;
	fprintf(stderr, "listener %s at first; %.0f restart(s); served again after %.1f s\n",
	    first_ok ? "answered" : "did not answer", restarts, (double) (cdx_now_us() - t0) / 1e6);
	if (!first_ok)
		assert_true(restarts >= 1);
	still_serving();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_envelope),
		cmocka_unit_test(test_vectors),
		cmocka_unit_test(test_k_and_params),
		cmocka_unit_test(test_collection_and_model),
		cmocka_unit_test(test_oversized_message),
		cmocka_unit_test(test_reload_on_query_port),
		cmocka_unit_test(test_disconnect_mid_request),
		cmocka_unit_test(test_listener_recovers),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
