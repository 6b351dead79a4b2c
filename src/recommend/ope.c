/*
 * ope.c — IPS and SNIPS from the impression log (ope.h DESIGN).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "candex.pb-c.h"
#include "common/common.h"
#include "recommend/implog.h"
#include "recommend/ope.h"

/* One logged (impression, slot). */
struct slot {
	uint32_t imp; /* index of its impression */
	uint32_t slot;
	double mu, pi, reward;
};

struct imp {
	char *request_id;
	uint32_t query;
	uint32_t first, nslots; /* its slots in the slot array */
};

struct data {
	struct imp *imps;
	size_t nimps, capimps;
	struct slot *slots;
	size_t nslots, capslots;
	/* (request_id, query) -> impression, open addressing; entries hold index + 1 */
	uint32_t *table;
	uint64_t mask;
};

static uint64_t
imp_hash(const char *rid, size_t len, uint32_t query)
{
	return cdx_xxh64(rid, len, query);
}

static int
table_grow(struct data *d)
{
	uint64_t cap = d->table ? (d->mask + 1) * 2 : 1024;
	uint32_t *t = calloc(cap, sizeof(uint32_t));
	if (t == NULL)
		return cdx_error(CDX_ENOMEM, "impressions");
	for (size_t i = 0; i < d->nimps; i++) {
		const struct imp *im = &d->imps[i];
		uint64_t h = imp_hash(im->request_id, strlen(im->request_id), im->query) & (cap - 1);
		while (t[h] != 0)
			h = (h + 1) & (cap - 1);
		t[h] = (uint32_t) i + 1;
	}
	free(d->table);
	d->table = t;
	d->mask = cap - 1;
	return CDX_OK;
}

/* find returns the impression of (rid, query), or -1. */
static long
find(const struct data *d, const char *rid, size_t len, uint32_t query)
{
	if (d->table == NULL)
		return -1;
	for (uint64_t h = imp_hash(rid, len, query) & d->mask; d->table[h] != 0; h = (h + 1) & d->mask) {
		const struct imp *im = &d->imps[d->table[h] - 1];
		if (im->query == query && strncmp(im->request_id, rid, len) == 0
		    && im->request_id[len] == '\0')
			return (long) d->table[h] - 1;
	}
	return -1;
}

static void
data_fini(struct data *d)
{
	for (size_t i = 0; i < d->nimps; i++)
		free(d->imps[i].request_id);
	free(d->imps);
	free(d->slots);
	free(d->table);
}

/* add_impression appends one decoded record; duplicates are counted. */
static int
add_impression(struct data *d, const Candex__V1__Impression *m, const char *path, struct cdx_ope_result *r)
{
	const char *rid = m->request_id ? m->request_id : "";
	if (find(d, rid, strlen(rid), m->query) >= 0) {
		r->duplicates++;
		return CDX_OK;
	}
	if ((d->nimps + 1) * 2 > d->mask + 1 && table_grow(d) != CDX_OK)
		return CDX_ENOMEM;
	if (d->nimps == d->capimps) {
		d->capimps = d->capimps ? d->capimps * 2 : 1024;
		struct imp *g = realloc(d->imps, d->capimps * sizeof(*g));
		if (g == NULL)
			return cdx_error(CDX_ENOMEM, "impressions");
		d->imps = g;
	}
	if (d->nslots + m->n_items > d->capslots) {
		d->capslots = CDX_MAX(d->capslots * 2, d->nslots + m->n_items + 1024);
		struct slot *g = realloc(d->slots, d->capslots * sizeof(*g));
		if (g == NULL)
			return cdx_error(CDX_ENOMEM, "impressions");
		d->slots = g;
	}
	struct imp *im = &d->imps[d->nimps];
	if ((im->request_id = strdup(rid)) == NULL)
		return cdx_error(CDX_ENOMEM, "impressions");
	im->query = m->query;
	im->first = (uint32_t) d->nslots;
	im->nslots = (uint32_t) m->n_items;
	for (size_t j = 0; j < m->n_items; j++) {
		const Candex__V1__ImpressionItem *it = m->items[j];
		if (!(it->propensity > 0 && it->propensity <= 1))
			return cdx_error(CDX_ECORRUPT,
			    "%s: request '%s' query %u slot %u: propensity %g is not in (0, 1] (a log from a "
			    "server that did not explore?)",
			    path, rid, m->query, it->slot, it->propensity);
		if (it->slot != j)
			return cdx_error(CDX_ECORRUPT, "%s: request '%s' query %u: slots out of order", path,
			    rid, m->query);
		d->slots[d->nslots++] = (struct slot) { (uint32_t) d->nimps, it->slot, it->propensity, 0, 0 };
	}
	uint64_t h = imp_hash(rid, strlen(rid), m->query) & d->mask;
	while (d->table[h] != 0)
		h = (h + 1) & d->mask;
	d->table[h] = (uint32_t) ++d->nimps;
	return CDX_OK;
}

/* each_record calls fn on every record of every log file. */
static int
each_record(const char *log, int (*fn)(void *, const Candex__V1__Impression *, const char *), void *arg,
    uint64_t *truncated)
{
	char **paths = NULL;
	size_t n = 0;
	int rc = cdx_implog_list(log, &paths, &n);
	if (rc == CDX_OK && n == 0)
		rc = cdx_error(CDX_EEMPTY, "%s: no impression log files (*%s)", log, CDX_IMPLOG_SUFFIX);
	for (size_t f = 0; rc == CDX_OK && f < n; f++) {
		char *data = NULL;
		size_t len = 0, off = 0;
		if ((rc = cdx_read_file(paths[f], &data, &len)) != CDX_OK)
			break;
		const uint8_t *rec;
		size_t rl;
		int got;
		while (rc == CDX_OK
		    && (got = cdx_implog_next((const uint8_t *) data, len, &off, &rec, &rl)) == 1) {
			Candex__V1__Impression *m = candex__v1__impression__unpack(NULL, rl, rec);
			if (m == NULL) {
				rc = cdx_error(CDX_ECORRUPT,
				    "%s: record at byte %zu is not a candex.v1.Impression", paths[f],
				    off - rl);
				break;
			}
			rc = fn(arg, m, paths[f]);
			candex__v1__impression__free_unpacked(m, NULL);
		}
		if (rc == CDX_OK && got < 0)
			(*truncated)++; /* a write cut short (disk full, crash): the rest is unusable */
		free(data);
	}
	for (size_t f = 0; f < n; f++)
		free(paths[f]);
	free(paths);
	return rc;
}

struct load_arg {
	struct data *d;
	struct cdx_ope_result *r;
};

static int
load_one(void *arg, const Candex__V1__Impression *m, const char *path)
{
	struct load_arg *a = arg;
	return add_impression(a->d, m, path, a->r);
}

/* read_tsv applies each "request_id query slot value" line of path to the
 * logged slots (which = 0: rewards, 1: target probabilities). */
static int
read_tsv(struct data *d, const char *path, int which, uint64_t *unmatched)
{
	char *text = NULL;
	size_t len = 0;
	int rc = cdx_read_file(path, &text, &len);
	if (rc != CDX_OK)
		return rc;
	char *p = text, *end = text + len;
	unsigned long long line = 0;
	while (rc == CDX_OK && p < end) {
		char *nl = memchr(p, '\n', (size_t) (end - p)), *le = nl ? nl : end;
		line++;
		if (le > p && le[-1] == '\r')
			le[-1] = '\0';
		*le = '\0';
		char *f[5];
		int nf = 0;
		if (*p != '\0' && *p != '#') {
			for (char *q = p; nf < 5;) {
				f[nf++] = q;
				char *tab = strchr(q, '\t');
				if (tab == NULL)
					break;
				*tab = '\0';
				q = tab + 1;
			}
			char *e1, *e2, *e3;
			errno = 0;
			unsigned long query = strtoul(f[1 < nf ? 1 : 0], &e1, 10);
			unsigned long slot = strtoul(f[2 < nf ? 2 : 0], &e2, 10);
			double v = strtod(f[3 < nf ? 3 : 0], &e3);
			if (nf != 4 || *e1 || *e2 || *e3 || errno != 0 || !isfinite(v) || query > UINT32_MAX
			    || (which == 1 && (v < 0 || v > 1))) {
				rc = cdx_error(CDX_EINVAL,
				    "%s: line %llu: expected request_id<TAB>query<TAB>slot<TAB>%s", path,
				    line, which ? "probability in [0, 1]" : "reward");
				break;
			}
			long im = find(d, f[0], strlen(f[0]), (uint32_t) query);
			if (im < 0 || slot >= d->imps[im].nslots) {
				(*unmatched)++;
			} else {
				struct slot *s = &d->slots[d->imps[im].first + slot];
				if (which)
					s->pi = v;
				else
					s->reward = v;
			}
		}
		p = nl ? nl + 1 : end;
	}
	free(text);
	return rc;
}

double
cdx_ope_z(double confidence)
{
	/* two-sided: erf(z / sqrt 2) = confidence, by bisection */
	double lo = 0, hi = 10;
	for (int i = 0; i < 100; i++) {
		double mid = (lo + hi) / 2;
		if (erf(mid / sqrt(2.0)) < confidence)
			lo = mid;
		else
			hi = mid;
	}
	return (lo + hi) / 2;
}

static void
interval(struct cdx_ope_estimate *e, double value, double var_of_mean, double z)
{
	e->value = value;
	e->se = sqrt(var_of_mean > 0 ? var_of_mean : 0);
	e->lo = value - z * e->se;
	e->hi = value + z * e->se;
}

/* estimate fills r from the joined data. */
static void
estimate(const struct data *d, struct cdx_ope_result *r, double z)
{
	size_t n = d->nimps;
	uint32_t maxslots = 0;
	for (size_t i = 0; i < n; i++)
		maxslots = CDX_MAX(maxslots, d->imps[i].nslots);
	double *wsum = calloc(maxslots + 1, sizeof(double)), *wrsum = calloc(maxslots + 1, sizeof(double));
	double sum_ips = 0, sq_ips = 0, sum_log = 0, sq_log = 0, w1 = 0, w2 = 0;
	for (size_t i = 0; i < n; i++) {
		const struct imp *im = &d->imps[i];
		double y = 0, yl = 0;
		for (uint32_t j = 0; j < im->nslots; j++) {
			const struct slot *s = &d->slots[im->first + j];
			double w = s->pi / s->mu;
			y += w * s->reward;
			yl += s->reward;
			w1 += w;
			w2 += w * w;
			if (wsum != NULL) {
				wsum[j] += w;
				wrsum[j] += w * s->reward;
			}
		}
		sum_ips += y;
		sq_ips += y * y;
		sum_log += yl;
		sq_log += yl * yl;
	}
	double N = (double) (n ? n : 1);
	double m_ips = sum_ips / N, m_log = sum_log / N;
	/* sample variance of the per-impression sums, over N for the mean */
	double v_ips = n > 1 ? (sq_ips - N * m_ips * m_ips) / (N - 1) / N : 0;
	double v_log = n > 1 ? (sq_log - N * m_log * m_log) / (N - 1) / N : 0;
	interval(&r->ips, m_ips, v_ips, z);
	interval(&r->logged, m_log, v_log, z);
	r->mean_weight = d->nslots ? w1 / (double) d->nslots : 0;
	r->ess = w2 > 0 ? w1 * w1 / w2 : 0;
	if (wsum == NULL || wrsum == NULL) {
		r->snips = r->ips;
		free(wsum);
		free(wrsum);
		return;
	}
	double v = 0;
	for (uint32_t j = 0; j < maxslots; j++)
		if (wsum[j] > 0)
			v += wrsum[j] / wsum[j];
	/* the delta method: each impression's influence on the estimate */
	double sum_psi = 0, sq_psi = 0;
	for (size_t i = 0; i < n; i++) {
		const struct imp *im = &d->imps[i];
		double psi = 0;
		for (uint32_t j = 0; j < im->nslots; j++) {
			const struct slot *s = &d->slots[im->first + j];
			if (wsum[j] <= 0)
				continue;
			double w = s->pi / s->mu, vj = wrsum[j] / wsum[j], wbar = wsum[j] / N;
			psi += w * (s->reward - vj) / wbar;
		}
		sum_psi += psi;
		sq_psi += psi * psi;
	}
	double m_psi = sum_psi / N;
	double v_snips = n > 1 ? (sq_psi - N * m_psi * m_psi) / (N - 1) / N : 0;
	interval(&r->snips, v, v_snips, z);
	free(wsum);
	free(wrsum);
}

int
cdx_ope_run(const struct cdx_ope_options *o, struct cdx_ope_result *r)
{
	memset(r, 0, sizeof(*r));
	r->confidence = o->confidence > 0 ? o->confidence : 0.95;
	if (!(r->confidence < 1))
		return cdx_error(CDX_EINVAL, "confidence %g: must be in (0, 1)", r->confidence);
	struct data d = { 0 };
	struct load_arg la = { &d, r };
	int rc = each_record(o->log, load_one, &la, &r->truncated);
	if (rc == CDX_OK && d.nimps == 0)
		rc = cdx_error(CDX_EEMPTY, "%s: the log holds no impression", o->log);
	if (rc == CDX_OK)
		rc = read_tsv(&d, o->rewards, 0, &r->rewards_unmatched);
	if (rc == CDX_OK)
		rc = read_tsv(&d, o->targets, 1, &r->targets_unmatched);
	if (rc == CDX_OK) {
		r->impressions = d.nimps;
		r->slots = d.nslots;
		estimate(&d, r, cdx_ope_z(r->confidence));
	}
	data_fini(&d);
	return rc;
}

static int
dump_one(void *arg, const Candex__V1__Impression *m, const char *path)
{
	FILE *out = arg;
	(void) path;
	for (size_t j = 0; j < m->n_items; j++) {
		const Candex__V1__ImpressionItem *it = m->items[j];
		fprintf(out, "%s\t%u\t%u\t%s\t%lld\t%s\t%.9g\t%u\t%d\t%.17g\t%s\n", m->request_id, m->query,
		    it->slot, it->collection, (long long) it->id, it->key, (double) it->score, it->rank,
		    it->explore ? 1 : 0, it->propensity, it->index_version);
	}
	return ferror(out) ? cdx_error(CDX_EIO, "writing the dump") : CDX_OK;
}

int
cdx_ope_dump(const char *log, FILE *out)
{
	uint64_t truncated = 0;
	int rc = each_record(log, dump_one, out, &truncated);
	if (rc == CDX_OK && truncated > 0)
		cdx_warn("OPE-TRUNCATED", "%llu log file(s) end in a partial record (skipped)",
		    (unsigned long long) truncated);
	return rc;
}
