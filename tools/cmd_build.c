/*
 * cmd_build.c — `candex build`: embeddings -> IVF-PQ shards -> a published
 * version; and its distributed steps `build train|encode|publish`.
 * The work is in src/builder/ (see build.h DESIGN); this file parses options.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder/build.h"
#include "cli.h"
#include "common/opt.h"

/* What the command line gives, around the library's build options. */
struct build_cli {
	struct cdx_build_opts o;
	int metric_set, keep_set;
	uint64_t shard, of;
};

static int
set_metric(const char *v, void *opts)
{
	struct build_cli *c = opts;
	c->metric_set = 1;
	return cdx_metric_parse(v, &c->o.metric);
}

static int
set_refine(const char *v, void *opts)
{
	struct build_cli *c = opts;
	c->o.refine_set = 1;
	return cdx_refine_parse(v, &c->o.refine);
}

static int
set_format(const char *v, void *opts)
{
	return cdx_input_format_parse(v, &((struct build_cli *) opts)->o.input_format);
}

static int
set_keep(const char *v, void *opts)
{
	struct build_cli *c = opts;
	uint64_t keep;
	if (cdx_parse_u64(v, 1, 100000, &keep) != CDX_OK)
		return cdx_error(CDX_EINVAL, "expected an integer in [1, 100000]");
	c->o.keep = (unsigned) keep;
	c->keep_set = 1;
	return CDX_OK;
}

static int
set_model_version(const char *v, void *opts)
{
	if (strlen(v) >= 128)
		return cdx_error(CDX_EINVAL, "at most 127 bytes");
	((struct build_cli *) opts)->o.model_version = v;
	return CDX_OK;
}

/* set_tune_k reads --tune-k: ascending k, comma-separated. */
static int
set_tune_k(const char *v, void *opts)
{
	struct cdx_build_opts *o = &((struct build_cli *) opts)->o;
	double k[CDX_MANIFEST_MAX_TUNED_K];
	size_t n = 0;
	int rc = cdx_parse_list(v, 1, 100000, k, CDX_MANIFEST_MAX_TUNED_K, &n);
	for (size_t i = 0; rc == CDX_OK && i < n; i++)
		if (k[i] != (double) (uint32_t) k[i] || (i > 0 && k[i] <= k[i - 1]))
			rc = cdx_error(CDX_EINVAL, "expected ascending whole k, e.g. 10,100,500");
	if (rc != CDX_OK)
		return rc;
	for (size_t i = 0; i < n; i++)
		o->tune_k[i] = (uint32_t) k[i];
	o->ntune_k = (uint32_t) n;
	return CDX_OK;
}

#define O(f) offsetof(struct build_cli, f)
static const struct cdx_opt build_options[] = {
	CDX_OPT_HEADING("inputs:"),
	CDX_OPT_STR_("input", O(o.input), "FILE",
	    ".fvecs or .npy (float32, float16 or float64, C order, rows x dim);\nother names are refused "
	    "unless --format says what they hold"),
	CDX_OPT_CALL_("format", "FMT", "fvecs, npy or raw (headerless little-endian float32, with --dim D)",
	    set_format),
	CDX_OPT_NUM_("dim", CDX_OPT_U32, O(o.dim), "D",
	    "dimension of raw input (checked against .fvecs/.npy if given)", 1, CDX_INPUT_MAX_DIM),
	CDX_OPT_STR_("keys", O(o.keys), "FILE", "one string key per line, exactly one line per row, unique"),
	CDX_OPT_STR_(
	    "ids", O(o.ids), "FILE", "one int64 id per line (or .npy int64), unique; default: row numbers"),
	CDX_OPT_STR_("attrs", O(o.attrs), "FILE",
	    "item attributes for filters and crowding: a header of name:type\n"
	    "columns (int, bool, enum, set, group), then one tab-separated line\n"
	    "per row (docs/recommenders.md)"),
	CDX_OPT_STR_("collection", O(o.collection), "NAME", "[A-Za-z0-9_.-]{1,63}"),
	CDX_OPT_CALL_("metric", "l2|ip|cos", "cos: vectors are L2-normalised and indexed for inner product",
	    set_metric),
	CDX_OPT_STR_("out", O(o.out), "DIR", "index directory (the collection lives in DIR/NAME)"),
	CDX_OPT_CALL_("model-version", "STR", "label of the embedding model that produced the vectors",
	    set_model_version),
	CDX_OPT_HEADING(
	    "self-tuning (the default): the structure and its operating points are chosen by\n"
	    "measurement. Candidates: exact search; IVF-PQ with 4- or 8-bit codes, two sub-vector\n"
	    "sizes and two list counts; for ip, plain inner product and inner product reduced to\n"
	    "L2; for dim >= 256, a PCA before the lists; refine stores none, sq8, fp16, fp32. The\n"
	    "cheapest (modelled QPS, then bytes per item) that reaches the target at every tuned k\n"
	    "wins; a request with no nprobe or recall_target is served at that target."),
	CDX_OPT_NUM_("recall-target", CDX_OPT_DOUBLE, O(o.recall_target), "R",
	    "k-recall@k to reach at every tuned k (default 0.95)", 0.01, 1),
	CDX_OPT_CALL_("tune-k", "LIST", "the k to tune for, e.g. 10,100,500 (the default)", set_tune_k),
	CDX_OPT_STR_("tune-queries", O(o.tune_queries), "FILE",
	    "query vectors to tune on (.fvecs/.npy; recommended for ip, where\nusers are not items); "
	    "default: a "
	    "seeded sample of the input's rows,\nheld out of the index the tuner measures"),
	CDX_OPT_NUM_("tune-budget", CDX_OPT_DOUBLE, O(o.tune_budget_s), "S",
	    "stop measuring new candidates after S seconds (default 120)", 1, 1e6),
	CDX_OPT_NUM_("tune-max-queries", CDX_OPT_U32, O(o.tune_queries_max), "N",
	    "queries used, half to choose, half to check (default 1000)", 20, 1000000),
	CDX_OPT_FLAG_(
	    "no-tune", O(o.no_tune), "no tuning: the fixed defaults below (fast; no operating points)"),
	CDX_OPT_HEADING("index without tuning (--no-tune, or --factory):"),
	CDX_OPT_STR_("factory", O(o.factory), "STR",
	    "Faiss index_factory string; default IVF{nlist},PQ{M}x{nbits}np with\n"
	    "  nlist = power of two nearest 4*sqrt(N), in [16, 65536], and at most\n"
	    "          N/39 (k-means wants >= 39 points per centroid)\n"
	    "  M     = largest divisor of dim <= dim/4 (128->32, 100->25, 64->16)\n"
	    "  nbits = 8 if N >= 10000, else 4\n"
	    "N < 1000 uses \"Flat\" (exact). PQ components get the `np` suffix\n"
	    "(no polysemous training) unless --polysemous. Fast-scan (x4fs),\n"
	    "L2norm and wrapped IVF (OPQ/PCA prefix, refine suffix) are refused."),
	CDX_OPT_FLAG_(
	    "polysemous", O(o.polysemous), "keep polysemous training for PQ components of --factory (slow)"),
	CDX_OPT_NUM_("train-sample", CDX_OPT_U64, O(o.train_sample), "N",
	    "rows to train on; default min(N, max(100000, 64*nlist))", 1, 18446744073709551615.0),
	CDX_OPT_NUM_("seed", CDX_OPT_U64, O(o.seed), "N",
	    "sample seed (default 1234); same input + seed = identical shards", 0, 0),
	CDX_OPT_CALL_("refine", "KIND",
	    "none|sq8|fp16|fp32: store vectors for exact re-ranking (default: chosen\nby tuning; none with "
	    "--no-tune or "
	    "--factory)",
	    set_refine),
	CDX_OPT_NUM_("shards", CDX_OPT_U32, O(o.nshards), "N",
	    "number of shard files (default 1); item -> shard by hash of its id", 1, 9999),
	CDX_OPT_HEADING("run:"),
	CDX_OPT_CALL_("keep", "N", "published versions to keep (default 3)", set_keep),
	CDX_OPT_NUM_("threads", CDX_OPT_INT, O(o.threads), "N",
	    "threads for Faiss (default: all cores). OpenMP waits passively\n(OMP_WAIT_POLICY=passive unless "
	    "set); "
	    "BLAS uses 1 thread for\ntraining, N for encoding",
	    1, 1024),
	CDX_OPT_STR_("work", O(o.work), "WORKDIR",
	    "work directory of the distributed steps (plan.json,\ntrained.faissindex, shard outputs)"),
	CDX_OPT_NUM_("shard", CDX_OPT_U64, O(shard), "I",
	    "encode: the shard this job writes (e.g. JOB_COMPLETION_INDEX)", 0, 9998),
	CDX_OPT_NUM_("of", CDX_OPT_U64, O(of), "N", "encode: the number of shards", 1, 9999),
	CDX_OPT_FLAG_("quiet", O(o.quiet), "no progress output and no info logs"),
};
#undef O

static const struct cdx_opt_command build_command = {
	.prog = "candex build",
	.head
	= "usage: candex build --input FILE --collection NAME --metric l2|ip|cos --out DIR [options]\n"
	  "       candex build train   (same options) --work WORKDIR\n"
	  "       candex build encode  --work WORKDIR --shard I --of N [--input FILE]\n"
	  "       candex build publish --work WORKDIR [--out DIR] [--keep N]\n"
	  "\n"
	  "Quantizes embeddings into IVF-PQ shard files and publishes them as a new version\n"
	  "DIR/NAME/<version>/ (manifest.json + shard-I-of-N.cdx), then points DIR/NAME/CURRENT at it.\n"
	  "Nothing is published on any error or interrupt; old versions beyond --keep are removed.\n"
	  "Plain `candex build` runs train, encode (every shard) and publish in one process.\n",
	.tail = "The manifest gets default_nprobe = clamp(nlist/32, 1, 256) and default_refine_factor 4\n"
	        "with a refine store, else 0. On success the version directory is printed on stdout.\n"
	        "Exit status: 0 ok, 1 failure, 2 usage.\n",
	.opts = build_options,
	.nopts = CDX_ARRAY_LEN(build_options),
};

static int
fail(int rc)
{
	fprintf(stderr, "candex build: %s (%s)\n", cdx_last_error(), cdx_errname(rc));
	return CLI_EXIT_FAIL;
}

static void
print_version_dir(const char *out, const char *collection, const char *version)
{
	char *rp = realpath(out, NULL);
	printf("%s/%s/%s\n", rp ? rp : out, collection, version);
	fflush(stdout);
	free(rp);
}

int
cmd_build(int argc, char **argv)
{
	enum { ONESHOT, TRAIN, ENCODE, PUBLISH } mode = ONESHOT;
	const char *modename = "build";
	if (argc >= 2 && argv[1][0] != '-') {
		if (strcmp(argv[1], "train") == 0)
			mode = TRAIN;
		else if (strcmp(argv[1], "encode") == 0)
			mode = ENCODE;
		else if (strcmp(argv[1], "publish") == 0)
			mode = PUBLISH;
		else
			return cdx_opt_command_fail(
			    &build_command, "unknown step '%s' (train, encode, publish)", argv[1]);
		modename = argv[1];
		argc--;
		argv++;
	}
	struct build_cli cli = { .shard = UINT64_MAX };
	cdx_build_opts_init(&cli.o);
	int prc = cdx_opt_command_parse(&build_command, &cli, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	struct cdx_build_opts o = cli.o;
	if (mode == ONESHOT || mode == TRAIN) {
		if (o.input == NULL || o.collection == NULL || !cli.metric_set || o.out == NULL)
			return cdx_opt_command_fail(
			    &build_command, "--input, --collection, --metric and --out are required");
		if (!cdx_name_valid(o.collection))
			return cdx_opt_command_fail(&build_command,
			    "--collection '%s': names are [A-Za-z0-9_.-]{1,63}, not starting with '.'",
			    o.collection);
	}
	if (mode != ONESHOT && o.work == NULL)
		return cdx_opt_command_fail(&build_command, "build %s needs --work WORKDIR", modename);
	if (mode == ENCODE && (cli.shard == UINT64_MAX || cli.of == 0))
		return cdx_opt_command_fail(&build_command, "build encode needs --shard I and --of N");
	uint64_t shard = cli.shard, of = cli.of;
	int have_keep = cli.keep_set;
	if (o.quiet)
		cdx_log_set_level(CDX_LOG_WARN);
	/* BLAS threads are set per phase by src/builder (train.c, encode.c). */
	if (o.threads > 0)
		omp_set_num_threads(o.threads);
	int rc = cdx_build_signals_start();
	if (rc != CDX_OK)
		return fail(rc);

	char version[CDX_NAME_MAX];
	switch (mode) {
	case ONESHOT:
		if ((rc = cdx_build_run(&o, version)) != CDX_OK)
			return fail(rc);
		print_version_dir(o.out, o.collection, version);
		return CLI_EXIT_OK;
	case TRAIN: {
		struct cdx_build_plan *p = NULL;
		if ((rc = cdx_build_train(&o, &p)) != CDX_OK)
			return fail(rc);
		rc = cdx_build_plan_save(p, o.work);
		cdx_build_plan_free(p);
		if (rc != CDX_OK)
			return fail(rc);
		cdx_info("BLD-TRAIN",
		    "plan saved in %s; next: candex build encode --work %s --shard I --of %u", o.work, o.work,
		    o.nshards);
		return CLI_EXIT_OK;
	}
	case ENCODE:
		if ((rc = cdx_build_encode_work(o.work, (uint32_t) shard, (uint32_t) of, o.input, o.quiet))
		    != CDX_OK)
			return fail(rc);
		return CLI_EXIT_OK;
	case PUBLISH: {
		struct cdx_build_plan *p = NULL;
		if ((rc = cdx_build_publish_work(o.work, o.out, have_keep ? o.keep : 0, version)) != CDX_OK)
			return fail(rc);
		if ((rc = cdx_build_plan_load(&p, o.work, 0)) == CDX_OK) {
			print_version_dir(o.out ? o.out : p->out, p->collection, version);
			cdx_build_plan_free(p);
		}
		return CLI_EXIT_OK;
	}
	}
	return CLI_EXIT_FAIL;
}
