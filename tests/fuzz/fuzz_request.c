/*
 * fuzz_request.c — libFuzzer target: wire bytes -> a validated search, as
 * the server takes them. The bytes go through the request_id peek (for
 * messages that are not decoded), the protobuf decoder and, for a search,
 * the validation against a collection of dim 16 and the default limits.
 * Beyond the sanitizers it checks what the server relies on: an echoed id
 * and every error message are valid UTF-8 and bounded, and a search that
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
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char id[128];
	cdx__srv_peek_request_id(data, size, id, sizeof(id));
	CHECK(strlen(id) < sizeof(id) && cdx_utf8_valid(id, strlen(id)));

	Candex__V1__Request *req = candex__v1__request__unpack(NULL, size, data);
	if (req == NULL)
		return 0;
	if (req->request_id != NULL) {
		cdx_utf8_sanitize(req->request_id); /* as send_response does */
		CHECK(cdx_utf8_valid(req->request_id, strlen(req->request_id)));
	}
	const Candex__V1__SearchRequest *sr = req->search;
	if (req->body_case == CANDEX__V1__REQUEST__BODY_SEARCH && sr != NULL) {
		char msg[1024];
		int rc = cdx__srv_validate_search(sr, &manifest, &cfg, msg, sizeof(msg));
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
	candex__v1__request__free_unpacked(req, NULL);
	return 0;
}
