/*
 * router_int.h — the router's insides, shared by its .c files:
 * members.c (groups, replicas, polls, the routing view and its version
 * rule), route.c (client requests: fan-out, retries, replies), merge.c
 * (group answers -> one answer), metrics.c (/metrics, /healthz) and
 * router.c (start, stop, run). Not a public interface.
 */
#ifndef CANDEX_ROUTER_INT_H
#define CANDEX_ROUTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include "candex.pb-c.h"
#include "common/common.h"
#include "common/metrics_http.h"
#include "router/router.h"
#include "shard/shard.h"

#define RT_NSTATUS 32
/* polls in a row a replica that was up may leave unanswered before it is down */
#define RT_POLL_MISSES 3

/* Why an attempt at a group did not give an answer to merge. */
enum rt_reason {
	RT_R_TIMEOUT,     /* no answer within the attempt's time */
	RT_R_UNAVAILABLE, /* UNAVAILABLE, a lost connection, no replica connected */
	RT_R_OVERLOADED,  /* OVERLOADED */
	RT_R_VERSION,     /* the replica does not hold the pinned version (or answered another) */
	RT_R_ERROR,       /* any other failure of the replica (INTERNAL, a bad answer...) */
	RT_NREASONS
};
extern const char *const cdx__rt_reason_names[RT_NREASONS];

struct rt_group_metrics {
	atomic_uint_fast64_t asked;    /* requests sent to the group (first attempts) */
	atomic_uint_fast64_t answered; /* ... that it answered in time */
	atomic_uint_fast64_t missed;   /* ... left out of the answer (partial) */
	atomic_uint_fast64_t client_errors;
	atomic_uint_fast64_t retries[RT_NREASONS];        /* attempts repeated, by why */
	atomic_uint_fast64_t failures[RT_NREASONS];       /* attempts that failed, by why */
	atomic_uint_fast64_t disconnects;                 /* replica connections lost (nng resends) */
	atomic_uint_fast64_t items_searched, items_total; /* coverage: the group's part of answers */
	struct cdx_hist latency;                          /* first send to answer */
};

/* One member of a group. */
struct rt_replica {
	char url[320];
	nng_dialer dialer;              /* on the group's socket */
	nng_socket poll;                /* its own REQ socket for InfoRequest polls */
	int up;                         /* answered a recent poll (see poll_all) */
	unsigned polls_timed_out;       /* polls in a row it did not answer in time */
	int keep;                       /* still named by the configuration or DNS */
	Candex__V1__InfoResponse *info; /* from the last poll that answered; owned */
	char why[200];                  /* why it is down */
};

struct rt_group {
	char name[CDX_NAME_MAX];
	char members[1024]; /* as configured: URL,URL... or dns:HOST:PORT */
	int dns;
	char dns_host[256];
	char dns_port[16];
	nng_socket sock;  /* REQ, dialed to every replica */
	atomic_int pipes; /* connections to replicas now */
	/* replicas: changed by the poller only, under r->mu */
	struct rt_replica **rep;
	size_t nrep;
	struct rt_group_metrics m;
};

/* How one collection is routed, from the last polls. */
struct rt_route {
	char name[CDX_NAME_MAX];
	char version[CDX_NAME_MAX]; /* pinned: every group asked holds it */
	uint32_t ngroups;
	uint16_t group[CDX_ROUTER_MAX_GROUPS]; /* groups asked, config order */
	uint32_t shards;                       /* shards in the version */
	uint64_t items;
	uint32_t *served; /* the asked groups' shards, ascending (owned by the view) */
	uint32_t nserved;
	uint64_t items_served;
	char left_out[512]; /* groups not asked and why ("" = none) */
	/* for InfoRequest answers: the version's description */
	uint32_t dim, nlist, default_nprobe;
	char metric[8], factory[128], model_version[128], refine[16];
	uint64_t loaded_unix_ms;
};

/* What requests route by: immutable once made, replaced after each poll
 * round, reference-counted (a request keeps the view it started with). */
struct rt_view {
	atomic_long refs;
	size_t n;
	struct rt_route *route;
};

struct rt_front; /* one client request slot (route.c) */

struct cdx_router {
	struct cdx_router_config cfg;
	struct rt_group *groups;
	size_t ngroups;

	pthread_mutex_t mu; /* view, replicas */
	struct rt_view *view;

	nng_socket sock; /* front: REP, every --listen URL */
	struct rt_front **fronts;
	size_t nfronts;
	nng_http_server *http;

	pthread_t poller;
	int poller_started;
	pthread_mutex_t p_mu;
	pthread_cond_t p_cv;
	int p_stop;
	uint64_t polls; /* poll rounds done */

	atomic_int stopping;
	atomic_int in_flight;

	/* metrics */
	atomic_uint_fast64_t status[RT_NSTATUS]; /* responses by status */
	struct cdx_hist latency;
	atomic_uint_fast64_t partial;          /* OK answers covering less than everything */
	atomic_uint_fast64_t version_skew;     /* views where no version was held by every group */
	atomic_uint_fast64_t coverage_sum_ppm; /* over OK search answers, parts per million */
	atomic_uint_fast64_t searches_ok;
	uint64_t start_ms;
};

/* members.c */
/* cdx__rt_groups_open parses the --group specs, opens one REQ socket per
 * group and dials the configured replicas (DNS groups: at the first poll). */
int cdx__rt_groups_open(cdx_router *r);
void cdx__rt_groups_close(cdx_router *r);
int cdx__rt_poller_start(cdx_router *r);
void cdx__rt_poller_stop(cdx_router *r);
/* cdx__rt_view_get returns the current view with a reference (NULL before
 * the first poll); drop it with cdx__rt_view_put. */
struct rt_view *cdx__rt_view_get(cdx_router *r);
void cdx__rt_view_put(struct rt_view *v);
const struct rt_route *cdx__rt_view_find(const struct rt_view *v, const char *name);
/* cdx__rt_group_shards describes group gi's shards of a collection ("4-7"). */
void cdx__rt_group_shards(cdx_router *r, size_t gi, const char *collection, char *out, size_t size);

/* route.c */
int cdx__rt_front_open(cdx_router *r);
void cdx__rt_front_close(cdx_router *r);

/* merge.c */
/* cdx__rt_merge_hits merges nlists lists of hits, each best first, into
 * out[0..k): best first by (score, id), higher scores first when
 * higher_better, each id once. Returns how many. */
size_t cdx__rt_merge_hits(Candex__V1__Hit **const *lists, const size_t *lens, size_t nlists,
    int higher_better, size_t k, Candex__V1__Hit **out);
/* cdx__rt_shard_ranges writes ascending shard numbers as ranges ("0-3,8"). */
void cdx__rt_shard_ranges(const uint32_t *shards, size_t n, char *out, size_t size);

/* metrics.c */
void cdx__rt_observe(cdx_router *r, int status, uint64_t latency_us);
int cdx__rt_metrics_render(cdx_router *r, cdx_buf *out);
int cdx__rt_http_start(cdx_router *r);
void cdx__rt_http_stop(cdx_router *r);

#endif
