/*
 * recommend_server_test.c — the recommender features through a real
 * `candex serve`: takedowns (admin only, from the next request on, kept
 * across restarts and new versions until a build drops the item), 50,000
 * compact exclusions, exploration reproducible from a seed with its
 * propensities checked over many draws, parts with quotas and crowding,
 * the impression log (and a full disk that drops log lines, never
 * requests), and old clients answered exactly as before.
 */
#include "srvtest.h"

#include <math.h>

#define N   3000
#define DIM 8

static char *dir;
static float *base;

/* writes the input (rows [0, n) of base, skipping row skip if >= 0) with
 * ids, keys and attributes, and builds collection coll from it */
static void
build(const char *coll, size_t n, long skip, int episodes)
{
	char *fv, *ids, *keys, *attrs, *out = NULL;
	assert_true(asprintf(&fv, "%s/%s.fvecs", dir, coll) > 0);
	assert_true(asprintf(&ids, "%s/%s.ids", dir, coll) > 0);
	assert_true(asprintf(&keys, "%s/%s.keys", dir, coll) > 0);
	assert_true(asprintf(&attrs, "%s/%s.tsv", dir, coll) > 0);
	FILE *fi = fopen(ids, "w"), *fk = fopen(keys, "w"), *fa = fopen(attrs, "w"), *fx = fopen(fv, "wb");
	fprintf(fa, "artist:group\ttype:enum\n");
	for (size_t i = 0; i < n; i++) {
		if ((long) i == skip)
			continue;
		int32_t d = DIM;
		fwrite(&d, 4, 1, fx);
		fwrite(base + i * DIM, sizeof(float), DIM, fx);
		fprintf(fi, "%zu\n", i);
		fprintf(fk, "%s:%zu\n", coll, i);
		fprintf(fa, "artist-%zu\t%s\n", i % 40, episodes ? "episode" : "track");
	}
	fclose(fi);
	fclose(fk);
	fclose(fa);
	fclose(fx);
	int rc = tu_run(&out,
	    "%s build --quiet --input %s --ids %s --keys %s --attrs %s --collection %s --metric l2 --out "
	    "%s/index "
	    "--factory IVF16,Flat",
	    CANDEX_BIN, fv, ids, keys, attrs, coll, dir);
	if (rc != 0)
		fprintf(stderr, "%s\n", out);
	assert_int_equal(rc, 0);
	free(out);
	free(fv);
	free(ids);
	free(keys);
	free(attrs);
}

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("recserver");
	base = malloc((size_t) N * DIM * sizeof(float));
	tu_clustered(base, N, DIM, 8, 3);
	build("tracks", N, -1, 0);
	build("podcasts", 500, -1, 1);
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	free(base);
	tu_rmdir(dir);
	return 0;
}

static struct cdx_result *
search_key(cdx_client *c, const char *key, uint32_t k)
{
	const char *keys[] = { key };
	struct cdx_query q = { .collection = "tracks", .keys = keys, .nkeys = 1, .k = k, .nprobe = 16 };
	return st_search(c, &q);
}

static int
has_id(const struct cdx_result *r, int64_t id)
{
	for (size_t j = 0; j < r->queries[0].nhits; j++)
		if (r->queries[0].hits[j].id == id)
			return 1;
	return 0;
}

static void
takedown(const char *url, const struct cdx_takedown *t, int want)
{
	cdx_client *a = st_client(url, 20000, 0);
	struct cdx_client_error err;
	struct cdx_takedown_result *res = NULL;
	int rc = cdx_client_takedown(a, t, &res, &err);
	if (rc != want)
		fprintf(stderr, "takedown: %s: %s\n", cdx_errname(rc), err.message);
	assert_int_equal(rc, want);
	cdx_takedown_result_free(res);
	cdx_client_close(a);
}

static void
test_takedowns_persist(void **state)
{
	(void) state;
	struct st_server s;
	assert_int_equal(st_start(&s, dir, "td", NULL), 0);
	cdx_client *c = st_client(s.url, 10000, 2);
	struct cdx_result *r = search_key(c, "tracks:0", 5);
	int64_t by_id = r->queries[0].hits[1].id, by_key = r->queries[0].hits[2].id;
	char key[64];
	snprintf(key, sizeof(key), "tracks:%lld", (long long) by_key);
	cdx_result_free(r);
	const char *keys[] = { key };
	struct cdx_takedown t = {
		.collection = "tracks", .add_ids = &by_id, .n_add_ids = 1, .add_keys = keys, .n_add_keys = 1
	};
	takedown(s.url, &t, CDX_EPERM); /* not on the query port */
	takedown(s.admin, &t, CDX_OK);
	r = search_key(c, "tracks:0", 5); /* the very next request */
	assert_false(has_id(r, by_id) || has_id(r, by_key));
	assert_int_equal(r->queries[0].nhits, 5);
	cdx_result_free(r);
	cdx_client_close(c);

	/* a restart keeps them */
	assert_int_equal(st_stop(&s, SIGTERM), 0);
	assert_int_equal(st_start(&s, dir, "td2", NULL), 0);
	c = st_client(s.url, 10000, 2);
	r = search_key(c, "tracks:0", 5);
	assert_false(has_id(r, by_id) || has_id(r, by_key));
	cdx_result_free(r);

	/* a new version from the same input keeps them */
	build("tracks", N, -1, 0);
	cdx_client *a = st_client(s.admin, 60000, 0);
	struct cdx_client_error err;
	assert_int_equal(cdx_client_reload(a, "tracks", &err), CDX_OK);
	r = search_key(c, "tracks:0", 5);
	assert_false(has_id(r, by_id) || has_id(r, by_key));
	cdx_result_free(r);

	/* a version whose input dropped the item drops its takedown (the other stays) */
	build("tracks", N, (long) by_id, 0);
	char *list = tu_path(dir, "index/tracks/TAKEDOWNS"), *text = NULL;
	size_t len;
	assert_int_equal(cdx_read_file(list, &text, &len), CDX_OK);
	char line[64];
	snprintf(line, sizeof(line), "id\t%lld\n", (long long) by_id);
	assert_null(strstr(text, line));
	assert_non_null(strstr(text, key));
	free(text);
	assert_int_equal(cdx_client_reload(a, "tracks", &err), CDX_OK);
	r = search_key(c, "tracks:0", 5);
	assert_false(has_id(r, by_id) || has_id(r, by_key));
	cdx_result_free(r);
	/* removing it brings it back */
	struct cdx_takedown undo = { .collection = "tracks", .remove_keys = keys, .n_remove_keys = 1 };
	takedown(s.admin, &undo, CDX_OK);
	r = search_key(c, "tracks:0", 5);
	assert_true(has_id(r, by_key));
	cdx_result_free(r);
	struct cdx_takedown nobody = { .collection = "nope" };
	takedown(s.admin, &nobody, CDX_ENOTFOUND);
	build("tracks", N, -1, 0); /* the full input again, for the other tests */
	assert_int_equal(cdx_client_reload(a, "tracks", &err), CDX_OK);
	free(list);
	cdx_client_close(a);
	cdx_client_close(c);
	assert_int_equal(st_stop(&s, SIGTERM), 0);
}

static void
test_compact_exclusions_50k(void **state)
{
	(void) state;
	struct st_server s;
	assert_int_equal(st_start(&s, dir, "ex", NULL), 0);
	cdx_client *c = st_client(s.url, 20000, 0);
	/* every item but ten, and 47,010 ids the collection does not have */
	enum { EX = 50000 };
	int64_t *ex = malloc(EX * sizeof(int64_t));
	size_t n = 0;
	for (int64_t i = 0; i < N; i++)
		if (i % 300 != 7)
			ex[n++] = i;
	for (int64_t i = 0; n < EX; i++)
		ex[n++] = 1000000 + i * 13;
	const char *keys[] = { "tracks:0" };
	struct cdx_query q = { .collection = "tracks",
		.keys = keys,
		.nkeys = 1,
		.k = 10,
		.exclude_ids = ex,
		.n_exclude_ids = EX,
		.compact_excludes = 1 };
	struct cdx_result *r = st_search(c, &q);
	assert_int_equal(r->queries[0].nhits, 10);
	for (size_t j = 0; j < 10; j++)
		assert_int_equal(r->queries[0].hits[j].id % 300, 7);
	assert_true(r->applied & CDX_APPLIED_EXCLUDE_PACKED);
	cdx_result_free(r);
	/* k = 20: only ten are left, and the response says so */
	q.k = 20;
	r = st_search(c, &q);
	assert_int_equal(r->queries[0].nhits, 10);
	assert_true(r->queries[0].exhausted);
	cdx_result_free(r);
	/* the same list as plain ids is far larger on the wire but answered alike */
	q.k = 10;
	q.compact_excludes = 0;
	r = st_search(c, &q);
	assert_int_equal(r->queries[0].nhits, 10);
	cdx_result_free(r);
	/* a malformed packed list is refused with its reason */
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	uint8_t bad[] = { 0x80, 0x80 };
	char *qk[] = { (char *) "tracks:0" };
	sr.collection = (char *) "tracks";
	sr.k = 5;
	sr.n_query_keys = 1;
	sr.query_keys = qk;
	sr.exclude_ids_packed.data = bad;
	sr.exclude_ids_packed.len = sizeof(bad);
	req.protocol_version = 1;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	Candex__V1__Response *resp = st_raw_request(s.url, &req, 5000);
	assert_non_null(resp);
	assert_int_equal(resp->status, CDX_EPROTO);
	assert_non_null(strstr(resp->message, "exclude_ids_packed"));
	candex__v1__response__free_unpacked(resp, NULL);
	free(ex);
	cdx_client_close(c);
	assert_int_equal(st_stop(&s, SIGTERM), 0);
}

static void
test_exploration(void **state)
{
	(void) state;
	enum { K = 10, E = 3, POOL = 20, DRAWS = 600 };
	struct st_server s;
	assert_int_equal(st_start(&s, dir, "explore", NULL), 0);
	cdx_client *c = st_client(s.url, 10000, 2);
	/* the plain ranking the policy draws from */
	struct cdx_result *plain = search_key(c, "tracks:5", K - E + POOL);
	const char *keys[] = { "tracks:5" };
	struct cdx_query q = { .collection = "tracks",
		.keys = keys,
		.nkeys = 1,
		.k = K,
		.nprobe = 16,
		.explore_slots = E,
		.explore_pool = POOL };
	size_t count[E][POOL];
	memset(count, 0, sizeof(count));
	for (uint64_t d = 0; d < DRAWS; d++) {
		q.seed = 1 + d;
		struct cdx_result *r = st_search(c, &q);
		assert_int_equal(r->seed, 1 + d);
		assert_int_equal(r->queries[0].nhits, K);
		for (size_t j = 0; j < K; j++) {
			const struct cdx_client_hit *h = &r->queries[0].hits[j];
			assert_int_equal(h->explore, j >= K - E);
			if (j < K - E) { /* exploit: the plain top, for certain */
				assert_int_equal(h->id, plain->queries[0].hits[j].id);
				assert_true(h->propensity == 1.0);
				continue;
			}
			assert_true(fabs(h->propensity - 1.0 / POOL) < 1e-12);
			assert_true(h->rank > K - E && h->rank <= K - E + POOL);
			assert_int_equal(h->id, plain->queries[0].hits[h->rank - 1].id);
			count[j - (K - E)][h->rank - 1 - (K - E)]++;
		}
		cdx_result_free(r);
	}
	/* the frequencies match the propensity: 5 standard deviations per
	 * cell, and a chi-square per slot (p < 1e-6 to fail by chance) */
	double p = 1.0 / POOL, sd = sqrt(p * (1 - p) / DRAWS);
	for (size_t j = 0; j < E; j++) {
		double chi2 = 0;
		for (size_t a = 0; a < POOL; a++) {
			double f = (double) count[j][a] / DRAWS, dl = (double) count[j][a] - p * DRAWS;
			if (fabs(f - p) > 5 * sd)
				fail_msg("slot %zu item %zu: %.4f drawn, propensity %.4f", j, a, f, p);
			chi2 += dl * dl / (p * DRAWS);
		}
		assert_true(chi2 < (POOL - 1) + 6 * sqrt(2.0 * (POOL - 1)));
	}
	/* the same seed, or the same request id, reproduces the draw */
	q.seed = 0;
	q.request_id = "user-17-home";
	struct cdx_result *a = st_search(c, &q), *b = st_search(c, &q);
	for (size_t j = 0; j < K; j++)
		assert_int_equal(a->queries[0].hits[j].id, b->queries[0].hits[j].id);
	assert_int_equal(a->seed, cdx_xxh64("user-17-home", 12, 0));
	cdx_result_free(a);
	cdx_result_free(b);
	cdx_result_free(plain);
	cdx_client_close(c);
	assert_int_equal(st_stop(&s, SIGTERM), 0);
}

static void
test_parts_and_crowding(void **state)
{
	(void) state;
	struct st_server s;
	assert_int_equal(st_start(&s, dir, "parts", NULL), 0);
	cdx_client *c = st_client(s.url, 10000, 2);
	struct cdx_query_part parts[2]
	    = { { .collection = "tracks", .quota = 6 }, { .collection = "podcasts", .quota = 4 } };
	struct cdx_query q = { .vectors = base,
		.nvectors = 1,
		.dim = DIM,
		.k = 10,
		.parts = parts,
		.nparts = 2,
		.max_per_group = 1 };
	struct cdx_result *r = st_search(c, &q);
	assert_int_equal(r->queries[0].nhits, 10);
	assert_int_equal(r->nparts, 2);
	assert_string_equal(r->parts[0].collection, "tracks");
	size_t tracks = 0;
	int artists[2][40] = { { 0 } };
	for (size_t j = 0; j < 10; j++) {
		const struct cdx_client_hit *h = &r->queries[0].hits[j];
		int t = strcmp(h->collection, "tracks") == 0;
		assert_true(t || strcmp(h->collection, "podcasts") == 0);
		tracks += t;
		assert_int_equal(++artists[t][h->id % 40], 1); /* one per artist, per collection */
		char key[64];
		snprintf(key, sizeof(key), "%s:%lld", h->collection, (long long) h->id);
		assert_string_equal(h->key, key);
	}
	assert_int_equal(tracks, 6);
	cdx_result_free(r);
	/* a part of an unknown collection, and exclusions outside the parts */
	parts[1].collection = "nope";
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_ENOTFOUND);
	assert_non_null(strstr(err.message, "unknown collection 'nope'"));
	parts[1].collection = "podcasts";
	int64_t x = 1;
	q.exclude_ids = &x;
	q.n_exclude_ids = 1;
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_EINVAL);
	/* the settings are checked as for one collection */
	q.exclude_ids = NULL;
	q.n_exclude_ids = 0;
	q.refine_factor = 1000;
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_EINVAL);
	assert_non_null(strstr(err.message, "refine_factor must be in"));
	cdx_client_close(c);
	assert_int_equal(st_stop(&s, SIGTERM), 0);
}

static void
test_impression_log_and_full_disk(void **state)
{
	(void) state;
	struct st_server s;
	char *logdir = tu_path(dir, "impressions"), *args = NULL;
	assert_true(asprintf(&args, "--impression-log %s", logdir) > 0);
	assert_int_equal(st_start(&s, dir, "log", args), 0);
	cdx_client *c = st_client(s.url, 10000, 2);
	const char *keys[] = { "tracks:9" };
	struct cdx_query q = { .collection = "tracks",
		.keys = keys,
		.nkeys = 1,
		.k = 8,
		.explore_slots = 2,
		.request_id = "r" };
	char ids[20][16];
	struct cdx_result *rs[20];
	for (int i = 0; i < 20; i++) {
		snprintf(ids[i], sizeof(ids[i]), "req-%d", i);
		q.request_id = ids[i];
		rs[i] = st_search(c, &q);
	}
	cdx_client_close(c);
	assert_int_equal(st_stop(&s, SIGTERM), 0); /* writes what is buffered */
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s ope --dump --log %s", CANDEX_BIN, logdir), 0);
	for (int i = 0; i < 20; i++)
		for (size_t j = 0; j < 8; j++) {
			const struct cdx_client_hit *h = &rs[i]->queries[0].hits[j];
			char line[512];
			snprintf(line, sizeof(line), "%s\t0\t%zu\ttracks\t%lld\t%.100s\t", ids[i], j,
			    (long long) h->id, h->key);
			if (strstr(out, line) == NULL)
				fail_msg("the log lacks '%s'", line);
		}
	free(out);
	for (int i = 0; i < 20; i++)
		cdx_result_free(rs[i]);

	/* a full disk (a file size limit: writes fail as with ENOSPC): every
	 * request is answered, the lost log lines are counted */
	int port = st_free_port();
	free(args);
	assert_true(asprintf(&args, "--impression-log %s --http-listen 127.0.0.1:%d", logdir, port) > 0);
	struct st_server s2;
	memset(&s2, 0, sizeof(s2));
	snprintf(s2.url, sizeof(s2.url), "ipc://%s/q-full.ipc", dir);
	char *full = NULL;
	assert_true(asprintf(&full, "--index-dir %s/index --listen %s %s", dir, s2.url, args) > 0);
	/* the limit applies to every file the server writes; its own log is small */
	setenv("CANDEX_TEST_ULIMIT", "1", 1);
	char *wrapped = NULL;
	assert_true(asprintf(&wrapped, "%s", full) > 0);
	snprintf(s2.log, sizeof(s2.log), "%s/serve-full.log", dir);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *cmd = NULL;
		setenv("CANDEX_LOG_LEVEL", "info", 1);
		if (asprintf(&cmd, "ulimit -f 64; exec %s serve %s >%s 2>&1", CANDEX_BIN, wrapped, s2.log)
		    < 0)
			_exit(127);
		execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
		_exit(127);
	}
	s2.pid = pid;
	for (int i = 0; i < 3000 && !st_log_has(&s2, "SRV-READY"); i++)
		st_sleep_ms(10);
	assert_true(st_log_has(&s2, "SRV-READY"));
	c = st_client(s2.url, 10000, 2);
	q.k = 50;
	q.explore_slots = 5;
	for (int i = 0; i < 300; i++) {
		q.request_id = NULL;
		struct cdx_result *r = st_search(c, &q);
		assert_int_equal(r->queries[0].nhits, 50);
		cdx_result_free(r);
	}
	double dropped = 0;
	for (int i = 0; i < 200 && dropped == 0; i++) {
		char *body = NULL;
		assert_int_equal(st_http_get(port, "/metrics", &body), 200);
		const char *m = strstr(body, "candex_impressions_dropped_total{reason=\"write_failed\"} ");
		assert_non_null(m);
		dropped
		    = strtod(m + strlen("candex_impressions_dropped_total{reason=\"write_failed\"} "), NULL);
		free(body);
		if (dropped == 0)
			st_sleep_ms(20);
	}
	assert_true(dropped > 0);
	cdx_client_close(c);
	assert_int_equal(st_stop(&s2, SIGTERM), 0);
	/* what was written before the disk filled is still readable */
	assert_int_equal(tu_run(&out, "%s ope --dump --log %s", CANDEX_BIN, logdir), 0);
	free(out);
	free(full);
	free(wrapped);
	free(args);
	free(logdir);
}

static void
test_old_clients_unchanged(void **state)
{
	(void) state;
	struct st_server s;
	assert_int_equal(st_start(&s, dir, "old", NULL), 0);
	/* a request as an old client sends it: no field of the recommender set */
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	char *qk[] = { (char *) "tracks:0" };
	int64_t ex[] = { 1, 2 };
	sr.collection = (char *) "tracks";
	sr.k = 5;
	sr.n_query_keys = 1;
	sr.query_keys = qk;
	sr.n_exclude_ids = 2;
	sr.exclude_ids = ex;
	req.protocol_version = 1;
	req.request_id = (char *) "old";
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	Candex__V1__Response *resp = st_raw_request(s.url, &req, 5000);
	assert_non_null(resp);
	assert_int_equal(resp->status, 0);
	Candex__V1__SearchResponse *out = resp->search;
	assert_int_equal(out->n_results, 1);
	assert_int_equal(out->results[0]->n_hits, 5);
	assert_int_equal(out->applied, 0);
	assert_int_equal(out->seed, 0);
	assert_int_equal(out->n_parts, 0);
	assert_false(out->results[0]->exhausted);
	for (size_t j = 0; j < 5; j++) {
		const Candex__V1__Hit *h = out->results[0]->hits[j];
		assert_true(h->id != 1 && h->id != 2);
		assert_string_equal(h->collection, "");
		assert_false(h->explore);
		assert_true(h->propensity == 0 && h->rank == 0);
	}
	/* so an old response decodes to the same message: its bytes carry no new field */
	Candex__V1__Response *again = st_raw_request(s.url, &req, 5000);
	out->server_time_us = again->search->server_time_us = 0;
	size_t la = candex__v1__response__get_packed_size(resp),
	       lb = candex__v1__response__get_packed_size(again);
	assert_int_equal(la, lb);
	candex__v1__response__free_unpacked(again, NULL);
	candex__v1__response__free_unpacked(resp, NULL);
	/* a filter on a collection built without attributes says why */
	cdx_client *c = st_client(s.url, 10000, 0);
	const char *keys[] = { "tracks:0" };
	struct cdx_query q
	    = { .collection = "tracks", .keys = keys, .nkeys = 1, .k = 5, .filter = "genre = jazz" };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_EINVAL);
	assert_non_null(strstr(err.message, "unknown attribute 'genre'"));
	cdx_client_close(c);
	assert_int_equal(st_stop(&s, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_takedowns_persist),
		cmocka_unit_test(test_compact_exclusions_50k),
		cmocka_unit_test(test_exploration),
		cmocka_unit_test(test_parts_and_crowding),
		cmocka_unit_test(test_impression_log_and_full_disk),
		cmocka_unit_test(test_old_clients_unchanged),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
