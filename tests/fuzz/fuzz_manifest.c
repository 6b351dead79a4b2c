/*
 * fuzz_manifest.c — libFuzzer target: the text of a manifest.json -> the
 * manifest loader's parser. What it accepts must survive a round trip:
 * written back as JSON it parses again to the same fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shard/manifest.h"

#define CHECK(cond)                       \
	do {                              \
		if (!(cond))              \
			__builtin_trap(); \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cdx_manifest *m = NULL;
	if (cdx_manifest_parse(&m, (const char *) data, size, "fuzz/manifest.json") != CDX_OK) {
		CHECK(m == NULL);
		return 0;
	}
	CHECK(cdx_name_valid(m->collection));
	char *text = cdx_manifest_to_json(m);
	CHECK(text != NULL);
	struct cdx_manifest *again = NULL;
	CHECK(cdx_manifest_parse(&again, text, strlen(text), "fuzz/round-trip.json") == CDX_OK);
	CHECK(strcmp(again->collection, m->collection) == 0 && again->dim == m->dim
	    && again->metric == m->metric && again->nshards == m->nshards && again->items == m->items);
	for (uint32_t i = 0; i < m->nshards; i++)
		CHECK(again->shards[i].rows == m->shards[i].rows
		    && again->shards[i].xxh64 == m->shards[i].xxh64);
	cdx_manifest_free(again);
	free(text);
	cdx_manifest_free(m);
	return 0;
}
