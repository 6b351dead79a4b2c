/*
 * fuzz_request.c — libFuzzer target: wire bytes -> a validated search, as
 * the server's intake takes them. The bytes go through the request_id peek
 * (for messages that are not decoded), cdx__srv_decode_request (size and
 * count checks on the wire bytes, then the protobuf decoder through the
 * server's receive-budget allocator, with a budget of a few times the
 * input so that both decoding and refusal are reached) and, for a search,
 * the validation against a collection of dim 16 and the default limits
 * (then the recommender fields' checks, cdx__srv_check_rec).
 * Beyond the sanitizers it checks what the server relies on: an echoed id
 * and every error message are valid UTF-8 and bounded; a decoded request
 * holds no more keys and exclusions than the limits (the counts before
 * decoding cannot be bypassed); every byte charged to the budget comes
 * back, whether decoding succeeded or failed part-way; and a search that
 * passes validation is one the workers can run (k, batch, excludes within
 * the limits, a whole number of finite vectors of the collection's dim).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

static struct cdx_server_config cfg;
static struct cdx_manifest manifest;
static cdx_server *srv; /* only its receive budget is used */

#define CHECK(cond)                       \
	do {                              \
		if (!(cond))              \
			__builtin_trap(); \
	} while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	cdx_server_config_init(&cfg);
	snprintf(manifest.collection, sizeof(manifest.collection), "tracks");
	snprintf(manifest.version, sizeof(manifest.version), "v1");
	snprintf(manifest.model_version, sizeof(manifest.model_version), "model-a");
	manifest.dim = 16;
	manifest.metric = CDX_METRIC_L2;
	srv = calloc(1, sizeof(*srv));
	if (srv == NULL)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char id[128];
	cdx__srv_peek_request_id(data, size, id, sizeof(id));
	CHECK(strlen(id) < sizeof(id) && cdx_utf8_valid(id, strlen(id)));

	struct srv_ctx x = { .s = srv };
	cdx__srv_allocator_init(&x);
	atomic_store(&srv->rx_used, 0);
	srv->rx_budget = 4 * size + 1024;
	char why[256];
	Candex__V1__Request *req = NULL;
	int drc = cdx__srv_decode_request(&cfg, &x.alloc, data, size, &req, why, sizeof(why));
	if (drc != CDX_OK) {
		CHECK(req == NULL && (drc == CDX_ELIMIT || drc == CDX_EPROTO));
		CHECK(why[0] != '\0' && strlen(why) < sizeof(why));
		/* a decode that failed part-way gave back all it took */
		CHECK(x.reserved == 0 && atomic_load(&srv->rx_used) == 0);
		return 0;
	}
	CHECK(req != NULL && !x.over_budget && x.reserved == atomic_load(&srv->rx_used));
	CHECK(x.reserved <= srv->rx_budget);
	if (req->request_id != NULL) {
		cdx_utf8_sanitize(req->request_id); /* as send_response does */
		CHECK(cdx_utf8_valid(req->request_id, strlen(req->request_id)));
	}
	const Candex__V1__SearchRequest *sr = req->search;
	if (req->body_case == CANDEX__V1__REQUEST__BODY_SEARCH && sr != NULL) {
		CHECK(sr->n_query_keys <= cfg.max_batch);
		CHECK(sr->n_exclude_ids + sr->n_exclude_keys <= cfg.max_excludes);
		char msg[1024];
		int rc = cdx__srv_validate_search(sr, &manifest, &cfg, msg, sizeof(msg));
		if (rc == CDX_OK) /* the recommender fields, as check_search does next */
			rc = cdx__srv_check_rec(&cfg, sr, msg, sizeof(msg));
		cdx_utf8_sanitize(msg); /* as reply_error does */
		CHECK(cdx_utf8_valid(msg, strlen(msg)));
		if (rc == CDX_OK) {
			size_t nq = sr->n_vectors > 0 ? sr->n_vectors / manifest.dim : sr->n_query_keys;
			CHECK(sr->k >= 1 && sr->k <= cfg.max_k);
			CHECK(nq >= 1 && nq <= cfg.max_batch);
			CHECK(sr->n_vectors == 0 || sr->dim == manifest.dim);
			CHECK(sr->n_vectors % manifest.dim == 0);
			CHECK((sr->n_vectors == 0) != (sr->n_query_keys == 0));
			CHECK(sr->n_exclude_ids + sr->n_exclude_keys <= cfg.max_excludes);
			CHECK(cdx_find_nonfinite(sr->vectors, sr->n_vectors) < 0);
			CHECK(isfinite(sr->refine_factor) && sr->refine_factor >= 0);
			CHECK(
			    isfinite(sr->recall_target) && sr->recall_target >= 0 && sr->recall_target <= 1);
			for (size_t i = 0; i < sr->n_query_keys; i++)
				CHECK(sr->query_keys[i] != NULL && sr->query_keys[i][0] != '\0');
		} else {
			CHECK(rc > 0 && msg[0] != '\0');
		}
	}
	candex__v1__request__free_unpacked(req, &x.alloc);
	CHECK(x.reserved == 0 && atomic_load(&srv->rx_used) == 0);
	return 0;
}
