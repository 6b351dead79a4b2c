/*
 * candex/client.h — the candex client library.
 *
 * A cdx_client talks to one candex server URL (tcp://, ipc://, tls+tcp://)
 * over nng REQ/REP with the protobuf messages of proto/candex.proto. A client
 * is safe to use from several threads at once (each call uses its own nng
 * context). Over tls+tcp:// a call whose handshake fails (the server's
 * certificate is not signed by tls_ca_file or does not name the server, or
 * the server refuses ours) fails with CDX_ETLS, not CDX_ETIMEDOUT. The library never prints: every function
 * returns 0 or an error code from <candex/err.h>, and the server's message, if any, is copied into the
 * caller's struct cdx_client_error.
 */
#ifndef CANDEX_CLIENT_H
#define CANDEX_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <candex/err.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cdx_client cdx_client;

struct cdx_client_options {
	uint32_t timeout_ms; /* per attempt; 0 = 5000 */
	uint32_t retries;    /* extra attempts on timeout/unavailable/overload; 0 = none */
	uint32_t backoff_ms; /* first retry delay, doubled each retry; 0 = 20 */
	size_t max_message;  /* largest response accepted; 0 = 64 MiB */
	/* tls+tcp:// only: PEM files (mutual TLS); NULL for none */
	const char *tls_ca_file; /* required: the CA the server's certificate must be signed by */
	const char *tls_cert_file;
	const char *tls_key_file;
	const char *tls_server_name;
	/* tls+tcp:// without tls_ca_file is refused (CDX_EINVAL) unless this is
	 * 1: the connection is then encrypted but the server is not verified,
	 * so anyone on the path can pretend to be it. */
	int tls_insecure;
};

struct cdx_client_error {
	int code;          /* same as the return value */
	char message[256]; /* server's or library's detail, NUL-terminated */
};

/* cdx_client_open dials url (asynchronously: a server that is not up yet is
 * retried in the background). opts may be NULL. On success *cp is set and the
 * caller owns it; close it with cdx_client_close(). */
int cdx_client_open(
    cdx_client **cp, const char *url, const struct cdx_client_options *opts, struct cdx_client_error *err);
void cdx_client_close(cdx_client *c); /* NULL is a no-op */

/* One collection of a multi-collection search (docs/recommenders.md). */
struct cdx_query_part {
	const char *collection;
	uint32_t quota;       /* slots of the merged list for it (>= 1) */
	const float *vectors; /* its own query vectors (nvectors x dim), or NULL: the query's */
	size_t nvectors;
	uint32_t dim;
	const char *filter; /* NULL = the query's filter */
	const int64_t *exclude_ids;
	size_t n_exclude_ids;
	const char *const *exclude_keys;
	size_t n_exclude_keys;
	const char *model_version;
	float calibration_scale; /* CDX_MERGE_CALIBRATED: p = 1 / (1 + exp(-(scale x score + offset))) */
	float calibration_offset;
};

enum cdx_merge { CDX_MERGE_INTERLEAVE = 0, CDX_MERGE_CALIBRATED = 1 };

struct cdx_query {
	const char *collection; /* NULL with parts */
	const float *vectors;   /* nvectors x dim, row-major */
	size_t nvectors;
	uint32_t dim;
	const char *const *keys; /* or search with stored items' vectors */
	size_t nkeys;
	uint32_t k;
	uint32_t nprobe;     /* 0 = server picks, for recall_target */
	float refine_factor; /* 0 = the operating point's or collection default */
	float recall_target; /* 0 = the collection's default target */
	const int64_t *exclude_ids;
	size_t n_exclude_ids;
	const char *const *exclude_keys;
	size_t n_exclude_keys;
	const char *model_version; /* NULL = do not check */
	const char *request_id;    /* NULL = generated */
	uint32_t timeout_ms;       /* server-side deadline; 0 = client timeout */
	/* Recommender features (docs/recommenders.md); zero = off. A server
	 * that predates them would ignore them: the call then fails with
	 * CDX_EVERSION instead of returning results without them. */
	const char *filter;     /* on item attributes: "market has SE and explicit = false" */
	int compact_excludes;   /* send exclude_ids as a sorted delta-coded list (50k ids ~ 100 KB) */
	uint32_t max_per_group; /* crowding: at most this many results per group */
	const char *group_by;   /* the group attribute (NULL = the collection's first) */
	uint32_t explore_slots; /* of the k, filled by exploration */
	float explore_share;    /* or this share of k */
	uint32_t explore_pool;  /* ranks sampled after the exploit slots (0 = 4 x k) */
	uint64_t seed;          /* exploration seed (0 = from the request id) */
	const struct cdx_query_part *parts; /* several collections at once (collection NULL) */
	size_t nparts;
	int merge; /* enum cdx_merge */
};

struct cdx_client_hit {
	int64_t id;
	const char *key;
	float score;
	const char *collection; /* multi-collection searches; "" otherwise */
	int explore;            /* the slot was filled by exploration */
	double propensity;      /* probability this policy shows the item in this slot (exploring) */
	uint32_t rank;          /* 1-based rank in the list the policy drew from (exploring, parts) */
};

struct cdx_query_result {
	size_t nhits;
	struct cdx_client_hit *hits;
	int exhausted; /* fewer than k: no more items pass the filter, exclusions, takedowns, crowding */
};

struct cdx_result_part {
	const char *collection;
	const char *index_version;
	const char *metric;
	uint32_t nprobe;
	float refine_factor;
	float expected_recall;
	int target_unmet;
};

struct cdx_result {
	size_t nqueries;
	struct cdx_query_result *queries;
	char *index_version;
	char *metric;
	uint32_t nprobe;       /* lists probed */
	float refine_factor;   /* 0 = no re-ranking */
	float recall_target;   /* the target served (request or collection default), 0 = none */
	float expected_recall; /* measured recall of the operating point used, 0 = unknown */
	int target_unmet;      /* no measured point reaches recall_target at this k */
	uint64_t server_time_us;
	/* What the answer covers: items searched of the version's items. Below 1
	 * from one shard group (candex serve --shards) or from a router some of
	 * whose groups did not answer in time; message then says what is missing. */
	float coverage;
	uint64_t items_searched, items_total;
	const char *message; /* the server's note on an OK answer ("" if none) */
	void *priv;          /* owned storage */
	uint32_t applied;    /* CDX_APPLIED_* bits: recommender features the server used */
	uint64_t seed;       /* the exploration seed used */
	size_t nparts;       /* multi-collection searches: per collection */
	struct cdx_result_part *parts;
};

#define CDX_APPLIED_FILTER         1u
#define CDX_APPLIED_EXCLUDE_PACKED 2u
#define CDX_APPLIED_CROWDING       4u
#define CDX_APPLIED_EXPLORE        8u
#define CDX_APPLIED_PARTS          16u

/* cdx_client_search runs one request (one or many query vectors or keys).
 * On success *rp is set and the caller takes ownership; free it with
 * cdx_result_free(). On failure *rp is NULL and err (may be NULL) says why. */
int cdx_client_search(
    cdx_client *c, const struct cdx_query *q, struct cdx_result **rp, struct cdx_client_error *err);
void cdx_result_free(struct cdx_result *r); /* NULL is a no-op */

/* cdx_client_health returns 0 if the server answers and serves >= 1 collection. */
int cdx_client_health(cdx_client *c, struct cdx_client_error *err);

/* cdx_client_info returns the server's collections as a malloc'd JSON text
 * (caller frees with free()). */
int cdx_client_info(cdx_client *c, const char *collection, char **json, struct cdx_client_error *err);

/* cdx_client_reload asks an admin listener to reload (collection NULL = all). */
int cdx_client_reload(cdx_client *c, const char *collection, struct cdx_client_error *err);

/* A takedown change (admin listener only): ids and keys to add to or
 * remove from a collection's blocklist. It applies from the next request
 * on and is kept next to the index (docs/recommenders.md, "Takedowns"). */
struct cdx_takedown {
	const char *collection;
	const int64_t *add_ids;
	size_t n_add_ids;
	const int64_t *remove_ids;
	size_t n_remove_ids;
	const char *const *add_keys;
	size_t n_add_keys;
	const char *const *remove_keys;
	size_t n_remove_keys;
};

struct cdx_takedown_result {
	size_t nids; /* the blocklist after the change */
	const int64_t *ids;
	size_t nkeys;
	const char *const *keys;
	uint64_t blocked_items; /* items of the served version it blocks */
	void *priv;             /* owned storage */
};

/* cdx_client_takedown applies t (an empty change just lists). On success
 * *rp (may be NULL) is set and the caller frees it with
 * cdx_takedown_result_free(). */
int cdx_client_takedown(cdx_client *c, const struct cdx_takedown *t, struct cdx_takedown_result **rp,
    struct cdx_client_error *err);
void cdx_takedown_result_free(struct cdx_takedown_result *r); /* NULL is a no-op */
/* cdx_client_drop asks an admin listener to stop serving collection, whose
 * CURRENT link must be gone already (a reload never drops a collection). */
int cdx_client_drop(cdx_client *c, const char *collection, struct cdx_client_error *err);

#ifdef __cplusplus
}
#endif
#endif
