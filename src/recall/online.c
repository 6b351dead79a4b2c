/*
 * online.c — recall measured on live traffic (see online.h).
 *
 * DESIGN
 * The request path only samples and copies: cdx_online_recall_offer() takes
 * a ticket from an atomic counter, keeps every 1/fraction-th query (evenly
 * spread, deterministic), copies the query and the returned (shard,row)
 * locations into a bounded queue with a reference on the collection, and
 * returns; a full queue drops the sample (counted).
 *
 * One checker thread re-runs each sample exactly. Scanning the collection
 * through cdx_collection_vector() per query would decode every item every
 * time, so on first use of a collection the checker decodes all vectors once
 * (from the refine store, else reconstructed from the PQ codes) into a Faiss
 * flat index it owns, keyed by the collection pointer plus its name and
 * version. A new collection version under the same name replaces (frees) the
 * old copy. A sample is then one flat search plus the tie-aware comparison of
 * recall_metrics.c: a returned hit counts when its distance (from the flat
 * copy) is <= the k-th exact distance + epsilon.
 *
 * What "exact" means: with a refine store the flat copy holds the stored
 * vectors (fp32: the real vectors; fp16/sq8: close to them). Without one it
 * holds PQ reconstructions, so the figure measures only what the inverted
 * lists lose (nprobe), not what PQ quantisation loses: it approximates true
 * recall from above. candex_online_recall_truth_exact says which case holds.
 *
 * Notes: a query offered with a note is handed, once checked, to the
 * config's on_check with its recall and its exact answer, so the caller can
 * judge other answers to it (the server's recall adaptation searches it one
 * rung lower). on_check runs inside the busy period below: its work counts
 * against the budget.
 *
 * CPU budget: the checker runs single-threaded (its OpenMP team is 1) and
 * after each busy period of b seconds sleeps b * (1 - budget) / budget, so
 * busy time / wall time never exceeds the budget, whatever the traffic.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>

#include "recall/online.h"
#include "recall/recall.h"
#include "faissx/error.h"

#define ONLINE_WINDOW             1024 /* checks averaged by the gauge */
#define ONLINE_MAX_FLATS          8
#define ONLINE_MAX_SERIES         64
#define ONLINE_DEFAULT_BUDGET     0.05
#define ONLINE_DEFAULT_QUEUE      64
#define ONLINE_DEFAULT_FLAT_BYTES (1ull << 30)

struct sample {
	cdx_collection *c; /* one reference */
	uint32_t k, nhits;
	float *query;   /* dim floats */
	uint64_t *locs; /* nhits x (shard << 32 | row) */
	unsigned char note[CDX_ONLINE_NOTE_MAX];
	uint32_t note_size; /* 0: no note */
};

/* A flat copy of one collection version's vectors. */
struct flat {
	const cdx_collection *key; /* compared, never dereferenced after the sample's ref is gone */
	char collection[CDX_NAME_MAX];
	char version[CDX_NAME_MAX];
	FaissIndex *index; /* NULL when too large (skipped) */
	const float *xb;   /* the index's own storage */
	uint64_t *prefix;  /* nshards + 1: global row of (shard, 0) */
	uint32_t nshards;
	uint64_t n;
	uint32_t dim;
	int metric;
	int exact; /* vectors from a refine store, not PQ reconstructions */
	uint64_t last_used;
};

struct series {
	char collection[CDX_NAME_MAX];
	uint32_t k;
	uint64_t checked;
	double sum; /* of per-query recall, for rate()-based windows */
	double window[ONLINE_WINDOW];
	uint32_t wn, wpos;
	int exact;
};

struct cdx_online_recall {
	struct cdx_online_recall_config cfg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;  /* queue not empty, or stop */
	pthread_cond_t idle;  /* queue drained and nothing in hand */
	struct sample *queue; /* ring of cfg.queue_max */
	uint32_t head, len;
	int busy; /* the checker holds a sample */
	int stop;
	atomic_uint_fast64_t offered, sampled, dropped;
	/* below: under lock */
	uint64_t checked, skipped, flat_builds;
	uint64_t busy_us;
	uint64_t started_us;
	struct series series[ONLINE_MAX_SERIES];
	uint32_t nseries;
	/* checker thread only */
	struct flat flats[ONLINE_MAX_FLATS];
	uint64_t use_clock;
};

static void
sample_free(struct sample *s)
{
	cdx_collection_unref(s->c);
	free(s->query);
	free(s->locs);
	memset(s, 0, sizeof(*s));
}

static void
flat_free(struct flat *f)
{
	if (f->index != NULL)
		faiss_Index_free(f->index);
	free(f->prefix);
	memset(f, 0, sizeof(*f));
}

/* flat_build decodes every vector of c once into a flat index. */
static int
flat_build(struct flat *f, const cdx_collection *c, uint64_t max_bytes)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	memset(f, 0, sizeof(*f));
	f->key = c;
	snprintf(f->collection, sizeof(f->collection), "%s", m->collection);
	snprintf(f->version, sizeof(f->version), "%s", m->version);
	f->dim = m->dim;
	f->metric = m->metric;
	f->exact = m->refine != CDX_REFINE_NONE;
	f->nshards = cdx_collection_shards(c, NULL); /* a shard group's: only those it loaded */
	f->prefix = calloc(f->nshards + 1, sizeof(uint64_t));
	if (f->prefix == NULL)
		return cdx_error(CDX_ENOMEM, "online recall: shard table");
	for (uint32_t s = 0; s < f->nshards; s++)
		f->prefix[s + 1] = f->prefix[s] + cdx_collection_shard_rows(c, s);
	f->n = f->prefix[f->nshards];
	if (f->n * f->dim * sizeof(float) > max_bytes) {
		cdx_warn("RCL-ONLINE-BIG",
		    "online recall: collection %s version %s needs %llu MiB for its flat copy, over the %llu "
		    "MiB "
		    "limit; its queries are not checked",
		    f->collection, f->version, (unsigned long long) (f->n * f->dim * 4 >> 20),
		    (unsigned long long) (max_bytes >> 20));
		return CDX_OK; /* index stays NULL: skip */
	}
	float *x = malloc((f->n ? f->n : 1) * f->dim * sizeof(float));
	if (x == NULL)
		return cdx_error(
		    CDX_ENOMEM, "online recall: flat copy of %llu vectors", (unsigned long long) f->n);
	int rc = CDX_OK;
	for (uint32_t s = 0; s < f->nshards && rc == CDX_OK; s++)
		for (uint64_t r = 0; r < cdx_collection_shard_rows(c, s) && rc == CDX_OK; r++)
			rc = cdx_collection_vector(c, s, (uint32_t) r, x + (f->prefix[s] + r) * f->dim);
	FaissIndexFlat *idx = NULL;
	if (rc == CDX_OK) {
		int frc = f->metric == CDX_METRIC_L2 ? faiss_IndexFlatL2_new_with(&idx, (idx_t) f->dim)
		                                     : faiss_IndexFlatIP_new_with(&idx, (idx_t) f->dim);
		if (frc != 0 || faiss_Index_add(idx, (idx_t) f->n, x) != 0)
			rc = cdx_error_faiss("online recall: flat copy");
	}
	free(x);
	if (rc != CDX_OK) {
		if (idx != NULL)
			faiss_Index_free(idx);
		return rc;
	}
	float *xb;
	size_t sz;
	faiss_IndexFlat_xb(idx, &xb, &sz);
	f->index = idx;
	f->xb = xb;
	cdx_info("RCL-ONLINE-FLAT", "online recall: flat copy of %s version %s: %llu vectors (%s)",
	    f->collection, f->version, (unsigned long long) f->n,
	    f->exact ? "refine store" : "PQ reconstructions, approximate");
	return CDX_OK;
}

/* flat_for returns the flat copy of c, building it (and freeing a previous
 * version of the same collection) when needed. NULL: skip this sample. */
static struct flat *
flat_for(cdx_online_recall *o, const cdx_collection *c)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	struct flat *slot = NULL;
	for (int i = 0; i < ONLINE_MAX_FLATS; i++) {
		struct flat *f = &o->flats[i];
		if (f->key == NULL)
			continue;
		if (strcmp(f->collection, m->collection) == 0) {
			if (f->key == c && strcmp(f->version, m->version) == 0) {
				f->last_used = ++o->use_clock;
				return f->index != NULL ? f : NULL;
			}
			flat_free(f); /* the collection changed: this copy is stale */
			slot = f;
		}
	}
	for (int i = 0; slot == NULL && i < ONLINE_MAX_FLATS; i++)
		if (o->flats[i].key == NULL)
			slot = &o->flats[i];
	if (slot == NULL) { /* evict the least recently used */
		slot = &o->flats[0];
		for (int i = 1; i < ONLINE_MAX_FLATS; i++)
			if (o->flats[i].last_used < slot->last_used)
				slot = &o->flats[i];
		flat_free(slot);
	}
	int rc = flat_build(slot, c, o->cfg.max_flat_bytes);
	pthread_mutex_lock(&o->lock);
	o->flat_builds++;
	pthread_mutex_unlock(&o->lock);
	if (rc != CDX_OK) {
		cdx_warn("RCL-ONLINE-FLAT", "online recall: %s", cdx_last_error());
		flat_free(slot);
		return NULL;
	}
	slot->last_used = ++o->use_clock;
	return slot->index != NULL ? slot : NULL;
}

/* The exact answer to one sampled query, against which answers are judged. */
struct exact {
	const struct flat *f;
	struct cdx_truth t;
	struct cdx_recall_space sp;
	float *q; /* the query, normalised for cos */
	uint32_t k, kt;
};

static void
exact_fini(struct exact *e)
{
	free(e->q);
	free(e->t.rows);
	free(e->t.dist);
	memset(e, 0, sizeof(*e));
}

/* exact_find runs the flat search for a sample's query. CDX_OK, or an
 * error when it cannot be judged (skipped). */
static int
exact_find(cdx_online_recall *o, const struct sample *s, struct exact *e)
{
	memset(e, 0, sizeof(*e));
	struct flat *f = flat_for(o, s->c);
	if (f == NULL || f->n == 0)
		return CDX_ENOTFOUND;
	e->f = f;
	e->k = s->k;
	e->kt = (uint64_t) s->k < f->n ? s->k : (uint32_t) f->n;
	uint32_t kt = e->kt;
	e->q = malloc(f->dim * sizeof(float));
	float *d = malloc(kt * sizeof(float));
	idx_t *lab = malloc(kt * sizeof(idx_t));
	e->t = (struct cdx_truth) { .nq = 1, .k = kt, .metric = f->metric };
	e->t.rows = malloc(kt * sizeof(int64_t));
	e->t.dist = malloc(kt * sizeof(float));
	int rc = CDX_OK;
	if (e->q == NULL || d == NULL || lab == NULL || e->t.rows == NULL || e->t.dist == NULL) {
		rc = CDX_ENOMEM;
		goto out;
	}
	memcpy(e->q, s->query, f->dim * sizeof(float));
	if (f->metric == CDX_METRIC_COS)
		cdx_normalize_rows(e->q, 1, f->dim);
	if (faiss_Index_search(f->index, 1, e->q, (idx_t) kt, d, lab) != 0) {
		rc = cdx_error_faiss("online recall: exact search");
		cdx_warn("RCL-ONLINE", "%s", cdx_last_error());
		goto out;
	}
	e->sp = (struct cdx_recall_space) { .metric = f->metric, .dim = f->dim, .nb = f->n, .base = f->xb };
	/* judge truth and hits with one distance routine (see recall.h) */
	for (uint32_t j = 0; j < kt; j++) {
		double dj = cdx_recall_distance(&e->sp, e->q, lab[j]);
		/* keep the list sorted under the recomputed distances */
		uint32_t p = j;
		while (p > 0 && e->t.dist[p - 1] > dj) {
			e->t.dist[p] = e->t.dist[p - 1];
			e->t.rows[p] = e->t.rows[p - 1];
			p--;
		}
		e->t.dist[p] = (float) dj;
		e->t.rows[p] = lab[j];
	}
out:
	free(d);
	free(lab);
	if (rc != CDX_OK)
		exact_fini(e);
	return rc;
}

/* exact_judge is the recall@k of an answer given as (shard << 32 | row)
 * locations, best first; NAN if it cannot be judged. */
static double
exact_judge(const struct exact *e, const uint64_t *locs, uint32_t nlocs)
{
	const struct flat *f = e->f;
	int64_t *hits = malloc(e->k * sizeof(int64_t));
	if (hits == NULL)
		return NAN;
	for (uint32_t j = 0; j < e->k; j++) {
		hits[j] = -1;
		if (j < nlocs) {
			uint32_t shard = (uint32_t) (locs[j] >> 32), row = (uint32_t) locs[j];
			if (shard < f->nshards && f->prefix[shard] + row < f->prefix[shard + 1])
				hits[j] = (int64_t) (f->prefix[shard] + row);
		}
	}
	double r = cdx_recall_query(&e->t, &e->sp, e->q, 0, hits, e->k, e->kt, CDX_RECALL_EPSILON_DEFAULT);
	free(hits);
	return r;
}

double
cdx_online_check_recall(const struct cdx_online_check *chk, const struct cdx_hit *hits, uint32_t nhits)
{
	const struct exact *e = chk->priv;
	if (nhits > e->k)
		nhits = e->k;
	uint64_t *locs = malloc((nhits ? nhits : 1) * sizeof(uint64_t));
	if (locs == NULL)
		return NAN;
	uint32_t n = 0;
	for (uint32_t i = 0; i < nhits; i++)
		if (hits[i].id >= 0)
			locs[n++] = (uint64_t) hits[i].shard << 32 | hits[i].row;
	double r = exact_judge(e, locs, n);
	free(locs);
	return r;
}

/* check computes one sample's recall (NAN if it cannot be judged) and
 * hands a noted sample to on_check. */
static double
check(cdx_online_recall *o, const struct sample *s, int *exact)
{
	struct exact e;
	if (exact_find(o, s, &e) != CDX_OK)
		return NAN;
	*exact = e.f->exact;
	double r = exact_judge(&e, s->locs, s->nhits);
	if (!isnan(r) && s->note_size > 0 && o->cfg.on_check != NULL) {
		struct cdx_online_check chk = { .c = s->c,
			.k = s->k,
			.query = s->query,
			.recall = r,
			.note = s->note,
			.note_size = s->note_size,
			.priv = &e };
		o->cfg.on_check(o->cfg.on_check_arg, &chk);
	}
	exact_fini(&e);
	return r;
}

static struct series *
series_for(cdx_online_recall *o, const char *collection, uint32_t k)
{
	for (uint32_t i = 0; i < o->nseries; i++)
		if (o->series[i].k == k && strcmp(o->series[i].collection, collection) == 0)
			return &o->series[i];
	if (o->nseries == ONLINE_MAX_SERIES)
		return NULL; /* bounded label cardinality */
	struct series *s = &o->series[o->nseries++];
	memset(s, 0, sizeof(*s));
	snprintf(s->collection, sizeof(s->collection), "%s", collection);
	s->k = k;
	return s;
}

/* sleep_interruptibly waits us microseconds or until stop; lock held. */
static void
sleep_interruptibly(cdx_online_recall *o, uint64_t us)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t) (us / 1000000);
	ts.tv_nsec += (long) (us % 1000000) * 1000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	while (!o->stop && pthread_cond_timedwait(&o->cond, &o->lock, &ts) != ETIMEDOUT)
		;
}

static void *
checker(void *arg)
{
	cdx_online_recall *o = arg;
	/* one core at most: a Faiss call must not wake an OpenMP team */
	omp_set_num_threads(1);
	pthread_mutex_lock(&o->lock);
	for (;;) {
		while (!o->stop && o->len == 0) {
			o->busy = 0;
			pthread_cond_broadcast(&o->idle);
			pthread_cond_wait(&o->cond, &o->lock);
		}
		if (o->stop)
			break;
		struct sample s = o->queue[o->head];
		o->head = (o->head + 1) % o->cfg.queue_max;
		o->len--;
		o->busy = 1;
		pthread_mutex_unlock(&o->lock);

		uint64_t t0 = cdx_now_us();
		int exact = 0;
		const struct cdx_manifest *m = cdx_collection_manifest(s.c);
		char name[CDX_NAME_MAX];
		snprintf(name, sizeof(name), "%s", m->collection);
		double r = check(o, &s, &exact);
		uint32_t k = s.k;
		sample_free(&s);
		uint64_t busy = cdx_now_us() - t0;

		pthread_mutex_lock(&o->lock);
		o->busy_us += busy;
		if (isnan(r)) {
			o->skipped++;
		} else {
			o->checked++;
			struct series *se = series_for(o, name, k);
			if (se != NULL) {
				se->checked++;
				se->sum += r;
				se->exact = exact;
				se->window[se->wpos] = r;
				se->wpos = (se->wpos + 1) % ONLINE_WINDOW;
				if (se->wn < ONLINE_WINDOW)
					se->wn++;
			}
		}
		o->busy = 0;
		if (o->len == 0)
			pthread_cond_broadcast(&o->idle);
		double budget = o->cfg.cpu_budget;
		if (budget < 1.0)
			sleep_interruptibly(o, (uint64_t) ((double) busy * (1.0 - budget) / budget));
	}
	o->busy = 0;
	pthread_cond_broadcast(&o->idle);
	pthread_mutex_unlock(&o->lock);
	return NULL;
}

int
cdx_online_recall_start(cdx_online_recall **op, const struct cdx_online_recall_config *cfg)
{
	*op = NULL;
	if (cfg == NULL || !(cfg->sample_fraction >= 0 && cfg->sample_fraction <= 1))
		return cdx_error(CDX_EINVAL, "online recall: sample fraction must be in [0, 1]");
	if (!(cfg->cpu_budget >= 0 && cfg->cpu_budget <= 1))
		return cdx_error(CDX_EINVAL, "online recall: CPU budget must be in (0, 1] of one core");
	cdx_online_recall *o = calloc(1, sizeof(*o));
	if (o == NULL)
		return cdx_error(CDX_ENOMEM, "online recall");
	o->cfg = *cfg;
	if (o->cfg.cpu_budget == 0)
		o->cfg.cpu_budget = ONLINE_DEFAULT_BUDGET;
	if (o->cfg.queue_max == 0)
		o->cfg.queue_max = ONLINE_DEFAULT_QUEUE;
	if (o->cfg.max_flat_bytes == 0)
		o->cfg.max_flat_bytes = ONLINE_DEFAULT_FLAT_BYTES;
	o->queue = calloc(o->cfg.queue_max, sizeof(*o->queue));
	if (o->queue == NULL) {
		free(o);
		return cdx_error(CDX_ENOMEM, "online recall queue");
	}
	pthread_mutex_init(&o->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&o->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&o->idle, NULL);
	atomic_init(&o->offered, 0);
	atomic_init(&o->sampled, 0);
	atomic_init(&o->dropped, 0);
	o->started_us = cdx_now_us();
	int err = pthread_create(&o->thread, NULL, checker, o);
	if (err != 0) {
		pthread_mutex_destroy(&o->lock);
		pthread_cond_destroy(&o->cond);
		pthread_cond_destroy(&o->idle);
		free(o->queue);
		free(o);
		errno = err;
		return cdx_error_errno(CDX_EINTERNAL, "online recall: starting the checker thread");
	}
	*op = o;
	return CDX_OK;
}

void
cdx_online_recall_stop(cdx_online_recall *o)
{
	if (o == NULL)
		return;
	pthread_mutex_lock(&o->lock);
	o->stop = 1;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->lock);
	pthread_join(o->thread, NULL);
	while (o->len > 0) {
		sample_free(&o->queue[o->head]);
		o->head = (o->head + 1) % o->cfg.queue_max;
		o->len--;
	}
	for (int i = 0; i < ONLINE_MAX_FLATS; i++)
		flat_free(&o->flats[i]);
	pthread_mutex_destroy(&o->lock);
	pthread_cond_destroy(&o->cond);
	pthread_cond_destroy(&o->idle);
	free(o->queue);
	free(o);
}

void
cdx_online_recall_offer(cdx_online_recall *o, cdx_collection *c, const float *query, uint32_t k,
    const struct cdx_hit *hits, uint32_t nhits)
{
	cdx_online_recall_offer_note(o, c, query, k, hits, nhits, NULL, 0);
}

void
cdx_online_recall_offer_note(cdx_online_recall *o, cdx_collection *c, const float *query, uint32_t k,
    const struct cdx_hit *hits, uint32_t nhits, const void *note, size_t note_size)
{
	if (o == NULL || c == NULL || k == 0 || o->cfg.sample_fraction <= 0)
		return;
	/* ticket n is sampled when floor((n+1) f) > floor(n f): exactly a
	 * fraction f of the tickets, evenly spread */
	uint64_t n = atomic_fetch_add(&o->offered, 1);
	double f = o->cfg.sample_fraction;
	if (f < 1 && floor((double) (n + 1) * f) <= floor((double) n * f))
		return;
	atomic_fetch_add(&o->sampled, 1);
	uint32_t dim = cdx_collection_manifest(c)->dim;
	if (nhits > k)
		nhits = k;
	struct sample s = { .c = c, .k = k, .nhits = 0 };
	if (note != NULL && note_size > 0) {
		s.note_size = (uint32_t) CDX_MIN(note_size, sizeof(s.note));
		memcpy(s.note, note, s.note_size);
	}
	s.query = malloc(dim * sizeof(float));
	s.locs = malloc((nhits ? nhits : 1) * sizeof(uint64_t));
	if (s.query == NULL || s.locs == NULL) {
		free(s.query);
		free(s.locs);
		atomic_fetch_add(&o->dropped, 1);
		return;
	}
	memcpy(s.query, query, dim * sizeof(float));
	for (uint32_t i = 0; i < nhits; i++)
		if (hits[i].id >= 0)
			s.locs[s.nhits++] = (uint64_t) hits[i].shard << 32 | hits[i].row;
	pthread_mutex_lock(&o->lock);
	if (o->stop || o->len >= o->cfg.queue_max) {
		pthread_mutex_unlock(&o->lock);
		free(s.query);
		free(s.locs);
		atomic_fetch_add(&o->dropped, 1);
		return;
	}
	cdx_collection_ref(c);
	o->queue[(o->head + o->len) % o->cfg.queue_max] = s;
	o->len++;
	pthread_cond_signal(&o->cond);
	pthread_mutex_unlock(&o->lock);
}

int
cdx_online_recall_flush(cdx_online_recall *o, uint32_t timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long) (timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	int rc = CDX_OK;
	pthread_mutex_lock(&o->lock);
	while (!o->stop && (o->len > 0 || o->busy)) {
		if (pthread_cond_timedwait(&o->idle, &o->lock, &ts) == ETIMEDOUT) {
			rc = cdx_error(CDX_ETIMEDOUT, "online recall: %u samples still queued after %u ms",
			    o->len, timeout_ms);
			break;
		}
	}
	pthread_mutex_unlock(&o->lock);
	return rc;
}

int
cdx_online_recall_get(
    cdx_online_recall *o, const char *collection, uint32_t k, struct cdx_online_recall_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->recall = NAN;
	pthread_mutex_lock(&o->lock);
	st->offered = atomic_load(&o->offered);
	st->sampled = atomic_load(&o->sampled);
	st->dropped = atomic_load(&o->dropped);
	st->skipped = o->skipped;
	st->busy_seconds = (double) o->busy_us / 1e6;
	st->wall_seconds = (double) (cdx_now_us() - o->started_us) / 1e6;
	st->flat_builds = o->flat_builds;
	int rc = CDX_ENOTFOUND;
	for (uint32_t i = 0; collection != NULL && i < o->nseries; i++) {
		const struct series *s = &o->series[i];
		if (s->k != k || strcmp(s->collection, collection) != 0)
			continue;
		double sum = 0;
		for (uint32_t j = 0; j < s->wn; j++)
			sum += s->window[j];
		st->recall = s->wn ? sum / s->wn : NAN;
		st->checked = s->checked;
		st->exact = s->exact;
		rc = CDX_OK;
	}
	if (collection == NULL) {
		st->checked = o->checked;
		rc = CDX_OK;
	}
	pthread_mutex_unlock(&o->lock);
	return rc;
}

int
cdx_online_recall_render(cdx_online_recall *o, cdx_buf *out)
{
	if (o == NULL)
		return CDX_OK;
	int rc = CDX_OK;
	pthread_mutex_lock(&o->lock);
	rc = cdx_buf_printf(out,
	    "# HELP candex_online_recall Recall@k of sampled live queries re-run exactly off the request "
	    "path "
	    "(mean of the last %d checked). Without a refine store the exact scan runs over PQ-reconstructed "
	    "vectors, so the figure only approximates true recall (see candex_online_recall_truth_exact).\n"
	    "# TYPE candex_online_recall gauge\n",
	    ONLINE_WINDOW);
	for (uint32_t i = 0; rc == CDX_OK && i < o->nseries; i++) {
		const struct series *s = &o->series[i];
		double sum = 0;
		for (uint32_t j = 0; j < s->wn; j++)
			sum += s->window[j];
		rc = cdx_buf_printf(out, "candex_online_recall{collection=\"%s\",k=\"%u\"} %.6f\n",
		    s->collection, s->k, s->wn ? sum / s->wn : 0.0);
	}
	if (rc == CDX_OK)
		rc = cdx_buf_printf(out,
		    "# HELP candex_online_recall_queries_total Sampled queries re-run exactly.\n"
		    "# TYPE candex_online_recall_queries_total counter\n");
	for (uint32_t i = 0; rc == CDX_OK && i < o->nseries; i++)
		rc = cdx_buf_printf(out,
		    "candex_online_recall_queries_total{collection=\"%s\",k=\"%u\"} %llu\n",
		    o->series[i].collection, o->series[i].k, (unsigned long long) o->series[i].checked);
	if (rc == CDX_OK)
		rc = cdx_buf_printf(out,
		    "# HELP candex_online_recall_sum_total Sum of the per-query recall of checked queries "
		    "(rate of this / rate of queries_total = recall over any window).\n"
		    "# TYPE candex_online_recall_sum_total counter\n");
	for (uint32_t i = 0; rc == CDX_OK && i < o->nseries; i++)
		rc = cdx_buf_printf(out, "candex_online_recall_sum_total{collection=\"%s\",k=\"%u\"} %.6f\n",
		    o->series[i].collection, o->series[i].k, o->series[i].sum);
	if (rc == CDX_OK)
		rc = cdx_buf_printf(out,
		    "# HELP candex_online_recall_truth_exact 1 if the exact scan uses the refine store's "
		    "vectors, 0 if "
		    "PQ reconstructions (an approximation of the truth).\n"
		    "# TYPE candex_online_recall_truth_exact gauge\n");
	for (uint32_t i = 0; rc == CDX_OK && i < o->nseries; i++) {
		int dup = 0;
		for (uint32_t j = 0; j < i; j++)
			dup |= strcmp(o->series[j].collection, o->series[i].collection) == 0;
		if (!dup)
			rc = cdx_buf_printf(out, "candex_online_recall_truth_exact{collection=\"%s\"} %d\n",
			    o->series[i].collection, o->series[i].exact);
	}
	if (rc == CDX_OK)
		rc = cdx_buf_printf(out,
		    "# HELP candex_online_recall_offered_total Answered queries offered to the checker.\n"
		    "# TYPE candex_online_recall_offered_total counter\n"
		    "candex_online_recall_offered_total %llu\n"
		    "# HELP candex_online_recall_sampled_total Offered queries chosen by the sample "
		    "fraction.\n"
		    "# TYPE candex_online_recall_sampled_total counter\n"
		    "candex_online_recall_sampled_total %llu\n"
		    "# HELP candex_online_recall_dropped_total Sampled queries dropped because the queue was "
		    "full.\n"
		    "# TYPE candex_online_recall_dropped_total counter\n"
		    "candex_online_recall_dropped_total %llu\n"
		    "# HELP candex_online_recall_skipped_total Samples not judged (collection too large for "
		    "a flat "
		    "copy, or an error).\n"
		    "# TYPE candex_online_recall_skipped_total counter\n"
		    "candex_online_recall_skipped_total %llu\n"
		    "# HELP candex_online_recall_busy_seconds_total Time the checker spent working (kept "
		    "under "
		    "cpu_budget x wall time).\n"
		    "# TYPE candex_online_recall_busy_seconds_total counter\n"
		    "candex_online_recall_busy_seconds_total %.6f\n"
		    "# HELP candex_online_recall_queue_depth Sampled queries waiting for the checker.\n"
		    "# TYPE candex_online_recall_queue_depth gauge\n"
		    "candex_online_recall_queue_depth %u\n",
		    (unsigned long long) atomic_load(&o->offered),
		    (unsigned long long) atomic_load(&o->sampled),
		    (unsigned long long) atomic_load(&o->dropped), (unsigned long long) o->skipped,
		    (double) o->busy_us / 1e6, o->len);
	pthread_mutex_unlock(&o->lock);
	return rc == CDX_OK ? CDX_OK : cdx_error(CDX_ENOMEM, "online recall metrics");
}
