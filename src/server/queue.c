/*
 * queue.c — what a search is admitted on and in which order it runs: the
 * limits derived from the configuration, a cost estimate per search, and
 * the two-class queue the workers pop from.
 *
 * DESIGN
 * Cost. A search's work is, per query: the coarse assignment (nlist x dim),
 * and per probed list the look-up table (256 x dim for PQ) plus the scan of
 * its codes (items / nlist codes of code_size bytes), then the merge and the
 * exact re-rank of k x refine candidates. That sum, in "units", times a
 * calibration measured on the searches already run (an exponential moving
 * average of ns per unit, kept apart for cheap and heavy searches), is the
 * estimate in µs: seconds for a batch of 256 queries x nprobe 1024 x k 1000,
 * tens of µs for one query at nprobe 16, where a count of requests saw two
 * equal requests.
 *
 * Admission. The queue holds at most --queue-max jobs, and a job is refused
 * OVERLOADED when the estimated work ahead of it (queued, and what is left
 * of the heavy searches running, per worker that may take it) would already
 * use up its deadline: it could not be answered in time, and saying so at
 * once lets the client try another replica.
 *
 * Order. Jobs estimated above --heavy-ms are "heavy": they wait in their
 * own FIFO and run on at most half the workers (at least one) at once;
 * cheap jobs go first and may use every worker. Two huge batches therefore
 * occupy one worker of two, and single queries keep flowing on the other.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "search/points.h"
#include "server/server.h"

#define SRV_NS_PER_UNIT_START  0.3 /* a first guess, replaced by measurement from the first searches */
#define SRV_CALIBRATION_WEIGHT 0.2

int
cdx__srv_limits_init(cdx_server *s)
{
	const struct cdx_server_config *cfg = &s->cfg;
	/* nng drops the connection of a message above RECVMAXSZ without a
	 * word; allowing twice max-message lets the server answer
	 * LIMIT_EXCEEDED for everything but absurd sizes. */
	s->frame_limit = cfg->max_message > SIZE_MAX / 2 ? SIZE_MAX : (size_t) cfg->max_message * 2;
	/* Half the budget at most for frames still arriving (one per
	 * connection, out of our sight inside nng), the rest for requests
	 * received and decoded. */
	uint64_t by_budget = cfg->max_receive_memory / 2 / s->frame_limit;
	if (by_budget < 1 || cfg->max_connections == 0)
		return cdx_error(CDX_EINVAL,
		    "--max-receive-memory %llu cannot hold one connection's frames (2 x --max-message = %zu "
		    "bytes) and a decoded request: give at least 4 x --max-message, and --max-connections >= "
		    "1",
		    (unsigned long long) cfg->max_receive_memory, s->frame_limit);
	s->conns.limit = (uint32_t) CDX_MIN((uint64_t) cfg->max_connections, by_budget);
	s->rx_budget = (size_t) (cfg->max_receive_memory - (uint64_t) s->conns.limit * s->frame_limit);
	s->heavy_limit = CDX_MAX(1u, s->nworkers / 2);
	s->ns_per_unit[0] = s->ns_per_unit[1] = SRV_NS_PER_UNIT_START;
	if (s->conns.limit < cfg->max_connections)
		cdx_warn("SRV-LIMITS",
		    "at most %u connections (not --max-connections %u): each may hold a frame of %zu bytes "
		    "and "
		    "--max-receive-memory %llu keeps half for them",
		    s->conns.limit, cfg->max_connections, s->frame_limit,
		    (unsigned long long) cfg->max_receive_memory);
	return CDX_OK;
}

double
cdx__srv_cost_units(const cdx_collection *c, size_t nq, const struct cdx_search_params *p)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	double dim = m->dim, items = (double) m->items;
	struct cdx_point_choice pc; /* what a recall target turns into */
	cdx_points_choose(m, p->k, p->nprobe, p->refine_factor, p->recall_target, p->escalate, &pc);
	float refine = cdx_collection_effective_refine(c, pc.refine_factor);
	double excl = (double) p->n_exclude_ids + (double) p->n_exclude_keys;
	double kf = refine > 0 ? (CDX_MAX((double) p->k, (double) pc.tier_k) + excl) * refine : p->k + excl;
	double per_query;
	if (m->nlist > 0) {
		double nprobe = cdx_collection_effective_nprobe(c, pc.nprobe);
		double code = m->pq_m > 0 ? (double) m->pq_m * m->pq_nbits / 8.0 : dim * 4.0;
		double table = m->pq_m > 0 ? 256.0 * dim : 0.0;
		per_query = m->nlist * dim + nprobe * (table + items / m->nlist * code);
	} else {
		per_query = items * dim;
	}
	per_query += kf * (m->nshards + (refine > 0 ? dim : 0.0));
	return per_query * (double) nq;
}

void
cdx__srv_estimate(cdx_server *s, struct srv_ctx *x, double units)
{
	x->cost_units = units;
	/* the class by the cheap searches' calibration, the estimate by the
	 * class's own (the model's error differs between one query and a
	 * thousand) */
	pthread_mutex_lock(&s->q_mu);
	x->heavy = x->cost_units * s->ns_per_unit[0] / 1000.0 > (double) s->cfg.heavy_ms * 1000.0;
	x->cost_us = x->cost_units * s->ns_per_unit[x->heavy] / 1000.0;
	pthread_mutex_unlock(&s->q_mu);
}

void
cdx__srv_fifo_push(struct srv_ctx **head, struct srv_ctx **tail, struct srv_ctx *x)
{
	x->next = NULL;
	if (*tail != NULL)
		(*tail)->next = x;
	else
		*head = x;
	*tail = x;
}

struct srv_ctx *
cdx__srv_fifo_pop(struct srv_ctx **head, struct srv_ctx **tail)
{
	struct srv_ctx *x = *head;
	if (x != NULL) {
		*head = x->next;
		if (*head == NULL)
			*tail = NULL;
	}
	return x;
}

int
cdx__srv_admit(cdx_server *s, struct srv_ctx *x, char *msg, size_t size)
{
	uint64_t now = cdx_now_us();
	pthread_mutex_lock(&s->q_mu);
	if (s->q_stop) {
		/* the workers are gone (shutdown): nobody would take it */
		pthread_mutex_unlock(&s->q_mu);
		snprintf(msg, size, "server is shutting down; retry on another replica");
		return CDX_EUNAVAIL;
	}
	if (s->q_len >= s->cfg.queue_max) {
		uint32_t waiting = s->q_len;
		pthread_mutex_unlock(&s->q_mu);
		snprintf(
		    msg, size, "server overloaded: %u searches already waiting; retry with backoff", waiting);
		return CDX_EOVERLOAD;
	}
	/* work ahead of it, per worker that may take it */
	double running_us = CDX_MAX(0.0, s->heavy_ends_us - (double) s->heavy_running * (double) now);
	double ahead_us = x->heavy ? (s->q_heavy_us + running_us) / s->heavy_limit
	                           : s->q_cheap_us / CDX_MAX(1.0, (double) s->nworkers - s->heavy_running);
	double left_us = x->deadline_us > now ? (double) (x->deadline_us - now) : 0.0;
	if (ahead_us > left_us) {
		pthread_mutex_unlock(&s->q_mu);
		snprintf(msg, size,
		    "server overloaded: an estimated %.0f ms of searches wait ahead of this one, more than "
		    "its "
		    "deadline leaves (%.0f ms); retry with backoff",
		    ahead_us / 1000.0, left_us / 1000.0);
		return CDX_EOVERLOAD;
	}
	if (x->heavy) {
		cdx__srv_fifo_push(&s->h_head, &s->h_tail, x);
		s->q_heavy_us += x->cost_us;
	} else {
		cdx__srv_fifo_push(&s->q_head, &s->q_tail, x);
		s->q_cheap_us += x->cost_us;
	}
	s->q_len++;
	x->state = CTX_QUEUED;
	pthread_cond_signal(&s->q_cv);
	pthread_mutex_unlock(&s->q_mu);
	return CDX_OK;
}

struct srv_ctx *
cdx__srv_next(cdx_server *s, int *idle)
{
	struct srv_ctx *x = NULL;
	pthread_mutex_lock(&s->q_mu);
	for (;;) {
		if ((x = cdx__srv_fifo_pop(&s->q_head, &s->q_tail)) != NULL) {
			s->q_cheap_us = s->q_head != NULL ? CDX_MAX(0.0, s->q_cheap_us - x->cost_us) : 0.0;
			break;
		}
		if (s->h_head != NULL && (s->heavy_running < s->heavy_limit || s->q_stop)) {
			x = cdx__srv_fifo_pop(&s->h_head, &s->h_tail);
			s->q_heavy_us = s->h_head != NULL ? CDX_MAX(0.0, s->q_heavy_us - x->cost_us) : 0.0;
			s->heavy_running++;
			x->heavy_end_us = (double) cdx_now_us() + x->cost_us;
			s->heavy_ends_us += x->heavy_end_us;
			break;
		}
		if (s->q_stop)
			break;
		pthread_cond_wait(&s->q_cv, &s->q_mu);
	}
	if (x != NULL)
		s->q_len--;
	*idle = s->q_len == 0;
	pthread_mutex_unlock(&s->q_mu);
	return x;
}

void
cdx__srv_job_done(cdx_server *s, struct srv_ctx *x, uint64_t took_us)
{
	pthread_mutex_lock(&s->q_mu);
	if (x->heavy) {
		s->heavy_running--;
		s->heavy_ends_us = s->heavy_running > 0 ? s->heavy_ends_us - x->heavy_end_us : 0.0;
		if (s->h_head != NULL)
			pthread_cond_broadcast(&s->q_cv); /* a heavy job may start now */
	}
	if (took_us > 0 && x->cost_units > 0) {
		double measured = (double) took_us * 1000.0 / x->cost_units;
		double *ns = &s->ns_per_unit[x->heavy];
		*ns += SRV_CALIBRATION_WEIGHT * (measured - *ns);
	}
	pthread_mutex_unlock(&s->q_mu);
}

uint32_t
cdx__srv_queue_depth(cdx_server *s)
{
	pthread_mutex_lock(&s->q_mu);
	uint32_t n = s->q_len;
	pthread_mutex_unlock(&s->q_mu);
	return n;
}
