/*
 * client.c — the candex client library (include/candex/client.h).
 *
 * One nng REQ socket per client, dialed in the background; every call uses
 * its own nng context (taken from a pool of idle ones, or opened), so calls
 * from several threads run concurrently over the same connections. A call
 * is: pack the Request, then up to 1 + retries attempts of send + receive
 * under the per-attempt timeout, sleeping backoff_ms, 2 x backoff_ms...
 * between attempts that failed for a reason a retry can fix (no answer in
 * time, server unavailable or overloaded).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "candex/client.h"
#include "wire/pbjson.h"
#include "wire/wire.h"
#include "common/common.h"
#include "common/idlist.h"

struct cdx_client {
	nng_socket sock;
	nng_dialer dialer;
	nng_tls_config *tls;
	struct cdx_client_options opts;
	char *url;
	uint64_t id_prefix; /* request ids are <prefix>-<seq> */
	atomic_uint_fast64_t seq;
	/* Idle (context, aio) pairs from finished calls: opening a context
	 * and an aio per call costs more than the call's own messaging. */
	pthread_mutex_t pool_mu;
	struct client_slot *pool;
};

struct client_slot {
	nng_ctx ctx;
	nng_aio *aio;
	struct client_slot *next;
};

static int CDX_PRINTF(3, 4) client_fail(struct cdx_client_error *err, int code, const char *fmt, ...)
{
	if (err != NULL) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->message, sizeof(err->message), fmt, ap);
		va_end(ap);
		cdx_utf8_sanitize(err->message);
	}
	return code;
}

static void
client_ok(struct cdx_client_error *err)
{
	if (err != NULL) {
		err->code = CDX_OK;
		err->message[0] = '\0';
	}
}

int
cdx_client_open(
    cdx_client **cp, const char *url, const struct cdx_client_options *opts, struct cdx_client_error *err)
{
	cdx_client *c;
	int rv, rc;

	*cp = NULL;
	if (url == NULL || *url == '\0')
		return client_fail(err, CDX_EINVAL, "no server URL");
	if ((c = calloc(1, sizeof(*c))) == NULL || (c->url = strdup(url)) == NULL) {
		free(c);
		return client_fail(err, CDX_ENOMEM, "out of memory");
	}
	if (opts != NULL)
		c->opts = *opts;
	if (c->opts.timeout_ms == 0)
		c->opts.timeout_ms = 5000;
	if (c->opts.backoff_ms == 0)
		c->opts.backoff_ms = 20;
	if (c->opts.max_message == 0)
		c->opts.max_message = 64u << 20;
	/* the TLS file names are only needed while dialing; do not keep them
	 * (c->tls keeps the configuration, for the handshake probe) */
	c->opts.tls_ca_file = c->opts.tls_cert_file = c->opts.tls_key_file = c->opts.tls_server_name = NULL;
	c->id_prefix = cdx_mix64(cdx_now_us() ^ ((uint64_t) getpid() << 32) ^ (uint64_t) (uintptr_t) c);
	pthread_mutex_init(&c->pool_mu, NULL);

	if ((rv = nng_req0_open(&c->sock)) != 0) {
		rc = client_fail(err, cdx__nng_code(rv), "cannot open REQ socket: %s", nng_strerror(rv));
		goto fail_nosock;
	}
	nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, c->opts.max_message);
	/* Our own retry policy decides what is resent; nng's REQ resend (1 min
	 * by default) would only duplicate work behind the caller's back. */
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 10);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 1000);
	if ((rv = nng_dialer_create(&c->dialer, c->sock, url)) != 0) {
		rc = client_fail(err, cdx__nng_code(rv), "bad URL '%s': %s", url, nng_strerror(rv));
		goto fail;
	}
	if (strncmp(url, "tls+tcp", 7) == 0) {
		const char *ca = opts ? opts->tls_ca_file : NULL, *cert = opts ? opts->tls_cert_file : NULL;
		const char *key = opts ? opts->tls_key_file : NULL,
		           *name = opts ? opts->tls_server_name : NULL;
		if (ca == NULL && !c->opts.tls_insecure) {
			/* encryption without knowing who answers protects nothing */
			rc = client_fail(err, CDX_EINVAL,
			    "%s: a tls+tcp:// client needs a CA to verify the server (tls_ca_file, "
			    "--tls-ca), or tls_insecure (--tls-insecure) to skip verification",
			    url);
			goto fail;
		}
		if ((rc = cdx__tls_config(&c->tls, NNG_TLS_MODE_CLIENT, cert, key, ca, name)) != CDX_OK) {
			client_fail(err, rc, "%s", cdx_last_error());
			goto fail;
		}
		if ((rv = nng_dialer_set_ptr(c->dialer, NNG_OPT_TLS_CONFIG, c->tls)) != 0) {
			rc = client_fail(err, cdx__nng_code(rv), "TLS config: %s", nng_strerror(rv));
			goto fail;
		}
	}
	/* Non-blocking: a server that is not up yet is redialed in the
	 * background, and calls time out until it is. */
	if ((rv = nng_dialer_start(c->dialer, NNG_FLAG_NONBLOCK)) != 0) {
		rc = client_fail(err, cdx__nng_code(rv), "cannot dial '%s': %s", url, nng_strerror(rv));
		goto fail;
	}
	*cp = c;
	client_ok(err);
	return CDX_OK;
fail:
	nng_close(c->sock);
fail_nosock:
	if (c->tls != NULL)
		nng_tls_config_free(c->tls);
	pthread_mutex_destroy(&c->pool_mu);
	free(c->url);
	free(c);
	return rc;
}

void
cdx_client_close(cdx_client *c)
{
	if (c == NULL)
		return;
	nng_close(c->sock); /* closes the pooled contexts too */
	for (struct client_slot *sl = c->pool, *next; sl != NULL; sl = next) {
		next = sl->next;
		nng_aio_free(sl->aio);
		free(sl);
	}
	if (c->tls != NULL)
		nng_tls_config_free(c->tls);
	pthread_mutex_destroy(&c->pool_mu);
	free(c->url);
	free(c);
}

static struct client_slot *
slot_get(cdx_client *c, int *rv)
{
	pthread_mutex_lock(&c->pool_mu);
	struct client_slot *sl = c->pool;
	if (sl != NULL)
		c->pool = sl->next;
	pthread_mutex_unlock(&c->pool_mu);
	if (sl != NULL)
		return sl;
	if ((sl = calloc(1, sizeof(*sl))) == NULL) {
		*rv = NNG_ENOMEM;
		return NULL;
	}
	if ((*rv = nng_aio_alloc(&sl->aio, NULL, NULL)) != 0) {
		free(sl);
		return NULL;
	}
	if ((*rv = nng_ctx_open(&sl->ctx, c->sock)) != 0) {
		nng_aio_free(sl->aio);
		free(sl);
		return NULL;
	}
	return sl;
}

/* slot_put returns a context whose exchange completed to the pool; one
 * that failed is closed, so that a late reply to it is dropped. */
static void
slot_put(cdx_client *c, struct client_slot *sl, int ok)
{
	if (!ok) {
		nng_ctx_close(sl->ctx);
		nng_aio_free(sl->aio);
		free(sl);
		return;
	}
	pthread_mutex_lock(&c->pool_mu);
	sl->next = c->pool;
	c->pool = sl;
	pthread_mutex_unlock(&c->pool_mu);
}

/* roundtrip sends msg (always consumed) and waits for the reply within
 * timeout_ms. Returns an nng error code. */
static int
roundtrip(cdx_client *c, nng_msg *msg, uint32_t timeout_ms, nng_msg **reply)
{
	int rv = 0;
	uint64_t start = cdx_now_us();

	*reply = NULL;
	struct client_slot *sl = slot_get(c, &rv);
	if (sl == NULL) {
		nng_msg_free(msg);
		return rv;
	}
	nng_aio *aio = sl->aio;
	nng_aio_set_timeout(aio, (nng_duration) timeout_ms);
	nng_aio_set_msg(aio, msg);
	nng_ctx_send(sl->ctx, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)) != 0) {
		nng_msg_free(nng_aio_get_msg(aio));
		nng_aio_set_msg(aio, NULL);
		goto done;
	}
	uint64_t spent_ms = (cdx_now_us() - start) / 1000;
	nng_aio_set_timeout(aio, spent_ms >= timeout_ms ? 1 : (nng_duration) (timeout_ms - spent_ms));
	nng_ctx_recv(sl->ctx, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)) == 0) {
		*reply = nng_aio_get_msg(aio);
		nng_aio_set_msg(aio, NULL);
	}
done:
	slot_put(c, sl, rv == 0);
	return rv;
}

/* tls_probe explains a call that timed out over TLS: the REQ socket's
 * dialer retries a failed handshake in the background without a word, so a
 * certificate that the server or we reject otherwise shows only as a
 * timeout. It opens one bare TLS stream to the server within timeout_ms
 * and sends the SP header, which runs the handshake. Returns 1 if the TCP
 * connection was made but the handshake failed (*why: the nng error),
 * else 0 (no connection at all, or a good handshake: not a TLS problem). */
static int
tls_probe(cdx_client *c, uint32_t timeout_ms, int *why)
{
	static const uint8_t sp_req[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 };
	nng_stream_dialer *d = NULL;
	nng_stream *st = NULL;
	nng_aio *aio = NULL;
	int rv, failed = 0;
	if (nng_stream_dialer_alloc(&d, c->url) != 0
	    || nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, c->tls) != 0
	    || nng_aio_alloc(&aio, NULL, NULL) != 0)
		goto done;
	nng_aio_set_timeout(aio, (nng_duration) timeout_ms);
	nng_stream_dialer_dial(d, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)) != 0) {
		failed = rv == NNG_EPEERAUTH || rv == NNG_ECRYPTO;
		*why = rv;
		goto done;
	}
	st = nng_aio_get_output(aio, 0);
	/* no byte goes out before the handshake is done: a failed send on a
	 * fresh connection is a failed handshake (a peer that refuses our
	 * certificate just closes the connection) */
	nng_iov iov = { .iov_buf = (void *) sp_req, .iov_len = sizeof(sp_req) };
	nng_aio_set_iov(aio, 1, &iov);
	nng_stream_send(st, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)) != 0 && rv != NNG_ETIMEDOUT) {
		failed = 1;
		*why = rv;
	}
done:
	if (st != NULL) {
		nng_stream_close(st);
		nng_stream_free(st);
	}
	nng_aio_free(aio);
	nng_stream_dialer_free(d);
	return failed;
}

static int
retryable(int code)
{
	return code == CDX_ETIMEDOUT || code == CDX_EUNAVAIL || code == CDX_EOVERLOAD;
}

static void
sleep_ms(uint32_t ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* call runs one request with retries. On success (transport OK and status
 * OK) *respp is the unpacked response, freed with
 * candex__v1__response__free_unpacked(). */
static int
call(cdx_client *c, Candex__V1__Request *req, uint32_t timeout_ms, Candex__V1__Response **respp,
    struct cdx_client_error *err)
{
	char idbuf[48];
	nng_msg *msg;
	int rc = CDX_OK;

	*respp = NULL;
	req->protocol_version = CDX_PROTOCOL_VERSION;
	if (req->request_id == NULL || req->request_id[0] == '\0') {
		snprintf(idbuf, sizeof(idbuf), "%016llx-%llu", (unsigned long long) c->id_prefix,
		    (unsigned long long) atomic_fetch_add(&c->seq, 1));
		req->request_id = idbuf;
	}
	if (timeout_ms == 0)
		timeout_ms = c->opts.timeout_ms;
	if ((rc = cdx__wire_pack(&req->base, &msg)) != CDX_OK)
		return client_fail(err, rc, "%s", cdx_last_error());

	uint32_t backoff = c->opts.backoff_ms;
	for (uint32_t attempt = 0;; attempt++) {
		nng_msg *copy = NULL, *reply = NULL;
		int last = attempt >= c->opts.retries;
		if (!last && nng_msg_dup(&copy, msg) != 0)
			last = 1; /* no memory for a copy: this attempt is the last */
		int rv = roundtrip(c, last ? msg : copy, timeout_ms, &reply);
		if (last)
			msg = NULL;
		int why = 0;
		if (rv != 0) {
			rc = cdx__nng_code(rv);
			if (rv == NNG_ETIMEDOUT && c->tls != NULL
			    && tls_probe(c, CDX_MIN(timeout_ms, 2000u), &why)) {
				/* not slow: the handshake fails, and will every time */
				rc = client_fail(err, CDX_ETLS,
				    "TLS handshake with %s failed (%s): is the server's certificate signed "
				    "by the tls_ca_file given, and for this host name? does the server want "
				    "a client certificate signed by its CA?",
				    c->url, nng_strerror(why));
			} else if (rv == NNG_ETIMEDOUT)
				client_fail(err, rc, "no reply from %s within %u ms", c->url, timeout_ms);
			else
				client_fail(err, rc, "%s: %s", c->url, nng_strerror(rv));
		} else {
			Candex__V1__Response *resp
			    = candex__v1__response__unpack(NULL, nng_msg_len(reply), nng_msg_body(reply));
			nng_msg_free(reply);
			if (resp == NULL) {
				rc = client_fail(err, CDX_EPROTO, "malformed response from %s", c->url);
			} else if (resp->status != CANDEX__V1__STATUS__OK) {
				rc = (int) resp->status;
				if (rc <= 0)
					rc = CDX_EINTERNAL;
				client_fail(err, rc, "%s",
				    resp->message && *resp->message ? resp->message : cdx_strerror(rc));
				candex__v1__response__free_unpacked(resp, NULL);
			} else {
				*respp = resp;
				rc = CDX_OK;
			}
		}
		if (rc == CDX_OK || last || !retryable(rc))
			break;
		sleep_ms(backoff);
		backoff = backoff > UINT32_MAX / 2 ? UINT32_MAX : backoff * 2;
	}
	if (msg != NULL)
		nng_msg_free(msg);
	if (rc == CDX_OK)
		client_ok(err);
	return rc;
}

/* What a search request asks of the server beyond a plain search: the
 * Applied bits the response must carry, or the server ignored them. */
static uint32_t
asked(const struct cdx_query *q)
{
	uint32_t a = 0;
	int filter = q->filter != NULL && q->filter[0] != '\0';
	for (size_t i = 0; i < q->nparts; i++)
		filter |= q->parts[i].filter != NULL && q->parts[i].filter[0] != '\0';
	if (filter)
		a |= CDX_APPLIED_FILTER;
	if (q->compact_excludes && q->n_exclude_ids > 0)
		a |= CDX_APPLIED_EXCLUDE_PACKED;
	if (q->max_per_group > 0)
		a |= CDX_APPLIED_CROWDING;
	if (q->explore_slots > 0 || q->explore_share > 0)
		a |= CDX_APPLIED_EXPLORE;
	if (q->nparts > 0)
		a |= CDX_APPLIED_PARTS;
	return a;
}

/* Request-side storage of a search: parts and packed id lists. */
struct search_msg {
	Candex__V1__CollectionPart *parts;
	Candex__V1__CollectionPart **part_ptrs;
	cdx_buf packed;
};

static int
fill_parts(const struct cdx_query *q, Candex__V1__SearchRequest *sr, struct search_msg *sm)
{
	if (q->nparts == 0)
		return CDX_OK;
	sm->parts = calloc(q->nparts, sizeof(*sm->parts));
	sm->part_ptrs = calloc(q->nparts, sizeof(*sm->part_ptrs));
	if (sm->parts == NULL || sm->part_ptrs == NULL)
		return CDX_ENOMEM;
	for (size_t i = 0; i < q->nparts; i++) {
		const struct cdx_query_part *qp = &q->parts[i];
		Candex__V1__CollectionPart *p = &sm->parts[i];
		candex__v1__collection_part__init(p);
		p->collection = (char *) (qp->collection ? qp->collection : "");
		p->quota = qp->quota;
		p->dim = qp->vectors != NULL ? qp->dim : 0;
		p->n_vectors = qp->vectors != NULL ? qp->nvectors * qp->dim : 0;
		p->vectors = (float *) qp->vectors;
		p->filter = (char *) (qp->filter ? qp->filter : "");
		p->n_exclude_ids = qp->n_exclude_ids;
		p->exclude_ids = (int64_t *) qp->exclude_ids;
		p->n_exclude_keys = qp->n_exclude_keys;
		p->exclude_keys = (char **) qp->exclude_keys;
		p->model_version = (char *) (qp->model_version ? qp->model_version : "");
		p->calibration_scale = qp->calibration_scale;
		p->calibration_offset = qp->calibration_offset;
		sm->part_ptrs[i] = p;
	}
	sr->n_parts = q->nparts;
	sr->parts = sm->part_ptrs;
	return CDX_OK;
}

static int
decode_search(const Candex__V1__SearchResponse *s, struct cdx_result *r)
{
	if ((r->queries = calloc(s->n_results ? s->n_results : 1, sizeof(*r->queries))) == NULL)
		return CDX_ENOMEM;
	r->nqueries = s->n_results;
	for (size_t i = 0; i < s->n_results; i++) {
		Candex__V1__QueryResult *qr = s->results[i];
		struct cdx_query_result *out = &r->queries[i];
		out->exhausted = qr->exhausted;
		if (qr->n_hits == 0)
			continue;
		if ((out->hits = calloc(qr->n_hits, sizeof(*out->hits))) == NULL)
			return CDX_ENOMEM;
		out->nhits = qr->n_hits;
		for (size_t j = 0; j < qr->n_hits; j++) {
			const Candex__V1__Hit *h = qr->hits[j];
			out->hits[j] = (struct cdx_client_hit) { h->id, h->key, h->score, h->collection,
				h->explore, h->propensity, h->rank };
		}
	}
	if (s->n_parts > 0 && (r->parts = calloc(s->n_parts, sizeof(*r->parts))) == NULL)
		return CDX_ENOMEM;
	r->nparts = s->n_parts;
	for (size_t i = 0; i < s->n_parts; i++) {
		const Candex__V1__PartResult *p = s->parts[i];
		r->parts[i] = (struct cdx_result_part) { p->collection, p->index_version, p->metric,
			p->nprobe, p->refine_factor, p->expected_recall, p->target_unmet };
	}
	r->index_version = s->index_version;
	r->metric = s->metric;
	r->nprobe = s->nprobe;
	r->refine_factor = s->refine_factor;
	r->recall_target = s->recall_target;
	r->expected_recall = s->expected_recall;
	r->target_unmet = s->target_unmet;
	r->server_time_us = s->server_time_us;
	r->applied = s->applied;
	r->seed = s->seed;
	/* servers from before coverage was reported searched everything */
	r->coverage = s->items_total > 0 ? s->coverage : 1.0f;
	r->items_searched = s->items_searched;
	r->items_total = s->items_total;
	return CDX_OK;
}

/* The result owns the unpacked response (priv); hit keys point into it. */
int
cdx_client_search(
    cdx_client *c, const struct cdx_query *q, struct cdx_result **rp, struct cdx_client_error *err)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	Candex__V1__Response *resp = NULL;
	struct search_msg sm = { 0 };
	struct cdx_result *r = NULL;
	int rc;

	*rp = NULL;
	if (c == NULL || q == NULL || (q->collection == NULL && q->nparts == 0))
		return client_fail(err, CDX_EINVAL, "missing client, query or collection");
	if (q->nvectors > 0 && (q->vectors == NULL || q->dim == 0))
		return client_fail(err, CDX_EINVAL, "vectors given without data or dimension");
	if (q->nvectors > SIZE_MAX / (q->dim ? q->dim : 1))
		return client_fail(err, CDX_ELIMIT, "too many vectors");
	sr.collection = (char *) (q->collection ? q->collection : "");
	sr.dim = q->dim;
	sr.n_vectors = q->nvectors * q->dim;
	sr.vectors = (float *) q->vectors;
	sr.n_query_keys = q->nkeys;
	sr.query_keys = (char **) q->keys;
	sr.k = q->k;
	sr.nprobe = q->nprobe;
	sr.refine_factor = q->refine_factor;
	sr.recall_target = q->recall_target;
	sr.n_exclude_ids = q->n_exclude_ids;
	sr.exclude_ids = (int64_t *) q->exclude_ids;
	sr.n_exclude_keys = q->n_exclude_keys;
	sr.exclude_keys = (char **) q->exclude_keys;
	sr.model_version = (char *) (q->model_version ? q->model_version : "");
	sr.filter = (char *) (q->filter ? q->filter : "");
	sr.max_per_group = q->max_per_group;
	sr.group_by = (char *) (q->group_by ? q->group_by : "");
	sr.explore_slots = q->explore_slots;
	sr.explore_share = q->explore_share;
	sr.explore_pool = q->explore_pool;
	sr.seed = q->seed;
	sr.merge = q->merge == CDX_MERGE_CALIBRATED ? CANDEX__V1__MERGE__MERGE_CALIBRATED
	                                            : CANDEX__V1__MERGE__MERGE_INTERLEAVE;
	if (q->compact_excludes && q->n_exclude_ids > 0) {
		if ((rc = cdx_idlist_encode(q->exclude_ids, q->n_exclude_ids, &sm.packed)) != CDX_OK) {
			cdx_buf_fini(&sm.packed);
			return client_fail(err, rc, "%s", cdx_last_error());
		}
		sr.n_exclude_ids = 0;
		sr.exclude_ids = NULL;
		sr.exclude_ids_packed.data = (uint8_t *) sm.packed.data;
		sr.exclude_ids_packed.len = sm.packed.len;
	}
	if (fill_parts(q, &sr, &sm) != CDX_OK) {
		rc = client_fail(err, CDX_ENOMEM, "out of memory");
		goto done;
	}
	req.request_id = (char *) (q->request_id ? q->request_id : "");
	req.timeout_ms = q->timeout_ms;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;

	uint32_t timeout = c->opts.timeout_ms;
	/* leave the server's deadline a little room to answer before ours fires */
	if (q->timeout_ms != 0 && q->timeout_ms + 100 > timeout)
		timeout = q->timeout_ms + 100;
	if ((rc = call(c, &req, timeout, &resp, err)) != CDX_OK)
		goto done;
	if (resp->body_case != CANDEX__V1__RESPONSE__BODY_SEARCH || resp->search == NULL) {
		candex__v1__response__free_unpacked(resp, NULL);
		rc = client_fail(err, CDX_EPROTO, "server answered a search without search results");
		goto done;
	}
	uint32_t missing = asked(q) & ~resp->search->applied;
	if (missing != 0) {
		candex__v1__response__free_unpacked(resp, NULL);
		rc = client_fail(err, CDX_EVERSION,
		    "the server ignored %s: it predates them (upgrade it, or leave them out)",
		    missing & CDX_APPLIED_FILTER               ? "the filter"
		        : missing & CDX_APPLIED_EXCLUDE_PACKED ? "compact exclusions"
		        : missing & CDX_APPLIED_CROWDING       ? "crowding"
		        : missing & CDX_APPLIED_EXPLORE        ? "exploration"
		                                               : "parts (several collections)");
		goto done;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL) {
		candex__v1__response__free_unpacked(resp, NULL);
		rc = client_fail(err, CDX_ENOMEM, "out of memory");
		goto done;
	}
	r->message = resp->message != NULL ? resp->message : "";
	r->priv = resp;
	if (decode_search(resp->search, r) != CDX_OK) {
		cdx_result_free(r);
		rc = client_fail(err, CDX_ENOMEM, "out of memory");
		goto done;
	}
	*rp = r;
done:
	free(sm.parts);
	free(sm.part_ptrs);
	cdx_buf_fini(&sm.packed);
	return rc;
}

void
cdx_result_free(struct cdx_result *r)
{
	if (r == NULL)
		return;
	if (r->queries != NULL)
		for (size_t i = 0; i < r->nqueries; i++)
			free(r->queries[i].hits);
	free(r->queries);
	free(r->parts);
	if (r->priv != NULL)
		candex__v1__response__free_unpacked(r->priv, NULL);
	free(r);
}

int
cdx_client_health(cdx_client *c, struct cdx_client_error *err)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	Candex__V1__Response *resp;
	int rc;

	if (c == NULL)
		return client_fail(err, CDX_EINVAL, "no client");
	req.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	if ((rc = call(c, &req, 0, &resp, err)) != CDX_OK)
		return rc;
	int serving = resp->body_case == CANDEX__V1__RESPONSE__BODY_HEALTH && resp->health != NULL
	    && resp->health->serving && resp->health->collections > 0;
	candex__v1__response__free_unpacked(resp, NULL);
	if (!serving)
		return client_fail(err, CDX_EUNAVAIL, "server at %s serves no collection", c->url);
	return CDX_OK;
}

int
cdx_client_info(cdx_client *c, const char *collection, char **json, struct cdx_client_error *err)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__InfoRequest ir = CANDEX__V1__INFO_REQUEST__INIT;
	Candex__V1__Response *resp;
	int rc;

	*json = NULL;
	if (c == NULL)
		return client_fail(err, CDX_EINVAL, "no client");
	ir.collection = (char *) (collection ? collection : "");
	req.body_case = CANDEX__V1__REQUEST__BODY_INFO;
	req.info = &ir;
	if ((rc = call(c, &req, 0, &resp, err)) != CDX_OK)
		return rc;
	if (resp->body_case != CANDEX__V1__RESPONSE__BODY_INFO || resp->info == NULL) {
		candex__v1__response__free_unpacked(resp, NULL);
		return client_fail(err, CDX_EPROTO, "server answered info without an info body");
	}
	/* the JSON mapping of InfoResponse, with the .proto's field names and
	 * every field written, for people and scripts alike */
	cdx_buf b = { 0 };
	rc = cdx_pbjson_write(&resp->info->base,
	    CDX_PBJSON_PROTO_NAMES | CDX_PBJSON_DEFAULTS | CDX_PBJSON_INT64_NUMBERS | CDX_PBJSON_INDENT, &b);
	candex__v1__response__free_unpacked(resp, NULL);
	if (rc != CDX_OK || cdx_buf_append(&b, "", 1) != CDX_OK) {
		cdx_buf_fini(&b);
		return client_fail(err, CDX_ENOMEM, "out of memory");
	}
	*json = b.data;
	return CDX_OK;
}

/* admin_call runs an admin request (reload, drop), which the server's
 * reload thread answers after any load in progress: a big index takes a
 * while, so it waits longer than a search. */
static int
admin_call(cdx_client *c, Candex__V1__Request *req, struct cdx_client_error *err)
{
	Candex__V1__Response *resp;
	uint32_t timeout = c->opts.timeout_ms < 120000 ? 120000 : c->opts.timeout_ms;
	int rc = call(c, req, timeout, &resp, err);
	if (rc == CDX_OK)
		candex__v1__response__free_unpacked(resp, NULL);
	return rc;
}

int
cdx_client_reload(cdx_client *c, const char *collection, struct cdx_client_error *err)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__ReloadRequest rr = CANDEX__V1__RELOAD_REQUEST__INIT;

	if (c == NULL)
		return client_fail(err, CDX_EINVAL, "no client");
	rr.collection = (char *) (collection ? collection : "");
	req.body_case = CANDEX__V1__REQUEST__BODY_RELOAD;
	req.reload = &rr;
	return admin_call(c, &req, err);
}

int
cdx_client_drop(cdx_client *c, const char *collection, struct cdx_client_error *err)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__DropRequest dr = CANDEX__V1__DROP_REQUEST__INIT;

	if (c == NULL || collection == NULL || *collection == '\0')
		return client_fail(err, CDX_EINVAL, "drop needs a client and a collection");
	dr.collection = (char *) collection;
	req.body_case = CANDEX__V1__REQUEST__BODY_DROP;
	req.drop = &dr;
	return admin_call(c, &req, err);
}

int
cdx_client_takedown(cdx_client *c, const struct cdx_takedown *t, struct cdx_takedown_result **rp,
    struct cdx_client_error *err)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__TakedownRequest tr = CANDEX__V1__TAKEDOWN_REQUEST__INIT;
	Candex__V1__Response *resp;
	int rc;

	if (rp != NULL)
		*rp = NULL;
	if (c == NULL || t == NULL || t->collection == NULL)
		return client_fail(err, CDX_EINVAL, "missing client, takedown or collection");
	tr.collection = (char *) t->collection;
	tr.n_add_ids = t->n_add_ids;
	tr.add_ids = (int64_t *) t->add_ids;
	tr.n_remove_ids = t->n_remove_ids;
	tr.remove_ids = (int64_t *) t->remove_ids;
	tr.n_add_keys = t->n_add_keys;
	tr.add_keys = (char **) t->add_keys;
	tr.n_remove_keys = t->n_remove_keys;
	tr.remove_keys = (char **) t->remove_keys;
	req.body_case = CANDEX__V1__REQUEST__BODY_TAKEDOWN;
	req.takedown = &tr;
	/* a takedown scans the served version once: wait longer than for a search */
	uint32_t timeout = c->opts.timeout_ms < 60000 ? 60000 : c->opts.timeout_ms;
	if ((rc = call(c, &req, timeout, &resp, err)) != CDX_OK)
		return rc;
	if (resp->body_case != CANDEX__V1__RESPONSE__BODY_TAKEDOWN || resp->takedown == NULL) {
		candex__v1__response__free_unpacked(resp, NULL);
		return client_fail(err, CDX_EPROTO, "server answered a takedown without a takedown body");
	}
	if (rp == NULL) {
		candex__v1__response__free_unpacked(resp, NULL);
		return CDX_OK;
	}
	struct cdx_takedown_result *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		candex__v1__response__free_unpacked(resp, NULL);
		return client_fail(err, CDX_ENOMEM, "out of memory");
	}
	const Candex__V1__TakedownResponse *out = resp->takedown;
	r->nids = out->n_ids;
	r->ids = out->ids;
	r->nkeys = out->n_keys;
	r->keys = (const char *const *) out->keys;
	r->blocked_items = out->blocked_items;
	r->priv = resp;
	*rp = r;
	return CDX_OK;
}

void
cdx_takedown_result_free(struct cdx_takedown_result *r)
{
	if (r == NULL)
		return;
	if (r->priv != NULL)
		candex__v1__response__free_unpacked(r->priv, NULL);
	free(r);
}
