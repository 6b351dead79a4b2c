/*
 * prune.c — a published version drops the takedowns of items it no longer
 * holds (shard/takedown.h): the builder's input dropped them, so they can
 * never be returned again, and a takedown lives only as long as its item.
 */
#include <stdlib.h>
#include <string.h>

#include "builder/build.h"
#include "shard/takedown.h"

struct prune {
	const struct cdx_takedowns *before; /* the list when the scan started */
	uint8_t *id_found, *key_found;      /* per entry of before */
};

/* An entry added while the version was scanned (by a server) is kept. */
static int
keep_id(void *arg, int64_t id)
{
	const struct prune *pr = arg;
	const int64_t *at = pr->before->nids
	    ? bsearch(&id, pr->before->ids, pr->before->nids, sizeof(int64_t), cdx_cmp_i64)
	    : NULL;
	return at == NULL || pr->id_found[at - pr->before->ids];
}

static int
keep_key(void *arg, const char *key)
{
	const struct prune *pr = arg;
	char *const *at = pr->before->nkeys
	    ? bsearch(&key, pr->before->keys, pr->before->nkeys, sizeof(char *), cdx_cmp_str)
	    : NULL;
	return at == NULL || pr->key_found[at - pr->before->keys];
}

/* find marks which entries the new version holds. */
static int
find(const struct cdx_build_plan *p, struct prune *pr)
{
	const struct cdx_takedowns *t = pr->before;
	int64_t *ids = NULL;
	int rc = CDX_OK;
	if (t->nids > 0) {
		uint64_t nids;
		if (p->ids[0] && (rc = cdx_ids_load(p->ids, p->rows, &ids, &nids)) != CDX_OK)
			return rc;
		for (uint64_t r = 0; r < p->rows; r++) {
			int64_t id = ids ? ids[r] : (int64_t) r;
			const int64_t *at = bsearch(&id, t->ids, t->nids, sizeof(int64_t), cdx_cmp_i64);
			if (at != NULL)
				pr->id_found[at - t->ids] = 1;
		}
		free(ids);
	}
	if (t->nkeys == 0 || p->keys[0] == 0)
		return CDX_OK;
	cdx_keys_reader *kr = NULL;
	if ((rc = cdx_keys_reader_open(&kr, p->keys)) != CDX_OK)
		return rc;
	char buf[CDX_INPUT_MAX_KEY_BYTES + 1];
	const char *k = buf;
	for (uint64_t r = 0; rc == CDX_OK && r < p->rows; r++) {
		const char *key;
		size_t len;
		if ((rc = cdx_keys_reader_next(kr, &key, &len)) != CDX_OK || len > CDX_INPUT_MAX_KEY_BYTES)
			break;
		memcpy(buf, key, len);
		buf[len] = '\0';
		char *const *at = bsearch(&k, t->keys, t->nkeys, sizeof(char *), cdx_cmp_str);
		if (at != NULL)
			pr->key_found[at - t->keys] = 1;
	}
	cdx_keys_reader_close(kr);
	return rc;
}

int
cdx_build_prune_takedowns(const struct cdx_build_plan *p, const char *coll_dir)
{
	struct cdx_takedowns before;
	int rc = cdx_takedowns_load(coll_dir, &before);
	if (rc != CDX_OK || before.nids + before.nkeys == 0) {
		cdx_takedowns_fini(&before);
		return rc;
	}
	struct prune pr = { &before, calloc(before.nids + 1, 1), calloc(before.nkeys + 1, 1) };
	if (pr.id_found == NULL || pr.key_found == NULL)
		rc = cdx_error(CDX_ENOMEM, "takedowns");
	if (rc == CDX_OK)
		rc = find(p, &pr);
	size_t dropped = 0;
	struct cdx_takedown_change ch = { .keep_id = keep_id, .keep_key = keep_key, .ctx = &pr };
	if (rc == CDX_OK)
		rc = cdx_takedowns_update(coll_dir, &ch, NULL, &dropped);
	if (rc == CDX_OK && dropped > 0)
		cdx_info("BLD-TAKEDOWN", "%s: %zu takedown(s) dropped: the input no longer has their items",
		    coll_dir, dropped);
	free(pr.id_found);
	free(pr.key_found);
	cdx_takedowns_fini(&before);
	return rc;
}
