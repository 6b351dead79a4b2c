/*
 * online.h — recall measured on live traffic.
 *
 * The server offers each answered query to cdx_online_recall_offer() (cheap:
 * a sampling decision and, for sampled queries, a copy into a bounded queue).
 * A background thread re-runs sampled queries exactly (flat scan over the
 * collection's stored vectors) off the request path, within a CPU budget,
 * and keeps per-collection recall@k figures that /metrics exports.
 */
#ifndef CANDEX_ONLINE_RECALL_H
#define CANDEX_ONLINE_RECALL_H

#include <stdint.h>

#include "search/search.h"

typedef struct cdx_online_recall cdx_online_recall;

/* Largest note a caller may attach to an offered query. */
#define CDX_ONLINE_NOTE_MAX 32

/* One checked query, handed to on_check on the checker thread; valid only
 * during the call. */
struct cdx_online_check {
	cdx_collection *c;  /* the version that answered (referenced during the call) */
	uint32_t k;         /* the request's k */
	const float *query; /* dim floats, as the client sent them */
	double recall;      /* of the answer that was served */
	const void *note;   /* the offer's note (note_size bytes, never 0) */
	size_t note_size;
	const void *priv; /* the exact answer, for cdx_online_check_recall */
};

struct cdx_online_recall_config {
	double sample_fraction;  /* 0..1 of answered queries; 0 disables */
	double cpu_budget;       /* fraction of one core the checker may use, e.g. 0.05; 0 = 0.05 */
	uint32_t queue_max;      /* sampled queries waiting; more are dropped; 0 = 64 */
	uint64_t max_flat_bytes; /* largest flat copy of a collection's vectors; 0 = 1 GiB */
	/* on_check, if set, is called for every checked query that was offered
	 * with a note, on the checker thread, inside its CPU budget (so work done
	 * there, such as another search judged with cdx_online_check_recall, is
	 * budgeted too). It must not call back into this checker. */
	void (*on_check)(void *arg, const struct cdx_online_check *chk);
	void *on_check_arg;
};

/* cdx_online_recall_start starts the checker thread. On success *op is set;
 * stop and free it with cdx_online_recall_stop(). */
int cdx_online_recall_start(cdx_online_recall **op, const struct cdx_online_recall_config *cfg);
void cdx_online_recall_stop(cdx_online_recall *o); /* NULL is a no-op */

/* cdx_online_recall_offer considers one answered query (query: dim floats as
 * the client sent them; hits: the k results returned, with shard and row).
 * Takes a reference on c if sampled. Never waits for the checker; safe from
 * any thread. Do not offer queries that had exclusions: the exact scan does
 * not know them and would count every excluded neighbour as a miss. */
void cdx_online_recall_offer(cdx_online_recall *o, cdx_collection *c, const float *query, uint32_t k,
    const struct cdx_hit *hits, uint32_t nhits);
/* cdx_online_recall_offer_note is cdx_online_recall_offer with a note of
 * note_size bytes (at most CDX_ONLINE_NOTE_MAX; copied) that comes back to
 * the config's on_check with the checked recall: what the caller needs to
 * know about how the query was served. */
void cdx_online_recall_offer_note(cdx_online_recall *o, cdx_collection *c, const float *query, uint32_t k,
    const struct cdx_hit *hits, uint32_t nhits, const void *note, size_t note_size);

/* cdx_online_check_recall judges another answer to a checked query (the k
 * hits of a search of chk->query on chk->c, best first) against the same
 * exact answer: its recall@k. For on_check only. */
double cdx_online_check_recall(
    const struct cdx_online_check *chk, const struct cdx_hit *hits, uint32_t nhits);

/* Figures for one (collection, k), or the totals (collection NULL). */
struct cdx_online_recall_stats {
	double recall;    /* mean of the last checks (the gauge); NAN if none */
	uint64_t checked; /* queries re-run for this series (or in total) */
	int exact;        /* truth from a refine store (1) or PQ reconstructions (0) */
	uint64_t offered, sampled, dropped, skipped, flat_builds;
	double busy_seconds, wall_seconds; /* busy / wall <= cpu_budget */
};
/* cdx_online_recall_get fills st; CDX_ENOTFOUND if the series has no check yet. */
int cdx_online_recall_get(
    cdx_online_recall *o, const char *collection, uint32_t k, struct cdx_online_recall_stats *st);
/* cdx_online_recall_flush waits until every queued sample is checked
 * (tests, shutdown reports). CDX_ETIMEDOUT after timeout_ms. */
int cdx_online_recall_flush(cdx_online_recall *o, uint32_t timeout_ms);

/* cdx_online_recall_render appends Prometheus text lines
 * (candex_online_recall{collection=...,k=...}, candex_online_recall_queries_total...) to out. */
int cdx_online_recall_render(cdx_online_recall *o, cdx_buf *out);

#endif
