/*
 * server.h — the candex server: configuration, start/stop, reload, and the
 * internals its .c files share.
 *
 * DESIGN
 * Threads. One nng REP socket (every --listen URL is a listener on it) with
 * many contexts. Each context is a small state machine driven by its aio
 * callback, as in nng's async demo: RECV -> (decode, validate, enqueue) ->
 * a worker searches -> SEND -> RECV. The callback runs on nng's threads, so
 * it never runs Faiss: for a request of up to 64 KiB it decodes the
 * protobuf, checks everything that is cheap to check (version, collection,
 * k, dim, NaN, limits), answers health and info requests itself, and pushes
 * search jobs onto a bounded queue; a larger request goes to the intake
 * thread, which does the same. A full queue is answered OVERLOADED at once.
 * Replies are sent without a completion callback; one that must wait for
 * its connection goes to the sender thread (dispatch.c). A pool of worker
 * threads (one per core) pops jobs, drops those already past their deadline
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

#include <protobuf-c/protobuf-c.h>

#include "candex.pb-c.h"
#include "common/common.h"
#include "common/metrics_http.h"
#include "search/search.h"
#include "search/select.h"
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
	char *tls_ca;                /* clients must present a certificate signed by it */
	uint32_t threads;            /* search workers; 0 = number of cores */
	uint32_t contexts;           /* nng contexts on the query socket; 0 = queue + 2 x threads */
	uint32_t queue_max;          /* search jobs waiting for a worker; 0 = 16 x threads */
	uint64_t max_message;        /* bytes; larger requests get LIMIT_EXCEEDED */
	uint64_t max_receive_memory; /* bytes requests may hold: frames arriving + received */
	uint32_t max_connections;    /* open query connections */
	uint32_t heavy_ms;           /* searches estimated above this run on at most half the workers */
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
	char *impression_log;          /* directory of the impression log; NULL = off */
	uint64_t impression_log_bytes; /* rotate files at this size */
	uint64_t impression_buffer;    /* bytes buffered before records are dropped */
	uint32_t adapt_max_rungs;      /* recall adaptation: rungs it may add; 0 = off */
	uint32_t adapt_window;         /* checked queries per adaptation decision */
	double adapt_window_seconds;   /* and the least time a decision's window spans */
	char *ipc_mode;                /* octal permissions of the admin socket's ipc:// file */
	char *query_ipc_mode;          /* octal permissions of query ipc:// files */
	char *shards;         /* --shards: the shards of each collection served here (groups.c); NULL = all */
	double keep_previous; /* seconds a replaced version stays loaded after the last request naming it */
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
/* cdx_server_stop drains in-flight requests, closes everything, frees s,
 * all within cfg->drain_ms. CDX_ETIMEDOUT if closing the sockets did not
 * finish in that time: s is then left to the process exit (nng's own close
 * can hang in 1.5; see server.c). */
int cdx_server_stop(cdx_server *s);
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
	cdx_rowset *blocked;  /* its takedowns' rows, one reference; NULL = none */
	char version_dir[4096];
	uint64_t loaded_ms;      /* wall clock */
	uint64_t manifest_id[3]; /* inode, size, mtime (ns) of manifest.json as loaded */
	int current_missing;     /* served, but its CURRENT is gone (until an admin drops it) */
};

struct srv_set {
	size_t n;
	struct srv_entry *e;
};

#define SRV_NSTATUS 32

struct srv_metrics {
	atomic_uint_fast64_t status[SRV_NSTATUS]; /* responses by Response.status */
	struct cdx_hist latency;                  /* receipt to response */
	atomic_uint_fast64_t queries;             /* query vectors searched */
	atomic_uint_fast64_t reload_ok;
	atomic_uint_fast64_t reload_failed;
	atomic_uint_fast64_t deadline_dropped;
	atomic_uint_fast64_t overloaded;
	atomic_uint_fast64_t target_unmet; /* searches whose recall target no point reaches */
	atomic_uint_fast64_t listener_restarts;
	atomic_uint_fast64_t conns_refused;   /* connections refused at max-connections */
	atomic_uint_fast64_t conns_evicted;   /* closed to make room for a new one */
	atomic_uint_fast64_t budget_refused;  /* requests refused: receive-memory budget */
	atomic_uint_fast64_t abandoned;       /* queued searches dropped: their client left */
	atomic_uint_fast64_t heavy;           /* searches run as expensive */
	atomic_uint_fast64_t widened;         /* queries searched again, wider, to find k results */
	atomic_uint_fast64_t takedowns;       /* admin takedown changes applied */
	atomic_uint_fast64_t exploring;       /* searches with exploration slots */
	atomic_uint_fast64_t replies_waited;  /* replies handed to the sender thread */
	atomic_uint_fast64_t replies_dropped; /* ... that their connection never took in time */
};

/* Per-collection series (the `collection` label). Slots are taken by names
 * of collections the server has loaded or tried to load (never by names a
 * client sends), up to SRV_MAX_COLL_METRICS; a slot is never freed, so
 * counters survive reloads and drops. */
#define SRV_MAX_COLL_METRICS 64
struct srv_coll_metrics {
	char name[CDX_NAME_MAX];
	atomic_uint_fast64_t status[SRV_NSTATUS]; /* search responses by status */
	struct cdx_hist latency;                  /* receipt to response */
	struct cdx_hist queue_wait;               /* receipt to a worker taking it */
	struct cdx_hist search;                   /* the worker's search alone */
	atomic_uint_fast64_t reload_failed;       /* loads of a new version that failed */
};

struct srv_ctx;
struct srv_reload_req;
struct srv_failed;
struct srv_previous;
struct srv_http_search;

/* One listener, kept so that the watchdog can recreate it. */
struct srv_listener {
	nng_listener l;
	nng_socket sock;
	const char *url; /* points into cfg */
	int admin;
	int port;             /* bound TCP port, for probes */
	unsigned failed;      /* consecutive probes that found it not accepting */
	uint64_t errors_seen; /* its accept-error statistics when last found accepting */
};

enum { CTX_RECV, CTX_INTAKE, CTX_QUEUED, CTX_SEND };

/* One nng context and the request it serves (see dispatch.c). */
struct srv_ctx {
	cdx_server *s;
	nng_ctx ctx;
	nng_aio *aio;  /* receives (callback: ctx_cb) */
	nng_aio *saio; /* sends the reply; no callback (dispatch.c, "Replies") */
	int admin;     /* on the admin socket: reloads allowed */
	int state;
	/* the request being served (owned between RECV and SEND) */
	nng_msg *msg;             /* received, not yet decoded */
	uint32_t pipe;            /* the connection it came on */
	size_t reserved;          /* bytes of the receive budget it holds */
	int over_budget;          /* a charge to the budget was refused */
	ProtobufCAllocator alloc; /* decodes into the budget (intake.c) */
	Candex__V1__Request *req; /* decoded with alloc */
	char peeked_id[128];      /* request_id of a request that was not decoded */
	cdx_collection *coll;     /* a reference, for searches */
	cdx_rowset *blocked;      /* a reference to coll's takedown rows, or NULL */
	uint64_t t_recv_us;
	uint64_t deadline_us;         /* searches only; 0 until set */
	atomic_uint_fast64_t stop_by; /* the running search's deadline; shutdown brings it forward */
	double cost_us;               /* estimated search time */
	double cost_units;            /* the estimate before calibration (queue.c) */
	int heavy;                    /* cost_us above --heavy-ms */
	double heavy_end_us;          /* heavy and running: estimated end (cdx_now_us) */
	struct srv_ctx *next;         /* intake, search or sender queue link */
};

/* Open connections of one socket (conns.c). */
struct srv_conn {
	uint32_t pipe;
	uint64_t since_us; /* connected, or last completed a request */
};
struct srv_conns {
	cdx_server *s;
	pthread_mutex_t mu;
	struct srv_conn *v; /* sorted by pipe id */
	size_t n;
	uint32_t limit;
	int admin;
	int init;
};

struct cdx_server {
	struct cdx_server_config cfg;
	uint32_t nworkers;
	uint64_t start_ms;

	/* collections */
	pthread_mutex_t set_mu;
	struct srv_set *set;
	struct srv_previous *prev; /* replaced versions kept for pinned requests (groups.c; set_mu) */
	size_t nprev;

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
	struct srv_conns conns;              /* query socket */
	struct srv_conns admin_conns;        /* admin socket */
	size_t frame_limit;                  /* nng RECVMAXSZ: largest frame a connection may send */
	struct srv_http_search *http_search; /* NULL unless --http-search-listen */

	/* receive-memory budget (intake.c) */
	atomic_size_t rx_used;
	size_t rx_budget;

	/* intake: received messages waiting to be decoded */
	pthread_mutex_t i_mu;
	pthread_cond_t i_cv;
	struct srv_ctx *i_head, *i_tail;
	int i_stop;
	pthread_t intake;
	int intake_started;

	/* sender (dispatch.c): contexts whose reply waits for its connection */
	pthread_mutex_t snd_mu;
	pthread_cond_t snd_cv;
	struct srv_ctx *snd_head, *snd_tail;
	int snd_stop;
	pthread_t sender;
	int sender_started;

	/* search queue (queue.c): cheap jobs first, expensive ones on at most
	 * heavy_limit workers at once */
	pthread_mutex_t q_mu;
	pthread_cond_t q_cv;
	struct srv_ctx *q_head, *q_tail; /* cheap */
	struct srv_ctx *h_head, *h_tail; /* heavy */
	uint32_t q_len;                  /* both */
	double q_cheap_us, q_heavy_us;   /* estimated work waiting */
	uint32_t heavy_running, heavy_limit;
	double heavy_ends_us;  /* sum of the running heavy jobs' estimated ends */
	double ns_per_unit[2]; /* cost calibration of cheap [0] and heavy [1] searches */
	int q_stop;
	pthread_t *workers;

	/* per-collection metrics: cm[0, ncm) are in use */
	pthread_mutex_t cm_mu; /* taken to add a slot */
	struct srv_coll_metrics cm[SRV_MAX_COLL_METRICS];
	atomic_uint ncm;
	/* readiness: collections of the index directory that serve nothing
	 * (set by each rescan, under set_mu); "" when every one serves */
	char unserved[1024];

	atomic_int stopping;               /* answer new requests UNAVAILABLE */
	atomic_uint_fast64_t searches_end; /* shutdown: every search stops by then (UINT64_MAX) */
	atomic_int in_flight;              /* received, not yet answered */

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
	struct srv_probe *probe; /* the probe in progress, under w_mu */

	struct srv_metrics m;
	struct cdx_online_recall *online; /* NULL unless --online-recall-fraction > 0 */
	struct cdx_implog *implog;        /* NULL unless --impression-log */
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
/* cdx__srv_takedown_admin queues an admin takedown change (tr belongs to
 * ctx's request); the reload thread applies it between reloads and answers. */
void cdx__srv_takedown_admin(cdx_server *s, struct srv_ctx *ctx, const Candex__V1__TakedownRequest *tr);
/* cdx__srv_drop_admin queues an admin drop of one collection, answered
 * like a reload (cdx__srv_reply_reload). */
void cdx__srv_drop_admin(cdx_server *s, struct srv_ctx *ctx, const char *name);
/* cdx__srv_lookup returns a new reference to the named collection, or
 * NULL; *blocked (if not NULL) a reference to its takedowns' rows (NULL if
 * none), taken under the same lock so that both fit the same version. */
cdx_collection *cdx__srv_lookup(cdx_server *s, const char *name, cdx_rowset **blocked);
/* cdx__srv_entry_ref takes one more reference on everything an entry holds. */
void cdx__srv_entry_ref(const struct srv_entry *e);
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
int cdx__srv_intake_start(cdx_server *s);
void cdx__srv_intake_stop(cdx_server *s);
int cdx__srv_sender_start(cdx_server *s);
int cdx__srv_workers_start(cdx_server *s);
void cdx__srv_workers_stop(cdx_server *s);
uint32_t cdx__srv_queue_depth(cdx_server *s);
/* cdx__srv_searches_end makes every search, running or to come, stop by
 * t (cdx_now_us), answering UNAVAILABLE (shutdown). */
void cdx__srv_searches_end(cdx_server *s, uint64_t t);
/* cdx__srv_reply_reload answers an admin reload or drop on its context. */
void cdx__srv_reply_reload(struct srv_ctx *ctx, int status, const char *msg);
/* cdx__srv_send answers ctx with resp (packed at once: resp's strings may
 * be freed when it returns); cdx__srv_reply_error with an error. */
void cdx__srv_send(struct srv_ctx *ctx, Candex__V1__Response *resp);
void cdx__srv_reply_error(struct srv_ctx *ctx, int code, const char *fmt, ...) CDX_PRINTF(3, 4);

/* takedown.c: the takedowns of served collections (shard/takedown.h) */
/* cdx__srv_takedown_rows builds the rows of c (collection name) its
 * takedown list blocks: *out NULL when it blocks none. */
int cdx__srv_takedown_rows(cdx_server *s, const char *name, const cdx_collection *c, cdx_rowset **out);
/* cdx__srv_takedown_apply applies an admin change and answers ctx (the
 * reload thread runs it). */
void cdx__srv_takedown_apply(cdx_server *s, struct srv_ctx *ctx, const Candex__V1__TakedownRequest *tr);

/* recsearch.c: a search request, from protobuf to results and back */
/* cdx__srv_check_rec checks the recommender fields of a search (cheap, on
 * the nng thread). 0, or an error code with msg filled. */
int cdx__srv_check_rec(
    const struct cdx_server_config *cfg, const Candex__V1__SearchRequest *sr, char *msg, size_t size);
/* cdx__srv_search_run runs the checked, queued search of x (x->coll and
 * x->blocked as looked up; NULL for a multi-collection search) until
 * x->stop_by, and answers it. Returns the µs one worker spent on a whole
 * plain search (no selection: the queue's calibration), else 0. idle: the server has no other
 * work (a big batch may use every core). */
uint64_t cdx__srv_search_run(struct srv_ctx *x, int idle);
/* cdx__srv_rec_cost_units: the cost model's units for a multi-collection
 * search (collections not served count nothing: the search will fail). */
double cdx__srv_rec_cost_units(cdx_server *s, const Candex__V1__SearchRequest *sr);
/* cdx__srv_rec_start / _stop: the impression log (--impression-log). */
int cdx__srv_rec_start(cdx_server *s);
void cdx__srv_rec_stop(cdx_server *s);
/* cdx__srv_rec_metrics renders the recommender metrics. */
void cdx__srv_rec_metrics(cdx_server *s, cdx_buf *out);

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
/* cdx__srv_validate_settings checks the search settings (refine_factor,
 * recall_target) alone: what a search of several collections shares. */
int cdx__srv_validate_settings(const Candex__V1__SearchRequest *sr, char *msg, size_t size);
/* cdx__srv_peek_request_id walks the top-level fields of a Request that
 * will not be decoded (too large, or malformed further in) for its
 * request_id (field 2), so that even those error responses echo it; out
 * gets at most size - 1 bytes, cut on a character boundary, or "". */
void cdx__srv_peek_request_id(const uint8_t *p, size_t len, char *out, size_t size);
/* cdx__srv_decode_request decodes a Request's wire bytes p[len] into *out
 * through alloc (the server's draws on the receive budget), after checking
 * what decoding would multiply: the size against max-message, and, walking
 * the wire bytes without allocating, the query, key, exclusion and
 * unknown-field counts against the limits of cfg. Returns CDX_OK; or
 * CDX_ELIMIT, or CDX_EPROTO (not a Request, or alloc refused), with msg
 * set and *out NULL. The caller frees *out through alloc. */
int cdx__srv_decode_request(const struct cdx_server_config *cfg, ProtobufCAllocator *alloc, const uint8_t *p,
    size_t len, Candex__V1__Request **out, char *msg, size_t size);

/* groups.c: serving as one shard group behind candex route */
/* cdx__srv_shards_for reads a --shards spec for collection name: *serve = 0
 * if the server serves none of it, else *set (every shard when n = 0).
 * name NULL only checks the spec. CDX_EINVAL with cdx_error() if bad. */
int cdx__srv_shards_for(const char *spec, const char *name, struct cdx_shard_set *set, int *serve);
/* cdx__srv_wants: whether this server loads version directory vdir of
 * collection name, and which of its shards (*set). */
int cdx__srv_wants(cdx_server *s, const char *name, const char *vdir, struct cdx_shard_set *set);
/* cdx__srv_previous_keep keeps old and its takedown rows old_blocked (new
 * references; old_blocked may be NULL) loaded for requests
 * that name its version, with --keep-previous > 0. */
void cdx__srv_previous_keep(cdx_server *s, const char *name, cdx_collection *old, cdx_rowset *old_blocked);
/* cdx__srv_lookup_version: a new reference to collection name at version
 * (NULL or "" = the current one; else the current or the kept previous one
 * if it is that version), or NULL; *blocked (if not NULL) as
 * cdx__srv_lookup's, for that version. */
cdx_collection *cdx__srv_lookup_version(
    cdx_server *s, const char *name, const char *version, cdx_rowset **blocked);
/* cdx__srv_previous_takedowns recomputes the takedown rows of name's kept
 * previous version, if there is one (after an admin takedown change). */
void cdx__srv_previous_takedowns(cdx_server *s, const char *name);
void cdx__srv_previous_free(cdx_server *s);
/* cdx__srv_fill_coverage fills a SearchResponse's coverage fields from c
 * (pointers into c: valid while the request holds it). */
void cdx__srv_fill_coverage(Candex__V1__SearchResponse *out, const cdx_collection *c);
/* cdx__srv_fill_info_shards fills CollectionInfo's shards_served and
 * items_served (pointers into c). */
void cdx__srv_fill_info_shards(Candex__V1__CollectionInfo *ci, const cdx_collection *c);
/* cdx__srv_fill_previous sets previous_version of each of ci[0..n); returns
 * the storage the strings point into (caller frees; NULL if none). */
char *cdx__srv_fill_previous(cdx_server *s, Candex__V1__CollectionInfo **ci, size_t n);

/* watchdog.c */
int cdx__srv_watchdog_start(cdx_server *s);
void cdx__srv_watchdog_stop(cdx_server *s);
/* cdx__srv_watchdog_claim: is this new pipe the watchdog's probe? (Called
 * from the pipe notification; the caller then closes it.) */
int cdx__srv_watchdog_claim(cdx_server *s, nng_pipe p);

/* conns.c */
/* cdx__srv_conns_init registers t for sock's pipe notifications. */
int cdx__srv_conns_init(cdx_server *s, struct srv_conns *t, nng_socket sock, uint32_t limit, int admin);
void cdx__srv_conns_fini(struct srv_conns *t);
/* cdx__srv_conn_seen records that pipe completed a request now. */
void cdx__srv_conn_seen(struct srv_conns *t, uint32_t pipe);
/* cdx__srv_conn_open: is the connection still there? */
int cdx__srv_conn_open(struct srv_conns *t, uint32_t pipe);
uint32_t cdx__srv_conns_count(struct srv_conns *t);

/* intake.c */
/* cdx__srv_budget_take charges bytes to the receive budget: 0, or -1 (and
 * nothing charged) if they do not fit. */
int cdx__srv_budget_take(cdx_server *s, size_t bytes);
void cdx__srv_budget_give(cdx_server *s, size_t bytes);
/* cdx__srv_allocator_init points x->alloc at the budget, charging x. */
void cdx__srv_allocator_init(struct srv_ctx *x);
/* queue.c */
/* cdx__srv_limits_init derives the connection limit and the budgets from
 * the configuration; CDX_EINVAL if they cannot hold one request. */
int cdx__srv_limits_init(cdx_server *s);
/* cdx__srv_cost_units: the cost model's units for a search of nq queries
 * of c with the given parameters. */
double cdx__srv_cost_units(const cdx_collection *c, size_t nq, const struct cdx_search_params *p);
/* cdx__srv_estimate sets x->cost_units (to units), x->cost_us and x->heavy. */
void cdx__srv_estimate(cdx_server *s, struct srv_ctx *x, double units);
/* cdx__srv_fifo_push appends x to the list (head, tail) linked by ->next;
 * cdx__srv_fifo_pop takes its first, or NULL. The caller holds the list's
 * lock. */
void cdx__srv_fifo_push(struct srv_ctx **head, struct srv_ctx **tail, struct srv_ctx *x);
struct srv_ctx *cdx__srv_fifo_pop(struct srv_ctx **head, struct srv_ctx **tail);
/* cdx__srv_admit queues x, or returns CDX_EOVERLOAD (or CDX_EUNAVAIL once
 * the workers are stopping) with msg set. */
int cdx__srv_admit(cdx_server *s, struct srv_ctx *x, char *msg, size_t size);
/* cdx__srv_next blocks for the next job; NULL once stopped and empty. *idle
 * says whether nothing else waits. */
struct srv_ctx *cdx__srv_next(cdx_server *s, int *idle);
/* cdx__srv_job_done records a finished job (heavy slot, calibration: took_us
 * of searching, 0 = not searched). */
void cdx__srv_job_done(cdx_server *s, struct srv_ctx *x, uint64_t took_us);

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
void cdx__srv_http_stop(cdx_server *s);

#endif
