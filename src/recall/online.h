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

struct cdx_online_recall_config {
	double sample_fraction; /* 0..1 of answered queries; 0 disables */
	double cpu_budget;      /* fraction of one core the checker may use, e.g. 0.05 */
	uint32_t queue_max;     /* sampled queries waiting; more are dropped */
};

/* cdx_online_recall_start starts the checker thread. On success *op is set;
 * stop and free it with cdx_online_recall_stop(). */
int cdx_online_recall_start(cdx_online_recall **op, const struct cdx_online_recall_config *cfg);
void cdx_online_recall_stop(cdx_online_recall *o); /* NULL is a no-op */

/* cdx_online_recall_offer considers one answered query (query: dim floats as
 * the client sent them; hits: the k results returned). Takes a reference on c
 * if sampled. Never blocks; safe from any thread. */
void cdx_online_recall_offer(cdx_online_recall *o, cdx_collection *c, const float *query, uint32_t k,
    const struct cdx_hit *hits, uint32_t nhits);

/* cdx_online_recall_render appends Prometheus text lines
 * (candex_online_recall{collection=...,k=...}, candex_online_recall_queries_total...) to out. */
int cdx_online_recall_render(cdx_online_recall *o, cdx_buf *out);

#endif
