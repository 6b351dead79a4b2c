/*
 * tune_check.c — the self-tuning build's check: at publish, the queries the
 * tuner did not choose with are searched through the version about to be
 * published, as the server loads it; and, for distributed builds, the
 * check's queries and truth travel through the work directory.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder/tune.h"
#include "search/points.h"
#include "search/search.h"

#define Z95 1.645 /* one-sided 95% */

void
cdx_tune_check_free(struct cdx_tune_check *c)
{
	if (c == NULL)
		return;
	free(c->queries);
	free(c->self);
	cdx_truth_fini(&c->truth);
	free(c);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

/* check_query returns query qi's recall at k from the returned rows, judged
 * by true distance (read back from the input) as recall_metrics.c does. */
static double
check_query(const struct cdx_tune_check *chk, cdx_input *in, size_t qi, const float *qn, const int64_t *rows,
    uint32_t k, uint64_t *sorted, float *vecs)
{
	const int64_t *truth = chk->truth.rows + qi * chk->truth.k;
	uint32_t r = 0;
	while (r < k && r < chk->truth.k && truth[r] >= 0)
		r++;
	if (r == 0)
		return NAN;
	size_t n = 0;
	for (uint32_t j = 0; j < k; j++)
		if (rows[j] >= 0)
			sorted[n++] = (uint64_t) rows[j];
	qsort(sorted, n, sizeof(uint64_t), cmp_u64);
	size_t u = 0;
	for (size_t j = 0; j < n; j++)
		if (u == 0 || sorted[j] != sorted[u - 1])
			sorted[u++] = sorted[j];
	if (u > 0 && cdx_input_read_rows(in, sorted, u, vecs) != CDX_OK)
		return NAN;
	if (chk->metric == CDX_METRIC_COS)
		cdx_normalize_rows(vecs, u, chk->dim);
	struct cdx_recall_space s = { chk->metric, chk->dim, u, vecs };
	double thr = (double) chk->truth.dist[qi * chk->truth.k + r - 1] + CDX_RECALL_EPSILON_DEFAULT;
	uint32_t found = 0;
	for (size_t j = 0; j < u; j++)
		found += (double) (float) cdx_recall_distance(&s, qn, (int64_t) j) <= thr;
	return (double) CDX_MIN(found, r) / r;
}

int
cdx_tune_check_version(const struct cdx_tune_check *chk, const char *dir, const char *input, int input_format,
    uint32_t dim, const int64_t *ids, uint64_t rows, struct cdx_manifest *m)
{
	if (chk == NULL || chk->nq == 0 || m->ntuned_k == 0)
		return CDX_OK;
	cdx_collection *c = NULL;
	cdx_input *in = NULL;
	struct cdx_idmap map;
	memset(&map, 0, sizeof(map));
	uint32_t kmax = m->tuned_k[m->ntuned_k - 1];
	int64_t *hit_ids = malloc(kmax * sizeof(int64_t)), *hit_rows = malloc(kmax * sizeof(int64_t));
	struct cdx_hit *hits = malloc(kmax * sizeof(*hits));
	uint64_t *sorted = malloc(kmax * sizeof(uint64_t));
	float *vecs = malloc((size_t) kmax * chk->dim * sizeof(float)),
	      *qn = malloc(chk->dim * sizeof(float));
	double *per = malloc(chk->nq * sizeof(double));
	int rc = CDX_OK;
	if (hit_ids == NULL || hit_rows == NULL || hits == NULL || sorted == NULL || vecs == NULL
	    || qn == NULL || per == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning check");
		goto done;
	}
	if ((rc = cdx_collection_load(&c, dir)) != CDX_OK)
		goto done;
	if ((rc = cdx_input_open(&in, input, dim, cdx_input_format_family(input_format))) != CDX_OK)
		goto done;
	if (ids != NULL)
		rc = cdx_idmap_init_ids(&map, ids, rows);
	else
		cdx_idmap_identity(&map, rows);
	if (rc != CDX_OK)
		goto done;
	for (uint32_t ki = 0; ki < m->ntuned_k && rc == CDX_OK; ki++) {
		uint32_t k = m->tuned_k[ki];
		struct cdx_point_choice pc;
		cdx_points_choose(m, k, 0, 0, 0, 0, &pc);
		size_t nq = 0;
		for (size_t i = 0; i < chk->nq && rc == CDX_OK; i++) {
			const float *q = chk->queries + i * chk->dim;
			struct cdx_search_params sp = { .k = k };
			if (chk->self != NULL && chk->self[i] != CDX_TUNE_NO_SELF) {
				sp.exclude_ids = &chk->self[i];
				sp.n_exclude_ids = 1;
			}
			if ((rc = cdx_collection_search(c, &sp, q, 1, hits)) != CDX_OK)
				break;
			for (uint32_t j = 0; j < k; j++)
				hit_rows[j] = hits[j].id < 0 ? -1 : cdx_idmap_row(&map, hits[j].id);
			memcpy(qn, q, chk->dim * sizeof(float));
			if (chk->metric == CDX_METRIC_COS)
				cdx_normalize_rows(qn, 1, chk->dim);
			double rq = check_query(chk, in, i, qn, hit_rows, k, sorted, vecs);
			if (!isnan(rq))
				per[nq++] = rq;
		}
		if (rc != CDX_OK || nq == 0)
			break;
		double sum = 0, s2 = 0;
		for (size_t i = 0; i < nq; i++)
			sum += per[i];
		double mean = sum / (double) nq;
		for (size_t i = 0; i < nq; i++)
			s2 += (per[i] - mean) * (per[i] - mean);
		double se = nq > 1 ? sqrt(s2 / (double) (nq - 1) / (double) nq) : 0;
		struct cdx_operating_point *p = (struct cdx_operating_point *) pc.point;
		if (p != NULL) /* chosen among m's own points */
			p->check_recall = mean;
		cdx_info("BLD-CHECK",
		    "k %u: %u-recall@%u %.4f +- %.4f on %zu queries the tuner did not see (chosen at %.4f on "
		    "its own; target %.3g)",
		    k, k, k, mean, se, nq, p ? p->recall : NAN, m->default_recall_target);
		if (mean + Z95 * se < m->default_recall_target)
			cdx_warn("BLD-CHECK",
			    "k %u: recall on unseen queries is below the target with 95%% confidence: the "
			    "tuning "
			    "queries may not be like the traffic (--tune-queries)",
			    k);
	}
done:
	cdx_idmap_fini(&map);
	cdx_input_close(in);
	cdx_collection_unref(c);
	free(hit_ids);
	free(hit_rows);
	free(hits);
	free(sorted);
	free(vecs);
	free(qn);
	free(per);
	return rc;
}

/* --- the check across processes (distributed builds) ------------------------- */

#define CHECK_QUERIES "tune-check-queries.fvecs"
#define CHECK_TRUTH   "tune-check-truth.cdxgt"
#define CHECK_SELF    "tune-check-self.i64"

int
cdx_tune_check_save(const struct cdx_tune_check *c, const char *workdir)
{
	char path[PATH_MAX];
	size_t row = 4 + (size_t) c->dim * 4;
	uint8_t *buf = malloc(c->nq * row + 1);
	if (buf == NULL)
		return cdx_error(CDX_ENOMEM, "check queries");
	for (size_t i = 0; i < c->nq; i++) {
		cdx_put_le32(buf + i * row, c->dim);
		memcpy(
		    buf + i * row + 4, c->queries + i * c->dim, (size_t) c->dim * 4); /* little-endian host */
	}
	int rc = cdx_pathf(path, sizeof(path), "%s/%s", workdir, CHECK_QUERIES);
	if (rc == CDX_OK)
		rc = cdx_write_file_atomic(path, buf, c->nq * row);
	free(buf);
	if (rc == CDX_OK && (rc = cdx_pathf(path, sizeof(path), "%s/%s", workdir, CHECK_TRUTH)) == CDX_OK)
		rc = cdx_truth_save(&c->truth, path);
	if (rc == CDX_OK && (rc = cdx_pathf(path, sizeof(path), "%s/%s", workdir, CHECK_SELF)) == CDX_OK) {
		if (c->self != NULL)
			rc = cdx_write_file_atomic(path, c->self, c->nq * sizeof(int64_t));
		else
			unlink(path);
	}
	return rc;
}

int
cdx_tune_check_load(struct cdx_tune_check **cp, const char *workdir, int metric, uint32_t dim)
{
	*cp = NULL;
	char path[PATH_MAX];
	int rc = cdx_pathf(path, sizeof(path), "%s/%s", workdir, CHECK_TRUTH);
	if (rc != CDX_OK)
		return rc;
	if (access(path, F_OK) != 0)
		return CDX_OK; /* not tuned: nothing to check */
	struct cdx_tune_check *c = calloc(1, sizeof(*c));
	cdx_input *in = NULL;
	char *self = NULL;
	size_t self_len = 0;
	if (c == NULL)
		return cdx_error(CDX_ENOMEM, "check");
	c->metric = metric;
	c->dim = dim;
	if ((rc = cdx_truth_load(&c->truth, path)) != CDX_OK)
		goto fail;
	if ((rc = cdx_pathf(path, sizeof(path), "%s/%s", workdir, CHECK_QUERIES)) != CDX_OK
	    || (rc = cdx_input_open(&in, path, dim, CDX_INPUT_FVECS)) != CDX_OK)
		goto fail;
	c->nq = (size_t) cdx_input_rows(in);
	if (c->nq != c->truth.nq) {
		rc = cdx_error(CDX_ECORRUPT, "%s: %zu queries, the truth has %zu", path, c->nq, c->truth.nq);
		goto fail;
	}
	if ((c->queries = malloc((c->nq ? c->nq : 1) * dim * sizeof(float))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "check queries");
		goto fail;
	}
	if ((rc = cdx_input_read(in, 0, c->nq, c->queries)) != CDX_OK)
		goto fail;
	if ((rc = cdx_pathf(path, sizeof(path), "%s/%s", workdir, CHECK_SELF)) != CDX_OK)
		goto fail;
	if (access(path, F_OK) == 0) {
		if ((rc = cdx_read_file(path, &self, &self_len)) != CDX_OK)
			goto fail;
		if (self_len != c->nq * sizeof(int64_t)) {
			rc = cdx_error(CDX_ECORRUPT, "%s: %zu bytes for %zu queries", path, self_len, c->nq);
			goto fail;
		}
		c->self = (int64_t *) (void *) self;
		self = NULL;
	}
	cdx_input_close(in);
	*cp = c;
	return CDX_OK;
fail:
	free(self);
	cdx_input_close(in);
	cdx_tune_check_free(c);
	return rc;
}
