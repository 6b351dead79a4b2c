/*
 * cmd_demo.c — `candex demo`: the README's main job, end to end on the
 * embedded sample catalogue: sample -> self-tuning build (tracks, podcasts)
 * -> serve -> query through the client library with no tuning settings ->
 * print candidates, recall@10 and recall@100 -> stop the server cleanly.
 *
 * Each step runs the real subcommand as a child process of this same binary,
 * so the demo exercises exactly what an operator runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <candex/client.h>

#include "cli.h"
#include "common/common.h"
#include "recall/recall.h"
#include "shard/manifest.h"

/* run_self runs `candex <args...>` and waits; returns its exit status. */
static int
run_self(char *const args[])
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		execv("/proc/self/exe", args);
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Exact top-k row numbers by brute force, for the recall figure. */
static void
exact_topk(const float *base, size_t n, size_t dim, const float *q, int cosine, size_t k, int64_t *out,
    float *scores)
{
	for (size_t j = 0; j < k; j++) {
		out[j] = -1;
		scores[j] = -INFINITY;
	}
	for (size_t i = 0; i < n; i++) {
		const float *x = base + i * dim;
		double dot = 0, nx = 0;
		for (size_t j = 0; j < dim; j++) {
			dot += (double) x[j] * q[j];
			nx += (double) x[j] * x[j];
		}
		float s = (float) (cosine ? (nx > 0 ? dot / sqrt(nx) : 0) : dot);
		if (s <= scores[k - 1])
			continue;
		size_t pos = k - 1;
		while (pos > 0 && scores[pos - 1] < s) {
			scores[pos] = scores[pos - 1];
			out[pos] = out[pos - 1];
			pos--;
		}
		scores[pos] = s;
		out[pos] = (int64_t) i;
	}
}

struct demo_collection {
	const char *name;
	const char *metric;
	int cosine;
};

static int
query_collection(cdx_client *client, const char *sample_dir, const struct demo_collection *dc,
    size_t nqueries, size_t nshow, size_t k)
{
	char path[PATH_MAX];
	struct cdx_vecs bv = { 0 }, uv = { 0 };
	if (cdx_pathf(path, sizeof(path), "%s/%s.fvecs", sample_dir, dc->name) != CDX_OK
	    || cdx_vecs_read(&bv, path, 0, CDX_INPUT_AUTO, 0, 0) != CDX_OK
	    || cdx_pathf(path, sizeof(path), "%s/users-%s.fvecs", sample_dir, dc->name) != CDX_OK
	    || cdx_vecs_read(&uv, path, 0, CDX_INPUT_AUTO, 0, 0) != CDX_OK || uv.dim != bv.dim) {
		fprintf(stderr, "candex demo: cannot read %s sample files: %s\n", dc->name, cdx_last_error());
		cdx_vecs_fini(&bv);
		cdx_vecs_fini(&uv);
		return -1;
	}
	const float *base = bv.x, *users = uv.x;
	size_t n = bv.n, dim = bv.dim, nu = uv.n;
	nqueries = CDX_MIN(nqueries, nu);
	size_t found = 0;
	double expected = 0;
	double lat_total = 0;
	int rc = 0;
	for (size_t u = 0; u < nqueries; u++) {
		/* no nprobe, refine factor or recall target: the collection's defaults */
		struct cdx_query q = { .collection = dc->name,
			.vectors = users + u * dim,
			.nvectors = 1,
			.dim = (uint32_t) dim,
			.k = (uint32_t) k };
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		uint64_t t0 = cdx_now_us();
		rc = cdx_client_search(client, &q, &r, &err);
		lat_total += (double) (cdx_now_us() - t0);
		if (rc != CDX_OK) {
			fprintf(stderr, "candex demo: search %s: %s\n", dc->name, err.message);
			break;
		}
		int64_t truth[100];
		float ts[100];
		exact_topk(base, n, dim, users + u * dim, dc->cosine, k, truth, ts);
		expected = r->expected_recall;
		const struct cdx_query_result *qr = &r->queries[0];
		for (size_t i = 0; i < qr->nhits; i++)
			for (size_t j = 0; j < k; j++)
				if (qr->hits[i].id == truth[j])
					found++;
		if (u < nshow) {
			printf(
			    "\n%s for user %zu (index %s; default target %.2f at k %zu -> nprobe %u, refine "
			    "x%g, measured recall %.3f):\n",
			    dc->name, u, r->index_version, (double) r->recall_target, k, r->nprobe,
			    (double) r->refine_factor, (double) r->expected_recall);
			printf("  %-4s %-8s %-40s %s\n", "rank", "id", "key", "score");
			for (size_t i = 0; i < qr->nhits && i < 10; i++)
				printf("  %-4zu %-8lld %-40s %.4f\n", i + 1, (long long) qr->hits[i].id,
				    qr->hits[i].key, (double) qr->hits[i].score);
		}
		cdx_result_free(r);
	}
	if (rc == CDX_OK)
		printf("%s: recall@%zu = %.4f over %zu user queries the build never saw (exact search as "
		       "truth; the build measured %.4f), mean latency %.2f ms\n",
		    dc->name, k, (double) found / (double) (nqueries * k), nqueries, expected,
		    lat_total / (double) nqueries / 1000.0);
	cdx_vecs_fini(&bv);
	cdx_vecs_fini(&uv);
	return rc == CDX_OK ? 0 : -1;
}

/* print_choice says what the self-tuning build chose for a collection and
 * what it measured, from the published manifest. */
static void
print_choice(const char *coll_dir)
{
	char vdir[PATH_MAX];
	struct cdx_manifest *m = NULL;
	if (cdx_version_path_resolve(coll_dir, vdir) != CDX_OK || cdx_manifest_load(&m, vdir) != CDX_OK) {
		fprintf(stderr, "candex demo: %s\n", cdx_last_error());
		return;
	}
	printf("   structure: %s%s, refine %s, %llu items\n", m->factory,
	    m->transform == CDX_TRANSFORM_MIPS_L2 ? " (inner product reduced to L2)" : "",
	    cdx_refine_name(m->refine), (unsigned long long) m->items);
	if (m->nlist == 0)
		printf("   exact search: every answer is exact (measured cheaper than any inverted lists)\n");
	for (uint32_t i = 0; m->nlist > 0 && i < m->npoints; i++) {
		const struct cdx_operating_point *p = &m->points[i];
		if (p->check_recall > 0)
			printf("   k %-4u default point: nprobe %u, refine x%g: recall %.4f on the tuning "
			       "users, "
			       "%.4f on users it did not choose with\n",
			    p->k, p->nprobe, (double) p->refine_factor, p->recall, p->check_recall);
	}
	cdx_manifest_free(m);
}

struct demo_opts {
	const char *index_dir;
	size_t queries, show, tracks, podcasts;
};

#define O(f) offsetof(struct demo_opts, f)
static const struct cdx_opt demo_options[] = {
	CDX_OPT_STR_("index-dir", O(index_dir), "DIR", "where indexes go (default index-data)"),
	CDX_OPT_NUM_("queries", CDX_OPT_SIZE_T, O(queries), "N",
	    "user queries per collection for recall (default 200)", 1, 1e6),
	CDX_OPT_NUM_(
	    "show", CDX_OPT_SIZE_T, O(show), "N", "users whose candidates are printed (default 2)", 0, 1e6),
	CDX_OPT_NUM_(
	    "tracks", CDX_OPT_SIZE_T, O(tracks), "N", "sample catalogue size (default 100000)", 1, 1e9),
	CDX_OPT_NUM_(
	    "podcasts", CDX_OPT_SIZE_T, O(podcasts), "N", "sample catalogue size (default 10000)", 1, 1e9),
};
#undef O

static const struct cdx_opt_command demo_command = {
	.prog = "candex demo",
	.head
	= "usage: candex demo [--index-dir DIR] [--queries N] [--show N] [--tracks N] [--podcasts N]\n\n"
	  "Runs the main job end to end on the embedded sample catalogue:\n"
	  "  1. candex sample   -> DIR/sample/ (100k tracks, 10k podcasts, deterministic)\n"
	  "  2. candex build    -> DIR/tracks (ip) and DIR/podcasts (cos): the self-tuning build\n"
	  "     chooses each structure by measurement on the sample's tuning users; the\n"
	  "     structure chosen and the recall reached are printed\n"
	  "  3. candex serve    on an ipc:// socket\n"
	  "  4. queries through the client library with no tuning settings (the collection's\n"
	  "     default target): top-10 candidates with keys, and recall@10 and recall@100 of\n"
	  "     other users, measured against exact search\n"
	  "  5. SIGTERM: the server drains and exits 0\n",
	.opts = demo_options,
	.nopts = CDX_ARRAY_LEN(demo_options),
};

int
cmd_demo(int argc, char **argv)
{
	struct demo_opts o
	    = { .index_dir = "index-data", .queries = 200, .show = 2, .tracks = 100000, .podcasts = 10000 };
	int prc = cdx_opt_command_parse(&demo_command, &o, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	const char *index_dir = o.index_dir;
	size_t nqueries = o.queries, nshow = o.show;
	char ntracks[32], npodcasts[32];
	snprintf(ntracks, sizeof(ntracks), "%zu", o.tracks);
	snprintf(npodcasts, sizeof(npodcasts), "%zu", o.podcasts);
	static const struct demo_collection collections[] = {
		{ "tracks", "ip", 0 },
		{ "podcasts", "cos", 1 },
	};
	char sample_dir[PATH_MAX], input[PATH_MAX], keys[PATH_MAX], url[PATH_MAX];
	if (cdx_pathf(sample_dir, sizeof(sample_dir), "%s/sample", index_dir) != CDX_OK) {
		fprintf(stderr, "candex demo: %s\n", cdx_last_error());
		return CLI_EXIT_USAGE;
	}

	printf("== 1/5 sample catalogue -> %s\n", sample_dir);
	fflush(stdout);
	char *sample_args[]
	    = { "candex", "sample", "--out", sample_dir, "--tracks", ntracks, "--podcasts", npodcasts, NULL };
	if (run_self(sample_args) != 0)
		return CLI_EXIT_FAIL;

	for (size_t i = 0; i < CDX_ARRAY_LEN(collections); i++) {
		const struct demo_collection *dc = &collections[i];
		printf("== 2/5 build %s (%s) -> %s/%s\n", dc->name, dc->metric, index_dir, dc->name);
		fflush(stdout);
		if (cdx_pathf(input, sizeof(input), "%s/%s.fvecs", sample_dir, dc->name) != CDX_OK
		    || cdx_pathf(keys, sizeof(keys), "%s/%s.keys", sample_dir, dc->name) != CDX_OK) {
			fprintf(stderr, "candex demo: %s\n", cdx_last_error());
			return CLI_EXIT_FAIL;
		}
		char tune[PATH_MAX], coll_dir[PATH_MAX];
		if (cdx_pathf(tune, sizeof(tune), "%s/users-%s-tune.fvecs", sample_dir, dc->name) != CDX_OK
		    || cdx_pathf(coll_dir, sizeof(coll_dir), "%s/%s", index_dir, dc->name) != CDX_OK) {
			fprintf(stderr, "candex demo: %s\n", cdx_last_error());
			return CLI_EXIT_FAIL;
		}
		/* the users the demo queries with later are others: users-<c>.fvecs */
		char *build_args[] = { "candex", "build", "--input", input, "--keys", keys, "--collection",
			(char *) dc->name, "--metric", (char *) dc->metric, "--out", (char *) index_dir,
			"--tune-queries", tune, "--model-version", "sample-v1", "--quiet", NULL };
		if (run_self(build_args) != 0) {
			fprintf(stderr, "candex demo: build of %s failed\n", dc->name);
			return CLI_EXIT_FAIL;
		}
		print_choice(coll_dir);
	}

	snprintf(url, sizeof(url), "ipc:///tmp/candex-demo-%d.sock", (int) getpid());
	printf("== 3/5 serve %s on %s\n", index_dir, url);
	fflush(stdout);
	pid_t server = fork();
	if (server < 0)
		return CLI_EXIT_FAIL;
	if (server == 0) {
		execl("/proc/self/exe", "candex", "serve", "--index-dir", index_dir, "--listen", url,
		    (char *) NULL);
		_exit(127);
	}
	cdx_client *client = NULL;
	struct cdx_client_error err;
	int rc = cdx_client_open(&client, url, &(struct cdx_client_options) { .timeout_ms = 2000 }, &err);
	/* The server loads both collections before it listens: wait for health. */
	for (int tries = 0; rc == CDX_OK && tries < 300; tries++) {
		if (cdx_client_health(client, &err) == CDX_OK)
			break;
		if (waitpid(server, NULL, WNOHANG) == server) {
			fprintf(stderr, "candex demo: server exited early\n");
			cdx_client_close(client);
			return CLI_EXIT_FAIL;
		}
		nanosleep(&(struct timespec) { 0, 100 * 1000 * 1000 }, NULL);
	}
	int failed = rc != CDX_OK;
	printf("== 4/5 query through the client library (%zu other users per collection, no tuning "
	       "settings)\n",
	    nqueries);
	for (size_t i = 0; !failed && i < CDX_ARRAY_LEN(collections); i++) {
		failed = query_collection(client, sample_dir, &collections[i], nqueries, nshow, 10) != 0
		    || query_collection(client, sample_dir, &collections[i], nqueries, 0, 100) != 0;
	}
	cdx_client_close(client);

	printf("\n== 5/5 stop the server (SIGTERM)\n");
	fflush(stdout);
	kill(server, SIGTERM);
	int status = 0;
	while (waitpid(server, &status, 0) < 0 && errno == EINTR)
		;
	int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	printf("server exited %s\n", clean ? "cleanly (0)" : "with an error");
	return failed || !clean ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
