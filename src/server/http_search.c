/*
 * http_search.c — POST /v1/search: the search API over HTTP/JSON, on its own
 * listener (--http-search-listen; off unless set), apart from /metrics.
 *
 * DESIGN
 * The gateway only translates. A request body is the protobuf JSON mapping
 * of a SearchRequest (src/wire/pbjson.c); it becomes a Request envelope,
 * which is sent over an in-process nng REQ socket (inproc://) to the
 * server's own query socket, so it takes exactly the path of a request from
 * an nng client: the same validation, limits (--max-message, --max-k,
 * --max-batch, ...), deadlines, admission queue (OVERLOADED), metrics and
 * shutdown. The Response comes back the same way and is written as JSON:
 * the SearchResponse on success (HTTP 200), else the Response envelope
 * (status, message, requestId) with the HTTP status of cdx_wire_http_status().
 *
 * Memory. nng's HTTP server reads a body of at most the handler's limit
 * (2 x --max-message: JSON is wordier than protobuf) before calling us; a
 * decoded request larger than --max-message is answered LIMIT_EXCEEDED
 * here, as the query socket would. Searches in flight through the gateway
 * are capped by a fixed pool of exchanges (--queue-max + 2 x --threads, the
 * size of the query socket's own pool); beyond it the answer is OVERLOADED.
 *
 * Threads. The handler runs on an nng thread, decodes, and sends; the
 * exchange's aio callback (another nng thread) receives and answers the
 * HTTP request. An exchange belongs to one request from the handler until
 * the last line of its callback, which returns it to the pool.
 * Stopping the HTTP server waits for every open HTTP request to be
 * answered; it happens before the workers stop, so each is answered.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "common/opt.h"
#include "common/metrics_http.h"
#include "server/server.h"
#include "wire/pbjson.h"
#include "wire/wire.h"

enum { EX_SEND, EX_RECV };

struct srv_exchange {
	struct srv_http_search *hs;
	nng_ctx ctx;
	nng_aio *aio;       /* the REQ exchange with the query socket */
	nng_aio *http_aio;  /* the HTTP request being answered */
	int state;          /* EX_SEND, EX_RECV */
	uint64_t t_recv_us; /* for the metrics of answers given here */
	char request_id[128];
	struct srv_exchange *next; /* free list */
};

struct srv_http_search {
	cdx_server *s;
	nng_http_server *http;
	int http_started;
	nng_socket req;
	int req_open;
	char url[96]; /* inproc:// address of the query socket */
	size_t body_max;
	pthread_mutex_t mu;
	struct srv_exchange *pool, *free;
	size_t npool;
	uint64_t seq; /* for request ids the caller did not give */
};

/* ---- answers ---------------------------------------------------------- */

/* answer_status answers with a Response envelope holding code and message;
 * used for what the gateway itself refuses (and counted as the query
 * socket counts its answers). */
static void
answer_status(cdx_server *s, nng_aio *aio, uint64_t t0, const char *request_id, int code, const char *message)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	cdx_buf b = { 0 };
	resp.status = (Candex__V1__Status) code;
	resp.message = (char *) message;
	resp.request_id = (char *) (request_id ? request_id : "");
	cdx_pbjson_write(&resp.base, CDX_PBJSON_DEFAULTS, &b);
	cdx__srv_observe(s, NULL, code, cdx_now_us() - t0); /* no collection was reached */
	cdx_http_reply_id(
	    aio, (uint16_t) cdx_wire_http_status(code), "application/json", request_id, b.data, b.len);
	cdx_buf_fini(&b);
}

/* answer_response answers with what the query socket replied. */
static void
answer_response(nng_aio *aio, const char *request_id, const Candex__V1__Response *resp)
{
	cdx_buf b = { 0 };
	int rc;
	if (resp->status == CANDEX__V1__STATUS__OK && resp->body_case == CANDEX__V1__RESPONSE__BODY_SEARCH)
		rc = cdx_pbjson_write(&resp->search->base, CDX_PBJSON_DEFAULTS, &b);
	else
		rc = cdx_pbjson_write(&resp->base, CDX_PBJSON_DEFAULTS, &b);
	if (rc != CDX_OK) {
		cdx_buf_fini(&b);
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	cdx_http_reply_id(aio, (uint16_t) cdx_wire_http_status((int) resp->status), "application/json",
	    request_id, b.data, b.len);
	cdx_buf_fini(&b);
}

/* ---- exchanges -------------------------------------------------------- */

static struct srv_exchange *
exchange_get(struct srv_http_search *hs)
{
	pthread_mutex_lock(&hs->mu);
	struct srv_exchange *x = hs->free;
	if (x != NULL)
		hs->free = x->next;
	pthread_mutex_unlock(&hs->mu);
	return x;
}

static void
exchange_put(struct srv_exchange *x)
{
	struct srv_http_search *hs = x->hs;
	pthread_mutex_lock(&hs->mu);
	x->next = hs->free;
	hs->free = x;
	pthread_mutex_unlock(&hs->mu);
}

static void
exchange_cb(void *arg)
{
	struct srv_exchange *x = arg;
	cdx_server *s = x->hs->s;
	int rv = nng_aio_result(x->aio);
	nng_aio *http_aio = x->http_aio;

	if (x->state == EX_SEND && rv == 0) {
		x->state = EX_RECV;
		nng_ctx_recv(x->ctx, x->aio);
		return;
	}
	x->http_aio = NULL;
	if (rv != 0) {
		if (x->state == EX_SEND)
			nng_msg_free(nng_aio_get_msg(x->aio)); /* not sent: still ours */
		nng_aio_set_msg(x->aio, NULL);
		int code = rv == NNG_ETIMEDOUT ? CDX_ETIMEDOUT : CDX_EUNAVAIL;
		char message[160];
		snprintf(message, sizeof(message), "no answer from the query socket: %s", nng_strerror(rv));
		answer_status(s, http_aio, x->t_recv_us, x->request_id, code, message);
		exchange_put(x);
		return;
	}
	nng_msg *msg = nng_aio_get_msg(x->aio);
	nng_aio_set_msg(x->aio, NULL);
	Candex__V1__Response *resp = candex__v1__response__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
	nng_msg_free(msg);
	if (resp == NULL)
		answer_status(
		    s, http_aio, x->t_recv_us, x->request_id, CDX_EINTERNAL, "undecodable response");
	else
		answer_response(http_aio, x->request_id, resp);
	candex__v1__response__free_unpacked(resp, NULL);
	exchange_put(x); /* the last use of x: another request may take it now */
}

/* ---- the handler -------------------------------------------------------- */

static void
http_search(nng_aio *aio)
{
	nng_http_req *hreq = nng_aio_get_input(aio, 0);
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	struct srv_http_search *hs = nng_http_handler_get_data(h);
	cdx_server *s = hs->s;
	uint64_t t0 = cdx_now_us();
	char id[128], message[1200];

	const char *given = nng_http_req_get_header(hreq, "X-Request-Id");
	if (given != NULL && *given != '\0') {
		snprintf(id, sizeof(id), "%s", given);
	} else {
		pthread_mutex_lock(&hs->mu);
		uint64_t n = ++hs->seq;
		pthread_mutex_unlock(&hs->mu);
		snprintf(id, sizeof(id), "http-%llu", (unsigned long long) n);
	}
	uint64_t timeout_ms = 0;
	const char *t = nng_http_req_get_header(hreq, "X-Timeout-Ms");
	if (t != NULL && cdx_parse_u64(t, 0, UINT32_MAX, &timeout_ms) != CDX_OK) {
		snprintf(message, sizeof(message), "X-Timeout-Ms '%.40s' is not a number of milliseconds", t);
		answer_status(s, aio, t0, id, CDX_EINVAL, message);
		return;
	}
	void *body;
	size_t len;
	nng_http_req_get_data(hreq, &body, &len);
	if (len == 0) {
		answer_status(s, aio, t0, id, CDX_EPROTO,
		    "empty body: send the JSON of a candex.v1.SearchRequest with a Content-Length");
		return;
	}

	ProtobufCMessage *m = NULL;
	int rc = cdx_pbjson_read(&candex__v1__search_request__descriptor, body, len, &m);
	if (rc != CDX_OK) {
		snprintf(message, sizeof(message), "%s", cdx_last_error());
		answer_status(s, aio, t0, id, rc, message);
		return;
	}
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	req.protocol_version = CDX_PROTOCOL_VERSION;
	req.request_id = id;
	req.timeout_ms = (uint32_t) timeout_ms;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = (Candex__V1__SearchRequest *) m;
	nng_msg *msg = NULL;
	rc = cdx__wire_pack(&req.base, &msg);
	protobuf_c_message_free_unpacked(m, NULL);
	if (rc != CDX_OK) {
		answer_status(s, aio, t0, id, rc, cdx_last_error());
		return;
	}
	if (nng_msg_len(msg) > s->cfg.max_message) {
		snprintf(message, sizeof(message),
		    "request of %zu bytes exceeds the server's max-message %llu", nng_msg_len(msg),
		    (unsigned long long) s->cfg.max_message);
		nng_msg_free(msg);
		answer_status(s, aio, t0, id, CDX_ELIMIT, message);
		return;
	}
	struct srv_exchange *x = exchange_get(hs);
	if (x == NULL) {
		nng_msg_free(msg);
		snprintf(message, sizeof(message),
		    "server overloaded: %zu HTTP searches already in flight; retry with backoff", hs->npool);
		answer_status(s, aio, t0, id, CDX_EOVERLOAD, message);
		return;
	}
	snprintf(x->request_id, sizeof(x->request_id), "%s", id);
	x->http_aio = aio;
	x->t_recv_us = t0;
	x->state = EX_SEND;
	/* The query socket answers within the request's deadline (capped by
	 * --max-timeout-ms) plus the search under way; this only guards
	 * against an answer that never comes. */
	uint32_t wait_ms = s->cfg.max_timeout_ms > 0 ? s->cfg.max_timeout_ms : 600000;
	nng_aio_set_timeout(x->aio, (nng_duration) wait_ms + 10000);
	nng_aio_set_msg(x->aio, msg);
	nng_ctx_send(x->ctx, x->aio);
}

/* ---- start and stop ------------------------------------------------------ */

static void
exchanges_free(struct srv_http_search *hs)
{
	for (size_t i = 0; i < hs->npool; i++)
		if (hs->pool[i].aio != NULL)
			nng_aio_free(hs->pool[i].aio);
	free(hs->pool);
	hs->pool = NULL;
	hs->npool = 0;
}

int
cdx__srv_http_search_start(cdx_server *s)
{
	char urlbuf[600];
	nng_url *url = NULL;
	nng_http_handler *h = NULL;
	int rv;

	if (s->cfg.http_search_listen == NULL)
		return CDX_OK;
	struct srv_http_search *hs = calloc(1, sizeof(*hs));
	if (hs == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	hs->s = s;
	pthread_mutex_init(&hs->mu, NULL);
	s->http_search = hs;
	snprintf(hs->url, sizeof(hs->url), "inproc://candex-http-search-%p", (void *) hs);
	hs->body_max = s->cfg.max_message > SIZE_MAX / 2 ? SIZE_MAX : (size_t) s->cfg.max_message * 2;

	/* the query socket's side, then our REQ side */
	if ((rv = nng_listen(s->sock, hs->url, NULL, 0)) != 0)
		return cdx_error(cdx__nng_code(rv), "in-process listener %s: %s", hs->url, nng_strerror(rv));
	if ((rv = nng_req0_open(&hs->req)) != 0)
		return cdx_error(cdx__nng_code(rv), "REQ socket: %s", nng_strerror(rv));
	hs->req_open = 1;
	/* the gateway retries nothing itself: one request, one answer */
	nng_socket_set_ms(hs->req, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	if ((rv = nng_dial(hs->req, hs->url, NULL, 0)) != 0)
		return cdx_error(cdx__nng_code(rv), "dial %s: %s", hs->url, nng_strerror(rv));
	hs->npool = (size_t) s->cfg.queue_max + 2u * s->nworkers;
	if ((hs->pool = calloc(hs->npool, sizeof(*hs->pool))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	for (size_t i = 0; i < hs->npool; i++) {
		struct srv_exchange *x = &hs->pool[i];
		x->hs = hs;
		if ((rv = nng_aio_alloc(&x->aio, exchange_cb, x)) != 0
		    || (rv = nng_ctx_open(&x->ctx, hs->req)) != 0)
			return cdx_error(cdx__nng_code(rv), "HTTP search exchange: %s", nng_strerror(rv));
		x->next = hs->free;
		hs->free = x;
	}

	if (strncmp(s->cfg.http_search_listen, "http://", 7) == 0)
		snprintf(urlbuf, sizeof(urlbuf), "%s", s->cfg.http_search_listen);
	else
		snprintf(urlbuf, sizeof(urlbuf), "http://%s", s->cfg.http_search_listen);
	if ((rv = nng_url_parse(&url, urlbuf)) != 0)
		return cdx_error(
		    CDX_EINVAL, "--http-search-listen '%s': %s", s->cfg.http_search_listen, nng_strerror(rv));
	rv = nng_http_server_hold(&hs->http, url);
	nng_url_free(url);
	if (rv != 0)
		return cdx_error(cdx__nng_code(rv), "HTTP server on %s: %s", urlbuf, nng_strerror(rv));
	if ((rv = nng_http_handler_alloc(&h, "/v1/search", http_search)) != 0)
		return cdx_error(cdx__nng_code(rv), "HTTP handler: %s", nng_strerror(rv));
	nng_http_handler_set_method(h, "POST");
	nng_http_handler_collect_body(h, true, hs->body_max);
	nng_http_handler_set_data(h, hs, NULL);
	if ((rv = nng_http_server_add_handler(hs->http, h)) != 0) {
		nng_http_handler_free(h);
		return cdx_error(cdx__nng_code(rv), "HTTP handler: %s", nng_strerror(rv));
	}
	if ((rv = nng_http_server_start(hs->http)) != 0)
		return cdx_error(cdx__nng_code(rv), "HTTP server on %s: %s", urlbuf, nng_strerror(rv));
	hs->http_started = 1;
	cdx_info("SRV-HTTP-SEARCH", "search over HTTP/JSON on %s/v1/search (bodies up to %zu bytes)", urlbuf,
	    hs->body_max);
	return CDX_OK;
}

void
cdx__srv_http_search_stop(cdx_server *s)
{
	struct srv_http_search *hs = s->http_search;
	if (hs == NULL)
		return;
	if (hs->http != NULL) {
		/* returns once every open HTTP request has been answered */
		if (hs->http_started)
			nng_http_server_stop(hs->http);
		nng_http_server_release(hs->http);
	}
	if (hs->req_open)
		nng_close(hs->req);
	exchanges_free(hs);
	pthread_mutex_destroy(&hs->mu);
	free(hs);
	s->http_search = NULL;
}
