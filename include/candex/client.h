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

struct cdx_query {
	const char *collection;
	const float *vectors; /* nvectors x dim, row-major */
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
};

struct cdx_client_hit {
	int64_t id;
	const char *key;
	float score;
};

struct cdx_query_result {
	size_t nhits;
	struct cdx_client_hit *hits;
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
};

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

/* cdx_client_drop asks an admin listener to stop serving collection, whose
 * CURRENT link must be gone already (a reload never drops a collection). */
int cdx_client_drop(cdx_client *c, const char *collection, struct cdx_client_error *err);

#ifdef __cplusplus
}
#endif
#endif
