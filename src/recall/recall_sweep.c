/*
 * recall_sweep.c — measure recall, latency and QPS for every nprobe x refine
 * setting of a backend, and pick operating points.
 *
 * Per setting:
 *   1. latency: single-query calls, one at a time on one thread; per-query
 *      wall time gives p50/p95/p99;
 *   2. throughput: all queries in batches (be->batch per call) spread over
 *      `threads` threads pulling batches from a shared counter, repeated
 *      (at least twice) until min_seconds have passed; the fastest pass's
 *      queries / wall time gives QPS, and the hits give the recall at the
 *      primary k;
 *   3. extra untimed batched passes at k = 10 and k = 100 when the primary k
 *      differs, because with a refine factor the candidates re-ranked depend
 *      on k: the top 10 of a k = 100 search are not a k = 10 search.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recall/recall.h"

struct batch_job {
	const struct cdx_recall_backend *be;
	const struct cdx_recall_set *set;
	uint32_t k, nprobe;
	float refine;
	int64_t *ids;
	size_t batch;
	atomic_size_t next;
	atomic_int rc;
	pthread_mutex_t lock;
	char err[512];
};

static void
job_fail(struct batch_job *j, int rc)
{
	int expect = 0;
	if (atomic_compare_exchange_strong(&j->rc, &expect, rc)) {
		pthread_mutex_lock(&j->lock);
		snprintf(j->err, sizeof(j->err), "%s", cdx_last_error());
		pthread_mutex_unlock(&j->lock);
	}
}

static void *
batch_worker(void *arg)
{
	struct batch_job *j = arg;
	size_t nq = j->set->nq, dim = j->set->space.dim;
	for (;;) {
		if (atomic_load(&j->rc) != 0)
			break;
		size_t b = atomic_fetch_add(&j->next, j->batch);
		if (b >= nq)
			break;
		size_t n = nq - b < j->batch ? nq - b : j->batch;
		int rc = j->be->search(
		    j->be->ctx, j->set->queries + b * dim, n, j->k, j->nprobe, j->refine, j->ids + b * j->k);
		if (rc != 0)
			job_fail(j, rc);
	}
	return NULL;
}

/* run_batched searches every query at k with `threads` threads; ids gets
 * nq x k external ids. *seconds (may be NULL) gets the wall time. */
static int
run_batched(const struct cdx_recall_backend *be, const struct cdx_recall_set *set, unsigned threads,
    uint32_t k, uint32_t nprobe, float refine, int64_t *ids, double *seconds)
{
	struct batch_job j = { .be = be, .set = set, .k = k, .nprobe = nprobe, .refine = refine, .ids = ids };
	j.batch = be->batch ? be->batch : 256;
	/* keep every thread busy: no batch larger than a fair share */
	size_t share = (set->nq + threads - 1) / threads;
	if (j.batch > share)
		j.batch = share ? share : 1;
	atomic_init(&j.next, 0);
	atomic_init(&j.rc, 0);
	pthread_mutex_init(&j.lock, NULL);
	pthread_t tid[64];
	unsigned nt = threads < 64 ? threads : 64, started = 0;
	uint64_t t0 = cdx_now_us();
	for (unsigned i = 1; i < nt; i++) {
		if (pthread_create(&tid[i], NULL, batch_worker, &j) != 0)
			break;
		started++;
	}
	batch_worker(&j);
	for (unsigned i = 1; i <= started; i++)
		pthread_join(tid[i], NULL);
	uint64_t t1 = cdx_now_us();
	pthread_mutex_destroy(&j.lock);
	if (seconds != NULL)
		*seconds = (double) (t1 - t0) / 1e6;
	int rc = atomic_load(&j.rc);
	if (rc != 0)
		return cdx_error(rc, "%s", j.err);
	return CDX_OK;
}

/* to_rows maps external ids to base rows in place (-1 for unknown ids). */
static void
to_rows(const struct cdx_idmap *m, int64_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ids[i] = ids[i] < 0 ? -1 : cdx_idmap_row(m, ids[i]);
}

/* recall_of is r-recall@k over the set's queries; se (may be NULL) gets its
 * standard error. */
static double
recall_of(const struct cdx_recall_set *set, const int64_t *rows, uint32_t k, uint32_t r, double *se)
{
	double ignored;
	return cdx_recall_mean_se(set->truth, &set->space, set->queries_norm, rows, set->nq, k, k, r,
	    set->eps, se != NULL ? se : &ignored);
}

static void
progress(const struct cdx_sweep_config *cfg, size_t done, size_t total, const char *what,
    const struct cdx_recall_row *row)
{
	if (cfg->progress != NULL)
		cfg->progress(cfg->progress_arg, done, total, what, row);
}

static int
measure(const struct cdx_recall_backend *be, const struct cdx_recall_set *set,
    const struct cdx_sweep_config *cfg, unsigned threads, uint32_t nprobe, float refine, size_t done,
    size_t total, struct cdx_recall_row *row)
{
	uint32_t k = cfg->k;
	size_t nq = set->nq, dim = set->space.dim;
	size_t nl = cfg->latency_queries && cfg->latency_queries < nq ? cfg->latency_queries : nq;
	int64_t *single = malloc(nl * k * sizeof(int64_t));
	int64_t *ids = malloc(nq * (k > 100 ? k : 100) * sizeof(int64_t));
	double *lat = malloc(nl * sizeof(double));
	int rc = CDX_OK;
	char what[96];
	if (single == NULL || ids == NULL || lat == NULL) {
		rc = cdx_error(CDX_ENOMEM, "sweep buffers");
		goto out;
	}
	memset(row, 0, sizeof(*row));
	row->nprobe = nprobe;
	row->refine_factor = refine;
	row->k = k;
	row->nq = nq;
	row->bytes_per_vector = cfg->bytes_per_vector;
	row->recall_10 = row->recall_100 = NAN;

	/* 1. latency, one query per call */
	double sum = 0;
	uint64_t last = cdx_now_us();
	for (size_t i = 0; i < nl; i++) {
		uint64_t t0 = cdx_now_us();
		rc = be->search(be->ctx, set->queries + i * dim, 1, k, nprobe, refine, single + i * k);
		uint64_t t1 = cdx_now_us();
		if (rc != 0)
			goto out;
		lat[i] = (double) (t1 - t0) / 1e3;
		sum += lat[i];
		if (t1 - last > 250000) {
			snprintf(what, sizeof(what), "latency %zu/%zu", i + 1, nl);
			progress(cfg, done, total, what, NULL);
			last = t1;
		}
	}
	row->mean_ms = nl ? sum / (double) nl : NAN;
	row->p50_ms = cdx_percentile(lat, nl, 50);
	row->p95_ms = cdx_percentile(lat, nl, 95);
	row->p99_ms = cdx_percentile(lat, nl, 99);

	/* 2. throughput, batched over all threads */
	progress(cfg, done, total, "throughput", NULL);
	/* a fast setting answers every query in milliseconds, and the machine
	 * may be shared: repeat the pass (at least twice, until min_seconds)
	 * and keep the fastest, the one least disturbed by other work */
	double secs, total_secs = 0, best = 0, min_secs = cfg->min_seconds > 0 ? cfg->min_seconds : 0.3;
	int passes = 0;
	do {
		if ((rc = run_batched(be, set, threads, k, nprobe, refine, ids, &secs)) != 0)
			goto out;
		total_secs += secs;
		double q = secs > 0 ? (double) nq / secs : INFINITY;
		if (q > best)
			best = q;
		passes++;
	} while (passes < 2 || total_secs < min_secs);
	row->qps = best;
	for (size_t i = 0; i < nl; i++)
		if (memcmp(single + i * k, ids + i * k, k * sizeof(int64_t)) != 0)
			row->mismatched++;
	to_rows(set->idmap, ids, nq * k);
	row->recall = recall_of(set, ids, k, k, &row->recall_se);
	row->recall_1 = recall_of(set, ids, k, 1, NULL);
	if (k == 10)
		row->recall_10 = row->recall;
	if (k == 100)
		row->recall_100 = row->recall;

	/* 3. the standard figures at their own k */
	uint32_t extra[2] = { 10, 100 };
	for (int e = 0; e < 2; e++) {
		uint32_t ke = extra[e];
		if (ke == k || ke > set->truth->k)
			continue;
		snprintf(what, sizeof(what), "recall@%u", ke);
		progress(cfg, done, total, what, NULL);
		if ((rc = run_batched(be, set, threads, ke, nprobe, refine, ids, NULL)) != 0)
			goto out;
		to_rows(set->idmap, ids, nq * ke);
		double v = recall_of(set, ids, ke, ke, NULL);
		if (ke == 10)
			row->recall_10 = v;
		else
			row->recall_100 = v;
	}
out:
	free(single);
	free(ids);
	free(lat);
	return rc;
}

int
cdx_recall_sweep(const struct cdx_recall_backend *be, const struct cdx_recall_set *set,
    const struct cdx_sweep_config *cfg, struct cdx_recall_row **rowsp, size_t *nrows)
{
	*rowsp = NULL;
	*nrows = 0;
	if (cfg->k == 0 || cfg->n_nprobes == 0 || cfg->n_refines == 0 || set->nq == 0)
		return cdx_error(
		    CDX_EINVAL, "empty sweep (k, nprobe list, refine list and queries must be non-empty)");
	if (cfg->k > set->truth->k)
		return cdx_error(CDX_EINVAL, "k = %u exceeds the %u neighbours the ground truth holds",
		    cfg->k, set->truth->k);
	unsigned threads = cfg->threads;
	if (threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n > 0 ? (unsigned) n : 1;
	}
	size_t total = cfg->n_nprobes * cfg->n_refines;
	struct cdx_recall_row *rows = calloc(total, sizeof(*rows));
	if (rows == NULL)
		return cdx_error(CDX_ENOMEM, "sweep rows");

	/* warm caches and lazily built state before the first timing */
	{
		size_t nw = set->nq < 64 ? set->nq : 64;
		int64_t *w = malloc(nw * cfg->k * sizeof(int64_t));
		int rc = w
		    ? be->search(be->ctx, set->queries, nw, cfg->k, cfg->nprobes[0], cfg->refines[0], w)
		    : cdx_error(CDX_ENOMEM, "warm-up");
		free(w);
		if (rc != 0) {
			free(rows);
			return rc;
		}
	}

	size_t done = 0;
	for (size_t r = 0; r < cfg->n_refines; r++) {
		for (size_t p = 0; p < cfg->n_nprobes; p++) {
			struct cdx_recall_row *row = &rows[done];
			int rc = measure(
			    be, set, cfg, threads, cfg->nprobes[p], cfg->refines[r], done, total, row);
			if (rc != 0) {
				free(rows);
				return rc;
			}
			done++;
			progress(cfg, done, total, NULL, row);
		}
	}
	*rowsp = rows;
	*nrows = total;
	return CDX_OK;
}

size_t
cdx_recall_default_nprobes(uint32_t nlist, uint32_t *out, size_t cap)
{
	if (cap == 0)
		return 0;
	if (nlist == 0) {
		out[0] = 1;
		return 1;
	}
	uint32_t top = nlist < 1024 ? nlist : 1024;
	size_t n = 0;
	for (uint32_t p = 1; p < top && n < cap; p *= 2)
		out[n++] = p;
	if (n < cap)
		out[n++] = top;
	return n;
}

long
cdx_recall_pick(const struct cdx_recall_row *rows, size_t n, double target)
{
	long best = -1;
	for (size_t i = 0; i < n; i++) {
		double se = isnan(rows[i].recall_se) ? 0 : rows[i].recall_se;
		if (isnan(rows[i].recall) || rows[i].recall - 1.645 * se < target)
			continue;
		if (best < 0 || rows[i].qps > rows[best].qps
		    || (rows[i].qps == rows[best].qps && rows[i].p99_ms < rows[best].p99_ms))
			best = (long) i;
	}
	return best;
}

double
cdx_recall_worst_drop(const struct cdx_recall_row *rows, size_t n, size_t *at)
{
	double worst = 0;
	if (at != NULL)
		*at = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++) {
			if (rows[i].refine_factor != rows[j].refine_factor
			    || rows[j].nprobe <= rows[i].nprobe)
				continue;
			double drop = rows[i].recall - rows[j].recall;
			if (drop > worst) {
				worst = drop;
				if (at != NULL)
					*at = j;
			}
		}
	return worst;
}
