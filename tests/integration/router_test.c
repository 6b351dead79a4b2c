/*
 * router_test.c — `candex route` in front of two shard groups of two
 * replicas each (`candex serve --shards 0-1` and `--shards 2-3`), all real
 * processes on ipc:// sockets, next to one `candex serve` holding every
 * shard:
 *   - the router's answers equal the single server's, bit for bit, for ip
 *     (self-tuned: operating points, ip reduced to L2), l2 and cos, with
 *     defaults, k in several tiers, nprobe, refine, recall targets,
 *     exclusions, batches and query keys;
 *   - it speaks the same protocol (health, info, errors, lookups);
 *   - a group that stops answering is cut off at the deadline, and the
 *     answer is partial and says so;
 *   - kill -9 of one replica under load: no request fails;
 *   - a rolling reload under load: no request fails, none is partial, and
 *     no answer mixes two versions (v1 and v2 have disjoint ids);
 *   - a group named by DNS (nss_wrapper answers the test's hosts file):
 *     the router dials what the name resolves to and follows its changes;
 *   - a whole group killed: answers are partial, cover exactly the other
 *     group's items, and equal that group's own answers.
 */
#include "srvtest.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#define NREP     4 /* rep[0..1]: group g0 (shards 0-1); rep[2..3]: g1 (shards 2-3) */
#define NTRACKS  6000
#define NPODS    6000
#define NUSERS   100
#define MAXBATCH 32

static char *dir;
static struct st_server all, rep[NREP], router;
static struct st_server dns_srv[2], dns_router; /* test_dns_membership's (teardown stops them if it fails) */
static int router_http;
static float *users_tracks, *users_pods;
static size_t dim_tracks, dim_pods;
static char **pod_keys;

static float *
read_fvecs(const char *path, size_t *n, size_t *dim)
{
	char *data = NULL;
	size_t len;
	assert_int_equal(cdx_read_file(path, &data, &len), CDX_OK);
	int32_t d;
	memcpy(&d, data, 4);
	size_t row = 4 + (size_t) d * 4;
	*dim = (size_t) d;
	*n = len / row;
	float *x = malloc(*n * *dim * sizeof(float));
	assert_non_null(x);
	for (size_t i = 0; i < *n; i++)
		memcpy(x + i * *dim, data + i * row + 4, *dim * sizeof(float));
	free(data);
	return x;
}

static char **
read_lines(const char *path, size_t n)
{
	char *data = NULL, *save = NULL;
	size_t len;
	assert_int_equal(cdx_read_file(path, &data, &len), CDX_OK);
	char **lines = calloc(n, sizeof(*lines));
	size_t i = 0;
	for (char *l = strtok_r(data, "\n", &save); l != NULL && i < n; l = strtok_r(NULL, "\n", &save))
		lines[i++] = strdup(l);
	free(data);
	assert_int_equal(i, n);
	return lines;
}

static void
build(const char *args)
{
	char *out = NULL;
	int rc = tu_run(&out, "cd %s && %s build --quiet --out index --shards 4 %s", dir, CANDEX_BIN, args);
	if (rc != 0)
		fprintf(stderr, "candex build %s: %s\n", args, out);
	assert_int_equal(rc, 0);
	free(out);
}

static void
start_replica(int i)
{
	char tag[16], args[8192];
	snprintf(tag, sizeof(tag), "rep%d", i);
	memset(&rep[i], 0, sizeof(rep[i]));
	snprintf(rep[i].url, sizeof(rep[i].url), "ipc://%s/rep%d.ipc", dir, i);
	snprintf(rep[i].admin, sizeof(rep[i].admin), "ipc://%s/adm%d.ipc", dir, i);
	snprintf(args, sizeof(args),
	    "--index-dir %s/index --listen %s --admin-listen %s --shards %s --keep-previous 30 --threads 1",
	    dir, rep[i].url, rep[i].admin, i < 2 ? "0-1" : "2-3");
	assert_int_equal(st_start_args(&rep[i], dir, tag, args), 0);
}

/* wait_routed waits until the router routes all three collections to both
 * groups (its /readyz lists no group left out). */
static void
wait_routed(void)
{
	for (int i = 0; i < 1000; i++) {
		char *body = NULL;
		int code = st_http_get(router_http, "/readyz", &body);
		int done = code == 200 && strstr(body, "3 collection(s) routed") != NULL
		    && strstr(body, "left out") == NULL && strstr(body, "(1 group(s)") == NULL;
		free(body);
		if (done)
			return;
		st_sleep_ms(20);
	}
	st_dump_log(&router);
	fail_msg("the router never routed every collection to both groups");
}

static int
setup(void **state)
{
	dir = tu_tmpdir("router");
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s sample --out %s/cat --tracks %d --podcasts %d --users %d",
	                     CANDEX_BIN, dir, NTRACKS, NPODS, NUSERS),
	    0);
	free(out);
	/* ip, self-tuned (IVF-PQ over ip reduced to L2, an sq8 refine store and
	 * operating points at k tiers 10 and 50); cos with an fp16 refine
	 * store; l2 without one */
	build("--input cat/podcasts.fvecs --keys cat/podcasts.keys --collection pods_ip --metric ip "
	      "--refine sq8 --tune-k 10,50 --tune-queries cat/users-podcasts-tune.fvecs "
	      "--tune-max-queries 300 --tune-budget 20");
	build("--input cat/podcasts.fvecs --keys cat/podcasts.keys --collection podcasts --metric cos "
	      "--no-tune --refine fp16");
	build("--input cat/tracks.fvecs --keys cat/tracks.keys --collection tracks_l2 --metric l2 --no-tune");
	size_t n;
	char path[4096];
	snprintf(path, sizeof(path), "%s/cat/users-tracks.fvecs", dir);
	users_tracks = read_fvecs(path, &n, &dim_tracks);
	snprintf(path, sizeof(path), "%s/cat/users-podcasts.fvecs", dir);
	users_pods = read_fvecs(path, &n, &dim_pods);
	snprintf(path, sizeof(path), "%s/cat/podcasts.keys", dir);
	pod_keys = read_lines(path, NPODS);

	assert_int_equal(st_start(&all, dir, "all", "--threads 1"), 0);
	for (int i = 0; i < NREP; i++)
		start_replica(i);
	router_http = st_free_port();
	char args[32768];
	memset(&router, 0, sizeof(router));
	snprintf(router.url, sizeof(router.url), "ipc://%s/router.ipc", dir);
	snprintf(args, sizeof(args),
	    "--listen %s --group g0=%s,%s --group g1=%s,%s --poll-ms 200 --http-listen 127.0.0.1:%d",
	    router.url, rep[0].url, rep[1].url, rep[2].url, rep[3].url, router_http);
	assert_int_equal(st_start_cmd(&router, dir, "r", "route", args, "RT-READY"), 0);
	wait_routed();
	return 0;
}

static int
teardown(void **state)
{
	st_stop(&router, SIGTERM);
	st_stop(&dns_router, SIGKILL);
	st_stop(&dns_srv[0], SIGKILL);
	st_stop(&dns_srv[1], SIGKILL);
	for (int i = 0; i < NREP; i++) {
		kill(rep[i].pid, SIGCONT);
		st_stop(&rep[i], SIGTERM);
	}
	st_stop(&all, SIGTERM);
	for (size_t i = 0; i < NPODS; i++)
		free(pod_keys[i]);
	free(pod_keys);
	free(users_tracks);
	free(users_pods);
	tu_rmdir(dir);
	return 0;
}

/* ---- the same answers -------------------------------------------------- */

static void
assert_same(const struct cdx_result *a, const struct cdx_result *b, const char *what)
{
	assert_string_equal(a->index_version, b->index_version);
	assert_string_equal(a->metric, b->metric);
	assert_int_equal(a->nprobe, b->nprobe);
	assert_true(a->refine_factor == b->refine_factor);
	assert_true(a->recall_target == b->recall_target);
	assert_true(a->expected_recall == b->expected_recall);
	assert_int_equal(a->target_unmet, b->target_unmet);
	assert_int_equal(a->nqueries, b->nqueries);
	assert_true(b->coverage == 1.0f);
	assert_true(b->items_searched == b->items_total && b->items_total > 0);
	for (size_t i = 0; i < a->nqueries; i++) {
		if (a->queries[i].nhits != b->queries[i].nhits)
			fail_msg("%s: query %zu: %zu hits from one server, %zu through the router", what, i,
			    a->queries[i].nhits, b->queries[i].nhits);
		for (size_t j = 0; j < a->queries[i].nhits; j++) {
			const struct cdx_client_hit *x = &a->queries[i].hits[j], *y = &b->queries[i].hits[j];
			if (x->id != y->id || x->score != y->score || strcmp(x->key, y->key) != 0)
				fail_msg("%s: query %zu rank %zu: %lld %.9g %s from one server, %lld %.9g %s "
				         "through the "
				         "router",
				    what, i, j, (long long) x->id, (double) x->score, x->key,
				    (long long) y->id, (double) y->score, y->key);
		}
	}
}

static void
compare(cdx_client *one, cdx_client *rt, const struct cdx_query *q, const char *what)
{
	struct cdx_result *a = st_search(one, q), *b = st_search(rt, q);
	assert_same(a, b, what);
	cdx_result_free(a);
	cdx_result_free(b);
}

/* assert_no_worse: exclusions through the router. Each shard group widens
 * on its own when its shards hold fewer than k rows that pass (search.c),
 * where one server, holding every shard, may not need to: the router's
 * answer may then hold deeper candidates of that group, never fewer, so
 * each rank scores at least as well as one server's and no excluded item
 * appears. */
static void
assert_no_worse(const struct cdx_result *a, const struct cdx_result *b, const int64_t *ex_ids,
    const char *const *ex_keys, size_t nex, const char *what)
{
	int higher = strcmp(a->metric, "l2") != 0;
	assert_string_equal(a->index_version, b->index_version);
	assert_int_equal(a->nqueries, b->nqueries);
	for (size_t i = 0; i < a->nqueries; i++) {
		assert_int_equal(a->queries[i].nhits, b->queries[i].nhits);
		for (size_t j = 0; j < b->queries[i].nhits; j++) {
			const struct cdx_client_hit *x = &a->queries[i].hits[j], *y = &b->queries[i].hits[j];
			/* (PQ scores of one item may differ in the last digits between
			 * probe counts: float sums in another order) */
			double slack = 1e-5 * fabs((double) x->score) + 1e-6;
			if (higher ? y->score < x->score - slack : y->score > x->score + slack)
				fail_msg(
				    "%s: query %zu rank %zu: %.9g from one server, worse %.9g through the "
				    "router",
				    what, i, j, (double) x->score, (double) y->score);
			for (size_t e = 0; e < nex; e++)
				if (y->id == ex_ids[e] || strcmp(y->key, ex_keys[e]) == 0)
					fail_msg("%s: excluded %s returned", what, y->key);
		}
	}
}

static void
test_same_answers(void **state)
{
	cdx_client *one = st_client(all.url, 5000, 0), *rt = st_client(router.url, 5000, 0);
	static const struct {
		const char *coll;
		int pods;
		int refine; /* has a refine store */
	} colls[] = { { "pods_ip", 1, 1 }, { "podcasts", 1, 1 }, { "tracks_l2", 0, 0 } };
	static const uint32_t ks[] = { 1, 10, 37, 50, 120 };
	for (size_t c = 0; c < CDX_ARRAY_LEN(colls); c++) {
		const float *users = colls[c].pods ? users_pods : users_tracks;
		uint32_t dim = (uint32_t) (colls[c].pods ? dim_pods : dim_tracks);
		struct cdx_query q
		    = { .collection = colls[c].coll, .vectors = users, .nvectors = MAXBATCH, .dim = dim };
		char what[128];
		for (size_t i = 0; i < CDX_ARRAY_LEN(ks); i++) {
			q.k = ks[i];
			snprintf(what, sizeof(what), "%s k=%u", colls[c].coll, ks[i]);
			compare(one, rt, &q, what); /* operating points at the request's k tier */
		}
		q.k = 20;
		q.nprobe = 3;
		snprintf(what, sizeof(what), "%s nprobe 3", colls[c].coll);
		compare(one, rt, &q, what);
		if (colls[c].refine) {
			q.refine_factor = 2;
			snprintf(what, sizeof(what), "%s nprobe 3 refine 2", colls[c].coll);
			compare(one, rt, &q, what);
		}
		q.nprobe = 0;
		q.refine_factor = 0;
		q.recall_target = 0.9f;
		snprintf(what, sizeof(what), "%s recall_target 0.9", colls[c].coll);
		compare(one, rt, &q, what);
		q.recall_target = 0;
		/* exclusions: the best hits of the first query, by id and by key */
		struct cdx_query q1 = q;
		q1.nvectors = 1;
		struct cdx_result *base = st_search(one, &q1);
		assert_true(base->queries[0].nhits >= 6);
		int64_t ex_ids[3]
		    = { base->queries[0].hits[0].id, base->queries[0].hits[2].id, 424242424242 };
		const char *ex_keys[3]
		    = { base->queries[0].hits[1].key, base->queries[0].hits[5].key, "no-such-key" };
		q.exclude_ids = ex_ids;
		q.n_exclude_ids = 3;
		q.exclude_keys = ex_keys;
		q.n_exclude_keys = 3;
		snprintf(what, sizeof(what), "%s exclusions", colls[c].coll);
		struct cdx_result *a = st_search(one, &q), *b = st_search(rt, &q);
		assert_no_worse(a, b, ex_ids, ex_keys, 3, what);
		cdx_result_free(a);
		cdx_result_free(b);
		cdx_result_free(base);
	}
	/* by stored items' keys: each key lives in one group only */
	const char *keys[6]
	    = { pod_keys[0], pod_keys[1], pod_keys[7], pod_keys[100], pod_keys[2000], pod_keys[5999] };
	struct cdx_query qk = { .collection = "podcasts", .keys = keys, .nkeys = 6, .k = 15 };
	compare(one, rt, &qk, "podcasts by key");
	qk.collection = "pods_ip";
	compare(one, rt, &qk, "pods_ip by key");
	qk.collection = "podcasts";
	const char *bad[2] = { pod_keys[3], "spotify:show:nope" };
	qk.keys = bad;
	qk.nkeys = 2;
	struct cdx_result *r = NULL;
	struct cdx_client_error e1, e2;
	assert_int_equal(cdx_client_search(one, &qk, &r, &e1), CDX_ENOTFOUND);
	assert_int_equal(cdx_client_search(rt, &qk, &r, &e2), CDX_ENOTFOUND);
	assert_string_equal(e1.message, e2.message);

	/* what needs the merged list is refused by the router, not done wrong */
	struct cdx_query qc = { .collection = "tracks_l2",
		.vectors = users_tracks,
		.nvectors = 1,
		.dim = (uint32_t) dim_tracks,
		.k = 10,
		.max_per_group = 2 };
	assert_int_equal(cdx_client_search(rt, &qc, &r, &e2), CDX_EINVAL);
	assert_non_null(strstr(e2.message, "does not apply crowding"));
	qc.max_per_group = 0;
	qc.explore_slots = 2;
	assert_int_equal(cdx_client_search(rt, &qc, &r, &e2), CDX_EINVAL);
	assert_non_null(strstr(e2.message, "does not apply exploration"));

	/* a shard group alone answers for its own shards, and says so */
	cdx_client *g0 = st_client(rep[0].url, 5000, 0);
	struct cdx_query qg = { .collection = "tracks_l2",
		.vectors = users_tracks,
		.nvectors = 1,
		.dim = (uint32_t) dim_tracks,
		.k = 10 };
	struct cdx_result *part = st_search(g0, &qg);
	assert_true(part->coverage > 0.2f && part->coverage < 0.8f);
	assert_true(part->items_searched < part->items_total && part->items_total == NTRACKS);
	cdx_result_free(part);
	cdx_client_close(g0);
	cdx_client_close(one);
	cdx_client_close(rt);
}

/* ---- the same protocol -------------------------------------------------- */

static Candex__V1__Response *
raw_search(const char *url, const char *coll, uint32_t dim, const float *v, size_t nfloats)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	req.protocol_version = 1;
	req.request_id = (char *) "rid-7";
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	sr.collection = (char *) coll;
	sr.dim = dim;
	sr.vectors = (float *) v;
	sr.n_vectors = nfloats;
	sr.k = 5;
	Candex__V1__Response *resp = st_raw_request(url, &req, 5000);
	assert_non_null(resp);
	assert_string_equal(resp->request_id, "rid-7");
	return resp;
}

static void
assert_same_error(Candex__V1__Response *a, Candex__V1__Response *b)
{
	assert_int_not_equal(a->status, 0);
	assert_int_equal(a->status, b->status);
	assert_string_equal(a->message, b->message);
	candex__v1__response__free_unpacked(a, NULL);
	candex__v1__response__free_unpacked(b, NULL);
}

static void
test_same_protocol(void **state)
{
	cdx_client *rt = st_client(router.url, 5000, 0);
	struct cdx_client_error err;
	assert_int_equal(cdx_client_health(rt, &err), CDX_OK);
	char *info = NULL;
	assert_int_equal(cdx_client_info(rt, "tracks_l2", &info, &err), CDX_OK);
	assert_non_null(strstr(info, "\"items\": 6000"));
	assert_non_null(strstr(info, "\"shards\": 4"));
	assert_non_null(strstr(info, "\"items_served\": 6000"));
	free(info);
	assert_int_equal(cdx_client_info(rt, "nope", &info, &err), CDX_ENOTFOUND);
	assert_int_equal(cdx_client_reload(rt, NULL, &err), CDX_EPERM);
	struct cdx_query q = {
		.collection = "nope", .vectors = users_pods, .nvectors = 1, .dim = (uint32_t) dim_pods, .k = 3
	};
	struct cdx_result *r = NULL;
	assert_int_equal(cdx_client_search(rt, &q, &r, &err), CDX_ENOTFOUND);
	cdx_client_close(rt);

	/* errors about the request come back as one server words them */
	float v[64] = { 0 };
	assert_same_error(
	    raw_search(all.url, "podcasts", 7, v, 7), raw_search(router.url, "podcasts", 7, v, 7));
	v[3] = NAN;
	assert_same_error(raw_search(all.url, "podcasts", (uint32_t) dim_pods, v, dim_pods),
	    raw_search(router.url, "podcasts", (uint32_t) dim_pods, v, dim_pods));
	assert_same_error(raw_search(all.url, "podcasts", (uint32_t) dim_pods, v, 0),
	    raw_search(router.url, "podcasts", (uint32_t) dim_pods, v, 0));
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	req.protocol_version = 2;
	req.request_id = (char *) "rid-7";
	assert_same_error(st_raw_request(all.url, &req, 5000), st_raw_request(router.url, &req, 5000));
	static const char junk[] = "\xff\xff\xff\xff not protobuf";
	assert_same_error(st_raw_call(all.url, junk, sizeof(junk), 5000),
	    st_raw_call(router.url, junk, sizeof(junk), 5000));

	/* lookups: the vectors one server holds, gathered from both groups */
	Candex__V1__LookupRequest lr = CANDEX__V1__LOOKUP_REQUEST__INIT;
	const char *keys[4] = { pod_keys[11], "spotify:show:nope", pod_keys[12], pod_keys[4000] };
	req.protocol_version = 1;
	req.body_case = CANDEX__V1__REQUEST__BODY_LOOKUP;
	req.lookup = &lr;
	lr.collection = (char *) "podcasts";
	lr.keys = (char **) keys;
	lr.n_keys = 4;
	Candex__V1__Response *a = st_raw_request(all.url, &req, 5000),
	                     *b = st_raw_request(router.url, &req, 5000);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(a->status, 0);
	assert_int_equal(b->status, 0);
	assert_int_equal(b->lookup->n_found, 4);
	assert_true(
	    b->lookup->found[0] && !b->lookup->found[1] && b->lookup->found[2] && b->lookup->found[3]);
	assert_int_equal(a->lookup->n_vectors, b->lookup->n_vectors);
	assert_memory_equal(a->lookup->found, b->lookup->found, 4 * sizeof(*a->lookup->found));
	assert_memory_equal(a->lookup->ids, b->lookup->ids, 4 * sizeof(int64_t));
	assert_memory_equal(a->lookup->vectors, b->lookup->vectors, a->lookup->n_vectors * sizeof(float));
	candex__v1__response__free_unpacked(a, NULL);
	candex__v1__response__free_unpacked(b, NULL);
}

/* ---- a slow group is cut off at the deadline ------------------------------- */

static void
test_slow_group_cut_at_deadline(void **state)
{
	cdx_client *rt = st_client(router.url, 5000, 0);
	struct cdx_query q = { .collection = "tracks_l2",
		.vectors = users_tracks,
		.nvectors = 1,
		.dim = (uint32_t) dim_tracks,
		.k = 10,
		.timeout_ms = 800 }; /* g0 must answer within it on 2 busy cores, sanitized */
	wait_routed();
	/* both replicas of g1 stop answering (as a stalled machine would) */
	kill(rep[2].pid, SIGSTOP);
	kill(rep[3].pid, SIGSTOP);
	uint64_t t0 = cdx_now_us();
	struct cdx_result *r = st_search(rt, &q);
	double ms = (double) (cdx_now_us() - t0) / 1000.0;
	kill(rep[2].pid, SIGCONT);
	kill(rep[3].pid, SIGCONT);
	if (ms < 750 || ms > 3000)
		fail_msg("an 800 ms deadline answered after %.0f ms", ms);
	if (!(r->coverage > 0.2f && r->coverage < 0.8f))
		fail_msg("coverage %g after %.0f ms: %s", (double) r->coverage, ms, r->message);
	assert_non_null(strstr(r->message, "shards 2-3 not"));
	assert_non_null(strstr(r->message, "g1"));
	assert_int_equal(r->queries[0].nhits, 10);
	cdx_result_free(r);
	cdx_client_close(rt);
	wait_routed();
}

/* ---- load ------------------------------------------------------------------- */

struct load {
	const char *coll;
	const float *users;
	uint32_t dim;
	int64_t v2_min_id; /* ids of the second version start here (0: one version) */
	atomic_int stop;
	atomic_int ok, failed, partial, mixed;
	pthread_mutex_t mu;
	char versions[4][64];
	int nversions;
	char first_error[300];
};

static void *
load_main(void *arg)
{
	struct load *l = arg;
	cdx_client *c = st_client(router.url, 5000, 0);
	for (unsigned i = (unsigned) (uintptr_t) &i; !atomic_load(&l->stop); i = i * 1103515245u + 12345u) {
		struct cdx_query q = { .collection = l->coll,
			.vectors = l->users + (i >> 8) % NUSERS * l->dim,
			.nvectors = 1,
			.dim = l->dim,
			.k = 10 };
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		int rc = cdx_client_search(c, &q, &r, &err);
		pthread_mutex_lock(&l->mu);
		if (rc != CDX_OK) {
			if (atomic_fetch_add(&l->failed, 1) == 0)
				snprintf(l->first_error, sizeof(l->first_error), "%s: %s", cdx_errname(rc),
				    err.message);
		} else {
			atomic_fetch_add(&l->ok, 1);
			if (r->coverage < 1)
				atomic_fetch_add(&l->partial, 1);
			int v = 0;
			while (v < l->nversions && strcmp(l->versions[v], r->index_version) != 0)
				v++;
			if (v == l->nversions && v < 4)
				snprintf(l->versions[l->nversions++], sizeof(l->versions[0]), "%s",
				    r->index_version);
			/* v1's ids are below v2_min_id, v2's are not: an answer merged
			 * from both versions would hold both kinds */
			int low = 0, high = 0;
			for (size_t j = 0; j < r->queries[0].nhits; j++) {
				low |= r->queries[0].hits[j].id < l->v2_min_id;
				high |= r->queries[0].hits[j].id >= l->v2_min_id;
			}
			if (low && high)
				atomic_fetch_add(&l->mixed, 1);
		}
		pthread_mutex_unlock(&l->mu);
		cdx_result_free(r);
	}
	cdx_client_close(c);
	return NULL;
}

#define NLOAD 3

static void
load_start(struct load *l, pthread_t *th)
{
	pthread_mutex_init(&l->mu, NULL);
	for (int i = 0; i < NLOAD; i++)
		assert_int_equal(pthread_create(&th[i], NULL, load_main, l), 0);
}

static void
load_stop(struct load *l, pthread_t *th)
{
	atomic_store(&l->stop, 1);
	for (int i = 0; i < NLOAD; i++)
		pthread_join(th[i], NULL);
	fprintf(stderr, "load on %s: %d ok, %d failed, %d partial, %d mixed, %d version(s)%s%s\n", l->coll,
	    atomic_load(&l->ok), atomic_load(&l->failed), atomic_load(&l->partial), atomic_load(&l->mixed),
	    l->nversions, l->first_error[0] ? "; first error: " : "", l->first_error);
	pthread_mutex_destroy(&l->mu);
}

static void
test_replica_killed_under_load(void **state)
{
	struct load l = { .coll = "tracks_l2", .users = users_tracks, .dim = (uint32_t) dim_tracks };
	pthread_t th[NLOAD];
	load_start(&l, th);
	st_sleep_ms(600);
	int before = atomic_load(&l.ok);
	assert_int_equal(st_stop(&rep[0], SIGKILL), 128 + SIGKILL);
	st_sleep_ms(1200);
	load_stop(&l, th);
	assert_true(before > 20);
	assert_true(atomic_load(&l.ok) > before + 20); /* it went on serving */
	assert_int_equal(atomic_load(&l.failed), 0);
	assert_int_equal(atomic_load(&l.partial), 0);
	char *body = NULL;
	assert_int_equal(st_http_get(router_http, "/metrics", &body), 200);
	assert_non_null(
	    strstr(body, "candex_router_group_failovers_total{group=\"g0\",reason=\"connection\"}"));
	free(body);
	start_replica(0);
	wait_routed();
}

/* ---- a rolling reload ---------------------------------------------------------- */

static void
test_rolling_reload_under_load(void **state)
{
	char path[4096], v1[64], v2[64];
	snprintf(v1, sizeof(v1), "%.63s", st_current(dir, "podcasts"));
	/* v2: the same catalogue under other ids, so that the two never mix unseen */
	snprintf(path, sizeof(path), "%s/pod-ids-v2.txt", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < NPODS; i++)
		fprintf(f, "%d\n", 1000000 + i);
	fclose(f);
	build("--input cat/podcasts.fvecs --keys cat/podcasts.keys --collection podcasts --metric cos "
	      "--no-tune --refine fp16 --ids pod-ids-v2.txt");
	snprintf(v2, sizeof(v2), "%.63s", st_current(dir, "podcasts"));
	assert_string_not_equal(v1, v2);

	struct load l
	    = { .coll = "podcasts", .users = users_pods, .dim = (uint32_t) dim_pods, .v2_min_id = 1000000 };
	pthread_t th[NLOAD];
	load_start(&l, th);
	st_sleep_ms(300);
	/* one replica after the other, as a Kubernetes rolling update would */
	char loaded[256];
	snprintf(loaded, sizeof(loaded), "loaded version %s", v2);
	for (int i = 0; i < NREP; i++) {
		kill(rep[i].pid, SIGHUP);
		for (int t = 0; t < 3000 && !st_log_has(&rep[i], loaded); t++)
			st_sleep_ms(10);
		assert_true(st_log_has(&rep[i], loaded));
		st_sleep_ms(250);
	}
	/* every replica has v2 now: the router moves to it */
	for (int t = 0; t < 1000; t++) {
		pthread_mutex_lock(&l.mu);
		int moved = l.nversions == 2;
		pthread_mutex_unlock(&l.mu);
		if (moved)
			break;
		st_sleep_ms(20);
	}
	st_sleep_ms(300);
	load_stop(&l, th);
	assert_int_equal(atomic_load(&l.failed), 0);
	assert_int_equal(atomic_load(&l.partial), 0);
	assert_int_equal(atomic_load(&l.mixed), 0);
	assert_int_equal(l.nversions, 2);
	assert_string_equal(l.versions[0], v1);
	assert_string_equal(l.versions[1], v2);
	assert_true(atomic_load(&l.ok) > 50);
}

/* ---- membership from DNS -------------------------------------------------------- */

/* set_hosts makes name resolve to the given addresses (nss_wrapper's hosts
 * file, replaced whole: it reads the file again when it changes). */
static void
set_hosts(const char *path, const char *name, const char *const *addrs, int n)
{
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	FILE *f = fopen(tmp, "w");
	assert_non_null(f);
	for (int i = 0; i < n; i++)
		fprintf(f, "%s %s\n", addrs[i], name);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(rename(tmp, path), 0);
}

/* wait_replicas waits until the router at http_port counts up and down
 * replicas of group, as its /metrics says. */
static void
wait_replicas(int http_port, const char *group, int up, int down, const struct st_server *rt)
{
	char up_series[128], down_series[128];
	snprintf(
	    up_series, sizeof(up_series), "candex_router_group_replicas{group=\"%s\",state=\"up\"}", group);
	snprintf(down_series, sizeof(down_series),
	    "candex_router_group_replicas{group=\"%s\",state=\"down\"}", group);
	double u = -1, d = -1;
	for (int i = 0; i < 1000; i++) {
		char *body = NULL;
		if (st_http_get(http_port, "/metrics", &body) == 200) {
			u = st_metric_in(body, up_series);
			d = st_metric_in(body, down_series);
		}
		free(body);
		if (u == up && d == down)
			return;
		st_sleep_ms(20);
	}
	st_dump_log(rt);
	fail_msg("group %s: %g replica(s) up and %g down, not %d and %d", group, u, d, up, down);
}

/* A group named by DNS (as a Kubernetes headless Service is): the router
 * dials every address the name resolves to, follows the answers as they
 * change, and keeps its replicas when the name stops resolving. The name
 * lives in an nss_wrapper hosts file, so that getaddrinfo() answers what
 * the test says; the servers listen on 127.0.0.2 and 127.0.0.3. */
static void
test_dns_membership(void **state)
{
	static const char *const addrs[2] = { "127.0.0.2", "127.0.0.3" };
	static const char *name = "all.candex.test";
	struct st_server *srv = dns_srv, *rt2 = &dns_router;
	char hosts[4096], conf[4096], args[16384], tag[16];
	int port = st_free_port(), http = st_free_port();
	for (int i = 0; i < 2; i++) {
		memset(&srv[i], 0, sizeof(srv[i]));
		snprintf(srv[i].url, sizeof(srv[i].url), "tcp://%s:%d", addrs[i], port);
		snprintf(args, sizeof(args), "--index-dir %s/index --listen %s --threads 1", dir, srv[i].url);
		snprintf(tag, sizeof(tag), "dns%d", i);
		assert_int_equal(st_start_args(&srv[i], dir, tag, args), 0);
	}
	snprintf(hosts, sizeof(hosts), "%s/hosts", dir);
	set_hosts(hosts, name, addrs, 1);
	/* the router's options from a file, as in the ConfigMap */
	snprintf(conf, sizeof(conf), "%s/route.conf", dir);
	FILE *f = fopen(conf, "w");
	assert_non_null(f);
	fprintf(f,
	    "# candex route configuration\ngroup = all=dns:%s:%d\n--poll-ms = 100\n"
	    "dns-interval = 0.1   # seconds\n",
	    name, port);
	assert_int_equal(fclose(f), 0);

	tu_preload_begin(CANDEX_NSS_WRAPPER_LIB);
	setenv("NSS_WRAPPER_HOSTS", hosts, 1);
	/* nss_wrapper dlopen()s libc with RTLD_DEEPBIND, which ASan refuses */
	setenv("NSS_WRAPPER_DISABLE_DEEPBIND", "1", 1);
	memset(rt2, 0, sizeof(*rt2));
	snprintf(rt2->url, sizeof(rt2->url), "ipc://%s/router-dns.ipc", dir);
	snprintf(
	    args, sizeof(args), "--config %s --listen %s --http-listen 127.0.0.1:%d", conf, rt2->url, http);
	int started = st_start_cmd(rt2, dir, "dns", "route", args, "RT-READY");
	tu_preload_end();
	unsetenv("NSS_WRAPPER_HOSTS");
	unsetenv("NSS_WRAPPER_DISABLE_DEEPBIND");
	assert_int_equal(started, 0);

	wait_replicas(http, "all", 1, 0, rt2);
	cdx_client *one = st_client(all.url, 5000, 0), *rt = st_client(rt2->url, 5000, 0);
	struct cdx_query q = { .collection = "tracks_l2",
		.vectors = users_tracks,
		.nvectors = MAXBATCH,
		.dim = (uint32_t) dim_tracks,
		.k = 20 };
	compare(one, rt, &q, "dns group, one address");
	set_hosts(hosts, name, addrs, 2); /* a pod became ready */
	wait_replicas(http, "all", 2, 0, rt2);
	compare(one, rt, &q, "dns group, two addresses");
	set_hosts(hosts, name, addrs + 1, 1); /* the first one left */
	wait_replicas(http, "all", 1, 0, rt2);
	assert_int_equal(st_stop(&srv[0], SIGKILL), 128 + SIGKILL);
	compare(one, rt, &q, "dns group, the second address");
	set_hosts(hosts, name, addrs, 0); /* the name resolves to nothing: keep what is there */
	for (int i = 0; i < 400 && !st_log_has(rt2, "RT-DNS"); i++)
		st_sleep_ms(50);
	assert_true(st_log_has(rt2, "RT-DNS"));
	wait_replicas(http, "all", 1, 0, rt2);
	compare(one, rt, &q, "dns group, the name gone");
	cdx_client_close(rt);
	cdx_client_close(one);
	st_stop(rt2, SIGTERM);
	st_stop(&srv[1], SIGTERM);
}

/* ---- a whole group down ------------------------------------------------------- */

static void
test_group_killed_partial(void **state)
{
	cdx_client *rt = st_client(router.url, 5000, 0), *g0 = st_client(rep[1].url, 5000, 0);
	struct cdx_query q = { .collection = "tracks_l2",
		.vectors = users_tracks,
		.nvectors = 8,
		.dim = (uint32_t) dim_tracks,
		.k = 25,
		.timeout_ms = 2000 };
	st_stop(&rep[2], SIGKILL);
	st_stop(&rep[3], SIGKILL);
	for (int round = 0; round < 2; round++) {
		/* right away (the poller may not know yet), then once it knows */
		struct cdx_result *r = st_search(rt, &q), *direct = st_search(g0, &q);
		assert_true(r->coverage < 1);
		assert_true(r->coverage == direct->coverage);
		assert_true(r->items_searched == direct->items_searched && r->items_total == NTRACKS);
		assert_non_null(strstr(r->message, "shards 2-3 not"));
		assert_int_equal(r->nqueries, direct->nqueries);
		for (size_t i = 0; i < r->nqueries; i++) {
			assert_int_equal(r->queries[i].nhits, direct->queries[i].nhits);
			for (size_t j = 0; j < r->queries[i].nhits; j++) {
				assert_int_equal(r->queries[i].hits[j].id, direct->queries[i].hits[j].id);
				assert_true(r->queries[i].hits[j].score == direct->queries[i].hits[j].score);
			}
		}
		cdx_result_free(r);
		cdx_result_free(direct);
		st_sleep_ms(1000);
	}
	char *body = NULL;
	assert_int_equal(st_http_get(router_http, "/readyz", &body), 200); /* partial beats nothing */
	assert_non_null(strstr(body, "g1 has no replica up"));
	free(body);
	assert_int_equal(st_http_get(router_http, "/metrics", &body), 200);
	assert_non_null(strstr(body, "candex_router_group_replicas{group=\"g1\",state=\"down\"} 2"));
	assert_non_null(strstr(body, "candex_router_group_requests_total{group=\"g1\",result=\"missed\"}"));
	free(body);
	cdx_client_close(g0);
	cdx_client_close(rt);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_same_answers),
		cmocka_unit_test(test_same_protocol),
		cmocka_unit_test(test_slow_group_cut_at_deadline),
		cmocka_unit_test(test_replica_killed_under_load),
		cmocka_unit_test(test_rolling_reload_under_load),
		cmocka_unit_test(test_dns_membership),
		cmocka_unit_test(test_group_killed_partial),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
