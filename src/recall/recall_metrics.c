/*
 * recall_metrics.c — true distances and the recall figures (ann-benchmarks'
 * k-recall@k with its distance tie rule, and 1-recall@k).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "recall/recall.h"
#include "shard/shard.h"

double
cdx_recall_distance(const struct cdx_recall_space *s, const float *q, int64_t row)
{
	if (row < 0 || (uint64_t) row >= s->nb || s->base == NULL)
		return INFINITY;
	const float *x = s->base + (size_t) row * s->dim;
	double acc = 0;
	if (s->metric == CDX_METRIC_L2) {
		for (uint32_t j = 0; j < s->dim; j++) {
			double t = (double) x[j] - (double) q[j];
			acc += t * t;
		}
		return sqrt(acc);
	}
	for (uint32_t j = 0; j < s->dim; j++)
		acc += (double) x[j] * (double) q[j];
	return s->metric == CDX_METRIC_COS ? 1.0 - acc : -acc;
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
	return x < y ? -1 : x > y;
}

double
cdx_recall_query(const struct cdx_truth *t, const struct cdx_recall_space *s, const float *q, size_t qi,
    const int64_t *hits, uint32_t k, uint32_t r, double eps)
{
	if (r == 0 || r > t->k || r > k)
		return NAN;
	const int64_t *truth = t->rows + qi * t->k;
	/* a base smaller than r has fewer neighbours to find */
	uint32_t reff = 0;
	while (reff < r && truth[reff] >= 0)
		reff++;
	if (reff == 0)
		return NAN;

	/* distinct returned rows: a correct index never repeats a hit, and a
	 * repeated one must not count twice */
	int64_t stackbuf[128];
	int64_t *rows = k <= 128 ? stackbuf : malloc(k * sizeof(int64_t));
	if (rows == NULL)
		return NAN;
	uint32_t n = 0;
	for (uint32_t j = 0; j < k; j++)
		if (hits[j] >= 0)
			rows[n++] = hits[j];
	qsort(rows, n, sizeof(int64_t), cmp_i64);

	uint32_t found = 0;
	if (t->dist != NULL && s != NULL && s->base != NULL) {
		/* truth distances are stored as floats: round the hit's distance
		 * the same way, so that a hit at exactly the r-th distance counts
		 * even with eps = 0 */
		double thr = (double) t->dist[qi * t->k + reff - 1] + eps;
		for (uint32_t j = 0; j < n; j++) {
			if (j > 0 && rows[j] == rows[j - 1])
				continue;
			if ((double) (float) cdx_recall_distance(s, q, rows[j]) <= thr)
				found++;
		}
	} else {
		int64_t want[128];
		int64_t *w = reff <= 128 ? want : malloc(reff * sizeof(int64_t));
		if (w == NULL) {
			if (rows != stackbuf)
				free(rows);
			return NAN;
		}
		memcpy(w, truth, reff * sizeof(int64_t));
		qsort(w, reff, sizeof(int64_t), cmp_i64);
		for (uint32_t j = 0; j < n; j++) {
			if (j > 0 && rows[j] == rows[j - 1])
				continue;
			if (bsearch(&rows[j], w, reff, sizeof(int64_t), cmp_i64) != NULL)
				found++;
		}
		if (w != want)
			free(w);
	}
	if (rows != stackbuf)
		free(rows);
	if (found > reff)
		found = reff;
	return (double) found / (double) reff;
}

double
cdx_recall_mean_se(const struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries,
    const int64_t *hits, size_t nq, size_t stride, uint32_t k, uint32_t r, double eps, double *se)
{
	*se = NAN;
	if (nq == 0 || r == 0 || r > t->k || r > k || stride < k)
		return NAN;
	double sum = 0, sum2 = 0;
	size_t counted = 0;
	for (size_t i = 0; i < nq; i++) {
		const float *q = queries != NULL && s != NULL ? queries + i * s->dim : NULL;
		double v = cdx_recall_query(t, s, q, i, hits + i * stride, k, r, eps);
		if (!isnan(v)) {
			sum += v;
			sum2 += v * v;
			counted++;
		}
	}
	if (counted == 0)
		return NAN;
	double n = (double) counted, mean = sum / n;
	*se = counted > 1 ? sqrt(fmax(0, (sum2 - n * mean * mean) / (n - 1)) / n) : 0;
	return mean;
}

double
cdx_recall_mean(const struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries,
    const int64_t *hits, size_t nq, size_t stride, uint32_t k, uint32_t r, double eps)
{
	double se;
	return cdx_recall_mean_se(t, s, queries, hits, nq, stride, k, r, eps, &se);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *) a, y = *(const double *) b;
	return x < y ? -1 : x > y;
}

double
cdx_percentile(double *v, size_t n, double p)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(double), cmp_double);
	double rank = ceil(p / 100.0 * (double) n);
	size_t i = rank < 1 ? 0 : (size_t) rank - 1;
	return v[i < n ? i : n - 1];
}
