/*
 * route.c — client requests: the front REP socket, the fan-out to shard
 * groups, retries, and the reply.
 *
 * DESIGN
 * As in the server, the front socket has many nng contexts, each a small
 * state machine: RECV -> (answer at once, or fan out: WORK) -> SEND. A
 * request that goes to the groups has one call per group, each on an nng
 * context of that group's REQ socket and driven by its own aio callback:
 * SEND -> RECV -> an answer, or a retry (SEND again, after a short SLEEP
 * for OVERLOADED) while the deadline allows. The call that finishes last
 * merges the answers and sends the reply; nothing blocks a thread.
 *
 * Query keys. A search by stored items' keys first asks every group for
 * the keys' vectors (LookupRequest: each key lives in one group), then
 * searches with those vectors, exactly as a server does with the vectors
 * it looks up itself.
 *
 * Attempts. Each group gets up to 1 + --retries attempts before the
 * deadline. An attempt waits --try-timeout-ms, or by default half of the
 * time left (the last one: all of it), so a replica that hangs costs half
 * the deadline and one that is merely slow still gets most of it. nng
 * itself moves requests from a lost connection to another replica, which
 * is not an attempt. What each group did is counted per group in /metrics.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"
#include "router/router_int.h"

#include <nng/protocol/reqrep0/rep.h>

enum { F_RECV, F_WORK, F_SEND };
enum { PH_KEYS, PH_LOOKUP, PH_SEARCH }; /* a search's keys, a client's lookup, a search */
enum { C_SEND, C_RECV, C_SLEEP };

/* how long an attempt waits for a group with no replica connected */
#define RT_NO_REPLICA_WAIT_MS 50

struct rt_call {
	struct rt_front *f;
	size_t gi; /* the group */
	nng_ctx ctx;
	nng_aio *aio;
	int state;
	uint32_t tries;
	uint64_t t_first; /* first send */
	uint64_t try_end; /* when this attempt gives up */
	int failed;       /* gave up: why[] says why */
	int reason;       /* enum rt_reason of the last failure */
	int client_error; /* resp is an error about the request itself */
	Candex__V1__Response *resp;
	char why[240];
};

struct rt_front {
	cdx_router *r;
	nng_ctx ctx;
	nng_aio *aio;
	int state;
	Candex__V1__Request *req;
	uint64_t t_recv, deadline;
	struct rt_view *view; /* a reference, while the request fans out */
	const struct rt_route *route;
	int phase;
	nng_msg *fwd; /* what every call sends (a copy each) */
	atomic_uint pending;
	struct rt_call *calls; /* one per group: calls[gi] talks to group gi */
	float *vectors;        /* query_keys resolved to vectors (PH_KEYS) */
	uint32_t dim;
};

static void call_start(struct rt_call *c);

static const char *
str_or_empty(const char *s)
{
	return s != NULL ? s : "";
}

/* ---- replies -------------------------------------------------------------- */

/* release drops everything a request held once its reply is packed. */
static void
release(struct rt_front *f)
{
	for (size_t gi = 0; gi < f->r->ngroups; gi++) {
		struct rt_call *c = &f->calls[gi];
		if (c->resp != NULL)
			candex__v1__response__free_unpacked(c->resp, NULL);
		c->resp = NULL;
	}
	if (f->req != NULL)
		candex__v1__request__free_unpacked(f->req, NULL);
	f->req = NULL;
	if (f->fwd != NULL)
		nng_msg_free(f->fwd);
	f->fwd = NULL;
	free(f->vectors);
	f->vectors = NULL;
	cdx__rt_view_put(f->view);
	f->view = NULL;
	f->route = NULL;
}

static void
send_response(struct rt_front *f, Candex__V1__Response *resp)
{
	nng_msg *msg = NULL;
	if (f->req != NULL && f->req->request_id != NULL)
		cdx_utf8_sanitize(f->req->request_id); /* echoed: must be UTF-8 */
	resp->request_id = (char *) (f->req != NULL ? str_or_empty(f->req->request_id) : "");
	if (cdx__wire_pack(&resp->base, &msg) != CDX_OK) {
		Candex__V1__Response small = CANDEX__V1__RESPONSE__INIT;
		small.status = CANDEX__V1__STATUS__NO_MEMORY;
		small.message = (char *) "out of memory building the response";
		small.request_id = resp->request_id;
		if (cdx__wire_pack(&small.base, &msg) != CDX_OK)
			msg = NULL;
		resp = &small;
	}
	cdx__rt_observe(f->r, (int) resp->status, cdx_now_us() - f->t_recv);
	if (resp->status != CANDEX__V1__STATUS__OK)
		cdx_debug("RT-REQ-ERR", "request '%s': %s: %s", resp->request_id,
		    cdx_errname((int) resp->status), str_or_empty(resp->message));
	release(f);
	if (msg == NULL) {
		atomic_fetch_sub(&f->r->in_flight, 1);
		f->state = F_RECV;
		nng_ctx_recv(f->ctx, f->aio);
		return;
	}
	f->state = F_SEND;
	nng_aio_set_msg(f->aio, msg);
	nng_ctx_send(f->ctx, f->aio);
}

static void CDX_PRINTF(3, 4) reply_error(struct rt_front *f, int code, const char *fmt, ...)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	char message[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	cdx_utf8_sanitize(message); /* client and group text inside, and a buffer limit */
	resp.status = (Candex__V1__Status) code;
	resp.message = message;
	send_response(f, &resp);
}

static void
reply_health(struct rt_front *f)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__HealthResponse hr = CANDEX__V1__HEALTH_RESPONSE__INIT;
	struct rt_view *v = cdx__rt_view_get(f->r);
	hr.collections = v != NULL ? (uint32_t) v->n : 0;
	hr.serving = hr.collections > 0 && !atomic_load(&f->r->stopping);
	cdx__rt_view_put(v);
	resp.body_case = CANDEX__V1__RESPONSE__BODY_HEALTH;
	resp.health = &hr;
	send_response(f, &resp);
}

static void
view_names(const struct rt_view *v, char *out, size_t size)
{
	size_t used = 0;
	snprintf(out, size, "none");
	for (size_t i = 0; v != NULL && i < v->n && used + 1 < size; i++) {
		int w = snprintf(out + used, size - used, "%s%s", i ? ", " : "", v->route[i].name);
		used = w > 0 ? CDX_MIN(used + (size_t) w, size - 1) : used;
	}
}

static void
reply_info(struct rt_front *f, const char *only)
{
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__InfoResponse ir = CANDEX__V1__INFO_RESPONSE__INIT;
	struct rt_view *v = cdx__rt_view_get(f->r);
	size_t n = v != NULL ? v->n : 0;
	Candex__V1__CollectionInfo *nodes = calloc(n ? n : 1, sizeof(*nodes));
	Candex__V1__CollectionInfo **arr = calloc(n ? n : 1, sizeof(*arr));
	if (nodes == NULL || arr == NULL) {
		reply_error(f, CDX_ENOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		const struct rt_route *rt = &v->route[i];
		if (only != NULL && *only != '\0' && strcmp(only, rt->name) != 0)
			continue;
		Candex__V1__CollectionInfo *ci = &nodes[ir.n_collections];
		candex__v1__collection_info__init(ci);
		ci->name = (char *) rt->name;
		ci->version = (char *) rt->version;
		ci->dim = rt->dim;
		ci->metric = (char *) rt->metric;
		ci->items = rt->items;
		ci->shards = rt->shards;
		ci->nlist = rt->nlist;
		ci->default_nprobe = rt->default_nprobe;
		ci->factory = (char *) rt->factory;
		ci->model_version = (char *) rt->model_version;
		ci->refine = (char *) rt->refine;
		ci->loaded_unix_ms = rt->loaded_unix_ms;
		ci->n_shards_served = rt->nserved;
		ci->shards_served = rt->served;
		ci->items_served = rt->items_served;
		arr[ir.n_collections++] = ci;
	}
	ir.collections = arr;
	ir.server_version = (char *) "candex route " CANDEX_VERSION;
	if (only != NULL && *only != '\0' && ir.n_collections == 0) {
		char names[512];
		view_names(v, names, sizeof(names));
		reply_error(f, CDX_ENOTFOUND, "unknown collection '%.*s' (serving: %s)",
		    (int) cdx_utf8_cut(only, 100), only, names);
	} else {
		resp.body_case = CANDEX__V1__RESPONSE__BODY_INFO;
		resp.info = &ir;
		send_response(f, &resp);
	}
done:
	free(arr);
	free(nodes);
	cdx__rt_view_put(v);
}

/* ---- calls to groups -------------------------------------------------------- */

static int
reason_of_status(int status)
{
	switch (status) {
	case CDX_ETIMEDOUT:
		return RT_R_TIMEOUT;
	case CDX_EUNAVAIL:
	case CDX_ECLOSED:
	case CDX_EINTERRUPTED:
		return RT_R_UNAVAILABLE;
	case CDX_EOVERLOAD:
		return RT_R_OVERLOADED;
	case CDX_ENOTFOUND: /* the pinned version, or the collection, is not there (any more) */
		return RT_R_VERSION;
	case CDX_ENOMEM:
	case CDX_EIO:
	case CDX_ECORRUPT:
	case CDX_EFAISS:
	case CDX_EINTERNAL:
		return RT_R_ERROR;
	default:
		return -1; /* about the request itself: the client's to see */
	}
}

static void phase_done(struct rt_front *f);

static void
call_done(struct rt_call *c)
{
	struct rt_front *f = c->f;
	if (atomic_fetch_sub(&f->pending, 1) == 1)
		phase_done(f);
}

static void CDX_PRINTF(3, 4) attempt_failed(struct rt_call *c, int reason, const char *fmt, ...)
{
	struct rt_front *f = c->f;
	cdx_router *r = f->r;
	struct rt_group_metrics *m = &r->groups[c->gi].m;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->why, sizeof(c->why), fmt, ap);
	va_end(ap);
	c->reason = reason;
	atomic_fetch_add(&m->failures[reason], 1);
	uint64_t now = cdx_now_us();
	if (c->tries <= r->cfg.retries && now + 1000 < f->deadline && !atomic_load(&r->stopping)) {
		atomic_fetch_add(&m->retries[reason], 1);
		if (reason == RT_R_OVERLOADED) {
			/* the group is busy: a short pause, not a hammering */
			nng_duration pause
			    = (nng_duration) CDX_MIN((uint64_t) 2 << c->tries, (f->deadline - now) / 4000);
			c->state = C_SLEEP;
			nng_aio_set_timeout(c->aio, NNG_DURATION_INFINITE);
			nng_sleep_aio(pause, c->aio);
			return;
		}
		call_start(c);
		return;
	}
	c->failed = 1;
	call_done(c);
}

static void
call_start(struct rt_call *c)
{
	struct rt_front *f = c->f;
	cdx_router *r = f->r;
	uint64_t now = cdx_now_us();
	if (now >= f->deadline) {
		c->failed = 1;
		c->reason = RT_R_TIMEOUT;
		if (c->why[0] == '\0')
			snprintf(c->why, sizeof(c->why), "deadline passed before it was asked");
		call_done(c);
		return;
	}
	uint64_t left_ms = (f->deadline - now + 999) / 1000;
	uint64_t t = r->cfg.try_timeout_ms > 0 ? CDX_MIN((uint64_t) r->cfg.try_timeout_ms, left_ms)
	    : c->tries >= r->cfg.retries       ? left_ms
	                                       : CDX_MAX(left_ms / 2, (uint64_t) 1);
	/* No replica connected (the whole group is down, or restarting): wait
	 * a little for one to come (replicas are redialed every 10 ms at
	 * first), not the whole attempt, until the poller leaves the group out. */
	if (atomic_load(&r->groups[c->gi].pipes) <= 0)
		t = CDX_MIN(t, (uint64_t) RT_NO_REPLICA_WAIT_MS);
	nng_msg *msg;
	int rv = nng_msg_dup(&msg, f->fwd);
	if (c->tries++ == 0)
		c->t_first = now;
	if (rv != 0) {
		attempt_failed(c, RT_R_ERROR, "%s", nng_strerror(rv));
		return;
	}
	c->try_end = now + t * 1000;
	c->state = C_SEND;
	nng_aio_set_timeout(c->aio, (nng_duration) t);
	nng_aio_set_msg(c->aio, msg);
	nng_ctx_send(c->ctx, c->aio);
}

/* examine decides what a group's answer is worth. */
static void
examine(struct rt_call *c, Candex__V1__Response *resp)
{
	struct rt_front *f = c->f;
	int want
	    = f->phase == PH_SEARCH ? CANDEX__V1__RESPONSE__BODY_SEARCH : CANDEX__V1__RESPONSE__BODY_LOOKUP;
	if (resp == NULL) {
		attempt_failed(c, RT_R_ERROR, "an answer that does not decode");
		return;
	}
	if (resp->status == 0) {
		const char *version = resp->body_case == CANDEX__V1__RESPONSE__BODY_SEARCH
		    ? resp->search->index_version
		    : resp->body_case == CANDEX__V1__RESPONSE__BODY_LOOKUP ? resp->lookup->index_version
		                                                           : NULL;
		if ((int) resp->body_case != want) {
			candex__v1__response__free_unpacked(resp, NULL);
			attempt_failed(c, RT_R_ERROR, "an answer of the wrong kind");
			return;
		}
		if (strcmp(str_or_empty(version), f->route->version) != 0) {
			/* never merged: a replica answering another version than asked is
			 * broken or old; another replica may do better */
			attempt_failed(c, RT_R_VERSION, "answered version %.*s, not %s",
			    (int) cdx_utf8_cut(str_or_empty(version), 64), str_or_empty(version),
			    f->route->version);
			candex__v1__response__free_unpacked(resp, NULL);
			return;
		}
		c->resp = resp;
		call_done(c);
		return;
	}
	int reason = reason_of_status((int) resp->status);
	if (reason < 0) {
		c->resp = resp;
		c->client_error = 1;
		call_done(c);
		return;
	}
	attempt_failed(c, reason, "%s: %.*s", cdx_errname((int) resp->status),
	    (int) cdx_utf8_cut(str_or_empty(resp->message), 180), str_or_empty(resp->message));
	candex__v1__response__free_unpacked(resp, NULL);
}

static void
call_cb(void *arg)
{
	struct rt_call *c = arg;
	int rv = nng_aio_result(c->aio);
	switch (c->state) {
	case C_SEND:
		if (rv != 0) {
			nng_msg_free(nng_aio_get_msg(c->aio)); /* not sent: still ours */
			nng_aio_set_msg(c->aio, NULL);
			if (rv == NNG_ETIMEDOUT)
				attempt_failed(c, RT_R_TIMEOUT, "no replica connected in time");
			else
				attempt_failed(c, RT_R_UNAVAILABLE, "%s", nng_strerror(rv));
			return;
		}
		c->state = C_RECV;
		uint64_t now = cdx_now_us();
		nng_aio_set_timeout(
		    c->aio, (nng_duration) (c->try_end > now ? (c->try_end - now + 999) / 1000 : 1));
		nng_ctx_recv(c->ctx, c->aio);
		return;
	case C_RECV: {
		if (rv != 0) {
			if (rv == NNG_ETIMEDOUT)
				attempt_failed(c, RT_R_TIMEOUT, "no answer within %.0f ms",
				    (double) (cdx_now_us() - c->t_first) / 1000.0);
			else
				attempt_failed(c, RT_R_UNAVAILABLE, "%s", nng_strerror(rv));
			return;
		}
		nng_msg *msg = nng_aio_get_msg(c->aio);
		nng_aio_set_msg(c->aio, NULL);
		Candex__V1__Response *resp
		    = candex__v1__response__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
		nng_msg_free(msg);
		examine(c, resp);
		return;
	}
	case C_SLEEP:
		call_start(c);
		return;
	}
}

/* fan_out sends req to every group of the request's route; the last call
 * to finish runs phase_done. */
static void
fan_out(struct rt_front *f, const Candex__V1__Request *req)
{
	cdx_router *r = f->r;
	if (f->fwd != NULL)
		nng_msg_free(f->fwd);
	f->fwd = NULL;
	if (cdx__wire_pack(&req->base, &f->fwd) != CDX_OK) {
		reply_error(f, CDX_ENOMEM, "out of memory forwarding the request");
		return;
	}
	const struct rt_route *rt = f->route;
	uint32_t n = rt->ngroups;
	for (uint32_t k = 0; k < n; k++) {
		struct rt_call *c = &f->calls[rt->group[k]];
		if (c->resp != NULL)
			candex__v1__response__free_unpacked(c->resp, NULL);
		c->resp = NULL;
		c->tries = 0;
		c->failed = c->client_error = 0;
		c->why[0] = '\0';
		atomic_fetch_add(&r->groups[c->gi].m.asked, 1);
	}
	atomic_store(&f->pending, n);
	for (uint32_t k = 0; k < n; k++) {
		uint16_t gi = rt->group[k]; /* read before the start: the last call may finish the request */
		call_start(&f->calls[gi]);
	}
}

/* forward_timeout: the deadline left, for the groups' own (ms, >= 1). */
static uint32_t
forward_timeout(const struct rt_front *f)
{
	uint64_t now = cdx_now_us();
	return now >= f->deadline ? 1 : (uint32_t) CDX_MAX((f->deadline - now) / 1000, (uint64_t) 1);
}

static void
start_search(struct rt_front *f)
{
	Candex__V1__Request fwd = *f->req;
	Candex__V1__SearchRequest sr = *f->req->search;
	fwd.timeout_ms = forward_timeout(f);
	fwd.search = &sr;
	sr.index_version = (char *) f->route->version;
	if (f->vectors != NULL) {
		sr.dim = f->dim;
		sr.vectors = f->vectors;
		sr.n_vectors = f->req->search->n_query_keys * (size_t) f->dim;
		sr.n_query_keys = 0;
		sr.query_keys = NULL;
	}
	f->phase = PH_SEARCH;
	fan_out(f, &fwd);
}

static void
start_lookup(struct rt_front *f, const char *collection, char **keys, size_t nkeys, int phase)
{
	Candex__V1__Request fwd = CANDEX__V1__REQUEST__INIT;
	Candex__V1__LookupRequest lr = CANDEX__V1__LOOKUP_REQUEST__INIT;
	fwd.protocol_version = CDX_PROTOCOL_VERSION;
	fwd.request_id = f->req->request_id;
	fwd.timeout_ms = forward_timeout(f);
	fwd.body_case = CANDEX__V1__REQUEST__BODY_LOOKUP;
	fwd.lookup = &lr;
	lr.collection = (char *) collection;
	lr.keys = keys;
	lr.n_keys = nkeys;
	lr.index_version = (char *) f->route->version;
	f->phase = phase;
	fan_out(f, &fwd);
}

/* ---- merging -------------------------------------------------------------- */

/* missing_groups describes the route's groups that gave no answer. */
static void
missing_groups(struct rt_front *f, char *out, size_t size)
{
	size_t used = 0;
	out[0] = '\0';
	for (uint32_t k = 0; k < f->route->ngroups && used + 1 < size; k++) {
		const struct rt_call *c = &f->calls[f->route->group[k]];
		if (!c->failed)
			continue;
		char shards[128];
		cdx__rt_group_shards(f->r, c->gi, f->route->name, shards, sizeof(shards));
		int w = snprintf(out + used, size - used, "%s%s (shards %s): %s", used ? "; " : "",
		    f->r->groups[c->gi].name, shards, c->why);
		used = w > 0 ? CDX_MIN(used + (size_t) w, size - 1) : used;
	}
}

/* first_client_error answers the first group's error about the request
 * itself (every group checks requests alike), if any. */
static int
first_client_error(struct rt_front *f)
{
	for (uint32_t k = 0; k < f->route->ngroups; k++) {
		struct rt_call *c = &f->calls[f->route->group[k]];
		if (c->client_error) {
			atomic_fetch_add(&f->r->groups[c->gi].m.client_errors, 1);
			reply_error(f, (int) c->resp->status, "%s", str_or_empty(c->resp->message));
			return 1;
		}
	}
	return 0;
}

/* nobody_answered answers a request that no group answered. */
static void
nobody_answered(struct rt_front *f)
{
	char missing[900];
	missing_groups(f, missing, sizeof(missing));
	int late = cdx_now_us() >= f->deadline;
	reply_error(f, late ? CDX_ETIMEDOUT : CDX_EUNAVAIL,
	    "no shard group of collection '%s' answered%s: %s", f->route->name,
	    late ? " within the deadline" : "", missing);
}

static void
keys_done(struct rt_front *f)
{
	const Candex__V1__SearchRequest *sr = f->req->search;
	size_t nkeys = sr->n_query_keys, answered = 0;
	uint32_t dim = 0;
	for (uint32_t k = 0; k < f->route->ngroups; k++) {
		const struct rt_call *c = &f->calls[f->route->group[k]];
		if (c->failed || c->client_error)
			continue;
		const Candex__V1__LookupResponse *lr = c->resp->lookup;
		if (lr->n_found != nkeys || lr->n_vectors != nkeys * (size_t) lr->dim
		    || (dim && lr->dim != dim)) {
			reply_error(f, CDX_EINTERNAL, "group %s answered a lookup of %zu keys with %zu",
			    f->r->groups[c->gi].name, nkeys, lr->n_found);
			return;
		}
		dim = lr->dim;
		answered++;
	}
	if (first_client_error(f))
		return;
	if (answered == 0) {
		nobody_answered(f);
		return;
	}
	if ((f->vectors = calloc(nkeys * dim > 0 ? nkeys * dim : 1, sizeof(float))) == NULL) {
		reply_error(f, CDX_ENOMEM, "out of memory for %zu query vectors", nkeys);
		return;
	}
	f->dim = dim;
	for (size_t i = 0; i < nkeys; i++) {
		int found = 0;
		for (uint32_t k = 0; k < f->route->ngroups && !found; k++) {
			const struct rt_call *c = &f->calls[f->route->group[k]];
			if (c->failed || !c->resp->lookup->found[i])
				continue;
			memcpy(f->vectors + i * dim, c->resp->lookup->vectors + i * dim, dim * sizeof(float));
			found = 1;
		}
		if (found)
			continue;
		if (answered == f->route->ngroups) {
			reply_error(f, CDX_ENOTFOUND, "unknown key '%.*s' in collection '%s'",
			    (int) cdx_utf8_cut(sr->query_keys[i], 200), sr->query_keys[i], f->route->name);
		} else {
			char missing[700];
			missing_groups(f, missing, sizeof(missing));
			reply_error(f, CDX_EUNAVAIL,
			    "key '%.*s' is in none of the shard groups that answered; not asked in time: "
			    "%s",
			    (int) cdx_utf8_cut(sr->query_keys[i], 200), sr->query_keys[i], missing);
		}
		return;
	}
	start_search(f);
}

static void
lookup_done(struct rt_front *f)
{
	const Candex__V1__LookupRequest *lq = f->req->lookup;
	size_t nkeys = lq->n_keys, answered = 0;
	uint32_t dim = 0;
	if (first_client_error(f))
		return;
	for (uint32_t k = 0; k < f->route->ngroups; k++) {
		const struct rt_call *c = &f->calls[f->route->group[k]];
		if (c->failed)
			continue;
		if (c->resp->lookup->n_found != nkeys
		    || c->resp->lookup->n_vectors != nkeys * c->resp->lookup->dim) {
			reply_error(f, CDX_EINTERNAL, "group %s answered a lookup of %zu keys with %zu",
			    f->r->groups[c->gi].name, nkeys, c->resp->lookup->n_found);
			return;
		}
		dim = c->resp->lookup->dim;
		answered++;
	}
	if (answered == 0) {
		nobody_answered(f);
		return;
	}
	protobuf_c_boolean *found = calloc(nkeys ? nkeys : 1, sizeof(*found));
	int64_t *ids = calloc(nkeys ? nkeys : 1, sizeof(*ids));
	float *vectors = calloc(nkeys * dim > 0 ? nkeys * dim : 1, sizeof(float));
	if (found == NULL || ids == NULL || vectors == NULL) {
		reply_error(f, CDX_ENOMEM, "out of memory for %zu vectors", nkeys);
	} else {
		for (uint32_t k = 0; k < f->route->ngroups; k++) {
			const struct rt_call *c = &f->calls[f->route->group[k]];
			for (size_t i = 0; !c->failed && i < nkeys; i++) {
				if (found[i] || !c->resp->lookup->found[i])
					continue;
				found[i] = 1;
				ids[i] = c->resp->lookup->ids[i];
				memcpy(vectors + i * dim, c->resp->lookup->vectors + i * dim,
				    dim * sizeof(float));
			}
		}
		char missing[700] = "";
		if (answered < f->route->ngroups)
			missing_groups(f, missing, sizeof(missing));
		Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
		Candex__V1__LookupResponse out = CANDEX__V1__LOOKUP_RESPONSE__INIT;
		out.index_version = (char *) f->route->version;
		out.dim = dim;
		out.n_found = out.n_ids = nkeys;
		out.found = found;
		out.ids = ids;
		out.n_vectors = nkeys * dim;
		out.vectors = vectors;
		cdx_utf8_sanitize(missing);
		resp.message = missing; /* keys not found may be in a group that did not answer */
		resp.body_case = CANDEX__V1__RESPONSE__BODY_LOOKUP;
		resp.lookup = &out;
		send_response(f, &resp);
	}
	free(found);
	free(ids);
	free(vectors);
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
	return x < y ? -1 : x > y;
}

/* unsearched_shards writes the shards of 0..total not in searched (sorted). */
static void
unsearched_shards(const uint32_t *searched, size_t n, uint32_t total, char *out, size_t size)
{
	uint32_t *rest = calloc(total ? total : 1, sizeof(*rest));
	size_t nrest = 0, j = 0;
	snprintf(out, size, "?");
	if (rest == NULL)
		return;
	for (uint32_t s = 0; s < total; s++) {
		while (j < n && searched[j] < s)
			j++;
		if (j == n || searched[j] != s)
			rest[nrest++] = s;
	}
	cdx__rt_shard_ranges(rest, nrest, out, size);
	free(rest);
}

static void
search_done(struct rt_front *f)
{
	cdx_router *r = f->r;
	const struct rt_route *rt = f->route;
	const Candex__V1__SearchResponse *ok[CDX_ROUTER_MAX_GROUPS];
	size_t nok = 0, nq = 0;
	uint64_t now = cdx_now_us();
	for (uint32_t k = 0; k < rt->ngroups; k++) {
		struct rt_call *c = &f->calls[rt->group[k]];
		struct rt_group_metrics *m = &r->groups[c->gi].m;
		cdx_hist_add(&m->latency, now - c->t_first);
		if (c->failed) {
			atomic_fetch_add(&m->missed, 1);
			continue;
		}
		if (c->client_error)
			continue;
		atomic_fetch_add(&m->answered, 1);
		atomic_fetch_add(&m->items_searched, c->resp->search->items_searched);
		atomic_fetch_add(&m->items_total, c->resp->search->items_total);
		if (nok > 0 && c->resp->search->n_results != nq) {
			reply_error(f, CDX_EINTERNAL, "group %s answered %zu queries, another %zu",
			    r->groups[c->gi].name, c->resp->search->n_results, nq);
			return;
		}
		nq = c->resp->search->n_results;
		ok[nok++] = c->resp->search;
	}
	if (first_client_error(f))
		return;
	if (nok == 0) {
		nobody_answered(f);
		return;
	}
	const Candex__V1__SearchResponse *first = ok[0];
	uint32_t k = f->req->search->k;
	Candex__V1__QueryResult *qrs = calloc(nq ? nq : 1, sizeof(*qrs));
	Candex__V1__QueryResult **qrp = calloc(nq ? nq : 1, sizeof(*qrp));
	Candex__V1__Hit **hits = calloc(nq * k > 0 ? nq * k : 1, sizeof(*hits));
	size_t nshards = 0;
	for (size_t j = 0; j < nok; j++)
		nshards += ok[j]->n_shards_searched;
	uint32_t *shards = calloc(nshards ? nshards : 1, sizeof(*shards));
	if (qrs == NULL || qrp == NULL || hits == NULL || shards == NULL) {
		reply_error(f, CDX_ENOMEM, "out of memory merging %zu x %u results", nq, k);
		goto done;
	}
	int higher_better = strcmp(str_or_empty(first->metric), "l2") != 0;
	for (size_t i = 0; i < nq; i++) {
		Candex__V1__Hit **listv[CDX_ROUTER_MAX_GROUPS];
		size_t lens[CDX_ROUTER_MAX_GROUPS];
		for (size_t j = 0; j < nok; j++) {
			listv[j] = ok[j]->results[i]->hits;
			lens[j] = ok[j]->results[i]->n_hits;
		}
		candex__v1__query_result__init(&qrs[i]);
		qrs[i].hits = hits + i * k;
		qrs[i].n_hits = cdx__rt_merge_hits(listv, lens, nok, higher_better, k, qrs[i].hits);
		/* fewer than k pass the selection only if no group has more */
		qrs[i].exhausted = qrs[i].n_hits < k;
		for (size_t j = 0; j < nok; j++)
			qrs[i].exhausted = qrs[i].exhausted && ok[j]->results[i]->exhausted;
		qrp[i] = &qrs[i];
	}
	Candex__V1__SearchResponse out = *first; /* settings, metric: the same from every group */
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	out.n_results = nq;
	out.results = qrp;
	out.index_version = (char *) rt->version;
	out.items_searched = 0;
	nshards = 0;
	for (size_t j = 0; j < nok; j++) {
		out.items_searched += ok[j]->items_searched;
		out.target_unmet |= ok[j]->target_unmet;
		out.applied &= ok[j]->applied; /* what every group applied */
		memcpy(shards + nshards, ok[j]->shards_searched, ok[j]->n_shards_searched * sizeof(*shards));
		nshards += ok[j]->n_shards_searched;
	}
	qsort(shards, nshards, sizeof(*shards), cmp_u32);
	out.shards_searched = shards;
	out.n_shards_searched = nshards;
	out.coverage
	    = out.items_total > 0 ? (float) ((double) out.items_searched / (double) out.items_total) : 1.0f;
	out.server_time_us = cdx_now_us() - f->t_recv;
	char message[1600] = "";
	if (nok < rt->ngroups || rt->left_out[0] != '\0' || out.items_searched < out.items_total) {
		char missing[700], unsearched[160];
		missing_groups(f, missing, sizeof(missing));
		unsearched_shards(shards, nshards, out.shards_total, unsearched, sizeof(unsearched));
		snprintf(message, sizeof(message),
		    "partial: %.1f%% of the items searched, shards %s not; %s%s%s%s", 100.0 * out.coverage,
		    unsearched, missing[0] ? "no answer from " : "", missing,
		    missing[0] && rt->left_out[0] ? "; " : "", rt->left_out[0] ? rt->left_out : "");
		if (out.coverage < r->cfg.min_coverage) {
			reply_error(
			    f, CDX_EUNAVAIL, "%s (below --min-coverage %g)", message, r->cfg.min_coverage);
			goto done;
		}
		atomic_fetch_add(&r->partial, 1);
	}
	atomic_fetch_add(&r->searches_ok, 1);
	atomic_fetch_add(&r->coverage_sum_ppm, (uint64_t) llround(1e6 * CDX_MIN(out.coverage, 1.0f)));
	cdx_utf8_sanitize(message); /* group text inside, and a buffer limit */
	resp.message = message;
	resp.body_case = CANDEX__V1__RESPONSE__BODY_SEARCH;
	resp.search = &out;
	send_response(f, &resp); /* packs before the groups' answers are freed */
done:
	free(qrs);
	free(qrp);
	free(hits);
	free(shards);
}

static void
phase_done(struct rt_front *f)
{
	switch (f->phase) {
	case PH_KEYS:
		keys_done(f);
		return;
	case PH_LOOKUP:
		lookup_done(f);
		return;
	default:
		search_done(f);
		return;
	}
}

/* ---- the front state machine ------------------------------------------------ */

/* routed looks the collection up in the current view (holding it for the
 * request), or answers the error itself and returns 0. */
static int
routed(struct rt_front *f, const char *collection)
{
	if (collection == NULL || collection[0] == '\0') {
		reply_error(f, CDX_EINVAL, "%s request without a collection name",
		    f->req->body_case == CANDEX__V1__REQUEST__BODY_LOOKUP ? "lookup" : "search");
		return 0;
	}
	f->view = cdx__rt_view_get(f->r);
	f->route = cdx__rt_view_find(f->view, collection);
	if (f->route == NULL) {
		char names[512];
		view_names(f->view, names, sizeof(names));
		reply_error(f, f->view == NULL ? CDX_EUNAVAIL : CDX_ENOTFOUND,
		    "%s collection '%.*s' (serving: %s)",
		    f->view == NULL ? "no shard group has answered yet; cannot route" : "unknown",
		    (int) cdx_utf8_cut(collection, 100), collection, names);
		return 0;
	}
	if (f->route->ngroups == 0) {
		reply_error(f, CDX_EUNAVAIL, "no shard group of collection '%s' can be asked: %s", collection,
		    f->route->left_out);
		return 0;
	}
	uint32_t t = f->req->timeout_ms ? f->req->timeout_ms : f->r->cfg.timeout_ms;
	if (f->r->cfg.max_timeout_ms > 0 && t > f->r->cfg.max_timeout_ms)
		t = f->r->cfg.max_timeout_ms;
	f->deadline = f->t_recv + (uint64_t) t * 1000u;
	return 1;
}

static void
handle(struct rt_front *f, nng_msg *msg)
{
	cdx_router *r = f->r;
	size_t len = nng_msg_len(msg);
	if (len > r->cfg.max_message) {
		nng_msg_free(msg);
		reply_error(f, CDX_ELIMIT, "request of %zu bytes exceeds the router's max-message %llu", len,
		    (unsigned long long) r->cfg.max_message);
		return;
	}
	f->req = candex__v1__request__unpack(NULL, len, nng_msg_body(msg));
	nng_msg_free(msg);
	if (f->req == NULL) {
		reply_error(f, CDX_EPROTO,
		    "malformed request: %zu bytes that do not decode as a candex.v1.Request", len);
		return;
	}
	if (atomic_load(&r->stopping)) {
		reply_error(f, CDX_EUNAVAIL, "router is shutting down; retry on another replica");
		return;
	}
	if (f->req->protocol_version != CDX_PROTOCOL_VERSION) {
		reply_error(f, CDX_EVERSION, "protocol_version %u is not supported (this server speaks %d)",
		    f->req->protocol_version, CDX_PROTOCOL_VERSION);
		return;
	}
	switch (f->req->body_case) {
	case CANDEX__V1__REQUEST__BODY_HEALTH:
		reply_health(f);
		return;
	case CANDEX__V1__REQUEST__BODY_INFO:
		reply_info(f, f->req->info ? f->req->info->collection : NULL);
		return;
	case CANDEX__V1__REQUEST__BODY_DROP:
	case CANDEX__V1__REQUEST__BODY_RELOAD:
		reply_error(f, CDX_EPERM,
		    "candex route does not reload: each shard group's servers reload on their admin "
		    "listeners");
		return;
	case CANDEX__V1__REQUEST__BODY_LOOKUP: {
		const Candex__V1__LookupRequest *lq = f->req->lookup;
		if (lq == NULL || !routed(f, lq->collection))
			return;
		start_lookup(f, lq->collection, lq->keys, lq->n_keys, PH_LOOKUP);
		return;
	}
	case CANDEX__V1__REQUEST__BODY_SEARCH: {
		const Candex__V1__SearchRequest *sr = f->req->search;
		/* a filter and exclusions go through: each group applies them to
		 * its own shards (and widens on its own); these need the merged
		 * list */
		if (sr != NULL
		    && (sr->max_per_group > 0 || sr->explore_slots > 0 || sr->explore_share > 0
		        || sr->n_parts > 0)) {
			reply_error(f, CDX_EINVAL,
			    "candex route does not apply %s: send such requests to a server that holds "
			    "every shard",
			    sr->n_parts > 0             ? "parts (several collections)"
			        : sr->max_per_group > 0 ? "crowding (max_per_group)"
			                                : "exploration");
			return;
		}
		if (sr == NULL || !routed(f, sr->collection))
			return;
		/* the checks a server makes before it looks keys up */
		if (sr->n_vectors > 0 && sr->n_query_keys > 0) {
			reply_error(f, CDX_EINVAL, "give query vectors or query_keys, not both");
			return;
		}
		if (sr->n_vectors == 0 && sr->n_query_keys == 0) {
			reply_error(
			    f, CDX_EEMPTY, "empty batch: the request has no query vector and no query key");
			return;
		}
		if (sr->n_query_keys > 0) {
			for (size_t i = 0; i < sr->n_query_keys; i++) {
				if (sr->query_keys[i] == NULL || sr->query_keys[i][0] == '\0') {
					reply_error(f, CDX_EINVAL, "query key %zu is empty", i);
					return;
				}
			}
			start_lookup(f, sr->collection, sr->query_keys, sr->n_query_keys, PH_KEYS);
			return;
		}
		start_search(f);
		return;
	}
	default:
		reply_error(
		    f, CDX_EINVAL, "request has no body (search, info, health, lookup, reload or drop)");
		return;
	}
}

static void
front_cb(void *arg)
{
	struct rt_front *f = arg;
	int rv = nng_aio_result(f->aio);
	switch (f->state) {
	case F_RECV:
		if (rv != 0) {
			if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
				return;
			nng_ctx_recv(f->ctx, f->aio);
			return;
		}
		f->t_recv = cdx_now_us();
		atomic_fetch_add(&f->r->in_flight, 1);
		nng_msg *msg = nng_aio_get_msg(f->aio);
		nng_aio_set_msg(f->aio, NULL);
		f->state = F_WORK;
		handle(f, msg);
		return;
	case F_SEND:
		if (rv != 0)
			nng_msg_free(nng_aio_get_msg(f->aio)); /* not sent: still ours */
		nng_aio_set_msg(f->aio, NULL);
		atomic_fetch_sub(&f->r->in_flight, 1);
		f->state = F_RECV;
		nng_ctx_recv(f->ctx, f->aio);
		return;
	}
}

static int
front_alloc(cdx_router *r, struct rt_front **fp)
{
	struct rt_front *f = calloc(1, sizeof(*f));
	int rv;
	*fp = NULL;
	if (f == NULL || (f->calls = calloc(r->ngroups, sizeof(*f->calls))) == NULL) {
		free(f);
		return cdx_error(CDX_ENOMEM, "out of memory");
	}
	f->r = r;
	*fp = f; /* freed by cdx__rt_front_close, even half made */
	if ((rv = nng_aio_alloc(&f->aio, front_cb, f)) != 0 || (rv = nng_ctx_open(&f->ctx, r->sock)) != 0)
		return cdx_error(cdx__nng_code(rv), "front context: %s", nng_strerror(rv));
	for (size_t gi = 0; gi < r->ngroups; gi++) {
		struct rt_call *c = &f->calls[gi];
		c->f = f;
		c->gi = gi;
		if ((rv = nng_aio_alloc(&c->aio, call_cb, c)) != 0
		    || (rv = nng_ctx_open(&c->ctx, r->groups[gi].sock)) != 0)
			return cdx_error(cdx__nng_code(rv), "group context: %s", nng_strerror(rv));
	}
	return CDX_OK;
}

int
cdx__rt_front_open(cdx_router *r)
{
	int rv, rc;
	if ((rv = nng_rep0_open(&r->sock)) != 0)
		return cdx_error(cdx__nng_code(rv), "cannot open the REP socket: %s", nng_strerror(rv));
	/* as the server: twice max-message, so that a large request gets an answer */
	nng_socket_set_size(
	    r->sock, NNG_OPT_RECVMAXSZ, (size_t) CDX_MIN(r->cfg.max_message * 2, (uint64_t) SIZE_MAX));
	if ((r->fronts = calloc(r->cfg.contexts, sizeof(*r->fronts))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	for (uint32_t i = 0; i < r->cfg.contexts; i++) {
		rc = front_alloc(r, &r->fronts[i]);
		if (r->fronts[i] != NULL)
			r->nfronts = i + 1;
		if (rc != CDX_OK)
			return rc;
	}
	for (unsigned i = 0; i < r->cfg.nlisten; i++) {
		nng_listener l;
		const char *url = r->cfg.listen[i];
		if ((rv = nng_listener_create(&l, r->sock, url)) != 0 || (rv = nng_listener_start(l, 0)) != 0)
			return cdx_error(
			    cdx__nng_code(rv), "cannot listen on '%s': %s", url, nng_strerror(rv));
		int port = 0;
		if (strncmp(url, "tcp", 3) == 0
		    && nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) == 0)
			cdx_info("RT-LISTEN", "queries on %s (port %d)", url, port);
		else
			cdx_info("RT-LISTEN", "queries on %s", url);
	}
	for (size_t i = 0; i < r->nfronts; i++) {
		r->fronts[i]->state = F_RECV;
		nng_ctx_recv(r->fronts[i]->ctx, r->fronts[i]->aio);
	}
	return CDX_OK;
}

void
cdx__rt_front_close(cdx_router *r)
{
	/* closing the sockets fails what is still pending; then no callback
	 * runs once each aio is stopped */
	nng_close(r->sock);
	for (size_t gi = 0; gi < r->ngroups; gi++)
		nng_close(r->groups[gi].sock);
	for (size_t i = 0; i < r->nfronts; i++) {
		struct rt_front *f = r->fronts[i];
		if (f->aio != NULL)
			nng_aio_stop(f->aio);
		for (size_t gi = 0; gi < r->ngroups; gi++)
			if (f->calls[gi].aio != NULL)
				nng_aio_stop(f->calls[gi].aio);
	}
	for (size_t i = 0; i < r->nfronts; i++) {
		struct rt_front *f = r->fronts[i];
		release(f);
		nng_aio_free(f->aio);
		for (size_t gi = 0; gi < r->ngroups; gi++)
			nng_aio_free(f->calls[gi].aio);
		free(f->calls);
		free(f);
	}
	free(r->fronts);
	r->fronts = NULL;
	r->nfronts = 0;
}
