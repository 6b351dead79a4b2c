/*
 * metrics_test.c — what operators see: per-collection series (requests by
 * status, latency, queue wait apart from search time, reload failures),
 * build info, liveness (/healthz) apart from readiness (/readyz: every
 * collection of the index directory serving), a memory metric that
 * accounts for what the process really holds, the manifest's collection
 * name checked against its directory, and the query ipc socket's mode.
 */
#include "srvtest.h"

#include <sys/stat.h>

#include "shard/manifest.h"

#define DIM 16

static char *dir;

static int
setup(void **state)
{
	dir = tu_tmpdir("metrics");
	free(st_build(dir, "tracks", 3000, DIM, 1, "l2", "t:", "--factory IVF16,Flat"));
	free(st_build(dir, "podcasts", 1000, DIM, 2, "l2", "p:", "--factory Flat"));
	return 0;
}

static int
teardown(void **state)
{
	tu_rmdir(dir);
	return 0;
}

static char *
get_metrics(int port)
{
	char *body = NULL;
	assert_int_equal(st_http_get(port, "/metrics", &body), 200);
	return body;
}

static int
search(cdx_client *c, const char *coll, uint32_t dim)
{
	float q[DIM + 1] = { 0 }; /* dim may be one too many, for a DIMENSION_MISMATCH */
	struct cdx_query qq = { .collection = coll, .vectors = q, .nvectors = 1, .dim = dim, .k = 5 };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	int rc = cdx_client_search(c, &qq, &r, &err);
	cdx_result_free(r);
	return rc;
}

/* Requests, errors, latency, queue wait and search time per collection;
 * reload failures per collection; build info. */
static void
test_collection_labels(void **state)
{
	int port = st_free_port();
	char args[128];
	snprintf(args, sizeof(args), "--threads 1 --http-listen 127.0.0.1:%d", port);
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "labels", args), 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(search(c, "tracks", DIM), CDX_OK);
	assert_int_equal(search(c, "podcasts", DIM), CDX_OK);
	assert_int_equal(search(c, "podcasts", DIM + 1), CDX_EDIM);
	assert_int_equal(search(c, "nope", DIM), CDX_ENOTFOUND);

	/* a broken new version of podcasts: refused, counted for podcasts */
	char cdir[4200], good[64];
	snprintf(cdir, sizeof(cdir), "%s/index/podcasts", dir);
	snprintf(good, sizeof(good), "%.63s", st_current(dir, "podcasts"));
	assert_int_equal(tu_run(NULL, "cp -r %s/%s %s/vbroken && truncate -s 5000 %s/vbroken/*.cdx", cdir,
	                     good, cdir, cdir),
	    0);
	assert_int_equal(cdx_version_publish(cdir, "vbroken"), CDX_OK);
	cdx_client *admin = st_client(srv.admin, 30000, 0);
	struct cdx_client_error err;
	assert_int_not_equal(cdx_client_reload(admin, NULL, &err), CDX_OK);
	cdx_client_close(admin);
	assert_int_equal(cdx_version_publish(cdir, good), CDX_OK);
	assert_int_equal(tu_run(NULL, "rm -rf %s/vbroken", cdir), 0);

	char *b = get_metrics(port);
	assert_true(
	    st_metric_in(b, "candex_collection_requests_total{collection=\"tracks\",status=\"OK\"}") == 4);
	assert_true(
	    st_metric_in(b, "candex_collection_requests_total{collection=\"podcasts\",status=\"OK\"}") == 1);
	assert_true(st_metric_in(b,
	                "candex_collection_requests_total{collection=\"podcasts\",status=\"DIMENSION_"
	                "MISMATCH\"}")
	    == 1);
	assert_null(strstr(b, "collection=\"nope\"")); /* client names take no slot */
	assert_true(
	    st_metric_in(b, "candex_collection_request_duration_seconds_count{collection=\"tracks\"}") == 4);
	assert_true(
	    st_metric_in(b, "candex_collection_queue_wait_seconds_count{collection=\"tracks\"}") == 4);
	assert_true(st_metric_in(b, "candex_collection_search_seconds_count{collection=\"tracks\"}") == 4);
	double wait = st_metric_in(b, "candex_collection_queue_wait_seconds_sum{collection=\"tracks\"}");
	double total
	    = st_metric_in(b, "candex_collection_request_duration_seconds_sum{collection=\"tracks\"}");
	double searched = st_metric_in(b, "candex_collection_search_seconds_sum{collection=\"tracks\"}");
	assert_true(wait > 0 && searched > 0 && wait + searched <= total + 1e-6);
	assert_true(st_metric_in(b, "candex_collection_reload_failures_total{collection=\"podcasts\"}") == 1);
	assert_true(st_metric_in(b, "candex_collection_reload_failures_total{collection=\"tracks\"}") == 0);
	assert_non_null(strstr(b, "candex_build_info{version=\"" CANDEX_VERSION "\",nng=\""));
	assert_true(st_metric_in(b, "candex_process_resident_anon_bytes") > 0);
	free(b);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

/* /healthz says the process lives; /readyz that every collection of the
 * directory serves. A collection whose only version is broken (here: its
 * manifest names another collection) is live but not ready. */
static void
test_liveness_and_readiness(void **state)
{
	char odir[4200];
	snprintf(odir, sizeof(odir), "%s/index/other", dir);
	/* a copy of tracks under another name: its manifest says "tracks" */
	assert_int_equal(tu_run(NULL, "mkdir -p %s && cp -r %s/index/tracks/%s %s/v1", odir, dir,
	                     st_current(dir, "tracks"), odir),
	    0);
	assert_int_equal(cdx_version_publish(odir, "v1"), CDX_OK);
	int port = st_free_port();
	char args[128], *body = NULL;
	snprintf(args, sizeof(args), "--threads 1 --http-listen 127.0.0.1:%d", port);
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "ready", args), 0);
	assert_int_equal(st_http_get(port, "/healthz", &body), 200);
	free(body);
	assert_int_equal(st_http_get(port, "/readyz", &body), 503);
	assert_non_null(strstr(body, "not serving other"));
	free(body);
	cdx_client *c = st_client(srv.url, 5000, 0);
	assert_int_equal(search(c, "other", DIM), CDX_ENOTFOUND);
	assert_int_equal(search(c, "tracks", DIM), CDX_OK);
	cdx_client_close(c);
	assert_true(st_log_has(&srv, "its manifest names collection 'tracks', not 'other'"));

	/* the broken collection removed and the server rescanned: ready */
	assert_int_equal(tu_run(NULL, "rm -rf %s", odir), 0);
	kill(srv.pid, SIGHUP);
	int code = 0;
	for (int i = 0; i < 300 && code != 200; i++) {
		st_sleep_ms(10);
		code = st_http_get(port, "/readyz", &body);
		free(body);
	}
	assert_int_equal(code, 200);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

/* The query ipc socket gets the mode asked for (default 0660), as the
 * admin socket does. */
static void
test_query_ipc_mode(void **state)
{
	struct st_server srv;
	struct stat st;
	assert_int_equal(st_start(&srv, dir, "mode", "--threads 1 --ipc-mode 0640"), 0);
	assert_int_equal(stat(srv.url + 6, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	assert_int_equal(stat(srv.admin + 6, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_int_equal(st_start(&srv, dir, "mode2", "--threads 1"), 0);
	assert_int_equal(stat(srv.url + 6, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0660);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	char *out = NULL;
	assert_int_not_equal(
	    tu_run(&out, "%s serve --index-dir %s/index --listen ipc://%s/x.ipc --ipc-mode 0999", CANDEX_BIN,
	        dir, dir),
	    0);
	assert_non_null(strstr(out, "--ipc-mode"));
	free(out);
}

/* rss_anon_kb reads RssAnon of pid. */
static long
rss_anon_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
	FILE *f = fopen(path, "r");
	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "RssAnon:", 8) == 0)
			kb = atol(line + 8);
	if (f != NULL)
		fclose(f);
	return kb;
}

/* The collection memory metric accounts for what loading a collection
 * adds to the process's anonymous memory. An L2 IVF-PQ builds a table of
 * nlist x M x 256 floats when it is read (4 MiB here, against 0.13 MB of
 * codes), which the size of the stored parts does not show. */
static void
test_memory_metric(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
	/* ASan's shadow and quarantine grow RSS by more than the program holds */
	fprintf(stderr, "built with AddressSanitizer: the RSS comparison does not apply\n");
	skip();
#endif
	char mdir[3000];
	snprintf(mdir, sizeof(mdir), "%s/mem", dir);
	assert_int_equal(tu_run(NULL, "mkdir -p %s", mdir), 0);
	free(st_build(mdir, "pq", 8000, 32, 3, "l2", "k:", "--factory IVF256,PQ16 --refine none"));
	assert_int_equal(tu_run(NULL, "mv %s/index/pq %s/pq.away", mdir, mdir), 0);
	int port = st_free_port();
	char args[128];
	snprintf(args, sizeof(args), "--threads 1 --http-listen 127.0.0.1:%d", port);
	struct st_server srv;
	assert_int_equal(st_start(&srv, mdir, "mem", args), 0);
	long before = rss_anon_kb(srv.pid);
	assert_int_equal(tu_run(NULL, "mv %s/pq.away %s/index/pq", mdir, mdir), 0);
	cdx_client *admin = st_client(srv.admin, 30000, 0);
	struct cdx_client_error err;
	assert_int_equal(cdx_client_reload(admin, NULL, &err), CDX_OK);
	cdx_client_close(admin);
	long after = rss_anon_kb(srv.pid);
	char *b = get_metrics(port);
	double counted = st_metric_in(b, "candex_collection_memory_bytes{collection=\"pq\"}");
	free(b);
	double grown = (double) (after - before) * 1024.0;
	fprintf(stderr, "memory: metric %.1f MB, anonymous RSS grew %.1f MB\n", counted / 1e6, grown / 1e6);
	assert_true(grown > 4e6);
	assert_true(counted >= 0.85 * grown && counted <= 1.3 * grown);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_collection_labels),
		cmocka_unit_test(test_liveness_and_readiness),
		cmocka_unit_test(test_query_ipc_mode),
		cmocka_unit_test(test_memory_metric),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
