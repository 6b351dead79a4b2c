/*
 * server.h — the candex server: configuration, start/stop, reload, and the
 * internals its .c files share.
 *
 * DESIGN
 * Threads. One nng REP socket (every --listen URL is a listener on it) with
 * many contexts. Each context is a small state machine driven by its aio
 * callback, as in nng's async demo: RECV -> (decode, validate, enqueue) ->
 * a worker searches -> SEND -> RECV. The callback runs on nng's threads, so
 * it never runs Faiss: it decodes the protobuf, checks everything that is
 * cheap to check (version, collection, k, dim, NaN, limits), answers health
 * and info requests itself, and pushes search jobs onto a bounded queue. A
 * full queue is answered OVERLOADED at once. A pool of worker threads (one
 * per core) pops jobs, drops those already past their deadline
 * (DEADLINE_EXCEEDED, unsearched), searches and sends the reply through the
 * job's context. Workers pin OpenMP to one thread each, so Faiss never
 * oversubscribes the cores; a large batch arriving at an idle server may use
 * every core (search.c splits it into slices).
 *
 * Collections. The served set is an array of (name, collection) swapped
 * under a mutex. A request looks its collection up under the mutex and
 * takes a reference; a reload builds a new array on the reload thread and
 * swaps it in; each old collection is freed by whichever request drops the
 * last reference. Requests never wait for a load.
 *
 * Admin. A second REP socket (--admin-listen, e.g. an ipc:// path that only
 * the server's user can open) accepts ReloadRequest and DropRequest; on the
 * query socket they are PERMISSION_DENIED. A reload never drops a
 * collection: one whose CURRENT is gone keeps serving what is loaded (with
 * a warning and a metric) until an admin drops it.
 *
 * Shutdown. The server answers any request that arrives from then on with
 * UNAVAILABLE (retryable), waits for the in-flight jobs to be answered,
 * and only then closes the sockets. (Closing an nng listener would also
 * close the connections it accepted, losing the replies still owed on them.)
 */
#ifndef CANDEX_SERVER_H
#define CANDEX_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/tls/tls.h>

#include "candex.pb-c.h"
#include "common/common.h"
#include "search/search.h"
#include "shard/manifest.h"

#define CDX_SERVER_MAX_LISTEN 16
/* request_id of the listener watchdog's health probes (not in the metrics) */
#define CDX_PROBE_REQUEST_ID "candex-listener-probe"

struct cdx_server_config {
	char *index_dir;
	char *listen[CDX_SERVER_MAX_LISTEN];
	unsigned nlisten;
	char *admin_listen;       /* NULL = no admin socket */
	char *http_listen;        /* host:port of /metrics, /healthz and /readyz; NULL = none */
	char *http_search_listen; /* host:port of POST /v1/search (JSON); NULL = none */
	char *tls_cert;           /* PEM files for tls+tcp:// listeners */
	char *tls_key;
	char *tls_ca;         /* clients must present a certificate signed by it */
	uint32_t threads;     /* search workers; 0 = number of cores */
	uint32_t contexts;    /* nng contexts on the query socket; 0 = queue + 2 x threads */
	uint32_t queue_max;   /* search jobs waiting for a worker; 0 = 16 x threads */
	uint64_t max_message; /* bytes; larger requests get LIMIT_EXCEEDED */
	uint32_t max_k;
	uint32_t max_batch;    /* query vectors (or keys) per request */
	uint32_t max_excludes; /* exclude ids + keys per request */
	uint32_t timeout_ms;   /* default deadline when a request has none */
	uint32_t max_timeout_ms;
	uint32_t parallel_batch;    /* batches this large may use every core when idle */
	uint32_t drain_ms;          /* longest wait for in-flight requests at shutdown */
	uint32_t listener_check_ms; /* listener watchdog period; 0 = off */
	double watch_interval;      /* seconds between CURRENT polls; 0 = off */
	double online_recall_fraction;
	double online_recall_cpu;
	uint32_t adapt_max_rungs;    /* recall adaptation: rungs it may add; 0 = off */
	uint32_t adapt_window;       /* checked queries per adaptation decision */
	double adapt_window_seconds; /* and the least time a decision's window spans */
	char *ipc_mode;              /* octal permissions of the admin socket's ipc:// file */
	char *query_ipc_mode;        /* octal permissions of query ipc:// files */
	int log_level;
	int help; /* --help was given */
	char *config_file;
};

/* cdx_server_config_init fills defaults; _fini frees the strings. */
void cdx_server_config_init(struct cdx_server_config *cfg);
void cdx_server_config_fini(struct cdx_server_config *cfg);
/* cdx_server_config_parse reads --config FILE first (if given), then the
 * other options of argv (argv[0] is the subcommand), which override it.
 * CDX_EINVAL with cdx_error() set on a bad option. */
int cdx_server_config_parse(struct cdx_server_config *cfg, int argc, char **argv);
/* cdx_server_config_file applies one config file ("option = value" lines). */
int cdx_server_config_file(struct cdx_server_config *cfg, const char *path);
/* cdx_server_config_usage prints every option with its default. */
void cdx_server_config_usage(FILE *out);

typedef struct cdx_server cdx_server;

/* cdx_server_start loads every collection, opens the sockets and starts
 * the threads. cfg is copied. On success *sp is set; stop and free the
 * server with cdx_server_stop(). */
int cdx_server_start(cdx_server **sp, const struct cdx_server_config *cfg);
/* cdx_server_stop drains in-flight requests, closes everything, frees s. */
void cdx_server_stop(cdx_server *s);
/* cdx_server_request_reload asks the reload thread to rescan the index
 * directory (returns at once; safe from any thread, not from a signal handler). */
void cdx_server_request_reload(cdx_server *s);
/* cdx_server_run is `candex serve`: start, serve until SIGTERM/SIGINT
 * (SIGHUP reloads), stop. Returns a process exit code. */
int cdx_server_run(const struct cdx_server_config *cfg);

/* ---- internals shared by the server's .c files ---------------------- */

struct srv_entry {
	char name[64];
	cdx_collection *coll; /* one reference held by the set */
	char version_dir[4096];
	uint64_t loaded_ms;      /* wall clock */
	uint64_t manifest_id[3]; /* inode, size, mtime (ns) of manifest.json as loaded */
	int current_missing;     /* served, but its CURRENT is gone (until an admin drops it) */
};

struct srv_set {
	size_t n;
	struct srv_entry *e;
};

#define SRV_NSTATUS  32
#define SRV_NBUCKETS 16

struct srv_metrics {
	atomic_uint_fast64_t status[SRV_NSTATUS];  /* responses by Response.status */
	atomic_uint_fast64_t bucket[SRV_NBUCKETS]; /* latency histogram (non-cumulative) */
	atomic_uint_fast64_t latency_sum_us;
	atomic_uint_fast64_t queries; /* query vectors searched */
	atomic_uint_fast64_t reload_ok;
	atomic_uint_fast64_t reload_failed;
	atomic_uint_fast64_t deadline_dropped;
	atomic_uint_fast64_t overloaded;
	atomic_uint_fast64_t target_unmet; /* searches whose recall target no point reaches */
	atomic_uint_fast64_t listener_restarts;
};

extern const double cdx__srv_buckets[SRV_NBUCKETS - 1]; /* upper bounds in seconds; last is +Inf */

/* A latency histogram: non-cumulative bucket counts and the sum. */
struct srv_hist {
	atomic_uint_fast64_t bucket[SRV_NBUCKETS];
	atomic_uint_fast64_t sum_us;
};

/* Per-collection series (the `collection` label). Slots are taken by names
 * of collections the server has loaded or tried to load (never by names a
 * client sends), up to SRV_MAX_COLL_METRICS; a slot is never freed, so
 * counters survive reloads and drops. */
#define SRV_MAX_COLL_METRICS 64
struct srv_coll_metrics {
	char name[CDX_NAME_MAX];
	atomic_uint_fast64_t status[SRV_NSTATUS]; /* search responses by status */
	struct srv_hist latency;                  /* receipt to response */
	struct srv_hist queue_wait;               /* receipt to a worker taking it */
	struct srv_hist search;                   /* the worker's search alone */
	atomic_uint_fast64_t reload_failed;       /* loads of a new version that failed */
};

struct srv_ctx;
struct srv_reload_req;
struct srv_failed;
struct srv_http_search;

/* One listener, kept so that the watchdog can recreate it. */
struct srv_listener {
	nng_listener l;
	nng_socket sock;
	const char *url; /* points into cfg */
	int admin;
	int port;        /* bound TCP port, for probes */
	unsigned failed; /* consecutive failed probes */
};

struct cdx_server {
	struct cdx_server_config cfg;
	uint32_t nworkers;
	uint64_t start_ms;

	/* collections */
	pthread_mutex_t set_mu;
	struct srv_set *set;

	/* sockets */
	nng_socket sock;  /* queries: every --listen URL */
	nng_socket admin; /* --admin-listen: also reloads */
	int admin_open;
	nng_tls_config *tls;
	struct srv_listener listeners[CDX_SERVER_MAX_LISTEN + 1];
	unsigned nlisteners;
	struct srv_ctx **ctxs;
	size_t nctxs;
	nng_http_server *http;
	struct srv_http_search *http_search; /* NULL unless --http-search-listen */

	/* job queue */
	pthread_mutex_t q_mu;
	pthread_cond_t q_cv;
	struct srv_ctx *q_head, *q_tail;
	uint32_t q_len;
	int q_stop;
	pthread_t *workers;

	/* per-collection metrics: cm[0, ncm) are in use */
	pthread_mutex_t cm_mu; /* taken to add a slot */
	struct srv_coll_metrics cm[SRV_MAX_COLL_METRICS];
	atomic_uint ncm;
	/* readiness: collections of the index directory that serve nothing
	 * (set by each rescan, under set_mu); "" when every one serves */
	char unserved[1024];

	atomic_int stopping;  /* answer new requests UNAVAILABLE */
	atomic_int in_flight; /* received, not yet answered */

	/* reload thread */
	pthread_t reloader;
	int reloader_started;
	pthread_mutex_t r_mu;
	pthread_cond_t r_cv;
	int r_stop;
	int r_pending;                 /* a rescan was asked for (SIGHUP) */
	struct srv_reload_req *r_head; /* admin requests waiting for an answer */
	struct srv_failed *failed;     /* versions that failed to load */
	size_t nfailed;

	/* listener watchdog */
	pthread_t watchdog;
	int watchdog_started;
	pthread_mutex_t w_mu;
	pthread_cond_t w_cv;
	int w_stop;

	struct srv_metrics m;
	struct cdx_online_recall *online; /* NULL unless --online-recall-fraction > 0 */
	struct srv_adapt *adapt;          /* NULL unless adaptation is on (needs online) */
};

/* reload.c */
int cdx__srv_load_initial(cdx_server *s);
int cdx__srv_reloader_start(cdx_server *s);
void cdx__srv_reloader_stop(cdx_server *s);
/* cdx__srv_reload rescans (only: one collection, NULL = all). Returns 0 if
 * every load succeeded, else the first error with *msg (malloc'd) listing
 * the failures; the old versions keep serving either way. */
int cdx__srv_reload(cdx_server *s, const char *only, char **msg);
/* cdx__srv_reload_admin queues an admin reload; the reload thread answers
 * ctx (srv_ctx) when done. */
void cdx__srv_reload_admin(cdx_server *s, struct srv_ctx *ctx, const char *only);
/* cdx__srv_drop_admin queues an admin drop of one collection, answered
 * like a reload (cdx__srv_reply_reload). */
void cdx__srv_drop_admin(cdx_server *s, struct srv_ctx *ctx, const char *name);
/* cdx__srv_lookup returns a new reference to the named collection, or NULL. */
cdx_collection *cdx__srv_lookup(cdx_server *s, const char *name);
/* cdx__srv_snapshot returns a copy of the set with a reference on every
 * collection; release it with cdx__srv_set_free(). */
struct srv_set *cdx__srv_snapshot(cdx_server *s);
void cdx__srv_set_free(struct srv_set *set);
/* cdx__srv_names writes the served names, comma-separated, into out. */
void cdx__srv_names(cdx_server *s, char *out, size_t size);

/* dispatch.c */
/* cdx__srv_listen starts a listener for url on sock into slot. */
int cdx__srv_listen(cdx_server *s, nng_socket sock, const char *url, int admin, struct srv_listener *slot);
int cdx__srv_sockets_open(cdx_server *s);
void cdx__srv_sockets_close(cdx_server *s);
int cdx__srv_workers_start(cdx_server *s);
void cdx__srv_workers_stop(cdx_server *s);
uint32_t cdx__srv_queue_depth(cdx_server *s);
/* cdx__srv_reply_reload answers an admin reload or drop on its context. */
void cdx__srv_reply_reload(struct srv_ctx *ctx, int status, const char *msg);

/* adapt.c (recall adaptation; every function takes a NULL adapter: off) */
struct srv_adapt;
struct cdx_online_check;
/* cdx__srv_adapt_alloc sets *ap to an adapter, or NULL when cfg turns
 * adaptation off; free it with cdx__srv_adapt_free after the online checker
 * has stopped. */
int cdx__srv_adapt_alloc(struct srv_adapt **ap, const struct cdx_server_config *cfg);
void cdx__srv_adapt_free(struct srv_adapt *a);
/* cdx__srv_adapt_escalation: the rungs a request of k on c without nprobe
 * is served above its chosen operating point (lock-free; request path). */
uint32_t cdx__srv_adapt_escalation(struct srv_adapt *a, const cdx_collection *c, uint32_t k);
/* cdx__srv_recall_offer offers one answered query (p and used: its search)
 * to the online checker, with what adaptation needs to know about it. */
void cdx__srv_recall_offer(cdx_server *s, cdx_collection *c, const struct cdx_search_params *p,
    const struct cdx_search_used *used, const float *query, const struct cdx_hit *hits, uint32_t nhits);
/* cdx__srv_adapt_check is the online checker's on_check (arg: the adapter). */
void cdx__srv_adapt_check(void *arg, const struct cdx_online_check *chk);
/* cdx__srv_adapt_sync: set is now served; collections that changed start again. */
void cdx__srv_adapt_sync(struct srv_adapt *a, const struct srv_set *set);
int cdx__srv_adapt_render(struct srv_adapt *a, cdx_buf *b);

/* request.c */
/* cdx__srv_validate_search checks a decoded search request against the
 * limits of cfg and the manifest of the collection it names: everything
 * but the lookup. Returns CDX_OK, or the answer's code with its message in
 * msg[size]. Needs no socket and no server. */
int cdx__srv_validate_search(const Candex__V1__SearchRequest *sr, const struct cdx_manifest *m,
    const struct cdx_server_config *cfg, char *msg, size_t size);
/* cdx__srv_peek_request_id walks the top-level fields of a Request that
 * will not be decoded (too large, or malformed further in) for its
 * request_id (field 2), so that even those error responses echo it; out
 * gets at most size - 1 bytes, cut on a character boundary, or "". */
void cdx__srv_peek_request_id(const uint8_t *p, size_t len, char *out, size_t size);

/* watchdog.c */
int cdx__srv_watchdog_start(cdx_server *s);
void cdx__srv_watchdog_stop(cdx_server *s);

/* http_search.c: POST /v1/search, through an in-process REQ socket to sock */
int cdx__srv_http_search_start(cdx_server *s);
void cdx__srv_http_search_stop(cdx_server *s);

/* metrics.c */
/* cdx__srv_observe counts a response; collection (NULL for requests that
 * reached no served collection) also counts it under that label. */
void cdx__srv_observe(cdx_server *s, const char *collection, int status, uint64_t latency_us);
/* cdx__srv_observe_search records a search job's wait for a worker and,
 * if it was searched (search_us > 0 or searched), the search time. */
void cdx__srv_observe_search(
    cdx_server *s, const char *collection, uint64_t wait_us, int searched, uint64_t search_us);
/* cdx__srv_coll_metrics returns the slot of collection, taking a free one
 * for a new name; NULL when every slot is taken. */
struct srv_coll_metrics *cdx__srv_coll_metrics(cdx_server *s, const char *collection);
int cdx__srv_metrics_render(cdx_server *s, cdx_buf *out);
int cdx__srv_http_start(cdx_server *s);
/* cdx__srv_http_send answers an HTTP handler's aio with code and body (not
 * cached; with an X-Request-Id header when request_id is not NULL or ""). */
void cdx__srv_http_send(
    nng_aio *aio, uint16_t code, const char *ctype, const char *request_id, const void *body, size_t len);
void cdx__srv_http_stop(cdx_server *s);

#endif
