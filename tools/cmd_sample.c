/*
 * cmd_sample.c — `candex sample`: the embedded default dataset.
 *
 * A deterministic stand-in for a music catalogue, so that the demo and a
 * newcomer's first run need no download: tracks and podcasts clustered by
 * genre/topic with Zipf-sized clusters (a few huge genres, a long tail) and
 * vector norms that grow with popularity (as matrix-factorisation embeddings
 * do, which is what makes maximum inner-product search favour popular items),
 * plus user vectors drawn near the genres they like.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/common.h"

struct catalogue {
	const char *name;     /* tracks, podcasts */
	const char *key_kind; /* spotify:<kind>:... */
	size_t n, dim, nclusters;
	const char *type;  /* the type attribute: track, episode */
	const char *group; /* the group attribute: artist, show */
};

static const char *const markets[]
    = { "BR", "DE", "DK", "FI", "FR", "GB", "IN", "JP", "MX", "NO", "SE", "US" };

/* write_attrs writes item i's attributes (docs/recommenders.md): its
 * markets (most items everywhere, some in a few countries: JP alone keeps
 * about 10% of items), explicit, release year, type and artist or show
 * (artists belong to a genre: 60 per cluster). Drawn from their own
 * stream, so the vectors do not depend on them. */
static int
write_attrs(FILE *f, const struct catalogue *cat, cdx_rng *rng, size_t cluster)
{
	char mk[64] = "";
	size_t n = 0;
	double u = cdx_rng_uniform(rng);
	for (size_t m = 0; m < CDX_ARRAY_LEN(markets); m++) {
		/* JP: 10%; the others: 90% everywhere, else each with probability 1/2 */
		int in = strcmp(markets[m], "JP") == 0 ? cdx_rng_uniform(rng) < 0.1
		                                       : u < 0.9 || cdx_rng_uniform(rng) < 0.5;
		if (in)
			n += (size_t) snprintf(mk + n, sizeof(mk) - n, "%s%s", n ? "," : "", markets[m]);
	}
	int year = 2026 - (int) (60 * pow(cdx_rng_uniform(rng), 2.0));
	int is_explicit = cdx_rng_uniform(rng) < 0.15;
	size_t group = cluster * 60 + cdx_rng_next(rng) % 60;
	return fprintf(f, "%s\t%s\t%d\t%s\t%s-%zu\n", mk, is_explicit ? "true" : "false", year, cat->type,
	           cat->group, group)
	    < 0;
}

static void
key_for(char out[64], const char *kind, uint64_t seed, size_t i)
{
	static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	uint64_t h1 = cdx_mix64(seed ^ (uint64_t) i), h2 = cdx_mix64(h1 ^ 0x5bd1e995u);
	int n = snprintf(out, 64, "spotify:%s:", kind);
	for (int j = 0; j < 22; j++) {
		uint64_t *h = j < 11 ? &h1 : &h2;
		out[n++] = b62[*h % 62];
		*h /= 62;
	}
	out[n] = 0;
}

/* Zipf cluster sizes: cluster c gets weight 1 / (c + 1)^1.1. */
static size_t
zipf_pick(cdx_rng *rng, const double *cdf, size_t n)
{
	double u = cdx_rng_uniform(rng);
	size_t lo = 0, hi = n - 1;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int
write_fvecs_row(FILE *f, const float *v, size_t dim)
{
	int32_t d = (int32_t) dim;
	return fwrite(&d, 4, 1, f) == 1 && fwrite(v, sizeof(float), dim, f) == dim ? 0 : -1;
}

static int
generate(const char *dir, const struct catalogue *cat, size_t nusers, uint64_t seed)
{
	char path[PATH_MAX];
	cdx_rng rng;
	cdx_rng_seed(&rng, seed ^ cdx_mix64(cat->dim));
	size_t dim = cat->dim, nc = cat->nclusters;
	float *centers = malloc(nc * dim * sizeof(float));
	double *cdf = malloc(nc * sizeof(double));
	float *v = malloc(dim * sizeof(float));
	FILE *fv = NULL, *fk = NULL, *fu = NULL, *fa = NULL;
	cdx_rng arng; /* attributes: a stream of their own */
	cdx_rng_seed(&arng, cdx_mix64(seed ^ 0xa77b5u));
	int rc = CDX_OK;
	if (centers == NULL || cdf == NULL || v == NULL) {
		rc = cdx_error(CDX_ENOMEM, "sample buffers");
		goto done;
	}
	double total = 0;
	for (size_t c = 0; c < nc; c++) {
		total += 1.0 / pow((double) c + 1, 1.1);
		cdf[c] = total;
		for (size_t j = 0; j < dim; j++)
			centers[c * dim + j] = (float) cdx_rng_normal(&rng);
	}
	for (size_t c = 0; c < nc; c++)
		cdf[c] /= total;

	cdx_pathf(path, sizeof(path), "%s/%s.fvecs", dir, cat->name);
	fv = fopen(path, "wb");
	snprintf(path, sizeof(path), "%s/%s.keys", dir, cat->name);
	fk = fopen(path, "w");
	snprintf(path, sizeof(path), "%s/users-%s.fvecs", dir, cat->name);
	fu = fopen(path, "wb");
	snprintf(path, sizeof(path), "%s/%s.attrs.tsv", dir, cat->name);
	fa = fopen(path, "w");
	if (fv == NULL || fk == NULL || fu == NULL || fa == NULL) {
		rc = cdx_error_errno(CDX_EIO, "create files in %s", dir);
		goto done;
	}
	if (fprintf(fa, "market:set\texplicit:bool\tyear:int\ttype:enum\t%s:group\n", cat->group) < 0) {
		rc = cdx_error_errno(CDX_EIO, "write %s", path);
		goto done;
	}
	for (size_t i = 0; i < cat->n; i++) {
		size_t c = zipf_pick(&rng, cdf, nc);
		/* popularity: heavy-tailed, mapped to a norm between 0.5 and ~2 */
		double pop = pow(cdx_rng_uniform(&rng), 4.0);
		float scale = (float) (0.5 + 1.5 * pop);
		for (size_t j = 0; j < dim; j++)
			v[j] = scale * (centers[c * dim + j] + 0.45f * (float) cdx_rng_normal(&rng));
		char key[64];
		key_for(key, cat->key_kind, seed, i);
		if (write_fvecs_row(fv, v, dim) != 0 || fprintf(fk, "%s\n", key) < 0
		    || write_attrs(fa, cat, &arng, c) != 0) {
			rc = cdx_error_errno(CDX_EIO, "write %s", dir);
			goto done;
		}
	}
	/* A second, disjoint set of users to tune operating points on, so that
	 * recall measured on the first set is not measured on what was tuned. */
	snprintf(path, sizeof(path), "%s/users-%s-tune.fvecs", dir, cat->name);
	FILE *ft = fopen(path, "wb");
	if (ft == NULL) {
		rc = cdx_error_errno(CDX_EIO, "create %s", path);
		goto done;
	}
	for (size_t u = 0; u < 2 * nusers; u++) {
		FILE *out = u < nusers ? fu : ft;
		/* a user likes one to three genres, weighted by genre size */
		size_t likes = 1 + cdx_rng_next(&rng) % 3;
		memset(v, 0, dim * sizeof(float));
		for (size_t l = 0; l < likes; l++) {
			size_t c = zipf_pick(&rng, cdf, nc);
			for (size_t j = 0; j < dim; j++)
				v[j] += centers[c * dim + j] / (float) likes;
		}
		for (size_t j = 0; j < dim; j++)
			v[j] += 0.3f * (float) cdx_rng_normal(&rng);
		if (write_fvecs_row(out, v, dim) != 0) {
			rc = cdx_error_errno(CDX_EIO, "write %s", dir);
			fclose(ft);
			goto done;
		}
	}
	if (fclose(ft) != 0) {
		rc = cdx_error_errno(CDX_EIO, "close %s", path);
		goto done;
	}
done:
	if (fv != NULL && fclose(fv) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_EIO, "close %s", cat->name);
	if (fk != NULL && fclose(fk) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_EIO, "close %s keys", cat->name);
	if (fu != NULL && fclose(fu) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_EIO, "close users");
	if (fa != NULL && fclose(fa) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_EIO, "close %s attributes", cat->name);
	free(centers);
	free(cdf);
	free(v);
	return rc;
}

struct sample_opts {
	const char *out;
	size_t tracks, podcasts, users;
	uint64_t seed;
};

#define O(f) offsetof(struct sample_opts, f)
static const struct cdx_opt sample_options[] = {
	CDX_OPT_STR_("out", O(out), "DIR", "output directory (default index-data/sample)"),
	CDX_OPT_NUM_("tracks", CDX_OPT_SIZE_T, O(tracks), "N", "number of tracks (default 100000)", 1, 1e9),
	CDX_OPT_NUM_(
	    "podcasts", CDX_OPT_SIZE_T, O(podcasts), "N", "number of podcasts (default 10000)", 1, 1e9),
	CDX_OPT_NUM_(
	    "users", CDX_OPT_SIZE_T, O(users), "N", "query vectors per catalogue (default 1000)", 0, 1e9),
	CDX_OPT_NUM_("seed", CDX_OPT_U64, O(seed), "N", "seed (default 42)", 0, 0),
};
#undef O

static const struct cdx_opt_command sample_command = {
	.prog = "candex sample",
	.head = "usage: candex sample [--out DIR] [--tracks N] [--podcasts N] [--users N] [--seed N]\n\n"
	        "Writes the embedded sample catalogue, deterministically for a given seed:\n"
	        "  DIR/tracks.fvecs   N x 64 track embeddings (inner-product space), DIR/tracks.keys\n"
	        "  DIR/podcasts.fvecs N x 48 podcast embeddings (cosine space), DIR/podcasts.keys\n"
	        "  DIR/users-tracks.fvecs, DIR/users-podcasts.fvecs   user (query) vectors\n"
	        "  DIR/users-*-tune.fvecs   as many other users, to tune operating points on\n"
	        "  DIR/tracks.attrs.tsv, DIR/podcasts.attrs.tsv   attributes for candex build --attrs:\n"
	        "                     market (set), explicit, year, type, artist or show (group)\n"
	        "Keys look like spotify:track:<22 chars>. Clusters are Zipf-sized and norms\n"
	        "grow with popularity, as in real catalogues.\n",
	.opts = sample_options,
	.nopts = CDX_ARRAY_LEN(sample_options),
};

int
cmd_sample(int argc, char **argv)
{
	struct sample_opts o
	    = { .out = "index-data/sample", .tracks = 100000, .podcasts = 10000, .users = 1000, .seed = 42 };
	int rc = cdx_opt_command_parse(&sample_command, &o, argc, argv, NULL, 0, NULL);
	if (rc >= 0)
		return rc;
	const char *out = o.out;
	size_t ntracks = o.tracks, npodcasts = o.podcasts, nusers = o.users;
	uint64_t seed = o.seed;
	const struct catalogue cats[] = {
		{ "tracks", "track", ntracks, 64, 200, "track", "artist" },
		{ "podcasts", "show", npodcasts, 48, 40, "episode", "show" },
	};
	rc = cdx_mkdir_p(out, 0755);
	for (size_t i = 0; rc == CDX_OK && i < CDX_ARRAY_LEN(cats); i++)
		rc = generate(out, &cats[i], nusers, seed + i);
	if (rc != CDX_OK) {
		fprintf(stderr, "candex sample: %s\n", cdx_last_error());
		return CLI_EXIT_FAIL;
	}
	cdx_info("SAMPLE-DONE", "wrote %zu tracks, %zu podcasts, %zu users each to %s", ntracks, npodcasts,
	    nusers, out);
	return CLI_EXIT_OK;
}
