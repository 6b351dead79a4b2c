/*
 * dispatch.c — sockets, per-context state machines, request validation, the
 * job queue and the search workers (see server.h DESIGN).
 *
 * A context's life: RECV (aio callback on an nng thread: the message is
 * charged to the receive budget) -> INTAKE (on that thread, or on the
 * intake thread for a large one: decode and checks; health/info/errors are
 * answered there; a search is admitted to the queue or answered
 * OVERLOADED; a reload goes to the reload thread) -> QUEUED (a worker searches) -> whoever answers packs
 * the Response and sends it (see "Replies" below) -> RECV again. Exactly
 * one party owns a context between RECV and SEND, so a context needs no
 * lock.
 *
 * Intake. A request of up to SRV_INLINE_INTAKE_MAX bytes goes through
 * intake on the nng thread that received it; a larger one goes to the
 * intake thread, so that a big decode never holds up nng's I/O threads.
 *
 * Replies. A reply goes out on the context's saio, which has no callback.
 * When the reply's connection is not busy writing an earlier reply, nng
 * 1.5.2's REP context hands the message to the connection and completes
 * the send before nng_ctx_send returns (rep0_ctx_send); without a callback
 * that completion runs on the sending thread, where a callback would have
 * woken one of nng's task threads. nng_aio_count() is then the message's
 * length (a send still pending reads 0; one completing on nng's thread at
 * that moment may read either, and reply_sent's nng_aio_wait orders what
 * nng wrote before we look at it), and whoever sent re-arms the context's
 * receive at once. Otherwise (the connection is still writing an earlier
 * reply, or the send failed) nng completes the send later, from its own
 * thread, where nothing tells us:
 * the context goes to the sender thread, which waits for the send (at most
 * until SRV_REPLY_GRACE_MS after the request's deadline: its client has
 * given up by then) and then re-arms it. Workers never wait for a client.
 * With intake on the nng thread: 12.2 -> 8.7-10.1 context switches a
 * single-query request in the server (BENCHMARKS.md, "Fewer hand-offs").
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "wire/wire.h"
#include "server/server.h"

#include "recall/online.h"

#define SRV_ADMIN_CONNECTIONS 16
/* Requests up to this size go through intake on the nng thread that
 * received them: decoding a few KiB costs less than waking the intake
 * thread (one context switch or more a request on this VM). Larger ones
 * go to the intake thread, so that a big decode never holds up nng's I/O
 * threads. A batch of 16 queries of 784 floats is 50 KiB. */
#define SRV_INLINE_INTAKE_MAX (64u << 10)
/* A reply still waiting for its connection this long after its request's
 * deadline is dropped: its client has given up (the sender thread's wait
 * is bounded by it). */
#define SRV_REPLY_GRACE_MS 1000

static const char *
str_or_empty(const char *s)
{
	return s != NULL ? s : "";
}

/* request_free drops everything x holds for its request. */
static void
request_free(struct srv_ctx *x)
{
	if (x->msg != NULL) {
		nng_msg_free(x->msg);
		x->msg = NULL;
	}
	if (x->req != NULL) {
		candex__v1__request__free_unpacked(x->req, &x->alloc);
		x->req = NULL;
	}
	if (x->reserved > 0) {
		cdx__srv_budget_give(x->s, x->reserved);
		x->reserved = 0;
	}
	x->over_budget = 0;
	if (x->coll != NULL) {
		cdx_collection_unref(x->coll);
		x->coll = NULL;
	}
	cdx_rowset_unref(x->blocked);
	x->blocked = NULL;
	x->peeked_id[0] = '\0';
}

/* reply_sent finishes a send on x->saio that has completed (or will
 * complete without us: nng_aio_wait waits for it), and receives the next
 * request. */
static void
reply_sent(struct srv_ctx *x)
{
	nng_aio_wait(x->saio);
	int rv = nng_aio_result(x->saio);
	if (rv == NNG_ETIMEDOUT)
		atomic_fetch_add(&x->s->m.replies_dropped, 1);
	if (rv != 0)
		nng_msg_free(nng_aio_get_msg(x->saio)); /* not sent: still ours */
	nng_aio_set_msg(x->saio, NULL);
	atomic_fetch_sub(&x->s->in_flight, 1);
	x->state = CTX_RECV;
	nng_ctx_recv(x->ctx, x->aio);
}

/* reply_send sends msg on x (see "Replies" above); wait_ms bounds how long
 * it may wait for its connection. */
static void
reply_send(struct srv_ctx *x, nng_msg *msg, nng_duration wait_ms)
{
	cdx_server *s = x->s;
	x->state = CTX_SEND;
	nng_aio_set_timeout(x->saio, wait_ms);
	nng_aio_set_msg(x->saio, msg);
	nng_ctx_send(x->ctx, x->saio);
	if (nng_aio_count(x->saio) > 0) {
		reply_sent(x); /* handed to the connection already */
		return;
	}
	atomic_fetch_add(&s->m.replies_waited, 1);
	pthread_mutex_lock(&s->snd_mu);
	cdx__srv_fifo_push(&s->snd_head, &s->snd_tail, x);
	pthread_cond_signal(&s->snd_cv);
	pthread_mutex_unlock(&s->snd_mu);
}

static void *
sender_main(void *arg)
{
	cdx_server *s = arg;
	pthread_mutex_lock(&s->snd_mu);
	for (;;) {
		while (s->snd_head == NULL && !s->snd_stop)
			pthread_cond_wait(&s->snd_cv, &s->snd_mu);
		struct srv_ctx *x = cdx__srv_fifo_pop(&s->snd_head, &s->snd_tail);
		if (x == NULL)
			break; /* stopped, and nothing left */
		pthread_mutex_unlock(&s->snd_mu);
		reply_sent(x);
		pthread_mutex_lock(&s->snd_mu);
	}
	pthread_mutex_unlock(&s->snd_mu);
	return NULL;
}

int
cdx__srv_sender_start(cdx_server *s)
{
	if (pthread_create(&s->sender, NULL, sender_main, s) != 0)
		return cdx_error(CDX_ENOMEM, "cannot start the sender thread");
	s->sender_started = 1;
	return CDX_OK;
}

/* sender_stop ends the sender thread once it has finished every send
 * handed to it (after the sockets closed, all of them complete). */
static void
sender_stop(cdx_server *s)
{
	if (!s->sender_started)
		return;
	pthread_mutex_lock(&s->snd_mu);
	s->snd_stop = 1;
	pthread_cond_signal(&s->snd_cv);
	pthread_mutex_unlock(&s->snd_mu);
	pthread_join(s->sender, NULL);
	s->sender_started = 0;
}

/* release ends a request without an answer (its client is gone, or the
 * answer could not be built) and receives the next. */
static void
release(struct srv_ctx *x)
{
	request_free(x);
	atomic_fetch_sub(&x->s->in_flight, 1);
	x->state = CTX_RECV;
	nng_ctx_recv(x->ctx, x->aio);
}

/* send_response packs resp, records metrics, releases the request and
 * sends. Called by whoever owns the context. */
static void
send_response(struct srv_ctx *x, Candex__V1__Response *resp)
{
	cdx_server *s = x->s;
	nng_msg *msg = NULL;

	if (x->req != NULL && x->req->request_id != NULL)
		cdx_utf8_sanitize(x->req->request_id); /* echoed: must be UTF-8 */
	resp->request_id = (char *) (x->req != NULL ? str_or_empty(x->req->request_id) : x->peeked_id);
	if (resp->status != CANDEX__V1__STATUS__OK)
		cdx_debug("SRV-REQ-ERR", "request '%s': %s: %s", resp->request_id,
		    cdx_errname((int) resp->status), str_or_empty(resp->message));
	if (cdx__wire_pack(&resp->base, &msg) != CDX_OK) {
		/* most likely out of memory: try the smallest possible answer */
		Candex__V1__Response small = CANDEX__V1__RESPONSE__INIT;
		small.status = CANDEX__V1__STATUS__NO_MEMORY;
		small.message = (char *) "out of memory building the response";
		small.request_id = resp->request_id;
		resp = &small;
		if (cdx__wire_pack(&small.base, &msg) != CDX_OK)
			msg = NULL;
	}
	if (strcmp(resp->request_id, CDX_PROBE_REQUEST_ID) != 0)
		cdx__srv_observe(s, x->coll != NULL ? cdx_collection_manifest(x->coll)->collection : NULL,
		    (int) resp->status, cdx_now_us() - x->t_recv_us);
	if (msg == NULL) {
		/* nothing to send: go back to receiving; the client times out */
		release(x);
		return;
	}
	uint64_t by
	    = x->deadline_us > 0 ? x->deadline_us : x->t_recv_us + (uint64_t) s->cfg.timeout_ms * 1000u;
	uint64_t now = cdx_now_us();
	uint64_t wait_ms = (by > now ? (by - now) / 1000u : 0) + SRV_REPLY_GRACE_MS;
	request_free(x);
	reply_send(x, msg, (nng_duration) CDX_MIN(wait_ms, (uint64_t) INT32_MAX));
}

static void CDX_PRINTF(3, 4) reply_error(struct srv_ctx *x, int code, const char *fmt, ...)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	char message[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	cdx_utf8_sanitize(message); /* client text inside, and a buffer limit */
	resp.status = (Candex__V1__Status) code;
	resp.message = message;
	send_response(x, &resp);
}

void
cdx__srv_send(struct srv_ctx *x, Candex__V1__Response *resp)
{
	send_response(x, resp);
}

void
cdx__srv_reply_error(struct srv_ctx *x, int code, const char *fmt, ...)
{
	char message[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	reply_error(x, code, "%s", message);
}

/* fill_info describes one served collection; strings point into e. */
static void
fill_info(Candex__V1__CollectionInfo *ci, const struct srv_entry *e)
{
	const struct cdx_manifest *m = cdx_collection_manifest(e->coll);
	candex__v1__collection_info__init(ci);
	ci->name = (char *) e->name;
	ci->version = (char *) m->version;
	ci->dim = m->dim;
	ci->metric = (char *) cdx_metric_name(m->metric);
	ci->items = m->items;
	ci->shards = m->nshards;
	ci->nlist = m->nlist;
	ci->default_nprobe = m->default_nprobe;
	ci->factory = (char *) m->factory;
	ci->model_version = (char *) m->model_version;
	ci->refine = (char *) cdx_refine_name(m->refine);
	ci->loaded_unix_ms = e->loaded_ms;
	cdx__srv_fill_info_shards(ci, e->coll);
}

/* infos builds CollectionInfo for the snapshot entries named only (NULL or
 * "" = all). *arrp and *nodes are malloc'd; the caller frees them. */
static size_t
infos(const struct srv_set *set, const char *only, Candex__V1__CollectionInfo ***arrp,
    Candex__V1__CollectionInfo **nodes)
{
	size_t n = 0;
	*arrp = calloc(set->n ? set->n : 1, sizeof(**arrp));
	*nodes = calloc(set->n ? set->n : 1, sizeof(**nodes));
	if (*arrp == NULL || *nodes == NULL)
		return 0;
	for (size_t i = 0; i < set->n; i++) {
		if (only != NULL && *only != '\0' && strcmp(only, set->e[i].name) != 0)
			continue;
		fill_info(&(*nodes)[n], &set->e[i]);
		(*arrp)[n] = &(*nodes)[n];
		n++;
	}
	return n;
}

static void
reply_info(struct srv_ctx *x, const char *only)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__InfoResponse ir = CANDEX__V1__INFO_RESPONSE__INIT;
	Candex__V1__CollectionInfo **arr = NULL, *nodes = NULL;
	struct srv_set *set = cdx__srv_snapshot(x->s);

	if (set == NULL) {
		reply_error(x, CDX_ENOMEM, "out of memory");
		return;
	}
	ir.n_collections = infos(set, only, &arr, &nodes);
	ir.collections = arr;
	char *prev = cdx__srv_fill_previous(x->s, arr, ir.n_collections);
	ir.server_version = (char *) "candex " CANDEX_VERSION;
	if (only != NULL && *only != '\0' && ir.n_collections == 0) {
		char names[512];
		cdx__srv_names(x->s, names, sizeof(names));
		reply_error(x, CDX_ENOTFOUND, "unknown collection '%s' (serving: %s)", only, names);
	} else {
		resp.body_case = CANDEX__V1__RESPONSE__BODY_INFO;
		resp.info = &ir;
		send_response(x, &resp);
	}
	free(prev);
	free(arr);
	free(nodes);
	cdx__srv_set_free(set);
}

void
cdx__srv_reply_reload(struct srv_ctx *x, int status, const char *msg)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__ReloadResponse rr = CANDEX__V1__RELOAD_RESPONSE__INIT;
	Candex__V1__DropResponse dr = CANDEX__V1__DROP_RESPONSE__INIT;
	Candex__V1__CollectionInfo **arr = NULL, *nodes = NULL;
	struct srv_set *set = cdx__srv_snapshot(x->s);

	resp.status = (Candex__V1__Status) status;
	resp.message = (char *) (msg != NULL ? msg : status ? cdx_strerror(status) : "");
	if (set != NULL && x->req != NULL && x->req->body_case == CANDEX__V1__REQUEST__BODY_DROP) {
		dr.n_serving = infos(set, NULL, &arr, &nodes);
		dr.serving = arr;
		resp.body_case = CANDEX__V1__RESPONSE__BODY_DROP;
		resp.drop = &dr;
	} else if (set != NULL) {
		/* the served set after the reload, whatever the outcome */
		rr.n_loaded = infos(set, NULL, &arr, &nodes);
		rr.loaded = arr;
		resp.body_case = CANDEX__V1__RESPONSE__BODY_RELOAD;
		resp.reload = &rr;
	}
	send_response(x, &resp);
	free(arr);
	free(nodes);
	cdx__srv_set_free(set);
}

static void
reply_health(struct srv_ctx *x)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__HealthResponse hr = CANDEX__V1__HEALTH_RESPONSE__INIT;
	pthread_mutex_lock(&x->s->set_mu);
	hr.collections = x->s->set != NULL ? (uint32_t) x->s->set->n : 0;
	pthread_mutex_unlock(&x->s->set_mu);
	hr.serving = hr.collections > 0 && !atomic_load(&x->s->stopping);
	resp.body_case = CANDEX__V1__RESPONSE__BODY_HEALTH;
	resp.health = &hr;
	send_response(x, &resp);
}

/* reply_lookup answers a LookupRequest (stored vectors by key) on the nng
 * thread: a key lookup and a vector decode each, bounded by --max-batch. */
static void
reply_lookup(struct srv_ctx *x)
{
	const Candex__V1__LookupRequest *lr = x->req->lookup;
	if (lr == NULL || lr->collection == NULL || lr->collection[0] == '\0') {
		reply_error(x, CDX_EINVAL, "lookup request without a collection name");
		return;
	}
	if (lr->n_keys > x->s->cfg.max_batch) {
		reply_error(x, CDX_ELIMIT, "lookup of %zu keys exceeds the server's max-batch %u", lr->n_keys,
		    x->s->cfg.max_batch);
		return;
	}
	cdx_collection *c = cdx__srv_lookup_version(x->s, lr->collection, lr->index_version, NULL);
	if (c == NULL) {
		char names[512];
		cdx__srv_names(x->s, names, sizeof(names));
		const char *v = lr->index_version != NULL ? lr->index_version : "";
		reply_error(x, CDX_ENOTFOUND, "collection '%.*s'%s%.*s not served here (serving: %s)",
		    (int) cdx_utf8_cut(lr->collection, 100), lr->collection, *v ? " version " : "",
		    (int) cdx_utf8_cut(v, 64), v, names);
		return;
	}
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	size_t n = lr->n_keys;
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__LookupResponse out = CANDEX__V1__LOOKUP_RESPONSE__INIT;
	protobuf_c_boolean *found = calloc(n ? n : 1, sizeof(*found));
	int64_t *ids = calloc(n ? n : 1, sizeof(*ids));
	float *vectors = calloc(n ? n * m->dim : 1, sizeof(float));
	if (found == NULL || ids == NULL || vectors == NULL) {
		reply_error(x, CDX_ENOMEM, "out of memory for %zu vectors", n);
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t shard, row;
		if (lr->keys[i] == NULL
		    || cdx_collection_find_key(c, lr->keys[i], &shard, &row, &ids[i]) != CDX_OK)
			continue; /* held by another shard group, or by none */
		if (cdx_collection_vector(c, shard, row, vectors + i * m->dim) != CDX_OK) {
			reply_error(x, CDX_EINTERNAL, "key '%.*s': %s", (int) cdx_utf8_cut(lr->keys[i], 200),
			    lr->keys[i], cdx_last_error());
			goto done;
		}
		found[i] = 1;
	}
	cdx_error_clear();
	out.index_version = (char *) m->version;
	out.dim = m->dim;
	out.n_found = out.n_ids = n;
	out.found = found;
	out.ids = ids;
	out.n_vectors = n * m->dim;
	out.vectors = vectors;
	resp.body_case = CANDEX__V1__RESPONSE__BODY_LOOKUP;
	resp.lookup = &out;
	send_response(x, &resp);
done:
	cdx_collection_unref(c);
	free(found);
	free(ids);
	free(vectors);
}

/* ---- searches ------------------------------------------------------- */

/* check_search validates what is cheap to validate, on the nng thread, and
 * takes the collection reference. Returns 0 or answers the error itself. */
static int
check_search(struct srv_ctx *x)
{
	cdx_server *s = x->s;
	const Candex__V1__SearchRequest *sr = x->req->search;
	const struct cdx_server_config *cfg = &s->cfg;
	char msg[1024];
	int code;

	if (sr != NULL && sr->n_parts > 0) { /* several collections: recsearch.c */
		if ((code = cdx__srv_check_rec(cfg, sr, msg, sizeof(msg))) != 0) {
			reply_error(x, code, "%s", msg);
			return -1;
		}
		return 0;
	}
	if (sr == NULL || sr->collection == NULL || sr->collection[0] == '\0') {
		reply_error(x, CDX_EINVAL, "search request without a collection name");
		return -1;
	}
	if ((x->coll = cdx__srv_lookup_version(s, sr->collection, sr->index_version, &x->blocked)) == NULL) {
		char names[512];
		cdx__srv_names(s, names, sizeof(names));
		if (sr->index_version != NULL && sr->index_version[0] != '\0')
			reply_error(x, CDX_ENOTFOUND,
			    "collection '%.*s' version %.*s is not loaded here (serving: %s)",
			    (int) cdx_utf8_cut(sr->collection, 100), sr->collection,
			    (int) cdx_utf8_cut(sr->index_version, 64), sr->index_version, names);
		else
			reply_error(x, CDX_ENOTFOUND, "unknown collection '%.*s' (serving: %s)",
			    (int) cdx_utf8_cut(sr->collection, 100), sr->collection, names);
		return -1;
	}
	if ((code = cdx__srv_validate_search(sr, cdx_collection_manifest(x->coll), cfg, msg, sizeof(msg)))
	        != CDX_OK
	    || (code = cdx__srv_check_rec(cfg, sr, msg, sizeof(msg))) != 0) {
		reply_error(x, code, "%s", msg);
		return -1;
	}
	return 0;
}

/* search_params fills p from x's request, for the cost estimate. */
static void
search_params(const struct srv_ctx *x, struct cdx_search_params *p)
{
	const Candex__V1__SearchRequest *sr = x->req->search;
	*p = (struct cdx_search_params) {
		.k = sr->k,
		.nprobe = sr->nprobe,
		.refine_factor = sr->refine_factor,
		.recall_target = sr->recall_target,
		/* recall adaptation (adapt.c): read when estimating and again
		 * when searching; either reading is a valid point */
		.escalate = sr->nprobe == 0 ? cdx__srv_adapt_escalation(x->s->adapt, x->coll, sr->k) : 0,
		.exclude_ids = sr->exclude_ids,
		.n_exclude_ids = sr->n_exclude_ids,
		.n_exclude_keys = sr->n_exclude_keys,
	};
}

/* lower brings *at forward to t if t is earlier. */
static void
lower(atomic_uint_fast64_t *at, uint64_t t)
{
	uint_fast64_t cur = atomic_load(at);
	while (t < cur && !atomic_compare_exchange_weak(at, &cur, t))
		;
}

void
cdx__srv_searches_end(cdx_server *s, uint64_t t)
{
	/* searches that start from now on read it; those running are cut
	 * here (run_search's second look closes the gap between the two) */
	lower(&s->searches_end, t);
	for (size_t i = 0; i < s->nctxs; i++)
		lower(&s->ctxs[i]->stop_by, t);
}

static size_t
batch_size(const struct srv_ctx *x)
{
	const Candex__V1__SearchRequest *sr = x->req->search;
	const struct cdx_manifest *m = cdx_collection_manifest(x->coll);
	return sr->n_vectors > 0 ? sr->n_vectors / m->dim : sr->n_query_keys;
}

/* run_search answers a queued search; returns the µs spent searching (0 if
 * it did not search). */
static uint64_t
run_search(struct srv_ctx *x, int idle)
{
	cdx_server *s = x->s;
	uint64_t now = cdx_now_us();

	if (x->pipe != 0 && !cdx__srv_conn_open(&s->conns, x->pipe)) {
		/* the client has gone: nobody would read the answer */
		atomic_fetch_add(&s->m.abandoned, 1);
		cdx_debug("SRV-ABANDONED", "request '%s': client disconnected while queued; not searched",
		    str_or_empty(x->req->request_id));
		release(x);
		return 0;
	}
	if (now > x->deadline_us) {
		if (x->coll != NULL) /* NULL: a search of several collections (parts) */
			cdx__srv_observe_search(
			    s, cdx_collection_manifest(x->coll)->collection, now - x->t_recv_us, 0, 0);
		atomic_fetch_add(&s->m.deadline_dropped, 1);
		reply_error(x, CDX_ETIMEDOUT,
		    "deadline exceeded after %.1f ms waiting for a worker; not searched",
		    (double) (now - x->t_recv_us) / 1000.0);
		return 0;
	}
	atomic_store(&x->stop_by, x->deadline_us);
	lower(&x->stop_by, atomic_load(&s->searches_end));
	return cdx__srv_search_run(x, idle);
}

static void *
worker_main(void *arg)
{
	cdx_server *s = arg;
	/* OpenMP's thread count is per thread: one Faiss thread per worker,
	 * so N workers use N cores, not N x N. */
	omp_set_num_threads(1);
	int idle;
	struct srv_ctx *x;
	while ((x = cdx__srv_next(s, &idle)) != NULL) {
		/* copy what job_done needs: the context is the client's again
		 * once answered */
		struct srv_ctx job
		    = { .heavy = x->heavy, .cost_units = x->cost_units, .heavy_end_us = x->heavy_end_us };
		uint64_t took_us = 0;
		pthread_mutex_lock(&s->q_mu);
		int stop = s->q_stop;
		pthread_mutex_unlock(&s->q_mu);
		if (stop)
			reply_error(x, CDX_EUNAVAIL, "server is shutting down");
		else
			took_us = run_search(x, idle);
		cdx__srv_job_done(s, &job, took_us);
	}
	return NULL;
}

int
cdx__srv_workers_start(cdx_server *s)
{
	if ((s->workers = calloc(s->nworkers, sizeof(*s->workers))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->nworkers; i++) {
		if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) {
			s->nworkers = i;
			return cdx_error(CDX_ENOMEM, "cannot start worker thread %u", i);
		}
	}
	return CDX_OK;
}

void
cdx__srv_workers_stop(cdx_server *s)
{
	if (s->workers == NULL)
		return;
	pthread_mutex_lock(&s->q_mu);
	s->q_stop = 1;
	pthread_cond_broadcast(&s->q_cv);
	pthread_mutex_unlock(&s->q_mu);
	for (uint32_t i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i], NULL);
	free(s->workers);
	s->workers = NULL;
}

/* ---- the state machine ---------------------------------------------- */

/* decode turns x->msg into x->req within the receive budget and the
 * server's limits (cdx__srv_decode_request). Returns 0, or answers the
 * error itself. */
static int
decode(struct srv_ctx *x)
{
	cdx_server *s = x->s;
	char why[256];

	if (x->msg == NULL) { /* refused at receipt (received()) */
		atomic_fetch_add(&s->m.budget_refused, 1);
		reply_error(x, CDX_EOVERLOAD,
		    "server overloaded: requests already hold its receive-memory budget (%zu of %zu "
		    "bytes); retry with backoff",
		    atomic_load(&s->rx_used), s->rx_budget);
		return -1;
	}
	const uint8_t *body = nng_msg_body(x->msg);
	size_t len = nng_msg_len(x->msg);
	int rc = cdx__srv_decode_request(&s->cfg, &x->alloc, body, len, &x->req, why, sizeof(why));
	if (rc != CDX_OK)
		cdx__srv_peek_request_id(body, len, x->peeked_id, sizeof(x->peeked_id));
	/* the message is decoded (or useless): give its bytes back */
	nng_msg_free(x->msg);
	x->msg = NULL;
	cdx__srv_budget_give(s, len);
	x->reserved -= len;
	if (rc == CDX_EPROTO && x->over_budget) {
		atomic_fetch_add(&s->m.budget_refused, 1);
		reply_error(x, CDX_EOVERLOAD,
		    "server overloaded: decoding this %zu-byte request would exceed the receive-memory "
		    "budget (%zu bytes); retry with backoff",
		    len, s->rx_budget);
		return -1;
	}
	if (rc != CDX_OK) {
		reply_error(x, rc, "%s", why);
		return -1;
	}
	return 0;
}

/* intake handles one received message on the intake thread. */
static void
intake(struct srv_ctx *x)
{
	cdx_server *s = x->s;

	if (decode(x) != 0)
		return;
	if (atomic_load(&s->stopping)) {
		reply_error(x, CDX_EUNAVAIL, "server is shutting down; retry on another replica");
		return;
	}
	if (x->req->protocol_version != CDX_PROTOCOL_VERSION) {
		reply_error(x, CDX_EVERSION, "protocol_version %u is not supported (this server speaks %d)",
		    x->req->protocol_version, CDX_PROTOCOL_VERSION);
		return;
	}
	switch (x->req->body_case) {
	case CANDEX__V1__REQUEST__BODY_HEALTH:
		reply_health(x);
		return;
	case CANDEX__V1__REQUEST__BODY_INFO:
		reply_info(x, x->req->info ? x->req->info->collection : NULL);
		return;
	case CANDEX__V1__REQUEST__BODY_LOOKUP:
		reply_lookup(x);
		return;
	case CANDEX__V1__REQUEST__BODY_RELOAD:
		if (!x->admin) {
			reply_error(x, CDX_EPERM, "reload is only accepted on the admin listener");
			return;
		}
		cdx__srv_reload_admin(s, x, x->req->reload ? x->req->reload->collection : NULL);
		return;
	case CANDEX__V1__REQUEST__BODY_TAKEDOWN:
		if (!x->admin) {
			reply_error(x, CDX_EPERM, "takedown is only accepted on the admin listener");
			return;
		}
		cdx__srv_takedown_admin(s, x, x->req->takedown);
		return;
	case CANDEX__V1__REQUEST__BODY_DROP:
		if (!x->admin) {
			reply_error(x, CDX_EPERM, "drop is only accepted on the admin listener");
			return;
		}
		cdx__srv_drop_admin(s, x, x->req->drop ? x->req->drop->collection : NULL);
		return;
	case CANDEX__V1__REQUEST__BODY_SEARCH: {
		if (check_search(x) != 0)
			return;
		uint32_t t = x->req->timeout_ms ? x->req->timeout_ms : s->cfg.timeout_ms;
		if (s->cfg.max_timeout_ms > 0 && t > s->cfg.max_timeout_ms)
			t = s->cfg.max_timeout_ms;
		x->deadline_us = x->t_recv_us + (uint64_t) t * 1000u;
		struct cdx_search_params p;
		char why[256];
		double units;
		if (x->coll != NULL) {
			search_params(x, &p);
			units = cdx__srv_cost_units(x->coll, batch_size(x), &p);
		} else {
			units = cdx__srv_rec_cost_units(s, x->req->search);
		}
		cdx__srv_estimate(s, x, units);
		int heavy = x->heavy; /* once admitted, x is the worker's */
		int rc = cdx__srv_admit(s, x, why, sizeof(why));
		if (rc == CDX_EOVERLOAD)
			atomic_fetch_add(&s->m.overloaded, 1);
		if (rc != CDX_OK)
			reply_error(x, rc, "%s", why);
		else if (heavy)
			atomic_fetch_add(&s->m.heavy, 1);
		return;
	}
	default:
		reply_error(x, CDX_EINVAL,
		    "request has no body (search, info, health, lookup, reload, drop or takedown)");
		return;
	}
}

static void *
intake_main(void *arg)
{
	cdx_server *s = arg;
	uint64_t trimmed = 0;
	pthread_mutex_lock(&s->i_mu);
	for (;;) {
		if (s->i_head == NULL && !s->i_stop) {
			/* Idle: once a second, hand the memory that requests and
			 * replaced versions freed back to the system (glibc keeps it
			 * in its arenas otherwise, and RSS only ever grows). */
			uint64_t now = cdx_now_us();
			if (now - trimmed >= 1000000u) {
				pthread_mutex_unlock(&s->i_mu);
				malloc_trim(0);
				trimmed = cdx_now_us();
				pthread_mutex_lock(&s->i_mu);
				continue;
			}
			uint64_t at = trimmed + 1000000u;
			struct timespec ts = { .tv_sec = (time_t) (at / 1000000u),
				.tv_nsec = (long) (at % 1000000u) * 1000L };
			pthread_cond_timedwait(&s->i_cv, &s->i_mu, &ts);
			continue;
		}
		struct srv_ctx *x = cdx__srv_fifo_pop(&s->i_head, &s->i_tail);
		if (x == NULL)
			break;
		int stop = s->i_stop;
		pthread_mutex_unlock(&s->i_mu);
		if (stop)
			reply_error(x, CDX_EUNAVAIL, "server is shutting down");
		else
			intake(x);
		pthread_mutex_lock(&s->i_mu);
	}
	pthread_mutex_unlock(&s->i_mu);
	return NULL;
}

int
cdx__srv_intake_start(cdx_server *s)
{
	if (pthread_create(&s->intake, NULL, intake_main, s) != 0)
		return cdx_error(CDX_ENOMEM, "cannot start the intake thread");
	s->intake_started = 1;
	return CDX_OK;
}

void
cdx__srv_intake_stop(cdx_server *s)
{
	if (!s->intake_started)
		return;
	pthread_mutex_lock(&s->i_mu);
	s->i_stop = 1;
	pthread_cond_signal(&s->i_cv);
	pthread_mutex_unlock(&s->i_mu);
	pthread_join(s->intake, NULL);
	s->intake_started = 0;
}

/* received runs on an nng thread: charge the message to the budget, then
 * take a small request through intake on this thread, and hand a large one
 * to the intake thread. */
static void
received(struct srv_ctx *x, nng_msg *msg)
{
	cdx_server *s = x->s;
	size_t len = nng_msg_len(msg);
	x->pipe = (uint32_t) nng_pipe_id(nng_msg_get_pipe(msg));
	cdx__srv_conn_seen(x->admin ? &s->admin_conns : &s->conns, x->pipe);
	x->msg = msg;
	if (cdx__srv_budget_take(s, len) == 0) {
		x->reserved = len;
	} else {
		/* keep only what the error response needs */
		cdx__srv_peek_request_id(nng_msg_body(msg), len, x->peeked_id, sizeof(x->peeked_id));
		nng_msg_free(msg);
		x->msg = NULL;
		x->over_budget = 1;
	}
	x->state = CTX_INTAKE;
	if (len <= SRV_INLINE_INTAKE_MAX) {
		intake(x);
		return;
	}
	pthread_mutex_lock(&s->i_mu);
	cdx__srv_fifo_push(&s->i_head, &s->i_tail, x);
	pthread_cond_signal(&s->i_cv);
	pthread_mutex_unlock(&s->i_mu);
}

static void
ctx_cb(void *arg)
{
	struct srv_ctx *x = arg;
	cdx_server *s = x->s;
	int rv = nng_aio_result(x->aio);

	switch (x->state) {
	case CTX_RECV:
		if (rv != 0) {
			if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
				return; /* the socket is closing */
			nng_ctx_recv(x->ctx, x->aio);
			return;
		}
		x->t_recv_us = cdx_now_us();
		x->deadline_us = 0; /* set by intake for searches */
		atomic_fetch_add(&s->in_flight, 1);
		nng_msg *msg = nng_aio_get_msg(x->aio);
		nng_aio_set_msg(x->aio, NULL);
		received(x, msg);
		return;
	}
}

static int
add_contexts(cdx_server *s, nng_socket sock, size_t n, int admin)
{
	struct srv_ctx **grown = realloc(s->ctxs, (s->nctxs + n) * sizeof(*grown));
	if (grown == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	s->ctxs = grown;
	for (size_t i = 0; i < n; i++) {
		struct srv_ctx *x = calloc(1, sizeof(*x));
		int rv;
		if (x == NULL)
			return cdx_error(CDX_ENOMEM, "out of memory");
		x->s = s;
		x->admin = admin;
		x->state = CTX_RECV;
		cdx__srv_allocator_init(x);
		if ((rv = nng_aio_alloc(&x->aio, ctx_cb, x)) != 0) {
			free(x);
			return cdx_error(cdx__nng_code(rv), "nng_aio_alloc: %s", nng_strerror(rv));
		}
		if ((rv = nng_aio_alloc(&x->saio, NULL, NULL)) != 0) {
			nng_aio_free(x->aio);
			free(x);
			return cdx_error(cdx__nng_code(rv), "nng_aio_alloc: %s", nng_strerror(rv));
		}
		if ((rv = nng_ctx_open(&x->ctx, sock)) != 0) {
			nng_aio_free(x->aio);
			nng_aio_free(x->saio);
			free(x);
			return cdx_error(cdx__nng_code(rv), "nng_ctx_open: %s", nng_strerror(rv));
		}
		s->ctxs[s->nctxs++] = x;
	}
	return CDX_OK;
}

static int
is_tls(const char *url)
{
	return strncmp(url, "tls+tcp", 7) == 0;
}

int
cdx__srv_listen(cdx_server *s, nng_socket sock, const char *url, int admin, struct srv_listener *slot)
{
	nng_listener l;
	int rv;

	if ((rv = nng_listener_create(&l, sock, url)) != 0)
		return cdx_error(cdx__nng_code(rv), "cannot listen on '%s': %s", url, nng_strerror(rv));
	if (is_tls(url)) {
		if (s->tls == NULL) {
			nng_listener_close(l);
			return cdx_error(CDX_EINVAL, "%s needs --tls-cert and --tls-key", url);
		}
		if ((rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, s->tls)) != 0) {
			nng_listener_close(l);
			return cdx_error(cdx__nng_code(rv), "TLS on '%s': %s", url, nng_strerror(rv));
		}
	}
	const char *ipc_mode = admin ? s->cfg.ipc_mode : s->cfg.query_ipc_mode;
	if (strncmp(url, "ipc://", 6) == 0 && ipc_mode != NULL && *ipc_mode) {
		int mode = (int) strtol(ipc_mode, NULL, 8);
		if ((rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, mode)) != 0)
			cdx_warn("SRV-LISTEN", "cannot set permissions %s on %s: %s", ipc_mode, url,
			    nng_strerror(rv));
	}
	if ((rv = nng_listener_start(l, 0)) != 0) {
		nng_listener_close(l);
		return cdx_error(cdx__nng_code(rv), "cannot listen on '%s': %s", url, nng_strerror(rv));
	}
	int port = 0;
	if (strstr(url, "tcp://") != NULL && nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) == 0)
		cdx_info(
		    "SRV-LISTEN", "%s listening on %s (port %d)", admin ? "admin" : "queries", url, port);
	else
		cdx_info("SRV-LISTEN", "%s listening on %s", admin ? "admin" : "queries", url);
	*slot = (struct srv_listener) { .l = l, .sock = sock, .url = url, .admin = admin, .port = port };
	return CDX_OK;
}

static int
listen_on(cdx_server *s, nng_socket sock, const char *url, int admin)
{
	int rc = cdx__srv_listen(s, sock, url, admin, &s->listeners[s->nlisteners]);
	if (rc == CDX_OK)
		s->nlisteners++;
	return rc;
}

int
cdx__srv_sockets_open(cdx_server *s)
{
	const struct cdx_server_config *cfg = &s->cfg;
	int rv, rc;
	int want_tls = cfg->tls_cert != NULL || (cfg->admin_listen && is_tls(cfg->admin_listen));
	for (unsigned i = 0; i < cfg->nlisten; i++)
		want_tls |= is_tls(cfg->listen[i]);
	if (want_tls) {
		if (cfg->tls_cert == NULL)
			return cdx_error(CDX_EINVAL, "tls+tcp:// listeners need --tls-cert and --tls-key");
		if ((rc = cdx__tls_config(
		         &s->tls, NNG_TLS_MODE_SERVER, cfg->tls_cert, cfg->tls_key, cfg->tls_ca, NULL))
		    != CDX_OK)
			return rc;
	}
	/* the frame limit is checked by nng before it allocates a frame */
	if ((rv = nng_rep0_open(&s->sock)) != 0)
		return cdx_error(cdx__nng_code(rv), "cannot open the REP socket: %s", nng_strerror(rv));
	nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, s->frame_limit);
	if ((rc = cdx__srv_conns_init(s, &s->conns, s->sock, s->conns.limit, 0)) != CDX_OK)
		return rc;
	for (unsigned i = 0; i < cfg->nlisten; i++)
		if ((rc = listen_on(s, s->sock, cfg->listen[i], 0)) != CDX_OK)
			return rc;
	if (cfg->admin_listen != NULL) {
		if ((rv = nng_rep0_open(&s->admin)) != 0)
			return cdx_error(
			    cdx__nng_code(rv), "cannot open the admin socket: %s", nng_strerror(rv));
		s->admin_open = 1;
		nng_socket_set_size(s->admin, NNG_OPT_RECVMAXSZ, s->frame_limit);
		if ((rc = cdx__srv_conns_init(s, &s->admin_conns, s->admin, SRV_ADMIN_CONNECTIONS, 1))
		    != CDX_OK)
			return rc;
		if ((rc = listen_on(s, s->admin, cfg->admin_listen, 1)) != CDX_OK)
			return rc;
	}
	size_t nq = cfg->contexts ? cfg->contexts : cfg->queue_max + 2 * s->nworkers;
	if ((rc = add_contexts(s, s->sock, nq, 0)) != CDX_OK)
		return rc;
	if (s->admin_open && (rc = add_contexts(s, s->admin, 4, 1)) != CDX_OK)
		return rc;
	for (size_t i = 0; i < s->nctxs; i++)
		nng_ctx_recv(s->ctxs[i]->ctx, s->ctxs[i]->aio);
	return CDX_OK;
}

/* cdx__srv_sockets_close closes the sockets (and with them every listener
 * and connection); each context's aio is freed once its callback has
 * returned. Listeners are not closed earlier, at the start of a drain:
 * closing an nng listener also closes the connections it accepted, and the
 * replies still owed on them would be lost. */
void
cdx__srv_sockets_close(cdx_server *s)
{
	nng_close(s->sock);
	if (s->admin_open)
		nng_close(s->admin);
	/* no callback runs after this, so nothing more is handed to the
	 * sender; what it holds completed when the contexts closed */
	for (size_t i = 0; i < s->nctxs; i++)
		nng_aio_stop(s->ctxs[i]->aio);
	sender_stop(s);
	for (size_t i = 0; i < s->nctxs; i++) {
		struct srv_ctx *x = s->ctxs[i];
		nng_aio_free(x->aio);
		nng_aio_free(x->saio);
		request_free(x);
		free(x);
	}
	cdx__srv_conns_fini(&s->conns);
	cdx__srv_conns_fini(&s->admin_conns);
	free(s->ctxs);
	s->ctxs = NULL;
	s->nctxs = 0;
	if (s->tls != NULL)
		nng_tls_config_free(s->tls);
	s->tls = NULL;
}
