/*
 * conns.c — the server's view of its connections (nng pipes): a connection
 * limit, eviction of connections that never complete a request, and the
 * liveness of a request's connection (queued work whose requester is gone
 * is dropped before it is searched).
 *
 * DESIGN
 * nng tells a socket about each pipe through notifications: ADD_PRE runs
 * after the transport accepted and handshook the connection and before the
 * protocol sees it; closing the pipe there rejects it (nng counts it in its
 * listener's "reject" statistic). REM_POST runs once the pipe is gone, for
 * rejected pipes too. A table per socket (query, admin) holds the open pipes
 * sorted by id (nng hands out increasing ids, so inserts are appends) with
 * the time each last completed a request.
 *
 * Every open connection may hold one partly received message of up to the
 * frame limit (nng's RECVMAXSZ) inside nng, out of our sight: the connection
 * limit is what bounds that memory (cdx__srv_limits_init). A peer that opens
 * connections and sends all but the last byte of a large frame fills the
 * table; so when it is full, a new connection takes the place of the one that
 * has gone longest without completing a request (if that is more than
 * SRV_EVICT_AFTER_MS), and is refused otherwise. Clients that keep sending
 * requests are never evicted; an idle pooled connection may be, and nng
 * clients redial on their own.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"
#include "server/server.h"

#define SRV_EVICT_AFTER_MS 1000

static size_t
find(const struct srv_conns *t, uint32_t pipe)
{
	size_t lo = 0, hi = t->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->v[mid].pipe < pipe)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void
remove_at(struct srv_conns *t, size_t i)
{
	memmove(&t->v[i], &t->v[i + 1], (t->n - i - 1) * sizeof(t->v[0]));
	t->n--;
}

/* admit decides on a new pipe under t->mu: 1 = admitted, 0 = refused.
 * *victim is set to a pipe to close in its favour (0 = none). */
static int
admit(struct srv_conns *t, uint32_t pipe, uint64_t now, uint32_t *victim)
{
	*victim = 0;
	if (t->n >= t->limit) {
		size_t oldest = 0;
		for (size_t i = 1; i < t->n; i++)
			if (t->v[i].since_us < t->v[oldest].since_us)
				oldest = i;
		if (t->n == 0 || now - t->v[oldest].since_us < (uint64_t) SRV_EVICT_AFTER_MS * 1000u)
			return 0;
		*victim = t->v[oldest].pipe;
		remove_at(t, oldest);
	}
	size_t i = find(t, pipe);
	memmove(&t->v[i + 1], &t->v[i], (t->n - i) * sizeof(t->v[0]));
	t->v[i] = (struct srv_conn) { .pipe = pipe, .since_us = now };
	t->n++;
	return 1;
}

static void
on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	struct srv_conns *t = arg;
	cdx_server *s = t->s;
	uint32_t id = (uint32_t) nng_pipe_id(p);

	if (ev == NNG_PIPE_EV_REM_POST) {
		pthread_mutex_lock(&t->mu);
		size_t i = find(t, id);
		if (i < t->n && t->v[i].pipe == id)
			remove_at(t, i);
		pthread_mutex_unlock(&t->mu);
		return;
	}
	/* NNG_PIPE_EV_ADD_PRE */
	if (cdx__srv_watchdog_claim(s, p)) {
		nng_pipe_close(p); /* the watchdog's probe: it only had to arrive */
		return;
	}
	uint32_t victim;
	pthread_mutex_lock(&t->mu);
	int ok = admit(t, id, cdx_now_us(), &victim);
	pthread_mutex_unlock(&t->mu);
	if (!ok) {
		atomic_fetch_add(&s->m.conns_refused, 1);
		cdx_debug("SRV-CONN-REFUSED", "%s connection refused: %u open (max-connections)",
		    t->admin ? "admin" : "query", t->limit);
		nng_pipe_close(p);
		return;
	}
	if (victim != 0) {
		atomic_fetch_add(&s->m.conns_evicted, 1);
		cdx_debug("SRV-CONN-EVICT", "closing connection %u: the longest without a request", victim);
		nng_pipe_close((nng_pipe) { .id = victim });
	}
}

int
cdx__srv_conns_init(cdx_server *s, struct srv_conns *t, nng_socket sock, uint32_t limit, int admin)
{
	int rv;
	t->s = s;
	t->limit = limit;
	t->admin = admin;
	t->n = 0;
	if ((t->v = calloc(limit ? limit : 1, sizeof(*t->v))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	pthread_mutex_init(&t->mu, NULL);
	t->init = 1;
	if ((rv = nng_pipe_notify(sock, NNG_PIPE_EV_ADD_PRE, on_pipe, t)) != 0
	    || (rv = nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, on_pipe, t)) != 0)
		return cdx_error(cdx__nng_code(rv), "nng_pipe_notify: %s", nng_strerror(rv));
	return CDX_OK;
}

void
cdx__srv_conns_fini(struct srv_conns *t)
{
	if (!t->init)
		return;
	pthread_mutex_destroy(&t->mu);
	free(t->v);
	t->v = NULL;
	t->init = 0;
}

void
cdx__srv_conn_seen(struct srv_conns *t, uint32_t pipe)
{
	pthread_mutex_lock(&t->mu);
	size_t i = find(t, pipe);
	if (i < t->n && t->v[i].pipe == pipe)
		t->v[i].since_us = cdx_now_us();
	pthread_mutex_unlock(&t->mu);
}

int
cdx__srv_conn_open(struct srv_conns *t, uint32_t pipe)
{
	pthread_mutex_lock(&t->mu);
	size_t i = find(t, pipe);
	int open = i < t->n && t->v[i].pipe == pipe;
	pthread_mutex_unlock(&t->mu);
	return open;
}

uint32_t
cdx__srv_conns_count(struct srv_conns *t)
{
	if (!t->init)
		return 0;
	pthread_mutex_lock(&t->mu);
	uint32_t n = (uint32_t) t->n;
	pthread_mutex_unlock(&t->mu);
	return n;
}
