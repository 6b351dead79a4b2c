/*
 * router.h — `candex route`: one front for many `candex serve` shard groups.
 *
 * DESIGN
 * Clients cannot tell a router from a server: it listens on an nng REP
 * socket and answers the same protocol (proto/candex.proto). Behind it,
 * each shard group is a set of replicas of `candex serve --shards LIST`
 * (docs/router.md). A search goes to every group that holds shards of its
 * collection; each group searches its shards exactly as one server would
 * search them all (one coarse quantizer and codebook for every shard, the
 * same operating point rule at the same k tier), and the router merges the
 * groups' top-k by (score, id), as search.c merges shards: the answer is
 * the one a single server holding every shard gives.
 *
 * Replicas. Each group has one nng REQ socket dialed to every replica: nng
 * spreads requests over the connected replicas and, when a connection is
 * lost (a replica killed), sends the requests that were waiting on it to
 * another one. Its timed resend is off: a slow search is not started twice
 * behind anyone's back. On a timeout or a retryable answer (UNAVAILABLE,
 * OVERLOADED, a version the replica does not hold) the router tries again,
 * within the request's deadline.
 *
 * Versions. A poller asks every replica for its collections (InfoRequest)
 * each --poll-ms. For each collection the router pins one version that
 * every group holds, current or kept as previous (--keep-previous on the
 * servers), sends it as SearchRequest.index_version, and checks it in
 * every answer: it never merges two versions.
 *
 * Partial answers. A group that does not answer before the deadline, or
 * has no replica up, is left out: the answer says what it covers
 * (coverage, shards searched) and its message names the missing groups.
 *
 * Membership comes from the configuration (--group NAME=URL,URL...) or from
 * DNS (--group NAME=dns:HOST:PORT, e.g. a Kubernetes headless Service),
 * resolved again every --dns-interval seconds.
 */
#ifndef CANDEX_ROUTER_H
#define CANDEX_ROUTER_H

#include <stdint.h>
#include <stdio.h>

#define CDX_ROUTER_MAX_LISTEN 16
#define CDX_ROUTER_MAX_GROUPS 64

struct cdx_router_config {
	char *listen[CDX_ROUTER_MAX_LISTEN];
	unsigned nlisten;
	char *group[CDX_ROUTER_MAX_GROUPS]; /* "NAME=URL[,URL...]" or "NAME=dns:HOST:PORT" */
	unsigned ngroups;
	char *http_listen;       /* host:port of /metrics and /healthz; NULL = none */
	uint32_t timeout_ms;     /* deadline of requests that set none */
	uint32_t max_timeout_ms; /* cap on a request's own deadline */
	uint32_t try_timeout_ms; /* one attempt at a group; 0 = half of what is left */
	uint32_t retries;        /* extra attempts at a group within the deadline */
	uint32_t poll_ms;        /* InfoRequest to every replica this often */
	double dns_interval;     /* seconds between DNS resolutions of dns: groups */
	double min_coverage;     /* answers covering less are UNAVAILABLE instead of partial */
	uint32_t contexts;       /* client requests handled at once */
	uint64_t max_message;    /* bytes, both ways */
	uint32_t drain_ms;       /* longest wait for in-flight requests at shutdown */
	int log_level;
	int help;
	char *config_file;
};

/* cdx_router_config_init fills defaults; _fini frees the strings. */
void cdx_router_config_init(struct cdx_router_config *cfg);
void cdx_router_config_fini(struct cdx_router_config *cfg);
/* cdx_router_config_parse reads --config FILE (if given), then argv
 * (argv[0] is the subcommand), which overrides it. CDX_EINVAL with
 * cdx_error() set on a bad option. */
int cdx_router_config_parse(struct cdx_router_config *cfg, int argc, char **argv);
/* cdx_router_config_usage prints every option with its default. */
void cdx_router_config_usage(FILE *out);

typedef struct cdx_router cdx_router;

/* cdx_router_start resolves the groups, opens the sockets and starts the
 * threads (cfg is copied). It does not wait for the groups: until a poll
 * has found a collection, searches are answered UNAVAILABLE. On success
 * *rp is set; stop and free it with cdx_router_stop(). */
int cdx_router_start(cdx_router **rp, const struct cdx_router_config *cfg);
/* cdx_router_stop answers new requests UNAVAILABLE, waits for those in
 * flight (at most drain_ms), closes everything and frees r. */
void cdx_router_stop(cdx_router *r);
/* cdx_router_run is `candex route`: start, serve until SIGTERM/SIGINT,
 * stop. Returns a process exit code. */
int cdx_router_run(const struct cdx_router_config *cfg);

#endif
