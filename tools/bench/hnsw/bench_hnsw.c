/*
 * bench_hnsw.c — candex against in-process HNSW, side by side, on the same
 * data in one run (issue "Fastest at recall"):
 *
 *   1. hnswlib (M 16, ef_construction 200, one thread, in process): build
 *      time, memory per item, and 10-recall@10 and QPS over a ladder of ef;
 *   2. candex build (unless --index): the default (self-tuning) build, timed;
 *   3. candex in process: recall with no settings (what a request gets by
 *      default), QPS with 1 thread, with --workers threads, and with
 *      --workers threads and --batch queries per call; memory per item;
 *   4. candex served: a `candex serve` child (--workers workers) over ipc://,
 *      --clients client threads, closed loop, single-query requests and
 *      requests of --batch queries; the server's CPU time and context
 *      switches per request;
 *   5. the ratios of the goals: P1a (served against hnswlib at the same
 *      recall, and memory), P1b (batched), P2 (served against in process,
 *      same threads and batch), P4 (build time).
 *
 * Every QPS figure is the best of three windows of --seconds / 3 (this
 * VM's neighbours only ever add time); --rounds repeats the comparison and
 * keeps each figure's best. hnswlib at "the same recall" is interpolated
 * between the two ef that bracket candex's served recall.
 *
 *   bench_hnsw --base B.fvecs --queries Q.fvecs --metric l2 [--gt GT.ivecs] ...
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "candex/client.h"
#include "common/common.h"
#include "hnsw/hnsw_shim.h"
#include "lib/benchlib.h"
#include "recall/recall.h"
#include "search/search.h"
#include "shard/shard.h"

#define MAX_EF     32
#define MAX_BUILDA 32

struct opts {
	const char *base, *queries, *gt, *index, *collection, *candex, *out;
	const char *build_args[MAX_BUILDA];
	int nbuild_args;
	int metric;
	uint32_t k, workers, clients, batch, rounds;
	size_t max_queries;
	double seconds;
	size_t hnsw_m, hnsw_efc;
	uint32_t efs[MAX_EF];
	size_t nefs;
	cpu_set_t server_cpus, client_cpus;
	int pinned;
	int inproc_only; /* --inproc-only: one in-process loop (for a profiler) */
	int served_only; /* --served-only: only the served runs (the request path's cost) */
};

/* --- the data -------------------------------------------------------------- */

struct data {
	struct cdx_vecs base, queries;
	float *base_norm, *queries_norm; /* normalised for cos; else the same arrays */
	struct cdx_recall_space space;
	struct cdx_truth truth;
};

static int
load_data(const struct opts *o, struct data *d)
{
	int rc = cdx_vecs_read(&d->base, o->base, 0, CDX_INPUT_AUTO, 0, 0);
	if (rc == CDX_OK)
		rc = cdx_vecs_read(&d->queries, o->queries, 0, CDX_INPUT_AUTO, 0, 0);
	if (rc != CDX_OK)
		return rc;
	if (o->max_queries > 0 && d->queries.n > o->max_queries)
		d->queries.n = o->max_queries; /* the first max_queries rows */
	if (d->base.dim != d->queries.dim)
		return cdx_error(CDX_EDIM, "base has dimension %u, queries %u", d->base.dim, d->queries.dim);
	uint32_t dim = d->base.dim;
	d->base_norm = d->base.x;
	d->queries_norm = d->queries.x;
	if (o->metric == CDX_METRIC_COS) {
		d->base_norm = malloc(d->base.n * dim * sizeof(float));
		d->queries_norm = malloc(d->queries.n * dim * sizeof(float));
		if (d->base_norm == NULL || d->queries_norm == NULL)
			return cdx_error(CDX_ENOMEM, "normalised copies");
		memcpy(d->base_norm, d->base.x, d->base.n * dim * sizeof(float));
		memcpy(d->queries_norm, d->queries.x, d->queries.n * dim * sizeof(float));
		cdx_normalize_rows(d->base_norm, d->base.n, dim);
		cdx_normalize_rows(d->queries_norm, d->queries.n, dim);
	}
	d->space = (struct cdx_recall_space) { o->metric, dim, d->base.n, d->base_norm };
	if (o->gt != NULL) {
		int32_t *gt = NULL;
		size_t ngt;
		uint32_t gk;
		if ((rc = cdx_ivecs_read(o->gt, &gt, &ngt, &gk)) != CDX_OK)
			return rc;
		if (ngt < d->queries.n)
			rc = cdx_error(CDX_EINVAL, "%s: %zu rows for %zu queries", o->gt, ngt, d->queries.n);
		else
			rc = cdx_truth_from_rows(
			    &d->truth, &d->space, d->queries_norm, d->queries.n, gt, gk, o->k);
		free(gt);
		return rc;
	}
	return cdx_truth_compute(&d->truth, &d->space, d->queries_norm, d->queries.n, o->k, NULL, NULL);
}

static void
data_fini(struct data *d)
{
	if (d->base_norm != d->base.x)
		free(d->base_norm);
	if (d->queries_norm != d->queries.x)
		free(d->queries_norm);
	cdx_vecs_fini(&d->base);
	cdx_vecs_fini(&d->queries);
	cdx_truth_fini(&d->truth);
}

static double
recall_of(const struct opts *o, const struct data *d, const int64_t *ids)
{
	return cdx_recall_mean(&d->truth, &d->space, d->queries_norm, ids, d->queries.n, o->k, o->k, o->k,
	    CDX_RECALL_EPSILON_DEFAULT);
}

/* --- closed loops ------------------------------------------------------------ */

enum loop_kind { LOOP_HNSW, LOOP_INPROC, LOOP_SERVED };

struct loop {
	enum loop_kind kind;
	const struct opts *o;
	const struct data *d;
	const bench_hnsw *h;
	const cdx_collection *c;
	const char *url;
	uint32_t batch;
	atomic_uint_fast64_t queries; /* answered so far, all threads */
	atomic_uint_fast64_t errors;
	atomic_int stop;
};

struct loop_thread {
	struct loop *l;
	unsigned id;
};

static void *
loop_main(void *arg)
{
	struct loop_thread *t = arg;
	struct loop *l = t->l;
	const struct data *d = l->d;
	uint32_t dim = d->base.dim, k = l->o->k, b = l->batch;
	size_t nq = d->queries.n, span = nq - b + 1;
	omp_set_num_threads(1);
	cdx_client *cl = NULL;
	struct cdx_client_error err;
	if (l->kind == LOOP_SERVED) {
		struct cdx_client_options co = { .timeout_ms = 10000 };
		if (cdx_client_open(&cl, l->url, &co, &err) != CDX_OK) {
			atomic_fetch_add(&l->errors, 1);
			return NULL;
		}
	}
	int64_t labels[1024];
	struct cdx_hit *hits = malloc((size_t) b * k * sizeof(*hits));
	for (size_t i = (size_t) t->id * 7919; hits != NULL && !atomic_load(&l->stop); i++) {
		size_t q0 = (i * b) % span;
		int ok = 1;
		if (l->kind == LOOP_HNSW) {
			bench_hnsw_search(l->h, d->queries_norm + q0 * dim, k, labels);
		} else if (l->kind == LOOP_INPROC) {
			struct cdx_search_params p = { .k = k };
			ok = cdx_collection_search(l->c, &p, d->queries.x + q0 * dim, b, hits) == CDX_OK;
		} else {
			struct cdx_query q = { .collection = l->o->collection,
				.vectors = d->queries.x + q0 * dim,
				.nvectors = b,
				.dim = dim,
				.k = k };
			struct cdx_result *r = NULL;
			ok = cdx_client_search(cl, &q, &r, &err) == CDX_OK;
			cdx_result_free(r);
		}
		if (ok)
			atomic_fetch_add(&l->queries, b);
		else
			atomic_fetch_add(&l->errors, 1);
	}
	free(hits);
	cdx_client_close(cl);
	return NULL;
}

/* What one closed-loop measurement gives. */
struct qps {
	double qps;        /* best window, queries per second */
	double cpu_us;     /* this process's CPU per query (µs), over all windows */
	double srv_cpu_us; /* served: server CPU per request (µs), over all windows */
	double ctxsw;      /* served: server context switches per request */
	uint64_t errors;
};

/* run_loop runs nthreads threads of l for o->seconds (after a warm-up of a
 * tenth of it) and returns the best of three windows. */
static struct qps
run_loop(struct loop *l, unsigned nthreads, pid_t server, const cpu_set_t *cpus)
{
	const struct opts *o = l->o;
	struct loop_thread *t = calloc(nthreads, sizeof(*t));
	pthread_t *th = calloc(nthreads, sizeof(*th));
	struct qps r = { 0 };
	atomic_store(&l->queries, 0);
	atomic_store(&l->errors, 0);
	atomic_store(&l->stop, 0);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	if (cpus != NULL)
		pthread_attr_setaffinity_np(&attr, sizeof(cpu_set_t), cpus);
	for (unsigned i = 0; i < nthreads; i++) {
		t[i] = (struct loop_thread) { l, i };
		pthread_create(&th[i], &attr, loop_main, &t[i]);
	}
	pthread_attr_destroy(&attr);
	uint64_t w = (uint64_t) (o->seconds * 1e6 / 3), t0 = cdx_now_us() + w / 3;
	bench_sleep_until(t0);
	uint64_t q0 = atomic_load(&l->queries), qa = q0, ta = cdx_now_us();
	double c0 = server > 0 ? bench_child_cpu_us(server) : 0, p0 = bench_process_cpu_us();
	uint64_t x0 = server > 0 ? bench_child_ctxsw(server) : 0;
	for (int win = 0; win < 3; win++) {
		bench_sleep_until(ta + w);
		uint64_t qb = atomic_load(&l->queries), tb = cdx_now_us();
		double qps = (double) (qb - qa) / ((double) (tb - ta) / 1e6);
		if (qps > r.qps)
			r.qps = qps;
		qa = qb;
		ta = tb;
	}
	if (qa > q0)
		r.cpu_us = (bench_process_cpu_us() - p0) / (double) (qa - q0);
	if (server > 0 && qa > q0) {
		double requests = (double) (qa - q0) / l->batch;
		r.srv_cpu_us = (bench_child_cpu_us(server) - c0) / requests;
		r.ctxsw = (double) (bench_child_ctxsw(server) - x0) / requests;
	}
	atomic_store(&l->stop, 1);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	r.errors = atomic_load(&l->errors);
	free(t);
	free(th);
	return r;
}

/* keep_best keeps the run with the higher QPS (this VM's neighbours only
 * ever take time away). */
static void
keep_best(struct qps *best, struct qps r)
{
	if (r.qps > best->qps)
		*best = r;
}

/* --- hnswlib ------------------------------------------------------------------ */

struct hnsw_row {
	uint32_t ef;
	double recall, qps, cpu_us;
};

static double
hnsw_recall(const struct opts *o, const struct data *d, bench_hnsw *h, uint32_t ef)
{
	size_t nq = d->queries.n;
	int64_t *ids = malloc(nq * o->k * sizeof(int64_t));
	bench_hnsw_set_ef(h, ef);
	for (size_t i = 0; i < nq; i++)
		bench_hnsw_search(h, d->queries_norm + i * d->base.dim, o->k, ids + i * o->k);
	double r = recall_of(o, d, ids);
	free(ids);
	return r;
}

static struct qps
hnsw_qps(const struct opts *o, const struct data *d, bench_hnsw *h, uint32_t ef)
{
	bench_hnsw_set_ef(h, ef);
	struct loop l = { .kind = LOOP_HNSW, .o = o, .d = d, .h = h, .batch = 1 };
	return run_loop(&l, 1, 0, o->pinned ? &o->server_cpus : NULL);
}

static void
keep_best_row(struct hnsw_row *row, struct qps r)
{
	if (r.qps > row->qps) {
		row->qps = r.qps;
		row->cpu_us = r.cpu_us;
	}
}

/* same_recall: hnswlib's QPS at recall r, interpolated (linearly in recall)
 * between the measured ef that bracket it; lo and hi get their rows. */
static double
same_recall(const struct hnsw_row *rows, size_t n, double r, size_t *lo, size_t *hi)
{
	*lo = *hi = n - 1;
	for (size_t i = 0; i < n; i++) {
		if (rows[i].recall >= r) {
			*hi = i;
			*lo = i > 0 ? i - 1 : i;
			break;
		}
	}
	const struct hnsw_row *a = &rows[*lo], *b = &rows[*hi];
	if (*lo == *hi || b->recall <= a->recall)
		return b->qps;
	double f = (r - a->recall) / (b->recall - a->recall);
	if (f < 0)
		f = 0;
	return a->qps + f * (b->qps - a->qps);
}

/* --- candex -------------------------------------------------------------------- */

/* build_candex runs `candex build` into dir and returns its wall-clock
 * seconds (and peak RSS), or a negative number. */
static double
build_candex(const struct opts *o, const char *dir, uint64_t *peak_rss)
{
	const char *argv[32 + MAX_BUILDA];
	int a = 0;
	argv[a++] = o->candex;
	argv[a++] = "build";
	argv[a++] = "--input";
	argv[a++] = o->base;
	argv[a++] = "--collection";
	argv[a++] = o->collection;
	argv[a++] = "--metric";
	argv[a++] = cdx_metric_name(o->metric);
	argv[a++] = "--out";
	argv[a++] = dir;
	argv[a++] = "--quiet";
	for (int i = 0; i < o->nbuild_args; i++)
		argv[a++] = o->build_args[i];
	argv[a] = NULL;
	uint64_t t0 = cdx_now_us();
	pid_t pid = fork();
	if (pid == 0) {
		execv(o->candex, (char *const *) argv);
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (pid < 0 || wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -1;
	*peak_rss = (uint64_t) ru.ru_maxrss * 1024;
	return (double) (cdx_now_us() - t0) / 1e6;
}

/* default_recall: candex's recall with no settings (the collection's
 * default target) over every query, in process; *used says what it used. */
static double
default_recall(
    const struct opts *o, const struct data *d, const cdx_collection *c, struct cdx_search_used *used)
{
	size_t nq = d->queries.n;
	int64_t *ids = malloc(nq * o->k * sizeof(int64_t));
	struct cdx_hit *hits = malloc(o->k * sizeof(*hits));
	for (size_t i = 0; i < nq; i++) {
		struct cdx_search_params p = { .k = o->k, .used = used };
		if (cdx_collection_search(c, &p, d->queries.x + i * d->base.dim, 1, hits) != CDX_OK) {
			fprintf(stderr, "bench_hnsw: %s\n", cdx_last_error());
			exit(1);
		}
		for (uint32_t j = 0; j < o->k; j++)
			ids[i * o->k + j] = hits[j].id;
	}
	double r = recall_of(o, d, ids);
	free(ids);
	free(hits);
	return r;
}

static double
served_recall(const struct opts *o, const struct data *d, const char *url)
{
	size_t nq = d->queries.n;
	int64_t *ids = malloc(nq * o->k * sizeof(int64_t));
	struct cdx_client_options co = { .timeout_ms = 10000 };
	struct cdx_client_error err;
	cdx_client *cl = NULL;
	if (cdx_client_open(&cl, url, &co, &err) != CDX_OK) {
		fprintf(stderr, "bench_hnsw: %s: %s\n", url, err.message);
		exit(1);
	}
	for (size_t i = 0; i < nq; i++) {
		struct cdx_query q = { .collection = o->collection,
			.vectors = d->queries.x + i * d->base.dim,
			.nvectors = 1,
			.dim = d->base.dim,
			.k = o->k };
		struct cdx_result *r = NULL;
		if (cdx_client_search(cl, &q, &r, &err) != CDX_OK) {
			fprintf(stderr, "bench_hnsw: served search: %s\n", err.message);
			exit(1);
		}
		for (uint32_t j = 0; j < o->k; j++)
			ids[i * o->k + j] = j < r->queries[0].nhits ? r->queries[0].hits[j].id : -1;
		cdx_result_free(r);
	}
	cdx_client_close(cl);
	double rec = recall_of(o, d, ids);
	free(ids);
	return rec;
}

/* start_served starts a `candex serve` child on index_dir over an ipc://
 * URL (written to ipc) and measures its recall (*rec); exits on failure. */
static pid_t
start_served(
    const struct opts *o, const struct data *d, const char *index_dir, char *ipc, size_t size, double *rec)
{
	snprintf(ipc, size, "ipc:///tmp/candex-bench-hnsw-%d.ipc", (int) getpid());
	struct bench_serve so = { .candex = o->candex,
		.index_dir = index_dir,
		.urls = { ipc },
		.nurls = 1,
		.threads = o->workers,
		.queue_max = 4 * o->clients,
		.max_k = 1000,
		.max_batch = o->batch > 1024 ? o->batch : 0,
		.cpus = o->pinned ? &o->server_cpus : NULL };
	pid_t srv = bench_serve_start(&so);
	if (srv <= 0) {
		fprintf(stderr, "bench_hnsw: candex serve did not come up\n");
		exit(1);
	}
	*rec = served_recall(o, d, ipc);
	printf("candex served: %u-recall@%u %.4f; server RSS %.0f MiB\n\n", o->k, o->k, *rec,
	    (double) bench_child_rss_bytes(srv) / (1 << 20));
	return srv;
}

/* print_served prints the served rows of the table: single queries (sv1)
 * and batches (svb). */
static void
print_served(const struct opts *o, double rec, const struct qps *sv1, const struct qps *svb)
{
	printf("| candex served, %u workers, %u clients | %.4f | %.0f | %.1f server + %.1f clients | %.1f "
	       "context switches a request in the server |\n",
	    o->workers, o->clients, rec, sv1->qps, sv1->srv_cpu_us, sv1->cpu_us, sv1->ctxsw);
	printf("| candex served, batch %u | | %.0f | %.1f server + %.1f clients | %.1f context switches a "
	       "request in the server |\n",
	    o->batch, svb->qps, svb->srv_cpu_us / o->batch, svb->cpu_us, svb->ctxsw);
}

/* served_loops runs the served comparison --rounds times, keeping each
 * figure's best: single queries into *sv1, batches of --batch into *svb. */
static void
served_loops(
    const struct opts *o, const struct data *d, const char *ipc, pid_t srv, struct qps *sv1, struct qps *svb)
{
	const cpu_set_t *ccpu = o->pinned ? &o->client_cpus : NULL;
	struct loop s = { .kind = LOOP_SERVED, .o = o, .d = d, .url = ipc, .batch = 1 };
	keep_best(sv1, run_loop(&s, o->clients, srv, ccpu));
	s.batch = o->batch;
	keep_best(svb, run_loop(&s, o->clients, srv, ccpu));
}

/* --- main ------------------------------------------------------------------------ */

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: bench_hnsw --base B.fvecs --queries Q.fvecs --metric l2|ip|cos [options]\n"
	    "  --gt GT.ivecs        exact neighbours (base rows); default: computed exactly\n"
	    "  --max-queries N      the first N queries [1000]\n"
	    "  --k K                k of k-recall@k and of every search [10]\n"
	    "  --index DIR          an index directory holding --collection (default: run the\n"
	    "                       default `candex build` into --out, timed: P4)\n"
	    "  --out DIR            where that build goes [a temporary directory, removed]\n"
	    "  --collection NAME    [bench]\n"
	    "  --build-arg ARG      one more argument for candex build (repeat it)\n"
	    "  --workers N          server workers and in-process threads [2]\n"
	    "  --clients N          client threads of the served runs [2 x workers]\n"
	    "  --batch N            queries per request of the batched runs (P1b) [16]\n"
	    "  --seconds S          time of each QPS figure (best of 3 windows) [3]\n"
	    "  --rounds R           repeat the comparison R times, keep each figure's best [1]\n"
	    "  --hnsw-m M           [16]\n"
	    "  --hnsw-efc E         ef_construction [200]\n"
	    "  --ef LIST            hnswlib ef ladder, comma-separated [10,12,16,...,1024]\n"
	    "  --server-cpus LIST   pin the server, the in-process runs and hnswlib to these CPUs\n"
	    "  --client-cpus LIST   pin the client threads to these CPUs (with --server-cpus)\n"
	    "  --candex PATH        the candex binary [next to bench_hnsw]\n"
	    "  --inproc-only        only candex in process (needs --index): recall and one QPS\n"
	    "                       figure, 1 thread, --batch queries per call (to profile it)\n"
	    "  --served-only        only candex served (needs --index): recall, then single-query\n"
	    "                       and --batch requests, with the server's CPU and context\n"
	    "                       switches per request (the request path's fixed cost)\n");
}

static int
parse_efs(const char *s, struct opts *o)
{
	o->nefs = 0;
	while (*s && o->nefs < MAX_EF) {
		char *e;
		long v = strtol(s, &e, 10);
		if (e == s || v <= 0)
			return -1;
		o->efs[o->nefs++] = (uint32_t) v;
		s = *e == ',' ? e + 1 : e;
		if (*e != ',' && *e != '\0')
			return -1;
	}
	return o->nefs > 0 ? 0 : -1;
}

static void
fail(const char *what)
{
	fprintf(stderr, "bench_hnsw: %s: %s\n", what, cdx_last_error());
	exit(1);
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	struct opts o = { .k = 10,
		.workers = 2,
		.batch = 16,
		.rounds = 1,
		.max_queries = 1000,
		.seconds = 3,
		.hnsw_m = 16,
		.hnsw_efc = 200,
		.collection = "bench",
		.metric = -1 };
	parse_efs("10,12,16,20,24,32,40,48,64,80,96,128,160,192,256,320,384,512,768,1024", &o);
	const char *server_cpus = NULL, *client_cpus = NULL;
	static const struct option longopts[] = {
		{ "base", required_argument, NULL, 'B' },
		{ "queries", required_argument, NULL, 'Q' },
		{ "metric", required_argument, NULL, 'm' },
		{ "gt", required_argument, NULL, 'g' },
		{ "max-queries", required_argument, NULL, 'n' },
		{ "k", required_argument, NULL, 'k' },
		{ "index", required_argument, NULL, 'i' },
		{ "out", required_argument, NULL, 'o' },
		{ "collection", required_argument, NULL, 'c' },
		{ "build-arg", required_argument, NULL, 'a' },
		{ "workers", required_argument, NULL, 'w' },
		{ "clients", required_argument, NULL, 'C' },
		{ "batch", required_argument, NULL, 'b' },
		{ "seconds", required_argument, NULL, 's' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "hnsw-m", required_argument, NULL, 'M' },
		{ "hnsw-efc", required_argument, NULL, 'E' },
		{ "ef", required_argument, NULL, 'e' },
		{ "server-cpus", required_argument, NULL, 'S' },
		{ "client-cpus", required_argument, NULL, 'L' },
		{ "candex", required_argument, NULL, 'x' },
		{ "inproc-only", no_argument, NULL, 'P' },
		{ "served-only", no_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'B':
			o.base = optarg;
			break;
		case 'Q':
			o.queries = optarg;
			break;
		case 'm':
			if (cdx_metric_parse(optarg, &o.metric) != CDX_OK) {
				fprintf(stderr, "bench_hnsw: --metric l2, ip or cos\n");
				return 2;
			}
			break;
		case 'g':
			o.gt = optarg;
			break;
		case 'n':
			o.max_queries = (size_t) atol(optarg);
			break;
		case 'k':
			o.k = (uint32_t) atoi(optarg);
			break;
		case 'i':
			o.index = optarg;
			break;
		case 'o':
			o.out = optarg;
			break;
		case 'c':
			o.collection = optarg;
			break;
		case 'a':
			if (o.nbuild_args == MAX_BUILDA) {
				fprintf(stderr, "bench_hnsw: too many --build-arg\n");
				return 2;
			}
			o.build_args[o.nbuild_args++] = optarg;
			break;
		case 'w':
			o.workers = (uint32_t) atoi(optarg);
			break;
		case 'C':
			o.clients = (uint32_t) atoi(optarg);
			break;
		case 'b':
			o.batch = (uint32_t) atoi(optarg);
			break;
		case 's':
			o.seconds = atof(optarg);
			break;
		case 'r':
			o.rounds = (uint32_t) atoi(optarg);
			break;
		case 'M':
			o.hnsw_m = (size_t) atol(optarg);
			break;
		case 'E':
			o.hnsw_efc = (size_t) atol(optarg);
			break;
		case 'e':
			if (parse_efs(optarg, &o) != 0) {
				fprintf(
				    stderr, "bench_hnsw: --ef wants positive integers, comma-separated\n");
				return 2;
			}
			break;
		case 'S':
			server_cpus = optarg;
			break;
		case 'L':
			client_cpus = optarg;
			break;
		case 'x':
			o.candex = optarg;
			break;
		case 'P':
			o.inproc_only = 1;
			break;
		case 'O':
			o.served_only = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (o.base == NULL || o.queries == NULL || o.metric < 0 || o.k == 0 || o.k > 1024 || o.workers == 0
	    || o.batch == 0 || o.seconds <= 0 || o.rounds == 0 || o.max_queries == 0 || o.hnsw_m < 2) {
		usage(stderr);
		return 2;
	}
	if ((server_cpus != NULL) != (client_cpus != NULL)) {
		fprintf(stderr, "bench_hnsw: --server-cpus and --client-cpus go together\n");
		return 2;
	}
	if (server_cpus != NULL) {
		if (bench_parse_cpus(server_cpus, &o.server_cpus) != 0
		    || bench_parse_cpus(client_cpus, &o.client_cpus) != 0) {
			fprintf(stderr, "bench_hnsw: bad CPU list (want e.g. 0, 1-3 or 0,2)\n");
			return 2;
		}
		o.pinned = 1;
	}
	if (o.clients == 0)
		o.clients = 2 * o.workers;
	char candex_buf[4096];
	if (o.candex == NULL) {
		if (bench_candex_path(candex_buf, sizeof(candex_buf)) != 0) {
			fprintf(stderr, "bench_hnsw: give --candex PATH\n");
			return 2;
		}
		o.candex = candex_buf;
	}
	cdx_log_set_level(CDX_LOG_WARN);
	cdx_blas_set_threads(1);

	struct data d;
	memset(&d, 0, sizeof(d));
	if (load_data(&o, &d) != CDX_OK)
		fail("data");
	if (d.queries.n < o.batch) {
		fprintf(stderr, "bench_hnsw: --batch %u > %zu queries\n", o.batch, d.queries.n);
		return 2;
	}
	size_t n = d.base.n;
	uint32_t dim = d.base.dim;
	double load1, load5, load15;
	FILE *la = fopen("/proc/loadavg", "r");
	if (la == NULL || fscanf(la, "%lf %lf %lf", &load1, &load5, &load15) != 3)
		load1 = load5 = load15 = NAN;
	if (la != NULL)
		fclose(la);
	printf("%s: %zu x %u %s; %zu queries, %u-recall@%u; %u workers, %u clients, batch %u; load average "
	       "%.1f %.1f %.1f\n\n",
	    o.base, n, dim, cdx_metric_name(o.metric), d.queries.n, o.k, o.k, o.workers, o.clients, o.batch,
	    load1, load5, load15);
	fflush(stdout);

	if (o.inproc_only) {
		char path[4200];
		if (o.index == NULL) {
			fprintf(stderr, "bench_hnsw: --inproc-only needs --index\n");
			return 2;
		}
		snprintf(path, sizeof(path), "%s/%s", o.index, o.collection);
		cdx_collection *c = NULL;
		if (cdx_collection_load(&c, path) != CDX_OK)
			fail(path);
		struct cdx_search_used used = { 0 };
		double rec = default_recall(&o, &d, c, &used);
		struct loop l = { .kind = LOOP_INPROC, .o = &o, .d = &d, .c = c, .batch = o.batch };
		struct qps r = run_loop(&l, 1, 0, NULL);
		printf(
		    "candex in process, 1 thread, batch %u: %u-recall@%u %.4f (nprobe %u, refine x%g), %.0f "
		    "QPS, %.1f µs CPU a query\n",
		    o.batch, o.k, o.k, rec, used.nprobe, (double) used.refine_factor, r.qps, r.cpu_us);
		cdx_collection_unref(c);
		data_fini(&d);
		return 0;
	}
	if (o.served_only) {
		if (o.index == NULL) {
			fprintf(stderr, "bench_hnsw: --served-only needs --index\n");
			return 2;
		}
		char ipc[256];
		double rec;
		pid_t srv = start_served(&o, &d, o.index, ipc, sizeof(ipc), &rec);
		struct qps sv1 = { 0 }, svb = { 0 };
		for (uint32_t round = 0; round < o.rounds; round++)
			served_loops(&o, &d, ipc, srv, &sv1, &svb);
		bench_serve_stop(srv);
		printf("| path | %u-recall@%u | QPS | CPU µs/query | notes |\n|---|---|---|---|---|\n", o.k,
		    o.k);
		print_served(&o, rec, &sv1, &svb);
		data_fini(&d);
		printf("\nerrors: %llu\n", (unsigned long long) (sv1.errors + svb.errors));
		return sv1.errors + svb.errors == 0 ? 0 : 1;
	}

	/* 1. candex build first (it uses every core; nothing else runs then) */
	char tmpdir[] = "/tmp/candex-bench-hnsw-XXXXXX", built[4096];
	const char *index_dir = o.index;
	double build_s = NAN;
	uint64_t build_rss = 0;
	if (index_dir == NULL) {
		if (o.out == NULL) {
			if (mkdtemp(tmpdir) == NULL)
				fail("temporary directory");
			snprintf(built, sizeof(built), "%s/index", tmpdir);
		} else {
			snprintf(built, sizeof(built), "%s", o.out);
		}
		index_dir = built;
		build_s = build_candex(&o, index_dir, &build_rss);
		if (build_s < 0) {
			fprintf(stderr, "bench_hnsw: candex build failed\n");
			return 1;
		}
	}

	/* 2. hnswlib: build on one thread, memory, the ef ladder */
	malloc_trim(0);
	uint64_t rss0 = bench_self_rss_bytes(), t0 = cdx_now_us();
	bench_hnsw *h = NULL;
	char msg[256];
	if (bench_hnsw_build(
	        &h, d.base_norm, n, dim, o.metric != CDX_METRIC_L2, o.hnsw_m, o.hnsw_efc, msg, sizeof(msg))
	    != 0) {
		fprintf(stderr, "bench_hnsw: %s\n", msg);
		return 1;
	}
	double hnsw_build_s = (double) (cdx_now_us() - t0) / 1e6;
	malloc_trim(0);
	double hnsw_bpi = (double) (bench_self_rss_bytes() - rss0) / (double) n;
	double hnsw_struct_bpi = (double) bench_hnsw_bytes(h) / (double) n;
	printf(
	    "hnswlib M %zu, ef_construction %zu: built in %.1f s on one thread; %.0f B/item resident (%.0f "
	    "by its structures)\n\n",
	    o.hnsw_m, o.hnsw_efc, hnsw_build_s, hnsw_bpi, hnsw_struct_bpi);
	printf("| hnswlib ef | %u-recall@%u | QPS, 1 thread | CPU µs/query |\n|---|---|---|---|\n", o.k, o.k);
	struct hnsw_row rows[MAX_EF];
	size_t nrows = 0;
	for (size_t i = 0; i < o.nefs; i++) {
		rows[nrows] = (struct hnsw_row) { o.efs[i], hnsw_recall(&o, &d, h, o.efs[i]), 0, 0 };
		struct qps hr = hnsw_qps(&o, &d, h, o.efs[i]);
		rows[nrows].qps = hr.qps;
		rows[nrows].cpu_us = hr.cpu_us;
		printf("| %u | %.4f | %.0f | %.1f |\n", rows[nrows].ef, rows[nrows].recall, rows[nrows].qps,
		    rows[nrows].cpu_us);
		fflush(stdout);
		nrows++;
		if (rows[nrows - 1].recall >= 0.999)
			break;
	}

	/* 3. candex in process */
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", index_dir, o.collection);
	malloc_trim(0);
	uint64_t rss1 = bench_self_rss_bytes();
	cdx_collection *c = NULL;
	if (cdx_collection_load(&c, path) != CDX_OK)
		fail(path);
	malloc_trim(0);
	double cdx_bpi = (double) (bench_self_rss_bytes() - rss1) / (double) n;
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	struct cdx_search_used used = { 0 };
	double rec_in = default_recall(&o, &d, c, &used);
	printf(
	    "\ncandex %s (%s, refine %s): %s; %.0f B/item resident (%.0f by its parts); default settings at "
	    "k %u: nprobe %u, refine x%g: %u-recall@%u %.4f in process\n",
	    m->factory, cdx_transform_name(m->transform), cdx_refine_name(m->refine),
	    o.index ? "given index" : "built", cdx_bpi, (double) cdx_collection_memory_bytes(c) / (double) n,
	    o.k, used.nprobe, (double) used.refine_factor, o.k, o.k, rec_in);
	if (!isnan(build_s))
		printf("candex build: %.1f s wall clock, peak RSS %.0f MiB\n", build_s,
		    (double) build_rss / (1 << 20));

	/* 4. candex served */
	char ipc[256];
	double rec_srv;
	pid_t srv = start_served(&o, &d, index_dir, ipc, sizeof(ipc), &rec_srv);

	/* 5. the comparison, --rounds times */
	size_t lo, hi;
	same_recall(rows, nrows, rec_srv, &lo, &hi);
	const cpu_set_t *scpu = o.pinned ? &o.server_cpus : NULL;
	struct qps in1 = { 0 }, inw = { 0 }, inb = { 0 }, sv1 = { 0 }, svb = { 0 }, hlo = { 0 }, hhi = { 0 };
	for (uint32_t round = 0; round < o.rounds; round++) {
		keep_best(&hlo, hnsw_qps(&o, &d, h, rows[lo].ef));
		keep_best(&hhi, hnsw_qps(&o, &d, h, rows[hi].ef));
		struct loop l = { .kind = LOOP_INPROC, .o = &o, .d = &d, .c = c, .batch = 1 };
		keep_best(&in1, run_loop(&l, 1, 0, scpu));
		keep_best(&inw, run_loop(&l, o.workers, 0, scpu));
		l.batch = o.batch;
		keep_best(&inb, run_loop(&l, o.workers, 0, scpu));
		served_loops(&o, &d, ipc, srv, &sv1, &svb);
	}
	struct hnsw_row br[2] = { rows[lo], rows[hi] };
	keep_best_row(&br[0], hlo);
	keep_best_row(&br[1], hhi);
	size_t l2, h2;
	double hq = same_recall(br, lo == hi ? 1 : 2, rec_srv, &l2, &h2);
	/* hnswlib's CPU per query at that recall: the same interpolation */
	double f = lo == hi || br[1].recall <= br[0].recall
	    ? 1
	    : (rec_srv - br[0].recall) / (br[1].recall - br[0].recall);
	f = f < 0 ? 0 : f > 1 ? 1 : f;
	double hcpu = br[0].cpu_us + f * (br[1].cpu_us - br[0].cpu_us);
	bench_serve_stop(srv);

	printf("| path | %u-recall@%u | QPS | CPU µs/query | notes |\n|---|---|---|---|---|\n", o.k, o.k);
	printf("| hnswlib, 1 thread, ef %u..%u interpolated | %.4f | %.0f | %.1f | %.0f B/item |\n",
	    rows[lo].ef, rows[hi].ef, rec_srv, hq, hcpu, hnsw_bpi);
	printf("| candex in process, 1 thread | %.4f | %.0f | %.1f | %.0f B/item |\n", rec_in, in1.qps,
	    in1.cpu_us, cdx_bpi);
	printf("| candex in process, %u threads | %.4f | %.0f | %.1f | |\n", o.workers, rec_in, inw.qps,
	    inw.cpu_us);
	printf("| candex in process, %u threads, batch %u | | %.0f | %.1f | |\n", o.workers, o.batch, inb.qps,
	    inb.cpu_us);
	print_served(&o, rec_srv, &sv1, &svb);
	uint64_t errors = in1.errors + inw.errors + inb.errors + sv1.errors + svb.errors;
	printf("\n| goal | measured | ratio | wanted |\n|---|---|---|---|\n");
	printf(
	    "| P1a served QPS / hnswlib at the same recall | %.0f / %.0f | %.2fx | >= 1.0x, recall >= 0.95 "
	    "(%.4f) |\n",
	    sv1.qps, hq, sv1.qps / hq, rec_srv);
	printf("| P1a memory per item / hnswlib's | %.0f / %.0f B | %.2fx | <= 0.25x |\n", cdx_bpi, hnsw_bpi,
	    cdx_bpi / hnsw_bpi);
	printf("| P1b served QPS, batch %u / hnswlib | %.0f / %.0f | %.2fx | >= 2.0x |\n", o.batch, svb.qps,
	    hq, svb.qps / hq);
	printf("| P2 served / in process, %u threads, batch 1 | %.0f / %.0f | %.2fx | >= 0.9x |\n", o.workers,
	    sv1.qps, inw.qps, sv1.qps / inw.qps);
	printf("| P2 served / in process, %u threads, batch %u | %.0f / %.0f | %.2fx | >= 0.9x |\n",
	    o.workers, o.batch, svb.qps, inb.qps, svb.qps / inb.qps);
	if (!isnan(build_s))
		printf("| P4 build time / hnswlib's (1 thread) | %.1f / %.1f s | %.2fx | <= 1.0x |\n",
		    build_s, hnsw_build_s, build_s / hnsw_build_s);
	printf("\nerrors: %llu\n", (unsigned long long) errors);

	cdx_collection_unref(c);
	bench_hnsw_free(h);
	data_fini(&d);
	if (o.index == NULL && o.out == NULL) {
		char cmd[4200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench_hnsw: could not remove %s\n", tmpdir);
	}
	return errors == 0 ? 0 : 1;
}
