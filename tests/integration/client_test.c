/*
 * client_test.c — the client library against real servers, and the
 * server's admission control and observability: timeouts and retries with
 * backoff, OVERLOADED from a full queue, DEADLINE_EXCEEDED for requests
 * that waited too long, /metrics and /healthz over a raw HTTP GET, the
 * config file, and mutual TLS with certificates made by the openssl CLI.
 */
#include "srvtest.h"

#include <pthread.h>
#include <stdatomic.h>

#define N   20000
#define DIM 32

static char *dir;
static float *base;

static int
setup(void **state)
{
	dir = tu_tmpdir("srvclient");
	base = st_build(dir, "tracks", N, DIM, 31, "l2", "t:", "--factory Flat");
	return 0;
}

static int
teardown(void **state)
{
	free(base);
	tu_rmdir(dir);
	return 0;
}

static void
test_open_errors_and_unreachable(void **state)
{
	cdx_client *c = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_open(&c, "foo://nowhere", NULL, &err), CDX_EINVAL);
	assert_null(c);
	assert_true(strlen(err.message) > 0);
	assert_int_equal(cdx_client_open(&c, "", NULL, &err), CDX_EINVAL);

	/* nobody listens: each attempt times out; retries back off 50, 100 ms */
	char url[4200];
	snprintf(url, sizeof(url), "ipc://%s/nobody.ipc", dir);
	struct cdx_client_options o = { .timeout_ms = 150, .retries = 2, .backoff_ms = 50 };
	assert_int_equal(cdx_client_open(&c, url, &o, &err), CDX_OK);
	struct cdx_query q = { .collection = "tracks", .vectors = base, .nvectors = 1, .dim = DIM, .k = 5 };
	struct cdx_result *r = NULL;
	uint64_t t0 = cdx_now_us();
	int rc = cdx_client_search(c, &q, &r, &err);
	uint64_t ms = (cdx_now_us() - t0) / 1000;
	assert_int_equal(rc, CDX_ETIMEDOUT);
	assert_int_equal(err.code, CDX_ETIMEDOUT);
	assert_null(r);
	assert_true(ms >= 3 * 150 + 50 + 100 - 20);
	assert_true(ms < 3000);
	assert_int_equal(cdx_client_health(c, &err), CDX_ETIMEDOUT);
	cdx_client_close(c);
	cdx_client_close(NULL);
	cdx_result_free(NULL);
}

struct hammer {
	const char *url;
	uint32_t retries;
	uint32_t nq, k;
	uint32_t timeout_ms; /* server deadline */
	atomic_int ok, overloaded, deadline, other;
	char other_msg[200];
};

static void *
hammer_thread(void *arg)
{
	struct hammer *h = arg;
	struct cdx_client_options o = { .timeout_ms = 20000, .retries = h->retries, .backoff_ms = 5 };
	struct cdx_client_error err;
	cdx_client *c;
	assert_int_equal(cdx_client_open(&c, h->url, &o, &err), CDX_OK);
	for (int i = 0; i < 6; i++) {
		struct cdx_query q = { .collection = "tracks",
			.vectors = base + (size_t) i * DIM,
			.nvectors = h->nq,
			.dim = DIM,
			.k = h->k,
			.timeout_ms = h->timeout_ms };
		struct cdx_result *r = NULL;
		int rc = cdx_client_search(c, &q, &r, &err);
		cdx_result_free(r);
		if (rc == CDX_OK)
			atomic_fetch_add(&h->ok, 1);
		else if (rc == CDX_EOVERLOAD && strstr(err.message, "overloaded") != NULL)
			atomic_fetch_add(&h->overloaded, 1);
		else if (rc == CDX_ETIMEDOUT && strstr(err.message, "deadline") != NULL)
			atomic_fetch_add(&h->deadline, 1);
		else {
			atomic_fetch_add(&h->other, 1);
			snprintf(
			    h->other_msg, sizeof(h->other_msg), "%s: %.150s", cdx_errname(rc), err.message);
		}
	}
	cdx_client_close(c);
	return NULL;
}

static void
run_hammer(struct hammer *h, int nthreads)
{
	pthread_t th[16];
	for (int i = 0; i < nthreads; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hammer_thread, h), 0);
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	if (atomic_load(&h->other))
		fprintf(stderr, "unexpected: %s\n", h->other_msg);
}

static void
test_overload_and_deadline(void **state)
{
	struct st_server srv;
	int port = st_free_port();
	char extra[256];
	/* one worker, two queue slots, many contexts: a burst overflows */
	snprintf(
	    extra, sizeof(extra), "--threads 1 --queue-max 2 --contexts 32 --http-listen 127.0.0.1:%d", port);
	assert_int_equal(st_start(&srv, dir, "ovl", extra), 0);

	struct hammer h = { .url = srv.url, .retries = 0, .nq = 32, .k = 100 };
	run_hammer(&h, 12);
	assert_int_equal(atomic_load(&h.other), 0);
	assert_true(atomic_load(&h.ok) > 0);
	assert_true(atomic_load(&h.overloaded) > 0); /* answered at once, not queued */

	/* the same burst with retries and backoff gets through */
	struct hammer h2 = { .url = srv.url, .retries = 50, .nq = 32, .k = 100 };
	run_hammer(&h2, 12);
	assert_int_equal(atomic_load(&h2.ok), 12 * 6);

	/* Requests with a 1 ms deadline behind a heavy one expire unsearched.
	 * One heavy client only, so the two queue slots stay free for the
	 * quick ones: with two, the queue was full whenever a quick request
	 * came, and a fast machine answered all twelve OVERLOADED. */
	struct hammer heavy = { .url = srv.url, .retries = 50, .nq = 512, .k = 100 };
	struct hammer quick = { .url = srv.url, .retries = 0, .nq = 1, .k = 10, .timeout_ms = 1 };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, hammer_thread, &heavy), 0);
	st_sleep_ms(20);
	run_hammer(&quick, 2);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&quick.other), 0);
	assert_true(atomic_load(&quick.deadline) > 0);

	char *body = NULL;
	assert_int_equal(st_http_get(port, "/metrics", &body), 200);
	assert_non_null(strstr(body, "candex_requests_total{status=\"OVERLOADED\"}"));
	assert_non_null(strstr(body, "candex_requests_total{status=\"DEADLINE_EXCEEDED\"}"));
	assert_null(strstr(body, "candex_overloaded_total 0\n"));
	assert_null(strstr(body, "candex_deadline_dropped_total 0\n"));
	free(body);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

/* metric_value finds a sample line "name value" (not the # HELP line). */
static double
metric_value(const char *body, const char *name)
{
	char line[512];
	snprintf(line, sizeof(line), "\n%s", name);
	const char *p = strstr(body, line);
	if (p == NULL)
		fprintf(stderr, "no sample '%s' in:\n%s\n", name, body);
	assert_non_null(p);
	return strtod(p + strlen(line), NULL);
}

static void
test_metrics_and_healthz(void **state)
{
	struct st_server srv;
	int port = st_free_port();
	char extra[128];
	snprintf(extra, sizeof(extra), "--threads 1 --http-listen 127.0.0.1:%d", port);
	assert_int_equal(st_start(&srv, dir, "metrics", extra), 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	for (int i = 0; i < 5; i++) {
		struct cdx_query q
		    = { .collection = "tracks", .vectors = base, .nvectors = 2, .dim = DIM, .k = 3 };
		cdx_result_free(st_search(c, &q));
	}
	struct cdx_query bad = { .collection = "nope", .vectors = base, .nvectors = 1, .dim = DIM, .k = 3 };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(c, &bad, &r, &err), CDX_ENOTFOUND);
	cdx_client_close(c);

	char *body = NULL, key[256];
	assert_int_equal(st_http_get(port, "/healthz", &body), 200);
	assert_non_null(strstr(body, "alive"));
	free(body);
	assert_int_equal(st_http_get(port, "/readyz", &body), 200);
	assert_non_null(strstr(body, "ready"));
	free(body);
	assert_int_equal(st_http_get(port, "/metrics", &body), 200);
	assert_true(metric_value(body, "candex_requests_total{status=\"OK\"} ") >= 5);
	assert_true(metric_value(body, "candex_requests_total{status=\"NOT_FOUND\"} ") == 1);
	assert_true(metric_value(body, "candex_request_duration_seconds_bucket{le=\"+Inf\"} ") >= 6);
	assert_true(metric_value(body, "candex_request_duration_seconds_count ") >= 6);
	assert_true(metric_value(body, "candex_queries_total ") == 10);
	assert_true(metric_value(body, "candex_collection_items{collection=\"tracks\"} ") == N);
	snprintf(key, sizeof(key), "candex_collection_version_info{collection=\"tracks\",version=\"%.63s\"",
	    st_current(dir, "tracks"));
	assert_non_null(strstr(body, key));
	assert_true(
	    metric_value(body, "candex_collection_load_timestamp_seconds{collection=\"tracks\"} ") > 1.6e9);
	assert_true(metric_value(body, "candex_queue_depth ") == 0);
	assert_non_null(strstr(body, "candex_reloads_total{result=\"ok\"}"));
	assert_non_null(strstr(body, "# TYPE candex_request_duration_seconds histogram"));
	free(body);
	assert_int_equal(st_http_get(port, "/nothing-here", &body), 404);
	free(body);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);

	/* an empty index directory: the server lives, but is not ready */
	char empty[4200], cmd[8400];
	snprintf(empty, sizeof(empty), "%s/empty", dir);
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/index", empty);
	assert_int_equal(tu_run(NULL, "%s", cmd), 0);
	port = st_free_port();
	snprintf(extra, sizeof(extra), "--threads 1 --http-listen 127.0.0.1:%d", port);
	assert_int_equal(st_start(&srv, empty, "empty", extra), 0);
	assert_int_equal(st_http_get(port, "/healthz", &body), 200);
	free(body);
	assert_int_equal(st_http_get(port, "/readyz", &body), 503);
	free(body);
	c = st_client(srv.url, 5000, 0);
	assert_int_equal(cdx_client_health(c, &err), CDX_EUNAVAIL);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

static void
test_online_recall(void **state)
{
	struct st_server srv;
	int port = st_free_port();
	char extra[200];
	snprintf(extra, sizeof(extra),
	    "--threads 1 --online-recall-fraction 1 --online-recall-cpu 1 --http-listen 127.0.0.1:%d", port);
	assert_int_equal(st_start(&srv, dir, "online", extra), 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	for (int i = 0; i < 20; i++) {
		struct cdx_query q = { .collection = "tracks",
			.vectors = base + (size_t) (i * 37) * DIM,
			.nvectors = 1,
			.dim = DIM,
			.k = 10 };
		cdx_result_free(st_search(c, &q));
	}
	cdx_client_close(c);
	/* a Flat index is exact: the live recall must come out 1 */
	char *body = NULL;
	const char *line = NULL;
	for (int i = 0; i < 500 && line == NULL; i++) {
		free(body);
		assert_int_equal(st_http_get(port, "/metrics", &body), 200);
		line = strstr(body, "\ncandex_online_recall{collection=\"tracks\",k=\"10\"} ");
		if (line == NULL)
			st_sleep_ms(10);
	}
	assert_non_null(line);
	double v = strtod(strchr(line, '}') + 1, NULL);
	assert_true(v > 0.999 && v <= 1.0);
	free(body);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

static void
test_config_file(void **state)
{
	char conf[4200], url[4300];
	snprintf(conf, sizeof(conf), "%s/candex.conf", dir);
	snprintf(url, sizeof(url), "ipc://%s/conf.ipc", dir);
	FILE *f = fopen(conf, "w");
	assert_non_null(f);
	fprintf(f, "# candex serve configuration\nthreads = 1\nmax-k = 7   # small\n\nlisten = %s\n", url);
	fclose(f);

	struct st_server srv = { 0 };
	char extra[8400];
	snprintf(extra, sizeof(extra), "--config %s --index-dir %s/index", conf, dir);
	assert_int_equal(st_start_args(&srv, dir, "conf", extra), 0);
	cdx_client *c = st_client(url, 5000, 0); /* the file's listen URL */
	struct cdx_query q = { .collection = "tracks", .vectors = base, .nvectors = 1, .dim = DIM, .k = 8 };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_ELIMIT);
	assert_non_null(strstr(err.message, "max-k 7"));
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);

	/* flags override the file */
	snprintf(extra, sizeof(extra), "--config %s --max-k 9", conf);
	assert_int_equal(st_start(&srv, dir, "conf2", extra), 0);
	c = st_client(srv.url, 5000, 0);
	cdx_result_free(st_search(c, &q));
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);

	/* a bad line is a usage error naming the file and line */
	f = fopen(conf, "a");
	fprintf(f, "max-kk = 3\n");
	fclose(f);
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s serve --config %s --index-dir %s/index", CANDEX_BIN, conf, dir), 2);
	assert_non_null(strstr(out, "candex serve: "));
	assert_non_null(strstr(out, "candex.conf:6: unknown option max-kk; see candex serve --help"));
	free(out);
	assert_int_equal(
	    tu_run(&out, "%s serve --index-dir %s/index --listen %s --max-k x", CANDEX_BIN, dir, url), 2);
	assert_non_null(strstr(out,
	    "candex serve: --max-k 'x': expected an integer in [1, 4294967295]; see "
	    "candex serve --help"));
	free(out);
	assert_int_equal(
	    tu_run(&out, "%s serve --index-dir %s/index --listen %s --bogus", CANDEX_BIN, dir, url), 2);
	assert_non_null(strstr(out, "candex serve: unknown option --bogus; see candex serve --help"));
	free(out);
	assert_int_equal(tu_run(&out, "%s serve --help", CANDEX_BIN), 0);
	assert_non_null(strstr(out, "--watch-interval"));
	assert_non_null(strstr(out, "--tls-ca"));
	free(out);
}

static void
test_mutual_tls(void **state)
{
	if (tu_run(NULL, "openssl version") != 0) {
		fprintf(stderr, "openssl CLI not found: skipping the TLS test\n");
		skip();
	}
	char cmd[16384];
	/* a CA, a server certificate for 127.0.0.1/localhost, a client
	 * certificate, and a second CA that nobody trusts */
	snprintf(cmd, sizeof(cmd),
	    "cd %s && set -e; "
	    "for ca in ca rogue; do openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
	    "-nodes "
	    "  -keyout $ca.key -out $ca.pem -days 2 -subj /CN=candex-test-$ca; done; "
	    "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext; "
	    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out "
	    "server.csr -subj /CN=localhost; "
	    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days "
	    "2 -extfile san.ext; "
	    "for who in client:ca intruder:rogue; do n=${who%%:*}; ca=${who#*:}; "
	    "  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $n.key -out "
	    "$n.csr -subj /CN=$n; "
	    "  openssl x509 -req -in $n.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial -out $n.pem -days 2; "
	    "done",
	    dir);
	char *out = NULL;
	int rc = tu_run(&out, "%s", cmd);
	if (rc != 0)
		fprintf(stderr, "%s\n", out);
	free(out);
	assert_int_equal(rc, 0);

	struct st_server srv;
	int port = st_free_port();
	char url[64], extra[16384];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", port);
	snprintf(extra, sizeof(extra),
	    "--threads 1 --listen %s --tls-cert %s/server.pem --tls-key %s/server.key --tls-ca %s/ca.pem",
	    url, dir, dir, dir);
	assert_int_equal(st_start(&srv, dir, "tls", extra), 0);

	char ca[4200], cert[4200], key[4200], icert[4200], ikey[4200];
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	snprintf(cert, sizeof(cert), "%s/client.pem", dir);
	snprintf(key, sizeof(key), "%s/client.key", dir);
	snprintf(icert, sizeof(icert), "%s/intruder.pem", dir);
	snprintf(ikey, sizeof(ikey), "%s/intruder.key", dir);
	struct cdx_query q
	    = { .collection = "tracks", .vectors = base + 5 * DIM, .nvectors = 1, .dim = DIM, .k = 3 };
	struct cdx_client_error err;
	cdx_client *c;

	/* a client with a certificate from the CA: served */
	struct cdx_client_options good = { .timeout_ms = 5000,
		.tls_ca_file = ca,
		.tls_cert_file = cert,
		.tls_key_file = key,
		.tls_server_name = "localhost" };
	assert_int_equal(cdx_client_open(&c, url, &good, &err), CDX_OK);
	struct cdx_result *r = st_search(c, &q);
	assert_int_equal(r->queries[0].hits[0].id, 5);
	cdx_result_free(r);
	cdx_client_close(c);

	/* Refused, and said to be a TLS failure, not a timeout: without a
	 * client certificate, with one from another CA, trusting another CA
	 * than the server's, or naming another host than its certificate. */
	char rogue_ca[4200];
	snprintf(rogue_ca, sizeof(rogue_ca), "%s/rogue.pem", dir);
	const struct cdx_client_options refused[] = {
		{ .timeout_ms = 700, .tls_ca_file = ca, .tls_server_name = "localhost" },
		{ .timeout_ms = 700,
		    .tls_ca_file = ca,
		    .tls_cert_file = icert,
		    .tls_key_file = ikey,
		    .tls_server_name = "localhost" },
		{ .timeout_ms = 700,
		    .tls_ca_file = rogue_ca,
		    .tls_cert_file = cert,
		    .tls_key_file = key,
		    .tls_server_name = "localhost" },
		{ .timeout_ms = 700,
		    .tls_ca_file = ca,
		    .tls_cert_file = cert,
		    .tls_key_file = key,
		    .tls_server_name = "elsewhere.example" },
	};
	for (size_t i = 0; i < CDX_ARRAY_LEN(refused); i++) {
		assert_int_equal(cdx_client_open(&c, url, &refused[i], &err), CDX_OK);
		r = NULL;
		int src = cdx_client_search(c, &q, &r, &err);
		if (src != CDX_ETLS)
			fprintf(stderr, "case %zu: %s: %s\n", i, cdx_errname(src), err.message);
		assert_int_equal(src, CDX_ETLS);
		assert_non_null(strstr(err.message, "TLS"));
		assert_null(r);
		cdx_client_close(c);
	}
	/* no CA: refused at open, unless verification is skipped explicitly */
	struct cdx_client_options noca = { .timeout_ms = 5000, .tls_cert_file = cert, .tls_key_file = key };
	assert_int_equal(cdx_client_open(&c, url, &noca, &err), CDX_EINVAL);
	assert_non_null(strstr(err.message, "tls_insecure"));
	noca.tls_insecure = 1;
	assert_int_equal(cdx_client_open(&c, url, &noca, &err), CDX_OK);
	r = st_search(c, &q);
	cdx_result_free(r);
	cdx_client_close(c);
	/* a plain tcp:// client cannot talk to the TLS port */
	char plain[64];
	snprintf(plain, sizeof(plain), "tcp://127.0.0.1:%d", port);
	c = st_client(plain, 700, 0);
	assert_int_not_equal(cdx_client_search(c, &q, &r, &err), CDX_OK);
	cdx_client_close(c);

	/* `candex query` speaks TLS too */
	assert_int_equal(tu_run(&out,
	                     "%s query --url %s --collection tracks --key t:9 -k 1 --json --tls-ca %s "
	                     "--tls-cert %s --tls-key %s --tls-server-name localhost",
	                     CANDEX_BIN, url, ca, cert, key),
	    0);
	assert_non_null(strstr(out, "\"t:9\""));
	free(out);
	assert_int_equal(
	    tu_run(&out, "%s query --url %s --collection tracks --key t:9 -k 1 --tls-cert %s --tls-key %s",
	        CANDEX_BIN, url, cert, key),
	    1);
	assert_non_null(strstr(out, "--tls-insecure"));
	free(out);
	assert_int_equal(tu_run(&out,
	                     "%s query --url %s --collection tracks --key t:9 -k 1 --json --tls-insecure "
	                     "--tls-cert %s --tls-key %s",
	                     CANDEX_BIN, url, cert, key),
	    0);
	assert_non_null(strstr(out, "\"t:9\""));
	free(out);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_errors_and_unreachable),
		cmocka_unit_test(test_overload_and_deadline),
		cmocka_unit_test(test_metrics_and_healthz),
		cmocka_unit_test(test_online_recall),
		cmocka_unit_test(test_config_file),
		cmocka_unit_test(test_mutual_tls),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
