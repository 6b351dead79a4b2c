/*
 * recall_truth.c — exact ground truth with Faiss flat indexes, from .ivecs
 * rows, and its on-disk cache.
 *
 * Cache file (little-endian): "CDXTRUTH", uint32 format 1, uint32 metric,
 * uint64 nq, uint32 k, uint32 has_dist, int64 rows[nq*k], float dist[nq*k]
 * (if has_dist), uint64 xxh64 of all preceding bytes.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>

#include "recall/recall.h"
#include "shard/shard.h"
#include "faissx/error.h"

#define TRUTH_MAGIC  "CDXTRUTH"
#define TRUTH_FORMAT 1
#define TRUTH_BATCH  1024
/* Faiss ranks by float distances computed as |x|^2 + |q|^2 - 2<x,q>, whose
 * rounding can swap near-equal neighbours across the k-th place; fetching a
 * few more and re-ranking them in double puts the boundary right. */
#define TRUTH_MARGIN 16

struct cand {
	double d;
	int64_t row;
};

static int
cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->d != y->d)
		return x->d < y->d ? -1 : 1;
	return x->row < y->row ? -1 : x->row > y->row;
}

void
cdx_truth_fini(struct cdx_truth *t)
{
	if (t == NULL)
		return;
	free(t->rows);
	free(t->dist);
	memset(t, 0, sizeof(*t));
}

static int
truth_alloc(struct cdx_truth *t, size_t nq, uint32_t k, int metric, int with_dist)
{
	memset(t, 0, sizeof(*t));
	t->nq = nq;
	t->k = k;
	t->metric = metric;
	size_t cells = nq * (size_t) k > 0 ? nq * (size_t) k : 1;
	t->rows = malloc(cells * sizeof(int64_t));
	if (with_dist)
		t->dist = malloc(cells * sizeof(float));
	if (t->rows == NULL || (with_dist && t->dist == NULL)) {
		cdx_truth_fini(t);
		return cdx_error(CDX_ENOMEM, "ground truth of %zu x %u", nq, k);
	}
	return CDX_OK;
}

int
cdx_truth_compute(struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries, size_t nq,
    uint32_t k, void (*progress)(void *arg, size_t done, size_t total), void *arg)
{
	memset(t, 0, sizeof(*t));
	if (s->base == NULL || s->nb == 0)
		return cdx_error(CDX_EEMPTY, "ground truth needs base vectors");
	if (k == 0)
		return cdx_error(CDX_EINVAL, "ground truth with k = 0");
	int rc = truth_alloc(t, nq, k, s->metric, 1);
	if (rc != 0)
		return rc;

	FaissIndexFlat *flat = NULL;
	int frc = s->metric == CDX_METRIC_L2 ? faiss_IndexFlatL2_new_with(&flat, (idx_t) s->dim)
	                                     : faiss_IndexFlatIP_new_with(&flat, (idx_t) s->dim);
	if (frc != 0) {
		rc = cdx_error_faiss("creating the flat index for ground truth");
		goto fail;
	}
	if (faiss_Index_add(flat, (idx_t) s->nb, s->base) != 0) {
		rc = cdx_error_faiss("adding base vectors to the flat index");
		goto fail;
	}

	size_t kk = (size_t) k + TRUTH_MARGIN;
	if (kk > s->nb)
		kk = s->nb;
	size_t bmax = nq < TRUTH_BATCH ? nq : TRUTH_BATCH;
	float *d = malloc((bmax ? bmax : 1) * kk * sizeof(float));
	idx_t *lab = malloc((bmax ? bmax : 1) * kk * sizeof(idx_t));
	struct cand *c = malloc(kk * sizeof(*c));
	if (d == NULL || lab == NULL || c == NULL) {
		free(d);
		free(lab);
		free(c);
		rc = cdx_error(CDX_ENOMEM, "ground truth buffers");
		goto fail;
	}
	for (size_t b0 = 0; b0 < nq; b0 += TRUTH_BATCH) {
		size_t bn = nq - b0 < TRUTH_BATCH ? nq - b0 : TRUTH_BATCH;
		if (faiss_Index_search(flat, (idx_t) bn, queries + b0 * s->dim, (idx_t) kk, d, lab) != 0) {
			rc = cdx_error_faiss("exact search for ground truth");
			break;
		}
		for (size_t i = 0; i < bn; i++) {
			const float *q = queries + (b0 + i) * s->dim;
			size_t m = 0;
			for (size_t j = 0; j < kk; j++) {
				if (lab[i * kk + j] < 0)
					continue;
				c[m].row = lab[i * kk + j];
				c[m].d = cdx_recall_distance(s, q, c[m].row);
				m++;
			}
			qsort(c, m, sizeof(*c), cand_cmp);
			for (size_t j = 0; j < k; j++) {
				t->rows[(b0 + i) * k + j] = j < m ? c[j].row : -1;
				t->dist[(b0 + i) * k + j] = j < m ? (float) c[j].d : INFINITY;
			}
		}
		if (progress != NULL)
			progress(arg, b0 + bn, nq);
	}
	free(d);
	free(lab);
	free(c);
	faiss_Index_free(flat);
	if (rc != 0)
		cdx_truth_fini(t);
	return rc;
fail:
	faiss_Index_free(flat);
	cdx_truth_fini(t);
	return rc;
}

int
cdx_recall_exact_qps(const struct cdx_recall_space *s, const float *queries, size_t nq, uint32_t k,
    double min_seconds, double *qps)
{
	*qps = 0;
	if (s->base == NULL || s->nb == 0 || nq == 0)
		return cdx_error(CDX_EEMPTY, "exact search needs base vectors and queries");
	FaissIndexFlat *flat = NULL;
	int frc = s->metric == CDX_METRIC_L2 ? faiss_IndexFlatL2_new_with(&flat, (idx_t) s->dim)
	                                     : faiss_IndexFlatIP_new_with(&flat, (idx_t) s->dim);
	if (frc != 0 || faiss_Index_add(flat, (idx_t) s->nb, s->base) != 0) {
		int rc = cdx_error_faiss("flat index for the exact-search baseline");
		faiss_Index_free(flat);
		return rc;
	}
	size_t kk = k < s->nb ? k : s->nb, bmax = nq < TRUTH_BATCH ? nq : TRUTH_BATCH;
	float *d = malloc(bmax * kk * sizeof(float));
	idx_t *lab = malloc(bmax * kk * sizeof(idx_t));
	int rc = d && lab ? CDX_OK : cdx_error(CDX_ENOMEM, "exact-search baseline");
	/* as the sweep's QPS pass: at least two passes, until min_seconds, and
	 * the fastest counts */
	uint64_t t0 = cdx_now_us();
	double best = 0;
	for (int pass = 0; rc == CDX_OK; pass++) {
		uint64_t p0 = cdx_now_us();
		for (size_t b0 = 0; b0 < nq && rc == CDX_OK; b0 += TRUTH_BATCH) {
			size_t bn = nq - b0 < TRUTH_BATCH ? nq - b0 : TRUTH_BATCH;
			if (faiss_Index_search(flat, (idx_t) bn, queries + b0 * s->dim, (idx_t) kk, d, lab)
			    != 0)
				rc = cdx_error_faiss("exact-search baseline");
		}
		double secs = (double) (cdx_now_us() - p0) / 1e6;
		double q = secs > 0 ? (double) nq / secs : INFINITY;
		if (q > best)
			best = q;
		if (pass >= 1 && (double) (cdx_now_us() - t0) / 1e6 >= min_seconds)
			break;
	}
	if (rc == CDX_OK)
		*qps = best;
	free(d);
	free(lab);
	faiss_Index_free(flat);
	return rc;
}

int
cdx_truth_from_rows(struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries, size_t nq,
    const int32_t *gt, uint32_t gt_k, uint32_t k)
{
	memset(t, 0, sizeof(*t));
	if (gt_k < k)
		return cdx_error(
		    CDX_EINVAL, "ground-truth rows hold %u neighbours, fewer than k = %u", gt_k, k);
	int with_dist = s != NULL && s->base != NULL;
	int rc = truth_alloc(t, nq, k, s ? s->metric : 0, with_dist);
	if (rc != 0)
		return rc;
	struct cand *c = malloc((k ? k : 1) * sizeof(*c));
	if (c == NULL) {
		cdx_truth_fini(t);
		return cdx_error(CDX_ENOMEM, "ground truth");
	}
	for (size_t i = 0; i < nq; i++) {
		for (uint32_t j = 0; j < k; j++) {
			int32_t row = gt[i * gt_k + j];
			if (row < 0 || (s != NULL && s->nb > 0 && (uint64_t) row >= s->nb)) {
				free(c);
				cdx_truth_fini(t);
				return cdx_error(CDX_ECORRUPT,
				    "ground truth row %zu, neighbour %u: base row %d is outside the %zu base "
				    "vectors",
				    i, j, row, s ? s->nb : 0);
			}
			t->rows[i * k + j] = row;
		}
		if (!with_dist)
			continue;
		/* the file's order came from another computation (maybe float64):
		 * judge by our own distances, as for hits */
		const float *q = queries + i * s->dim;
		for (uint32_t j = 0; j < k; j++) {
			c[j].row = t->rows[i * k + j];
			c[j].d = cdx_recall_distance(s, q, c[j].row);
		}
		qsort(c, k, sizeof(c[0]), cand_cmp);
		for (uint32_t j = 0; j < k; j++) {
			t->rows[i * k + j] = c[j].row;
			t->dist[i * k + j] = (float) c[j].d;
		}
	}
	free(c);
	return CDX_OK;
}

uint64_t
cdx_truth_key(const struct cdx_recall_space *s, const float *queries, size_t nq, uint32_t k,
    const void *extra, size_t extra_len)
{
	cdx_xxh64_state st;
	cdx_xxh64_init(&st, 0);
	static const char tag[] = "candex-truth-v1";
	uint64_t hdr[5] = { (uint64_t) s->metric, s->dim, s->nb, nq, k };
	cdx_xxh64_update(&st, tag, sizeof(tag));
	cdx_xxh64_update(&st, hdr, sizeof(hdr));
	if (s->base != NULL)
		cdx_xxh64_update(&st, s->base, s->nb * s->dim * sizeof(float));
	cdx_xxh64_update(&st, queries, nq * s->dim * sizeof(float));
	if (extra != NULL)
		cdx_xxh64_update(&st, extra, extra_len);
	return cdx_xxh64_digest(&st);
}

void
cdx_truth_cache_path(char *out, size_t outlen, const char *dir, uint64_t key)
{
	snprintf(out, outlen, "%s/truth-%016" PRIx64 ".cdxgt", dir, key);
}

int
cdx_truth_save(const struct cdx_truth *t, const char *path)
{
	cdx_buf b = { 0 };
	uint32_t fmt = TRUTH_FORMAT, metric = (uint32_t) t->metric, has = t->dist != NULL;
	uint64_t nq = t->nq;
	int rc = cdx_buf_append(&b, TRUTH_MAGIC, 8);
	rc = rc ? rc : cdx_buf_append(&b, &fmt, 4);
	rc = rc ? rc : cdx_buf_append(&b, &metric, 4);
	rc = rc ? rc : cdx_buf_append(&b, &nq, 8);
	rc = rc ? rc : cdx_buf_append(&b, &t->k, 4);
	rc = rc ? rc : cdx_buf_append(&b, &has, 4);
	rc = rc ? rc : cdx_buf_append(&b, t->rows, t->nq * t->k * sizeof(int64_t));
	if (has)
		rc = rc ? rc : cdx_buf_append(&b, t->dist, t->nq * t->k * sizeof(float));
	if (rc == 0) {
		uint64_t h = cdx_xxh64(b.data, b.len, 0);
		rc = cdx_buf_append(&b, &h, 8);
	}
	if (rc == 0)
		rc = cdx_write_file_atomic(path, b.data, b.len);
	else
		rc = cdx_error(CDX_ENOMEM, "%s: encoding ground truth", path);
	cdx_buf_fini(&b);
	return rc;
}

int
cdx_truth_load(struct cdx_truth *t, const char *path)
{
	memset(t, 0, sizeof(*t));
	char *data;
	size_t len;
	FILE *probe = fopen(path, "rb");
	if (probe == NULL)
		return cdx_error(CDX_ENOTFOUND, "%s: no cached ground truth", path);
	fclose(probe);
	int rc = cdx_read_file(path, &data, &len);
	if (rc != 0)
		return rc;
	const size_t hdr = 8 + 4 + 4 + 8 + 4 + 4;
	uint32_t fmt, metric, k, has;
	uint64_t nq, h;
	if (len < hdr + 8 || memcmp(data, TRUTH_MAGIC, 8) != 0) {
		rc = cdx_error(CDX_ECORRUPT, "%s: not a ground-truth cache file", path);
		goto out;
	}
	memcpy(&h, data + len - 8, 8);
	if (cdx_xxh64(data, len - 8, 0) != h) {
		rc = cdx_error(CDX_ECORRUPT, "%s: checksum mismatch", path);
		goto out;
	}
	memcpy(&fmt, data + 8, 4);
	memcpy(&metric, data + 12, 4);
	memcpy(&nq, data + 16, 8);
	memcpy(&k, data + 24, 4);
	memcpy(&has, data + 28, 4);
	if (fmt != TRUTH_FORMAT) {
		rc = cdx_error(CDX_EVERSION, "%s: cache format %u", path, fmt);
		goto out;
	}
	size_t need = hdr + nq * k * (8 + (has ? 4 : 0)) + 8;
	if (len != need) {
		rc = cdx_error(CDX_ECORRUPT, "%s: size %zu, expected %zu", path, len, need);
		goto out;
	}
	if ((rc = truth_alloc(t, nq, k, (int) metric, has != 0)) != 0)
		goto out;
	memcpy(t->rows, data + hdr, nq * k * 8);
	if (has)
		memcpy(t->dist, data + hdr + nq * k * 8, nq * k * 4);
out:
	free(data);
	return rc;
}
