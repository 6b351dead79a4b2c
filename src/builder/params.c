/*
 * params.c — default index parameters from N and dim, the factory string
 * checks, and the deterministic training sample. Every rule here is
 * documented in docs/builder.md and `candex build --help`; change them
 * together.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "builder/build.h"

void
cdx_build_opts_init(struct cdx_build_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->metric = CDX_METRIC_L2;
	o->nshards = 1;
	o->refine = CDX_REFINE_NONE;
	o->seed = CDX_BUILD_DEFAULT_SEED;
	o->keep = CDX_BUILD_DEFAULT_KEEP;
	o->model_version = "";
}

uint32_t
cdx_build_default_nlist(uint64_t n)
{
	double x = 4.0 * sqrt((double) n);
	uint64_t lo = 1;
	while (lo * 2 <= (uint64_t) x)
		lo *= 2;
	uint64_t nlist = (x - (double) lo <= (double) (lo * 2) - x) ? lo : lo * 2;
	if (nlist < 16)
		nlist = 16;
	if (nlist > 65536)
		nlist = 65536;
	/* k-means wants >= 39 points per centroid: stay a power of two below n/39 */
	uint64_t cap = n / CDX_BUILD_MIN_POINTS_PER_LIST;
	while (nlist > 1 && nlist > cap)
		nlist /= 2;
	return (uint32_t) nlist;
}

uint32_t
cdx_build_default_pq_m(uint32_t dim)
{
	for (uint32_t m = dim / 4; m > 1; m--)
		if (dim % m == 0)
			return m;
	return 1;
}

/* parse_uint reads digits at *s, advancing it; -1 if there are none. */
static long
parse_uint(const char **s)
{
	if (!isdigit((unsigned char) **s))
		return -1;
	long v = 0;
	while (isdigit((unsigned char) **s)) {
		if (v < 100000000)
			v = v * 10 + (**s - '0');
		(*s)++;
	}
	return v;
}

/* A PQ component: "PQ<M>", "PQ<M>x<b>", either optionally followed by "np",
 * or a fast-scan one, "PQ<M>x4fs" ("fsr": by residual), which has no
 * polysemous training (*np is set). Returns 1 and fills m/nbits/np when tok
 * is one. */
static int
pq_component(const char *tok, size_t len, long *m, long *nbits, int *np)
{
	char t[64];
	if (len < 3 || len >= sizeof(t))
		return 0;
	memcpy(t, tok, len);
	t[len] = 0;
	if (strncmp(t, "PQ", 2) != 0)
		return 0;
	const char *s = t + 2;
	if ((*m = parse_uint(&s)) <= 0)
		return 0;
	*nbits = 8;
	if (*s == 'x') {
		s++;
		if ((*nbits = parse_uint(&s)) <= 0)
			return 0;
	}
	*np = 0;
	if (strcmp(s, "np") == 0 || ((strcmp(s, "fs") == 0 || strcmp(s, "fsr") == 0) && *nbits == 4)) {
		*np = 1;
		s += strlen(s);
	}
	return *s == 0;
}

int
cdx_build_factory_rewrite(const char *factory, int polysemous, char *out, size_t outlen)
{
	cdx_buf b = { 0 };
	int rc = CDX_OK;
	if (factory == NULL || *factory == 0)
		return cdx_error(CDX_EINVAL, "--factory: empty factory string");
	const char *p = factory;
	for (;;) {
		/* split on top-level commas (a quantizer spec may use parentheses) */
		const char *e = p;
		int depth = 0;
		while (*e && (depth > 0 || *e != ',')) {
			if (*e == '(')
				depth++;
			else if (*e == ')')
				depth--;
			e++;
		}
		size_t len = (size_t) (e - p);
		long m, nbits;
		int np;
		if (len == 0) {
			rc = cdx_error(CDX_EINVAL, "--factory '%s': empty component", factory);
			goto done;
		}
		if (memmem(p, len, "L2norm", 6) != NULL) {
			rc = cdx_error(CDX_EINVAL,
			    "--factory '%s': the L2norm component is refused (it gives wrong "
			    "cosine scores with refinement); use --metric cos, which normalises the "
			    "vectors before indexing",
			    factory);
			goto done;
		}
		if ((rc = cdx_buf_append(&b, p, len)) != CDX_OK)
			goto done;
		if (pq_component(p, len, &m, &nbits, &np) && !np && !polysemous)
			if ((rc = cdx_buf_append(&b, "np", 2)) != CDX_OK)
				goto done;
		if (*e == 0)
			break;
		if ((rc = cdx_buf_append(&b, ",", 1)) != CDX_OK)
			goto done;
		p = e + 1;
	}
	if ((rc = cdx_buf_append(&b, "", 1)) != CDX_OK)
		goto done;
	if (b.len > outlen) {
		rc = cdx_error(CDX_EINVAL, "--factory '%s': too long", factory);
		goto done;
	}
	memcpy(out, b.data, b.len);
done:
	cdx_buf_fini(&b);
	return rc;
}

/* factory_numbers reads nlist (IVF<n>) and PQ M/nbits out of a factory string. */
static void
factory_numbers(struct cdx_build_params *p)
{
	p->nlist = p->pq_m = p->pq_nbits = 0;
	const char *s = p->factory;
	while (*s) {
		const char *e = s;
		while (*e && *e != ',')
			e++;
		long m, nbits;
		int np;
		if (strncmp(s, "IVF", 3) == 0) {
			const char *d = s + 3;
			long v = parse_uint(&d);
			if (v > 0)
				p->nlist = (uint32_t) v;
		} else if (pq_component(s, (size_t) (e - s), &m, &nbits, &np)) {
			p->pq_m = (uint32_t) m;
			p->pq_nbits = (uint32_t) nbits;
		}
		s = *e ? e + 1 : e;
	}
	p->flat = strcmp(p->factory, "Flat") == 0;
}

int
cdx_build_params_choose(struct cdx_build_params *p, uint64_t n, uint32_t dim, const char *factory,
    int polysemous, uint64_t train_sample_opt)
{
	memset(p, 0, sizeof(*p));
	if (n == 0 || dim == 0)
		return cdx_error(CDX_EEMPTY, "no rows to index");
	if (factory != NULL) {
		int rc = cdx_build_factory_rewrite(factory, polysemous, p->factory, sizeof(p->factory));
		if (rc != CDX_OK)
			return rc;
		factory_numbers(p);
		if (p->nlist > 0 && n < (uint64_t) p->nlist * CDX_BUILD_MIN_POINTS_PER_LIST)
			snprintf(p->note, sizeof(p->note),
			    "%llu items are fewer than 39 per inverted list for nlist %u: k-means will be "
			    "poor",
			    (unsigned long long) n, p->nlist);
	} else if (n < CDX_BUILD_FLAT_BELOW) {
		snprintf(p->factory, sizeof(p->factory), "Flat");
		factory_numbers(p);
		snprintf(p->note, sizeof(p->note),
		    "%llu items < %d: exact Flat index (too few points to train IVF-PQ; a scan is cheap at "
		    "this size)",
		    (unsigned long long) n, CDX_BUILD_FLAT_BELOW);
	} else {
		uint32_t nlist = cdx_build_default_nlist(n);
		uint32_t m = cdx_build_default_pq_m(dim);
		uint32_t nbits = n >= CDX_BUILD_8BIT_FROM ? 8 : 4;
		snprintf(p->factory, sizeof(p->factory), "IVF%u,PQ%ux%unp", nlist, m, nbits);
		factory_numbers(p);
		if (nbits == 4)
			snprintf(p->note, sizeof(p->note),
			    "%llu items < %d: 4-bit PQ codebooks (8-bit codebooks of 256 centroids need ~10k "
			    "training points)",
			    (unsigned long long) n, CDX_BUILD_8BIT_FROM);
	}
	if (train_sample_opt > 0)
		p->train_sample = CDX_MIN(n, train_sample_opt);
	else
		p->train_sample = CDX_MIN(n, CDX_MAX((uint64_t) 100000, (uint64_t) p->nlist * 64));
	uint32_t np = p->nlist / 32;
	p->default_nprobe = np < 1 ? 1 : np > 256 ? 256 : np;
	return CDX_OK;
}

void
cdx_build_sample(uint64_t n, uint64_t k, uint64_t seed, uint64_t *out)
{
	if (k >= n) {
		for (uint64_t i = 0; i < n; i++)
			out[i] = i;
		return;
	}
	/* Knuth's Algorithm S: one pass, exactly k rows, ascending, so the
	 * sample is read front to back through the mapped input. */
	cdx_rng rng;
	cdx_rng_seed(&rng, seed);
	uint64_t chosen = 0;
	for (uint64_t i = 0; i < n && chosen < k; i++) {
		double u = cdx_rng_uniform(&rng);
		if ((double) (n - i) * u < (double) (k - chosen))
			out[chosen++] = i;
	}
}

void
cdx_build_shard_name(char out[CDX_NAME_MAX], uint32_t index, uint32_t count)
{
	snprintf(out, CDX_NAME_MAX, "shard-%04u-of-%04u.cdx", index, count);
}
