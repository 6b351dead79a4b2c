/*
 * server_test.c — `candex serve` answering searches correctly, end to end:
 * indexes built by `candex build`, a real server process, the client
 * library and the `candex query` CLI. Exactness against brute force with a
 * multi-shard IVF-Flat index at full nprobe, several collections, keys,
 * exclusions, batches (serial and parallel), concurrent requests with
 * different nprobe values, recall targets, model versions.
 */
#include "srvtest.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "shard/manifest.h"

#define TN   6000
#define TDIM 32
#define PN   2000
#define PDIM 16

static char *dir;
static float *tracks, *podcasts;
static struct st_server srv;
static int http_port;
static cdx_client *cli;

static int
setup(void **state)
{
	dir = tu_tmpdir("srvtest");
	tracks = st_build(
	    dir, "tracks", TN, TDIM, 11, "l2", "spotify:track:", "--factory IVF32,Flat --shards 3");
	podcasts
	    = st_build(dir, "podcasts", PN, PDIM, 12, "ip", "spotify:episode:", "--model-version podmodel-1");

	/* measured operating points, as `candex recall --save` would write them */
	char vdir[8300];
	snprintf(vdir, sizeof(vdir), "%s/index/tracks/%s", dir, st_current(dir, "tracks"));
	struct cdx_manifest *m = NULL;
	assert_int_equal(cdx_manifest_load(&m, vdir), CDX_OK);
	static const struct cdx_operating_point pts[] = {
		{ .recall_target = 0.5, .recall = 0.55, .k = 10, .nprobe = 1, .p99_ms = 0.1 },
		{ .recall_target = 0.9, .recall = 0.92, .k = 10, .nprobe = 4, .p99_ms = 0.3 },
		{ .recall_target = 0.99, .recall = 0.991, .k = 10, .nprobe = 16, .p99_ms = 0.8 },
		{ .recall_target = 0.999, .recall = 1.0, .k = 10, .nprobe = 32, .p99_ms = 2.0 },
		/* measured at k = 5: only requests for k = 5 may use it (cheap, noisy p99) */
		{ .recall_target = 0.9, .recall = 0.93, .k = 5, .nprobe = 8, .p99_ms = 0.01 },
	};
	free(m->points);
	m->points = malloc(sizeof(pts));
	memcpy(m->points, pts, sizeof(pts));
	m->npoints = 5;
	assert_int_equal(cdx_manifest_save(m, vdir), CDX_OK);
	cdx_manifest_free(m);

	http_port = st_free_port();
	unsetenv("OMP_WAIT_POLICY"); /* test_process_env: the server sets it */
	char extra[64];
	snprintf(extra, sizeof(extra), "--threads 2 --http-listen 127.0.0.1:%d", http_port);
	assert_int_equal(st_start(&srv, dir, "main", extra), 0);
	cli = st_client(srv.url, 10000, 0);
	return 0;
}

static int
teardown(void **state)
{
	cdx_client_close(cli);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	free(tracks);
	free(podcasts);
	tu_rmdir(dir);
	return 0;
}

static struct cdx_query
tq(const float *v, size_t n, uint32_t k, uint32_t nprobe)
{
	struct cdx_query q
	    = { .collection = "tracks", .vectors = v, .nvectors = n, .dim = TDIM, .k = k, .nprobe = nprobe };
	return q;
}

static void
test_exact_multi_shard(void **state)
{
	/* 20 stored items and 20 points on the segment between two items: full nprobe over
	 * IVF-Flat is exact, so the 3 shards' merge must equal brute force */
	enum { NQ = 40, K = 10 };
	float q[NQ * TDIM];
	for (size_t i = 0; i < NQ; i++)
		for (size_t j = 0; j < TDIM; j++)
			q[i * TDIM + j] = i < 20
			    ? tracks[(i * 131) * TDIM + j]
			    : 0.3f * tracks[i * TDIM + j] + 0.7f * tracks[(i + 1000) * TDIM + j];
	struct cdx_query qq = tq(q, NQ, K, 32);
	struct cdx_result *r = st_search(cli, &qq);
	assert_int_equal(r->nqueries, NQ);
	assert_int_equal(r->nprobe, 32);
	assert_string_equal(r->metric, "l2");
	assert_string_equal(r->index_version, st_current(dir, "tracks"));
	for (size_t i = 0; i < NQ; i++) {
		int64_t exact[K];
		tu_exact_knn(tracks, TN, TDIM, q + i * TDIM, K, 0, exact);
		assert_int_equal(r->queries[i].nhits, K);
		for (size_t j = 0; j < K; j++) {
			assert_int_equal(r->queries[i].hits[j].id, exact[j]);
			char key[64];
			snprintf(key, sizeof(key), "spotify:track:%lld", (long long) exact[j]);
			assert_string_equal(r->queries[i].hits[j].key, key);
			if (j > 0)
				assert_true(r->queries[i].hits[j].score >= r->queries[i].hits[j - 1].score);
		}
		if (i < 20) {
			assert_int_equal(r->queries[i].hits[0].id, (int64_t) (i * 131)); /* itself */
			assert_true(r->queries[i].hits[0].score < 1e-3f);
		}
	}
	cdx_result_free(r);
}

static void
test_nprobe_default_and_clamp(void **state)
{
	struct cdx_query q = tq(tracks, 1, 5, 0);
	struct cdx_result *r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 1); /* the manifest's default_nprobe = nlist / 32 */
	assert_true(r->server_time_us > 0);
	cdx_result_free(r);
	q.nprobe = 100000;
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 32); /* clamped to nlist */
	cdx_result_free(r);
}

static void
test_two_collections_and_info(void **state)
{
	struct cdx_query q = {
		.collection = "podcasts", .vectors = podcasts + 5 * PDIM, .nvectors = 1, .dim = PDIM, .k = 8
	};
	struct cdx_result *r = st_search(cli, &q);
	assert_string_equal(r->metric, "ip");
	assert_int_equal(r->queries[0].nhits, 8);
	for (size_t j = 1; j < 8; j++)
		assert_true(r->queries[0].hits[j].score <= r->queries[0].hits[j - 1].score); /* similarity */
	assert_true(strncmp(r->queries[0].hits[0].key, "spotify:episode:", 16) == 0);
	cdx_result_free(r);

	char *json = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_info(cli, NULL, &json, &err), CDX_OK);
	json_error_t je;
	json_t *root = json_loads(json, 0, &je);
	assert_non_null(root);
	json_t *colls = json_object_get(root, "collections");
	assert_int_equal(json_array_size(colls), 2);
	int seen = 0;
	for (size_t i = 0; i < 2; i++) {
		json_t *c = json_array_get(colls, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		if (strcmp(name, "tracks") == 0) {
			assert_int_equal(json_integer_value(json_object_get(c, "items")), TN);
			assert_int_equal(json_integer_value(json_object_get(c, "shards")), 3);
			seen |= 1;
		} else if (strcmp(name, "podcasts") == 0) {
			assert_string_equal(
			    json_string_value(json_object_get(c, "model_version")), "podmodel-1");
			seen |= 2;
		}
	}
	assert_int_equal(seen, 3);
	json_decref(root);
	free(json);
	assert_int_equal(cdx_client_health(cli, &err), CDX_OK);
}

static void
test_keys_and_exclusions(void **state)
{
	const char *key = "spotify:track:77";
	struct cdx_query q = { .collection = "tracks", .keys = &key, .nkeys = 1, .k = 10, .nprobe = 32 };
	struct cdx_result *ref = st_search(cli, &q);
	assert_int_equal(ref->queries[0].nhits, 10);
	assert_int_equal(ref->queries[0].hits[0].id, 77);
	/* the key search equals a search with the stored vector */
	struct cdx_query qv = tq(tracks + 77 * TDIM, 1, 10, 32);
	struct cdx_result *byvec = st_search(cli, &qv);
	for (size_t j = 0; j < 10; j++)
		assert_int_equal(byvec->queries[0].hits[j].id, ref->queries[0].hits[j].id);
	cdx_result_free(byvec);

	/* exclude the item itself by key and the next two by id: still 10 hits */
	int64_t ex_ids[2] = { ref->queries[0].hits[1].id, ref->queries[0].hits[2].id };
	const char *ex_keys[1] = { key };
	q.exclude_ids = ex_ids;
	q.n_exclude_ids = 2;
	q.exclude_keys = ex_keys;
	q.n_exclude_keys = 1;
	struct cdx_result *r = st_search(cli, &q);
	assert_int_equal(r->queries[0].nhits, 10);
	for (size_t j = 0; j < 10; j++) {
		assert_int_not_equal(r->queries[0].hits[j].id, 77);
		assert_int_not_equal(r->queries[0].hits[j].id, ex_ids[0]);
		assert_int_not_equal(r->queries[0].hits[j].id, ex_ids[1]);
	}
	for (size_t j = 0; j < 7; j++)
		assert_int_equal(r->queries[0].hits[j].id, ref->queries[0].hits[j + 3].id);
	cdx_result_free(r);
	cdx_result_free(ref);

	/* an unknown query key is a clear NOT_FOUND */
	const char *bad = "spotify:track:nope";
	struct cdx_query qb = { .collection = "tracks", .keys = &bad, .nkeys = 1, .k = 3 };
	struct cdx_result *rb = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(cli, &qb, &rb, &err), CDX_ENOTFOUND);
	assert_null(rb);
	assert_non_null(strstr(err.message, "spotify:track:nope"));
}

static void
check_batch_equals_single(size_t nq)
{
	float *q = malloc(nq * TDIM * sizeof(float));
	for (size_t i = 0; i < nq * TDIM; i++)
		q[i] = tracks[(i * 7) % (TN * TDIM)] + 0.01f * (float) (i % 5);
	struct cdx_query qq = tq(q, nq, 10, 4);
	struct cdx_result *batch = st_search(cli, &qq);
	assert_int_equal(batch->nqueries, nq);
	for (size_t i = 0; i < nq; i++) {
		struct cdx_query one = tq(q + i * TDIM, 1, 10, 4);
		struct cdx_result *r = st_search(cli, &one);
		assert_int_equal(r->queries[0].nhits, batch->queries[i].nhits);
		for (size_t j = 0; j < r->queries[0].nhits; j++) {
			assert_int_equal(r->queries[0].hits[j].id, batch->queries[i].hits[j].id);
			assert_true(r->queries[0].hits[j].score == batch->queries[i].hits[j].score);
		}
		cdx_result_free(r);
	}
	cdx_result_free(batch);
	free(q);
}

static void
test_batch_equals_single(void **state)
{
	check_batch_equals_single(16);
	check_batch_equals_single(100); /* >= --parallel-batch: may run on every core */
}

#define CQ 40
static const uint32_t cnprobe[4] = { 1, 2, 5, 13 };
static struct cdx_hit_ref {
	int64_t id[CQ][10];
	float score[CQ][10];
} cref[4];
static atomic_int cmismatch;

static void *
nprobe_thread(void *arg)
{
	size_t t = (size_t) (uintptr_t) arg;
	cdx_client *c = st_client(srv.url, 10000, 0);
	for (int round = 0; round < 4; round++) {
		for (size_t i = 0; i < CQ; i++) {
			struct cdx_query q = tq(tracks + (i * 149 % TN) * TDIM, 1, 10, cnprobe[t]);
			struct cdx_result *r = NULL;
			struct cdx_client_error err;
			if (cdx_client_search(c, &q, &r, &err) != CDX_OK || r->queries[0].nhits != 10) {
				atomic_fetch_add(&cmismatch, 1);
				cdx_result_free(r);
				continue;
			}
			for (size_t j = 0; j < 10; j++)
				if (r->queries[0].hits[j].id != cref[t].id[i][j]
				    || r->queries[0].hits[j].score != cref[t].score[i][j])
					atomic_fetch_add(&cmismatch, 1);
			cdx_result_free(r);
		}
	}
	cdx_client_close(c);
	return NULL;
}

static void
test_concurrent_nprobe(void **state)
{
	/* references, one request at a time */
	for (size_t t = 0; t < 4; t++) {
		for (size_t i = 0; i < CQ; i++) {
			struct cdx_query q = tq(tracks + (i * 149 % TN) * TDIM, 1, 10, cnprobe[t]);
			struct cdx_result *r = st_search(cli, &q);
			assert_int_equal(r->nprobe, cnprobe[t]);
			for (size_t j = 0; j < 10; j++) {
				cref[t].id[i][j] = r->queries[0].hits[j].id;
				cref[t].score[i][j] = r->queries[0].hits[j].score;
			}
			cdx_result_free(r);
		}
	}
	/* nprobe must matter, or the test proves nothing */
	int differ = 0;
	for (size_t i = 0; i < CQ; i++)
		differ += memcmp(cref[0].id[i], cref[3].id[i], sizeof(cref[0].id[i])) != 0;
	assert_true(differ > 0);

	pthread_t th[4];
	atomic_store(&cmismatch, 0);
	for (size_t t = 0; t < 4; t++)
		assert_int_equal(pthread_create(&th[t], NULL, nprobe_thread, (void *) (uintptr_t) t), 0);
	for (size_t t = 0; t < 4; t++)
		pthread_join(th[t], NULL);
	assert_int_equal(atomic_load(&cmismatch), 0);
}

static void
test_recall_target(void **state)
{
	struct cdx_query q = tq(tracks, 1, 10, 0);
	q.recall_target = 0.85f;
	struct cdx_result *r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 4);
	assert_true(fabsf(r->recall_target - 0.85f) < 1e-6f);
	assert_true(fabsf(r->expected_recall - 0.92f) < 1e-6f);
	assert_false(r->target_unmet);
	cdx_result_free(r);

	q.recall_target = 0.995f; /* only the 0.999 point reaches it */
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 32);
	assert_true(fabsf(r->expected_recall - 1.0f) < 1e-6f);
	assert_false(r->target_unmet);
	cdx_result_free(r);

	/* none does: the most accurate point, flagged, and counted in /metrics */
	double unmet0 = st_metric(http_port, "candex_recall_target_unmet_total");
	q.recall_target = 0.9999f;
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 32);
	assert_true(r->target_unmet);
	cdx_result_free(r);
	assert_true(st_metric(http_port, "candex_recall_target_unmet_total") == unmet0 + 1);

	/* k = 5 has its own point; k = 3 is in k = 5's tier; k = 7 in k = 10's */
	q.recall_target = 0.9f;
	q.k = 5;
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 8);
	cdx_result_free(r);
	q.k = 3;
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 8);
	cdx_result_free(r);
	q.k = 7;
	q.recall_target = 0.95f; /* the smallest target reaching it at k = 10: 0.99 */
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 16);
	assert_false(r->target_unmet);
	cdx_result_free(r);
	/* k = 20: above every measured k, so nothing says what recall it gets */
	q.k = 20;
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 16);
	assert_true(r->target_unmet);
	cdx_result_free(r);
	q.k = 10;

	q.recall_target = 0.9f;
	q.nprobe = 2; /* an explicit nprobe wins */
	r = st_search(cli, &q);
	assert_int_equal(r->nprobe, 2);
	assert_true(r->recall_target == 0);
	cdx_result_free(r);
}

static void
test_process_env(void **state)
{
	/* Every candex program re-executes itself once with the OpenMP wait
	 * policy set to passive (and the OpenBLAS kernel named). This used to
	 * depend on reading /proc/self/cmdline by its size, which procfs
	 * reports as 0, so it never happened and idle OpenMP workers spun. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/environ", (int) srv.pid);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	char buf[65536];
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[n] = 0;
	int passive = 0, blas = 0;
	for (ssize_t i = 0; i < n; i += (ssize_t) strlen(buf + i) + 1) {
		passive |= strcmp(buf + i, "OMP_WAIT_POLICY=passive") == 0;
		blas |= strncmp(buf + i, "OPENBLAS_CORETYPE=", 18) == 0;
	}
	assert_true(passive);
	assert_true(blas);
}

static void
test_model_version(void **state)
{
	struct cdx_query q = { .collection = "podcasts",
		.vectors = podcasts,
		.nvectors = 1,
		.dim = PDIM,
		.k = 3,
		.model_version = "podmodel-2" };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(cli, &q, &r, &err), CDX_EMODEL);
	assert_non_null(strstr(err.message, "podmodel-1"));
	q.model_version = "podmodel-1";
	r = st_search(cli, &q);
	cdx_result_free(r);
}

static void
write_npy(const char *path, const float *x, size_t n, size_t d)
{
	char header[128];
	int hl = snprintf(
	    header, sizeof(header), "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", n, d);
	size_t total = 10 + (size_t) hl + 1;
	size_t pad = (64 - total % 64) % 64;
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	uint16_t hlen = (uint16_t) (hl + (int) pad + 1);
	fwrite("\x93NUMPY\x01\x00", 1, 8, f);
	fwrite(&hlen, 2, 1, f);
	fwrite(header, 1, (size_t) hl, f);
	for (size_t i = 0; i < pad; i++)
		fputc(' ', f);
	fputc('\n', f);
	fwrite(x, sizeof(float), n * d, f);
	fclose(f);
}

static void
test_cli_query(void **state)
{
	char *out = NULL;
	char fv[4096], npy[4096];
	snprintf(fv, sizeof(fv), "%s/tracks-11.fvecs", dir);
	snprintf(npy, sizeof(npy), "%s/q.npy", dir);

	/* JSON output, from an .fvecs row */
	assert_int_equal(
	    tu_run(&out,
	        "%s query --url %s --collection tracks --vector-file %s --row 3 -k 5 --nprobe 32 --json",
	        CANDEX_BIN, srv.url, fv),
	    0);
	json_error_t je;
	json_t *root = json_loads(out, 0, &je);
	if (root == NULL)
		fprintf(stderr, "not JSON: %s\n", out);
	assert_non_null(root);
	assert_string_equal(
	    json_string_value(json_object_get(root, "index_version")), st_current(dir, "tracks"));
	assert_int_equal(json_integer_value(json_object_get(root, "nprobe")), 32);
	json_t *hits = json_object_get(json_array_get(json_object_get(root, "results"), 0), "hits");
	assert_int_equal(json_array_size(hits), 5);
	json_t *h0 = json_array_get(hits, 0);
	assert_int_equal(json_integer_value(json_object_get(h0, "id")), 3);
	assert_string_equal(json_string_value(json_object_get(h0, "key")), "spotify:track:3");
	assert_non_null(json_object_get(h0, "score"));
	json_decref(root);
	free(out);

	/* table output, from an .npy row */
	write_npy(npy, tracks, 10, TDIM);
	assert_int_equal(
	    tu_run(&out, "%s query --url %s --collection tracks --vector-file %s --row 6 -k 3 --nprobe 32",
	        CANDEX_BIN, srv.url, npy),
	    0);
	assert_non_null(strstr(out, "rank"));
	assert_non_null(strstr(out, "spotify:track:6 "));
	free(out);

	/* stdin: one vector a line */
	char line[TDIM * 20 + 1];
	size_t used = 0;
	for (size_t j = 0; j < TDIM; j++)
		used += (size_t) snprintf(
		    line + used, sizeof(line) - used, "%.9g ", (double) tracks[9 * TDIM + j]);
	assert_int_equal(
	    tu_run(&out, "echo '%s' | %s query --url %s --collection tracks --stdin -k 2 --nprobe 32 --json",
	        line, CANDEX_BIN, srv.url),
	    0);
	assert_non_null(strstr(out, "\"key\": \"spotify:track:9\""));
	free(out);

	/* --key with an exclusion */
	assert_int_equal(tu_run(&out,
	                     "%s query --url %s --collection tracks --key spotify:track:12 --exclude-key "
	                     "spotify:track:12 -k 4 --json",
	                     CANDEX_BIN, srv.url),
	    0);
	assert_null(strstr(out, "\"spotify:track:12\""));
	assert_non_null(strstr(out, "\"hits\""));
	free(out);

	/* errors: exit 1 with the server's message; usage errors exit 2 */
	assert_int_equal(
	    tu_run(&out, "%s query --url %s --collection nope --key x -k 1", CANDEX_BIN, srv.url), 1);
	assert_non_null(strstr(out, "unknown collection 'nope'"));
	free(out);
	assert_int_equal(tu_run(&out, "%s query --url %s --collection tracks -k 1", CANDEX_BIN, srv.url), 2);
	free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_multi_shard),
		cmocka_unit_test(test_nprobe_default_and_clamp),
		cmocka_unit_test(test_two_collections_and_info),
		cmocka_unit_test(test_keys_and_exclusions),
		cmocka_unit_test(test_batch_equals_single),
		cmocka_unit_test(test_concurrent_nprobe),
		cmocka_unit_test(test_recall_target),
		cmocka_unit_test(test_model_version),
		cmocka_unit_test(test_process_env),
		cmocka_unit_test(test_cli_query),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
