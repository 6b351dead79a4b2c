/*
 * recall_backend.c — what `candex recall` evaluates: a collection searched in
 * process, or a live server through the client library.
 */
#include <stdlib.h>
#include <string.h>

#include <candex/client.h>

#include "recall/recall.h"
#include "search/search.h"

static int
collection_search(void *ctx, const float *queries, size_t nq, uint32_t k, uint32_t nprobe,
    float refine_factor, int64_t *ids)
{
	const cdx_collection *c = ctx;
	struct cdx_hit *hits = malloc(nq * k * sizeof(*hits));
	if (hits == NULL)
		return cdx_error(CDX_ENOMEM, "hits for %zu queries", nq);
	struct cdx_search_params p
	    = { .k = k, .nprobe = nprobe, .refine_factor = refine_factor, .parallel = 0 };
	int rc = cdx_collection_search(c, &p, queries, nq, hits);
	if (rc == CDX_OK)
		for (size_t i = 0; i < nq * k; i++)
			ids[i] = hits[i].id;
	free(hits);
	return rc;
}

void
cdx_recall_backend_collection(struct cdx_recall_backend *be, const struct cdx_collection *c)
{
	memset(be, 0, sizeof(*be));
	be->ctx = (void *) c;
	be->search = collection_search;
	be->batch = 64;
}

struct client_ctx {
	cdx_client *cl;
	const char *collection;
	uint32_t dim;
};

static int
client_search(void *ctx, const float *queries, size_t nq, uint32_t k, uint32_t nprobe, float refine_factor,
    int64_t *ids)
{
	struct client_ctx *cc = ctx;
	struct cdx_query q = { .collection = cc->collection,
		.vectors = queries,
		.nvectors = nq,
		.dim = cc->dim,
		.k = k,
		.nprobe = nprobe,
		.refine_factor = refine_factor };
	struct cdx_result *r = NULL;
	struct cdx_client_error err = { 0 };
	int rc = cdx_client_search(cc->cl, &q, &r, &err);
	if (rc != CDX_OK)
		return cdx_error(rc, "server search (collection %s, nprobe %u, k %u): %s", cc->collection,
		    nprobe, k, err.message[0] ? err.message : cdx_strerror(rc));
	if (r->nqueries != nq) {
		size_t got = r->nqueries;
		cdx_result_free(r);
		return cdx_error(CDX_EPROTO, "server answered %zu results for %zu queries", got, nq);
	}
	for (size_t i = 0; i < nq; i++) {
		const struct cdx_query_result *qr = &r->queries[i];
		for (uint32_t j = 0; j < k; j++)
			ids[i * k + j] = j < qr->nhits ? qr->hits[j].id : -1;
	}
	cdx_result_free(r);
	return CDX_OK;
}

int
cdx_recall_backend_client(struct cdx_recall_backend *be, struct cdx_client *cl, const char *collection,
    uint32_t dim, uint32_t batch)
{
	memset(be, 0, sizeof(*be));
	struct client_ctx *cc = calloc(1, sizeof(*cc));
	if (cc == NULL)
		return cdx_error(CDX_ENOMEM, "client backend");
	cc->cl = cl;
	cc->collection = collection;
	cc->dim = dim;
	be->ctx = cc;
	be->search = client_search;
	be->batch = batch ? batch : 64;
	return CDX_OK;
}

void
cdx_recall_backend_fini(struct cdx_recall_backend *be)
{
	if (be == NULL)
		return;
	if (be->search == client_search)
		free(be->ctx);
	memset(be, 0, sizeof(*be));
}
