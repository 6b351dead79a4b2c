/*
 * metrics.c — the router's counters and their Prometheus text, per shard
 * group (latency, errors, failovers, coverage), and the HTTP listener for
 * /metrics and /healthz.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"
#include "router/router_int.h"

const char *const cdx__rt_reason_names[RT_NREASONS]
    = { "timeout", "unavailable", "overloaded", "version", "error" };

void
cdx__rt_observe(cdx_router *r, int status, uint64_t latency_us)
{
	if (status < 0 || status >= RT_NSTATUS)
		status = CDX_EINTERNAL;
	atomic_fetch_add(&r->status[status], 1);
	cdx_hist_add(&r->latency, latency_us);
}

static const char *
status_name(int code)
{
	const ProtobufCEnumValue *v
	    = protobuf_c_enum_descriptor_get_value(&candex__v1__status__descriptor, code);
	return v != NULL ? v->name : "UNKNOWN";
}

#define HEAD(b, name, type, help) cdx_buf_printf(b, "# HELP " name " " help "\n# TYPE " name " " type "\n")
#define U(x)                      ((unsigned long long) atomic_load(&(x)))

static void
render_groups(cdx_router *r, cdx_buf *b)
{
	char label[128];
	HEAD(b, "candex_router_group_requests_total", "counter",
	    "Requests sent to a shard group, by result: answered in time, or missed (left out of a partial "
	    "answer).");
	for (size_t i = 0; i < r->ngroups; i++) {
		struct rt_group *g = &r->groups[i];
		cdx_buf_printf(b,
		    "candex_router_group_requests_total{group=\"%s\",result=\"answered\"} %llu\n", g->name,
		    U(g->m.answered));
		cdx_buf_printf(b, "candex_router_group_requests_total{group=\"%s\",result=\"missed\"} %llu\n",
		    g->name, U(g->m.missed));
	}
	HEAD(b, "candex_router_group_coverage", "gauge",
	    "Share of the searches sent to a group that it answered in time (1 = never left out).");
	for (size_t i = 0; i < r->ngroups; i++) {
		struct rt_group *g = &r->groups[i];
		uint64_t a = U(g->m.answered), m = U(g->m.missed);
		cdx_buf_printf(b, "candex_router_group_coverage{group=\"%s\"} %.6f\n", g->name,
		    a + m > 0 ? (double) a / (double) (a + m) : 1.0);
	}
	HEAD(b, "candex_router_group_client_errors_total", "counter",
	    "Group answers that were errors about the request itself (passed on to the client).");
	for (size_t i = 0; i < r->ngroups; i++)
		cdx_buf_printf(b, "candex_router_group_client_errors_total{group=\"%s\"} %llu\n",
		    r->groups[i].name, U(r->groups[i].m.client_errors));
	HEAD(b, "candex_router_group_errors_total", "counter", "Attempts at a group that failed, by reason.");
	for (size_t i = 0; i < r->ngroups; i++)
		for (int k = 0; k < RT_NREASONS; k++)
			cdx_buf_printf(b,
			    "candex_router_group_errors_total{group=\"%s\",reason=\"%s\"} %llu\n",
			    r->groups[i].name, cdx__rt_reason_names[k], U(r->groups[i].m.failures[k]));
	HEAD(b, "candex_router_group_failovers_total", "counter",
	    "Attempts repeated (on another replica when one is connected), by reason; connections lost: "
	    "reason=\"connection\" (nng resends their requests to another replica).");
	for (size_t i = 0; i < r->ngroups; i++) {
		for (int k = 0; k < RT_NREASONS; k++)
			cdx_buf_printf(b,
			    "candex_router_group_failovers_total{group=\"%s\",reason=\"%s\"} %llu\n",
			    r->groups[i].name, cdx__rt_reason_names[k], U(r->groups[i].m.retries[k]));
		cdx_buf_printf(b,
		    "candex_router_group_failovers_total{group=\"%s\",reason=\"connection\"} %llu\n",
		    r->groups[i].name, U(r->groups[i].m.disconnects));
	}
	HEAD(b, "candex_router_group_items_searched_total", "counter",
	    "Items the group's answers searched (its share of each collection).");
	for (size_t i = 0; i < r->ngroups; i++)
		cdx_buf_printf(b, "candex_router_group_items_searched_total{group=\"%s\"} %llu\n",
		    r->groups[i].name, U(r->groups[i].m.items_searched));
	HEAD(b, "candex_router_group_replicas", "gauge", "Replicas of a group, by state at the last poll.");
	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->ngroups; i++) {
		size_t up = 0;
		for (size_t j = 0; j < r->groups[i].nrep; j++)
			up += r->groups[i].rep[j]->up != 0;
		cdx_buf_printf(b, "candex_router_group_replicas{group=\"%s\",state=\"up\"} %zu\n",
		    r->groups[i].name, up);
		cdx_buf_printf(b, "candex_router_group_replicas{group=\"%s\",state=\"down\"} %zu\n",
		    r->groups[i].name, r->groups[i].nrep - up);
	}
	pthread_mutex_unlock(&r->mu);
	HEAD(b, "candex_router_group_duration_seconds", "histogram",
	    "Time from a group's first attempt to its answer or to giving up.");
	for (size_t i = 0; i < r->ngroups; i++) {
		snprintf(label, sizeof(label), "group=\"%s\"", r->groups[i].name);
		cdx_hist_render(b, "candex_router_group_duration_seconds", label, &r->groups[i].m.latency);
	}
}

int
cdx__rt_metrics_render(cdx_router *r, cdx_buf *b)
{
	HEAD(b, "candex_requests_total", "counter", "Responses sent, by Response.status.");
	for (int i = 0; i < RT_NSTATUS; i++) {
		uint64_t n = U(r->status[i]);
		if (n > 0 || i == 0)
			cdx_buf_printf(b, "candex_requests_total{status=\"%s\"} %llu\n", status_name(i),
			    (unsigned long long) n);
	}
	HEAD(b, "candex_request_duration_seconds", "histogram",
	    "Time from receiving a request to handing its response to nng.");
	cdx_hist_render(b, "candex_request_duration_seconds", "", &r->latency);
	HEAD(b, "candex_in_flight", "gauge", "Requests received and not yet answered.");
	cdx_buf_printf(b, "candex_in_flight %d\n", atomic_load(&r->in_flight));
	HEAD(b, "candex_router_partial_total", "counter",
	    "Search answers that covered part of the collection.");
	cdx_buf_printf(b, "candex_router_partial_total %llu\n", U(r->partial));
	HEAD(b, "candex_router_coverage_sum", "counter",
	    "Sum of the coverage of OK search answers (divide by candex_router_searches_total for the "
	    "mean).");
	cdx_buf_printf(b, "candex_router_coverage_sum %.6f\n", (double) U(r->coverage_sum_ppm) / 1e6);
	HEAD(b, "candex_router_searches_total", "counter", "OK search answers.");
	cdx_buf_printf(b, "candex_router_searches_total %llu\n", U(r->searches_ok));
	HEAD(b, "candex_router_version_skew_total", "counter",
	    "Routing views in which no version of a collection was held by every group (answers partial).");
	cdx_buf_printf(b, "candex_router_version_skew_total %llu\n", U(r->version_skew));
	render_groups(r, b);
	struct rt_view *v = cdx__rt_view_get(r);
	HEAD(b, "candex_router_route_info", "gauge",
	    "How a collection is routed: the version pinned and the groups asked (value is always 1).");
	for (size_t i = 0; v != NULL && i < v->n; i++) {
		const struct rt_route *rt = &v->route[i];
		char groups[512] = "";
		size_t used = 0;
		for (uint32_t k = 0; k < rt->ngroups && used + 1 < sizeof(groups); k++) {
			int w = snprintf(groups + used, sizeof(groups) - used, "%s%s", k ? "," : "",
			    r->groups[rt->group[k]].name);
			used = w > 0 ? CDX_MIN(used + (size_t) w, sizeof(groups) - 1) : used;
		}
		cdx_buf_printf(b,
		    "candex_router_route_info{collection=\"%s\",version=\"%s\",groups=\"%s\"} 1\n", rt->name,
		    rt->version, groups);
	}
	HEAD(
	    b, "candex_router_route_items", "gauge", "Items of a collection the groups asked serve, of all.");
	for (size_t i = 0; v != NULL && i < v->n; i++) {
		cdx_buf_printf(b, "candex_router_route_items{collection=\"%s\",of=\"served\"} %llu\n",
		    v->route[i].name, (unsigned long long) v->route[i].items_served);
		cdx_buf_printf(b, "candex_router_route_items{collection=\"%s\",of=\"all\"} %llu\n",
		    v->route[i].name, (unsigned long long) v->route[i].items);
	}
	cdx__rt_view_put(v);
	HEAD(b, "candex_start_time_seconds", "gauge", "Unix time the router started.");
	cdx_buf_printf(b, "candex_start_time_seconds %.3f\n", (double) r->start_ms / 1000.0);
	return b->data != NULL ? CDX_OK : CDX_ENOMEM;
}

static void
http_metrics(nng_aio *aio)
{
	cdx_router *r = nng_http_handler_get_data(nng_aio_get_input(aio, 1));
	cdx_buf b = { 0 };
	if (cdx__rt_metrics_render(r, &b) != CDX_OK)
		cdx_http_reply(aio, 500, "text/plain", "out of memory\n", 14);
	else
		cdx_http_reply(aio, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
	cdx_buf_fini(&b);
}

/* /readyz: 200 while some collection can be routed (a group down gives
 * partial answers, which beat none: the router stays in its Service). */
static void
http_readyz(nng_aio *aio)
{
	cdx_router *r = nng_http_handler_get_data(nng_aio_get_input(aio, 1));
	cdx_buf b = { 0 };
	struct rt_view *v = cdx__rt_view_get(r);
	size_t n = v != NULL ? v->n : 0;
	int stopping = atomic_load(&r->stopping), ok = n > 0 && !stopping;
	cdx_buf_printf(&b, "%s: %zu collection(s) routed",
	    ok             ? "ok"
	        : stopping ? "stopping"
	                   : "unavailable",
	    n);
	for (size_t i = 0; i < n; i++)
		cdx_buf_printf(&b, "%s %s@%s (%u group(s)%s%s)", i ? "," : ":", v->route[i].name,
		    v->route[i].version, v->route[i].ngroups, v->route[i].left_out[0] ? "; left out: " : "",
		    v->route[i].left_out);
	cdx_buf_printf(&b, "\n");
	cdx__rt_view_put(v);
	if (b.data == NULL)
		cdx_http_reply(aio, 500, "text/plain", "out of memory\n", 14);
	else
		cdx_http_reply(aio, ok ? 200 : 503, "text/plain; charset=utf-8", b.data, b.len);
	cdx_buf_fini(&b);
}

/* /healthz (liveness): 200 while the process runs; restarting a router
 * never brings a shard group back. */
static void
http_healthz(nng_aio *aio)
{
	cdx_router *r = nng_http_handler_get_data(nng_aio_get_input(aio, 1));
	char body[64];
	int n = snprintf(body, sizeof(body), "alive: %zu shard group(s)\n", r->ngroups);
	cdx_http_reply(aio, 200, "text/plain; charset=utf-8", body, (size_t) n);
}

int
cdx__rt_http_start(cdx_router *r)
{
	char urlbuf[600];
	nng_url *url;
	int rv;
	if (r->cfg.http_listen == NULL)
		return CDX_OK;
	snprintf(urlbuf, sizeof(urlbuf), "%s%s", strncmp(r->cfg.http_listen, "http://", 7) ? "http://" : "",
	    r->cfg.http_listen);
	if ((rv = nng_url_parse(&url, urlbuf)) != 0)
		return cdx_error(CDX_EINVAL, "--http-listen '%s': %s", r->cfg.http_listen, nng_strerror(rv));
	rv = nng_http_server_hold(&r->http, url);
	nng_url_free(url);
	if (rv != 0)
		return cdx_error(cdx__nng_code(rv), "HTTP server on %s: %s", urlbuf, nng_strerror(rv));
	static const struct {
		const char *path;
		void (*cb)(nng_aio *);
	} handlers[]
	    = { { "/metrics", http_metrics }, { "/healthz", http_healthz }, { "/readyz", http_readyz } };
	for (size_t i = 0; i < CDX_ARRAY_LEN(handlers) && rv == 0; i++) {
		nng_http_handler *h;
		if ((rv = nng_http_handler_alloc(&h, handlers[i].path, handlers[i].cb)) != 0)
			break;
		nng_http_handler_set_data(h, r, NULL);
		if ((rv = nng_http_server_add_handler(r->http, h)) != 0)
			nng_http_handler_free(h);
	}
	if (rv == 0)
		rv = nng_http_server_start(r->http);
	if (rv != 0) {
		nng_http_server_release(r->http);
		r->http = NULL;
		return cdx_error(cdx__nng_code(rv), "HTTP server on %s: %s", urlbuf, nng_strerror(rv));
	}
	cdx_info(
	    "RT-HTTP", "metrics on %s/metrics, health on %s/healthz and %s/readyz", urlbuf, urlbuf, urlbuf);
	return CDX_OK;
}

void
cdx__rt_http_stop(cdx_router *r)
{
	if (r->http == NULL)
		return;
	nng_http_server_stop(r->http);
	nng_http_server_release(r->http);
	r->http = NULL;
}
