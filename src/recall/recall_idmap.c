/*
 * recall_idmap.c — external id -> base row, for judging hits by base row.
 * (The ids file itself is read by src/input: cdx_ids_load.)
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "recall/recall.h"

/* --- id map ------------------------------------------------------------- */

struct idrow {
	int64_t id, row;
};

static int
idrow_cmp(const void *a, const void *b)
{
	const struct idrow *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

int
cdx_idmap_init_ids(struct cdx_idmap *m, const int64_t *ids, size_t n)
{
	memset(m, 0, sizeof(*m));
	struct idrow *p = malloc((n ? n : 1) * sizeof(*p));
	m->sorted_ids = malloc((n ? n : 1) * sizeof(int64_t));
	m->rows = malloc((n ? n : 1) * sizeof(int64_t));
	if (p == NULL || m->sorted_ids == NULL || m->rows == NULL) {
		free(p);
		cdx_idmap_fini(m);
		return cdx_error(CDX_ENOMEM, "id map of %zu ids", n);
	}
	for (size_t i = 0; i < n; i++) {
		p[i].id = ids[i];
		p[i].row = (int64_t) i;
	}
	qsort(p, n, sizeof(*p), idrow_cmp);
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && p[i].id == p[i - 1].id) {
			int64_t a = p[i - 1].row, b = p[i].row;
			int64_t id = p[i].id;
			free(p);
			cdx_idmap_fini(m);
			return cdx_error(CDX_EDUP, "id %" PRId64 " appears at rows %" PRId64 " and %" PRId64,
			    id, a < b ? a : b, a < b ? b : a);
		}
		m->sorted_ids[i] = p[i].id;
		m->rows[i] = p[i].row;
	}
	free(p);
	m->n = n;
	return CDX_OK;
}

void
cdx_idmap_identity(struct cdx_idmap *m, size_t n)
{
	memset(m, 0, sizeof(*m));
	m->n = n;
}

int64_t
cdx_idmap_row(const struct cdx_idmap *m, int64_t id)
{
	if (m == NULL || m->sorted_ids == NULL) {
		if (m != NULL && (id < 0 || (uint64_t) id >= m->n))
			return -1;
		return id;
	}
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->sorted_ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < m->n && m->sorted_ids[lo] == id ? m->rows[lo] : -1;
}

void
cdx_idmap_fini(struct cdx_idmap *m)
{
	if (m == NULL)
		return;
	free(m->sorted_ids);
	free(m->rows);
	memset(m, 0, sizeof(*m));
}
