/*
 * metrics.c — request counters and the latency histogram (lock-free atomics
 * updated by whichever thread answers), their Prometheus text rendering,
 * and the HTTP listener (nng's HTTP server) for /metrics, /healthz
 * (liveness: the process answers) and /readyz (readiness: every collection
 * of the index directory serves).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <lz4.h>

#include "wire/wire.h"
#include "server/server.h"

#include "recall/online.h"

#define HEAD(b, name, type, help) cdx_buf_printf(b, "# HELP " name " " help "\n# TYPE " name " " type "\n")

static const char *
status_name(int code)
{
	const ProtobufCEnumValue *v
	    = protobuf_c_enum_descriptor_get_value(&candex__v1__status__descriptor, code);
	return v != NULL ? v->name : "UNKNOWN";
}

struct srv_coll_metrics *
cdx__srv_coll_metrics(cdx_server *s, const char *collection)
{
	/* Slots are only ever appended, the name written before the count
	 * that publishes it: readers scan without the lock. */
	unsigned n = atomic_load_explicit(&s->ncm, memory_order_acquire);
	for (unsigned i = 0; i < n; i++)
		if (strcmp(s->cm[i].name, collection) == 0)
			return &s->cm[i];
	struct srv_coll_metrics *cm = NULL;
	pthread_mutex_lock(&s->cm_mu);
	n = atomic_load_explicit(&s->ncm, memory_order_relaxed);
	for (unsigned i = 0; i < n && cm == NULL; i++)
		if (strcmp(s->cm[i].name, collection) == 0)
			cm = &s->cm[i];
	if (cm == NULL && n < SRV_MAX_COLL_METRICS && strlen(collection) < CDX_NAME_MAX) {
		cm = &s->cm[n];
		snprintf(cm->name, sizeof(cm->name), "%s", collection);
		atomic_store_explicit(&s->ncm, n + 1, memory_order_release);
	}
	pthread_mutex_unlock(&s->cm_mu);
	return cm;
}

void
cdx__srv_observe(cdx_server *s, const char *collection, int status, uint64_t latency_us)
{
	if (status < 0 || status >= SRV_NSTATUS)
		status = CDX_EINTERNAL;
	atomic_fetch_add(&s->m.status[status], 1);
	cdx_hist_add(&s->m.latency, latency_us);
	struct srv_coll_metrics *cm = collection != NULL ? cdx__srv_coll_metrics(s, collection) : NULL;
	if (cm != NULL) {
		atomic_fetch_add(&cm->status[status], 1);
		cdx_hist_add(&cm->latency, latency_us);
	}
}

void
cdx__srv_observe_search(
    cdx_server *s, const char *collection, uint64_t wait_us, int searched, uint64_t search_us)
{
	struct srv_coll_metrics *cm = cdx__srv_coll_metrics(s, collection);
	if (cm == NULL)
		return;
	cdx_hist_add(&cm->queue_wait, wait_us);
	if (searched)
		cdx_hist_add(&cm->search, search_us);
}

/* proc_status_kb reads one "Name:  N kB" line of /proc/self/status. */
static uint64_t
proc_status_kb(const char *field)
{
	FILE *f = fopen("/proc/self/status", "re");
	char line[256];
	uint64_t kb = 0;
	size_t n = strlen(field);
	while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, field, n) == 0 && line[n] == ':') {
			kb = strtoull(line + n + 1, NULL, 10);
			break;
		}
	}
	if (f != NULL)
		fclose(f);
	return kb;
}

/* render_collection_series writes the per-collection families. */
static void
render_collection_series(cdx_server *s, cdx_buf *b)
{
	unsigned n = atomic_load_explicit(&s->ncm, memory_order_acquire);
	HEAD(b, "candex_collection_requests_total", "counter",
	    "Search responses by collection and Response.status (errors: status != OK).");
	for (unsigned i = 0; i < n; i++)
		for (int st = 0; st < SRV_NSTATUS; st++) {
			uint64_t v = atomic_load(&s->cm[i].status[st]);
			if (v > 0 || st == 0)
				cdx_buf_printf(b,
				    "candex_collection_requests_total{collection=\"%s\",status=\"%s\"} "
				    "%llu\n",
				    s->cm[i].name, status_name(st), (unsigned long long) v);
		}
	static const struct {
		const char *name, *help;
		size_t off;
	} hists[] = {
		{ "candex_collection_request_duration_seconds",
		    "Search requests: time from receipt to the response.",
		    offsetof(struct srv_coll_metrics, latency) },
		{ "candex_collection_queue_wait_seconds",
		    "Search requests: time from receipt until a worker took the job.",
		    offsetof(struct srv_coll_metrics, queue_wait) },
		{ "candex_collection_search_seconds", "Search requests: the worker's search alone.",
		    offsetof(struct srv_coll_metrics, search) },
	};
	for (size_t h = 0; h < CDX_ARRAY_LEN(hists); h++) {
		cdx_buf_printf(
		    b, "# HELP %s %s\n# TYPE %s histogram\n", hists[h].name, hists[h].help, hists[h].name);
		for (unsigned i = 0; i < n; i++) {
			char labels[96];
			snprintf(labels, sizeof(labels), "collection=\"%s\"", s->cm[i].name);
			cdx_hist_render(b, hists[h].name, labels,
			    (const struct cdx_hist *) ((const char *) &s->cm[i] + hists[h].off));
		}
	}
	HEAD(b, "candex_collection_reload_failures_total", "counter",
	    "Versions of a collection that failed to load (the previous one, if any, kept serving).");
	for (unsigned i = 0; i < n; i++)
		cdx_buf_printf(b, "candex_collection_reload_failures_total{collection=\"%s\"} %llu\n",
		    s->cm[i].name, (unsigned long long) atomic_load(&s->cm[i].reload_failed));
}

/* label escapes a Prometheus label value into out. */
static const char *
label(const char *v, char *out, size_t size)
{
	size_t j = 0;
	for (size_t i = 0; v[i] != '\0' && j + 3 < size; i++) {
		char c = v[i];
		if (c == '\\' || c == '"') {
			out[j++] = '\\';
			out[j++] = c;
		} else if (c == '\n') {
			out[j++] = '\\';
			out[j++] = 'n';
		} else {
			out[j++] = c;
		}
	}
	out[j] = '\0';
	return out;
}

int
cdx__srv_metrics_render(cdx_server *s, cdx_buf *b)
{
	struct srv_metrics *m = &s->m;

	HEAD(b, "candex_requests_total", "counter", "Responses sent, by Response.status.");
	for (int i = 0; i < SRV_NSTATUS; i++) {
		uint64_t n = atomic_load(&m->status[i]);
		if (n > 0 || i == 0)
			cdx_buf_printf(b, "candex_requests_total{status=\"%s\"} %llu\n", status_name(i),
			    (unsigned long long) n);
	}
	HEAD(b, "candex_request_duration_seconds", "histogram",
	    "Time from receiving a request to handing its response to nng.");
	cdx_hist_render(b, "candex_request_duration_seconds", "", &m->latency);

	HEAD(b, "candex_queries_total", "counter", "Query vectors searched.");
	cdx_buf_printf(b, "candex_queries_total %llu\n", (unsigned long long) atomic_load(&m->queries));
	HEAD(b, "candex_queue_depth", "gauge", "Searches waiting for a worker.");
	cdx_buf_printf(b, "candex_queue_depth %u\n", cdx__srv_queue_depth(s));
	HEAD(b, "candex_queue_capacity", "gauge", "Searches that may wait before requests get OVERLOADED.");
	cdx_buf_printf(b, "candex_queue_capacity %u\n", s->cfg.queue_max);
	HEAD(b, "candex_in_flight", "gauge", "Requests received and not yet answered.");
	cdx_buf_printf(b, "candex_in_flight %d\n", atomic_load(&s->in_flight));
	HEAD(b, "candex_workers", "gauge", "Search worker threads.");
	cdx_buf_printf(b, "candex_workers %u\n", s->nworkers);
	HEAD(b, "candex_overloaded_total", "counter",
	    "Searches refused because the queue was full or its estimated work would miss their deadline.");
	cdx_buf_printf(b, "candex_overloaded_total %llu\n", (unsigned long long) atomic_load(&m->overloaded));
	HEAD(b, "candex_deadline_dropped_total", "counter",
	    "Searches past their deadline, before a worker took them or during the search.");
	cdx_buf_printf(b, "candex_deadline_dropped_total %llu\n",
	    (unsigned long long) atomic_load(&m->deadline_dropped));
	HEAD(b, "candex_heavy_total", "counter",
	    "Searches estimated above --heavy-ms (run after cheaper ones, on at most half the workers).");
	cdx_buf_printf(b, "candex_heavy_total %llu\n", (unsigned long long) atomic_load(&m->heavy));
	HEAD(b, "candex_abandoned_total", "counter",
	    "Queued searches dropped unsearched because their client had disconnected.");
	cdx_buf_printf(b, "candex_abandoned_total %llu\n", (unsigned long long) atomic_load(&m->abandoned));
	HEAD(b, "candex_replies_waited_total", "counter",
	    "Replies that waited for their connection to finish writing an earlier one (the sender "
	    "thread).");
	cdx_buf_printf(
	    b, "candex_replies_waited_total %llu\n", (unsigned long long) atomic_load(&m->replies_waited));
	HEAD(b, "candex_replies_dropped_total", "counter",
	    "Replies dropped unsent: their connection took none for a second past the request's deadline.");
	cdx_buf_printf(
	    b, "candex_replies_dropped_total %llu\n", (unsigned long long) atomic_load(&m->replies_dropped));
	HEAD(b, "candex_connections", "gauge", "Open query connections.");
	cdx_buf_printf(b, "candex_connections %u\n", cdx__srv_conns_count(&s->conns));
	HEAD(b, "candex_connections_capacity", "gauge",
	    "Query connections allowed (max-connections, budget).");
	cdx_buf_printf(b, "candex_connections_capacity %u\n", s->conns.limit);
	HEAD(b, "candex_connections_refused_total", "counter",
	    "Connections refused: max-connections reached.");
	cdx_buf_printf(b, "candex_connections_refused_total %llu\n",
	    (unsigned long long) atomic_load(&m->conns_refused));
	HEAD(b, "candex_connections_evicted_total", "counter",
	    "Connections closed to make room: the longest without completing a request.");
	cdx_buf_printf(b, "candex_connections_evicted_total %llu\n",
	    (unsigned long long) atomic_load(&m->conns_evicted));
	HEAD(b, "candex_receive_memory_bytes", "gauge",
	    "Bytes received requests hold (messages and decoded requests).");
	cdx_buf_printf(b, "candex_receive_memory_bytes %zu\n", atomic_load(&s->rx_used));
	HEAD(b, "candex_receive_memory_capacity_bytes", "gauge",
	    "Receive budget for received requests (--max-receive-memory less the frames' share).");
	cdx_buf_printf(b, "candex_receive_memory_capacity_bytes %zu\n", s->rx_budget);
	HEAD(b, "candex_receive_memory_refused_total", "counter",
	    "Requests refused OVERLOADED: the receive-memory budget was used up.");
	cdx_buf_printf(b, "candex_receive_memory_refused_total %llu\n",
	    (unsigned long long) atomic_load(&m->budget_refused));
	HEAD(b, "candex_recall_target_unmet_total", "counter",
	    "Searches whose recall target no measured operating point reaches at their k: served at "
	    "the most accurate point.");
	cdx_buf_printf(
	    b, "candex_recall_target_unmet_total %llu\n", (unsigned long long) atomic_load(&m->target_unmet));
	HEAD(b, "candex_reloads_total", "counter", "Reloads (SIGHUP, admin, watch), by result.");
	cdx_buf_printf(
	    b, "candex_reloads_total{result=\"ok\"} %llu\n", (unsigned long long) atomic_load(&m->reload_ok));
	cdx_buf_printf(b, "candex_reloads_total{result=\"failed\"} %llu\n",
	    (unsigned long long) atomic_load(&m->reload_failed));
	HEAD(b, "candex_listener_restarts_total", "counter",
	    "Listeners recreated by the watchdog after they stopped accepting (nng 1.5 bug).");
	cdx_buf_printf(b, "candex_listener_restarts_total %llu\n",
	    (unsigned long long) atomic_load(&m->listener_restarts));
	cdx__srv_rec_metrics(s, b);
	HEAD(b, "candex_start_time_seconds", "gauge", "Unix time the server started.");
	cdx_buf_printf(b, "candex_start_time_seconds %.3f\n", (double) s->start_ms / 1000.0);
	HEAD(b, "candex_build_info", "gauge", "candex and library versions (value is always 1).");
	cdx_buf_printf(b,
	    "candex_build_info{version=\"%s\",nng=\"%s\",protobuf_c=\"%s\",lz4=\"%s\",jansson=\"%s\"} "
	    "1\n",
	    CANDEX_VERSION, nng_version(), protobuf_c_version(), LZ4_versionString(), JANSSON_VERSION);
	HEAD(b, "candex_process_resident_memory_bytes", "gauge", "Resident memory of the process (VmRSS).");
	cdx_buf_printf(b, "candex_process_resident_memory_bytes %llu\n",
	    (unsigned long long) proc_status_kb("VmRSS") * 1024);
	HEAD(b, "candex_process_resident_anon_bytes", "gauge",
	    "Resident anonymous memory (RssAnon): the heap, what collections hold, not mapped files.");
	cdx_buf_printf(b, "candex_process_resident_anon_bytes %llu\n",
	    (unsigned long long) proc_status_kb("RssAnon") * 1024);
	render_collection_series(s, b);

	struct srv_set *set = cdx__srv_snapshot(s);
	if (set == NULL)
		return CDX_ENOMEM;
	HEAD(b, "candex_collections", "gauge", "Collections served.");
	cdx_buf_printf(b, "candex_collections %zu\n", set->n);
	HEAD(b, "candex_collection_items", "gauge", "Items in the served version.");
	for (size_t i = 0; i < set->n; i++)
		cdx_buf_printf(b, "candex_collection_items{collection=\"%s\"} %llu\n", set->e[i].name,
		    (unsigned long long) cdx_collection_manifest(set->e[i].coll)->items);
	HEAD(b, "candex_collection_version_info", "gauge", "The served version (value is always 1).");
	for (size_t i = 0; i < set->n; i++) {
		const struct cdx_manifest *mf = cdx_collection_manifest(set->e[i].coll);
		char v[256], mv[256];
		cdx_buf_printf(b,
		    "candex_collection_version_info{collection=\"%s\",version=\"%s\",model_version=\"%s\","
		    "metric=\"%s\"} 1\n",
		    set->e[i].name, label(mf->version, v, sizeof(v)),
		    label(mf->model_version, mv, sizeof(mv)), cdx_metric_name(mf->metric));
	}
	HEAD(b, "candex_collection_load_timestamp_seconds", "gauge",
	    "Unix time the served version was loaded.");
	for (size_t i = 0; i < set->n; i++)
		cdx_buf_printf(b, "candex_collection_load_timestamp_seconds{collection=\"%s\"} %.3f\n",
		    set->e[i].name, (double) set->e[i].loaded_ms / 1000.0);
	HEAD(b, "candex_collection_memory_bytes", "gauge",
	    "Memory the served version holds: Faiss indexes as loaded (codes, ids, quantizer, "
	    "precomputed tables, direct maps), ids, keys, refine stores, key index.");
	for (size_t i = 0; i < set->n; i++)
		cdx_buf_printf(b, "candex_collection_memory_bytes{collection=\"%s\"} %llu\n", set->e[i].name,
		    (unsigned long long) cdx_collection_memory_bytes(set->e[i].coll));
	HEAD(b, "candex_collection_current_missing", "gauge",
	    "1 while a collection serves a loaded version though its CURRENT link is gone (drop it "
	    "with an admin DropRequest).");
	for (size_t i = 0; i < set->n; i++)
		cdx_buf_printf(b, "candex_collection_current_missing{collection=\"%s\"} %d\n", set->e[i].name,
		    set->e[i].current_missing);
	cdx__srv_set_free(set);
	if (s->online != NULL)
		cdx_online_recall_render(s->online, b);
	cdx__srv_adapt_render(s->adapt, b);
	return b->data != NULL ? CDX_OK : CDX_ENOMEM;
}

static void
http_metrics(nng_aio *aio)
{
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	cdx_server *s = nng_http_handler_get_data(h);
	cdx_buf b = { 0 };
	if (cdx__srv_metrics_render(s, &b) != CDX_OK) {
		cdx_buf_fini(&b);
		cdx_http_reply(aio, 500, "text/plain", "out of memory\n", 14);
		return;
	}
	cdx_http_reply(aio, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
	cdx_buf_fini(&b);
}

/* /healthz is liveness: the process runs and its HTTP thread answers. A
 * broken collection is no reason to restart a server that serves others
 * (and a restart would not mend an index file): that is /readyz. */
static void
http_healthz(nng_aio *aio)
{
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	cdx_server *s = nng_http_handler_get_data(h);
	char body[128];
	pthread_mutex_lock(&s->set_mu);
	size_t n = s->set != NULL ? s->set->n : 0;
	pthread_mutex_unlock(&s->set_mu);
	int len = snprintf(body, sizeof(body), "alive: %zu collection(s) served%s\n", n,
	    atomic_load(&s->stopping) ? ", stopping" : "");
	cdx_http_reply(
	    aio, 200, "text/plain; charset=utf-8", body, (size_t) CDX_MIN(len, (int) sizeof(body) - 1));
}

/* /readyz is readiness: 200 only when at least one collection serves and
 * every collection of the index directory does (none failed to load with
 * nothing to fall back on), and the server is not stopping. */
static void
http_readyz(nng_aio *aio)
{
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	cdx_server *s = nng_http_handler_get_data(h);
	char body[2600], names[1024], unserved[1024];
	pthread_mutex_lock(&s->set_mu);
	size_t n = s->set != NULL ? s->set->n : 0;
	snprintf(unserved, sizeof(unserved), "%s", s->unserved);
	pthread_mutex_unlock(&s->set_mu);
	cdx__srv_names(s, names, sizeof(names));
	int stopping = atomic_load(&s->stopping), ok = n > 0 && unserved[0] == '\0' && !stopping;
	int len;
	if (ok)
		len = snprintf(body, sizeof(body), "ready: %zu collection(s): %s\n", n, names);
	else if (stopping)
		len = snprintf(body, sizeof(body), "not ready: stopping\n");
	else if (unserved[0] != '\0')
		len = snprintf(
		    body, sizeof(body), "not ready: not serving %s (serving: %s)\n", unserved, names);
	else
		len = snprintf(body, sizeof(body), "not ready: no collection to serve\n");
	cdx_http_reply(aio, ok ? 200 : 503, "text/plain; charset=utf-8", body,
	    (size_t) CDX_MIN(len, (int) sizeof(body) - 1));
}

static int
add_handler(cdx_server *s, const char *path, void (*cb)(nng_aio *))
{
	nng_http_handler *h;
	int rv;
	if ((rv = nng_http_handler_alloc(&h, path, cb)) != 0)
		return rv;
	nng_http_handler_set_data(h, s, NULL);
	if ((rv = nng_http_server_add_handler(s->http, h)) != 0) {
		nng_http_handler_free(h);
		return rv;
	}
	return 0;
}

int
cdx__srv_http_start(cdx_server *s)
{
	char urlbuf[600];
	nng_url *url;
	int rv;

	if (s->cfg.http_listen == NULL)
		return CDX_OK;
	if (strncmp(s->cfg.http_listen, "http://", 7) == 0)
		snprintf(urlbuf, sizeof(urlbuf), "%s", s->cfg.http_listen);
	else
		snprintf(urlbuf, sizeof(urlbuf), "http://%s", s->cfg.http_listen);
	if ((rv = nng_url_parse(&url, urlbuf)) != 0)
		return cdx_error(CDX_EINVAL, "--http-listen '%s': %s", s->cfg.http_listen, nng_strerror(rv));
	rv = nng_http_server_hold(&s->http, url);
	nng_url_free(url);
	if (rv != 0)
		return cdx_error(cdx__nng_code(rv), "HTTP server on %s: %s", urlbuf, nng_strerror(rv));
	if ((rv = add_handler(s, "/metrics", http_metrics)) != 0
	    || (rv = add_handler(s, "/healthz", http_healthz)) != 0
	    || (rv = add_handler(s, "/readyz", http_readyz)) != 0
	    || (rv = nng_http_server_start(s->http)) != 0) {
		nng_http_server_release(s->http);
		s->http = NULL;
		return cdx_error(cdx__nng_code(rv), "HTTP server on %s: %s", urlbuf, nng_strerror(rv));
	}
	cdx_info("SRV-HTTP", "metrics on %s/metrics, liveness on %s/healthz, readiness on %s/readyz", urlbuf,
	    urlbuf, urlbuf);
	return CDX_OK;
}

void
cdx__srv_http_stop(cdx_server *s)
{
	if (s->http == NULL)
		return;
	nng_http_server_stop(s->http);
	nng_http_server_release(s->http);
	s->http = NULL;
}
