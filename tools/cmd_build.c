/*
 * cmd_build.c — `candex build`: embeddings -> IVF-PQ shards -> a published
 * version; and its distributed steps `build train|encode|publish`.
 * The work is in src/builder/ (see build.h DESIGN); this file parses options.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder/build.h"
#include "cli.h"

static const char usage_text[]
    = "usage: candex build --input FILE --collection NAME --metric l2|ip|cos --out DIR [options]\n"
      "       candex build train   (same options) --work WORKDIR\n"
      "       candex build encode  --work WORKDIR --shard I --of N [--input FILE]\n"
      "       candex build publish --work WORKDIR [--out DIR] [--keep N]\n"
      "\n"
      "Quantizes embeddings into IVF-PQ shard files and publishes them as a new version\n"
      "DIR/NAME/<version>/ (manifest.json + shard-I-of-N.cdx), then points DIR/NAME/CURRENT at it.\n"
      "Nothing is published on any error or interrupt; old versions beyond --keep are removed.\n"
      "Plain `candex build` runs train, encode (every shard) and publish in one process.\n"
      "\n"
      "inputs:\n"
      "  --input FILE         .fvecs or .npy (float32, float16 or float64, C order, rows x dim);\n"
      "                       other names are refused unless --format says what they hold\n"
      "  --format FMT         fvecs, npy or raw (headerless little-endian float32, with --dim D)\n"
      "  --dim D              dimension of raw input (checked against .fvecs/.npy if given)\n"
      "  --keys FILE          one string key per line, exactly one line per row, unique\n"
      "  --ids FILE           one int64 id per line (or .npy int64), unique; default: row numbers\n"
      "  --collection NAME    [A-Za-z0-9_.-]{1,63}\n"
      "  --metric l2|ip|cos   cos: vectors are L2-normalised and indexed for inner product\n"
      "  --out DIR            index directory (the collection lives in DIR/NAME)\n"
      "  --model-version STR  label of the embedding model that produced the vectors\n"
      "\n"
      "index (defaults from N rows and dim):\n"
      "  --factory STR        Faiss index_factory string; default IVF{nlist},PQ{M}x{nbits}np with\n"
      "                         nlist = power of two nearest 4*sqrt(N), in [16, 65536], and at most\n"
      "                                 N/39 (k-means wants >= 39 points per centroid)\n"
      "                         M     = largest divisor of dim <= dim/4 (128->32, 100->25, 64->16)\n"
      "                         nbits = 8 if N >= 10000, else 4\n"
      "                       N < 1000 uses \"Flat\" (exact). PQ components get the `np` suffix\n"
      "                       (no polysemous training) unless --polysemous. Fast-scan (x4fs),\n"
      "                       L2norm and wrapped IVF (OPQ/PCA prefix, refine suffix) are refused.\n"
      "  --polysemous         keep polysemous training for PQ components of --factory (slow)\n"
      "  --train-sample N     rows to train on; default min(N, max(100000, 64*nlist))\n"
      "  --seed N             sample seed (default 1234); same input + seed = identical shards\n"
      "  --refine KIND        none|sq8|fp16|fp32: store vectors for exact re-ranking (default none)\n"
      "  --shards N           number of shard files (default 1); item -> shard by hash of its id\n"
      "  The manifest gets default_nprobe = clamp(nlist/32, 1, 256) and default_refine_factor\n"
      "  4 with a refine store, else 0.\n"
      "\n"
      "run:\n"
      "  --keep N             published versions to keep (default 3)\n"
      "  --threads N          threads for Faiss (default: all cores). OpenMP waits passively\n"
      "                       (OMP_WAIT_POLICY=passive unless set); BLAS uses 1 thread for\n"
      "                       training, N for encoding\n"
      "  --work WORKDIR       work directory of the distributed steps (plan.json,\n"
      "                       trained.faissindex, shard outputs)\n"
      "  --shard I --of N     encode: the shard this job writes (e.g. JOB_COMPLETION_INDEX)\n"
      "  --quiet              no progress output and no info logs\n"
      "\n"
      "On success the version directory is printed on stdout. Exit status: 0 ok, 1 failure, 2 usage.\n";

enum {
	OPT_INPUT = 1000,
	OPT_COLLECTION,
	OPT_METRIC,
	OPT_OUT,
	OPT_KEYS,
	OPT_IDS,
	OPT_FACTORY,
	OPT_SHARDS,
	OPT_REFINE,
	OPT_SEED,
	OPT_MODEL_VERSION,
	OPT_DIM,
	OPT_TRAIN_SAMPLE,
	OPT_KEEP,
	OPT_THREADS,
	OPT_QUIET,
	OPT_POLYSEMOUS,
	OPT_WORK,
	OPT_SHARD,
	OPT_OF,
	OPT_HELP,
	OPT_FORMAT,
};

static const struct option long_opts[] = {
	{ "input", required_argument, NULL, OPT_INPUT },
	{ "collection", required_argument, NULL, OPT_COLLECTION },
	{ "metric", required_argument, NULL, OPT_METRIC },
	{ "out", required_argument, NULL, OPT_OUT },
	{ "keys", required_argument, NULL, OPT_KEYS },
	{ "ids", required_argument, NULL, OPT_IDS },
	{ "factory", required_argument, NULL, OPT_FACTORY },
	{ "shards", required_argument, NULL, OPT_SHARDS },
	{ "refine", required_argument, NULL, OPT_REFINE },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "model-version", required_argument, NULL, OPT_MODEL_VERSION },
	{ "dim", required_argument, NULL, OPT_DIM },
	{ "train-sample", required_argument, NULL, OPT_TRAIN_SAMPLE },
	{ "keep", required_argument, NULL, OPT_KEEP },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "polysemous", no_argument, NULL, OPT_POLYSEMOUS },
	{ "work", required_argument, NULL, OPT_WORK },
	{ "shard", required_argument, NULL, OPT_SHARD },
	{ "of", required_argument, NULL, OPT_OF },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "format", required_argument, NULL, OPT_FORMAT },
	{ NULL, 0, NULL, 0 },
};

static int
parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*s == '-' || *s == 0 || *end != 0 || errno != 0 || v < min || v > max) {
		fprintf(stderr, "candex build: --%s '%s': expected an integer in [%llu, %llu]\n", opt, s,
		    (unsigned long long) min, (unsigned long long) max);
		return -1;
	}
	*out = v;
	return 0;
}

static int
wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return 1;
	return 0;
}

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

/* passive_omp makes sure OpenMP workers sleep instead of spinning while
 * they wait: Faiss alternates OpenMP regions with single-threaded sgemm and
 * serial code, and spinning workers steal the cores those need — and on a
 * shared machine, everyone else's. Measured on 2 cores: encoding 1M x 128
 * took 22.4 s spinning, 16.7 s passive; with one other busy process,
 * training took 113 s spinning, 41 s passive. libgomp reads the policy
 * once at start-up, so if it is unset we set it and re-execute ourselves
 * with the same command line (from /proc/self/cmdline). */
static void
passive_omp(void)
{
	if (getenv("OMP_WAIT_POLICY") != NULL)
		return;
	setenv("OMP_WAIT_POLICY", "passive", 1);
	char *cmdline = NULL;
	size_t len = 0;
	if (cdx_read_file("/proc/self/cmdline", &cmdline, &len) != CDX_OK)
		return; /* /proc unreadable (procfs size 0): carry on spinning */
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += cmdline[i] == 0;
	char **args = calloc(n + 1, sizeof(char *));
	if (args == NULL || n == 0) {
		free(args);
		free(cmdline);
		return;
	}
	for (size_t i = 0, a = 0; i < len && a < n; a++) {
		args[a] = cmdline + i;
		i += strlen(cmdline + i) + 1;
	}
	execv("/proc/self/exe", args);
	free(args); /* exec failed: carry on */
	free(cmdline);
}

int
cmd_build(int argc, char **argv)
{
	enum { ONESHOT, TRAIN, ENCODE, PUBLISH } mode = ONESHOT;
	const char *modename = "build";
	if (wants_help(argc, argv)) {
		fputs(usage_text, stdout);
		return CLI_EXIT_OK;
	}
	passive_omp();
	if (argc >= 2 && argv[1][0] != '-') {
		if (strcmp(argv[1], "train") == 0)
			mode = TRAIN;
		else if (strcmp(argv[1], "encode") == 0)
			mode = ENCODE;
		else if (strcmp(argv[1], "publish") == 0)
			mode = PUBLISH;
		else {
			fprintf(stderr, "candex build: unknown step '%s' (train, encode, publish)\n%s",
			    argv[1], usage_text);
			return CLI_EXIT_USAGE;
		}
		modename = argv[1];
		argc--;
		argv++;
	}
	struct cdx_build_opts o;
	cdx_build_opts_init(&o);
	const char *metric = NULL, *refine = NULL;
	uint64_t v, shard = UINT64_MAX, of = 0;
	int have_keep = 0;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_INPUT:
			o.input = optarg;
			break;
		case OPT_COLLECTION:
			o.collection = optarg;
			break;
		case OPT_METRIC:
			metric = optarg;
			break;
		case OPT_OUT:
			o.out = optarg;
			break;
		case OPT_FORMAT:
			if (cdx_input_format_parse(optarg, &o.input_format) != CDX_OK) {
				fprintf(stderr, "candex build: --format: %s\n", cdx_last_error());
				return CLI_EXIT_USAGE;
			}
			break;
		case OPT_KEYS:
			o.keys = optarg;
			break;
		case OPT_IDS:
			o.ids = optarg;
			break;
		case OPT_FACTORY:
			o.factory = optarg;
			break;
		case OPT_SHARDS:
			if (parse_u64("shards", optarg, 1, 9999, &v) != 0)
				return CLI_EXIT_USAGE;
			o.nshards = (uint32_t) v;
			break;
		case OPT_REFINE:
			refine = optarg;
			break;
		case OPT_SEED:
			if (parse_u64("seed", optarg, 0, UINT64_MAX, &v) != 0)
				return CLI_EXIT_USAGE;
			o.seed = v;
			break;
		case OPT_MODEL_VERSION:
			if (strlen(optarg) >= 128) {
				fprintf(stderr, "candex build: --model-version: at most 127 bytes\n");
				return CLI_EXIT_USAGE;
			}
			o.model_version = optarg;
			break;
		case OPT_DIM:
			if (parse_u64("dim", optarg, 1, 65536, &v) != 0)
				return CLI_EXIT_USAGE;
			o.dim = (uint32_t) v;
			break;
		case OPT_TRAIN_SAMPLE:
			if (parse_u64("train-sample", optarg, 1, UINT64_MAX, &v) != 0)
				return CLI_EXIT_USAGE;
			o.train_sample = v;
			break;
		case OPT_KEEP:
			if (parse_u64("keep", optarg, 1, 100000, &v) != 0)
				return CLI_EXIT_USAGE;
			o.keep = (unsigned) v;
			have_keep = 1;
			break;
		case OPT_THREADS:
			if (parse_u64("threads", optarg, 1, 1024, &v) != 0)
				return CLI_EXIT_USAGE;
			o.threads = (int) v;
			break;
		case OPT_QUIET:
			o.quiet = 1;
			break;
		case OPT_POLYSEMOUS:
			o.polysemous = 1;
			break;
		case OPT_WORK:
			o.work = optarg;
			break;
		case OPT_SHARD:
			if (parse_u64("shard", optarg, 0, 9998, &shard) != 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_OF:
			if (parse_u64("of", optarg, 1, 9999, &of) != 0)
				return CLI_EXIT_USAGE;
			break;
		case 'h':
		case OPT_HELP:
			fputs(usage_text, stdout);
			return CLI_EXIT_OK;
		default:
			fprintf(stderr,
			    "candex build: unknown or incomplete option '%s'\n(see candex build --help)\n",
			    argv[optind - 1]);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "candex build: unexpected argument '%s'\n", argv[optind]);
		return CLI_EXIT_USAGE;
	}
	if (metric != NULL && cdx_metric_parse(metric, &o.metric) != CDX_OK) {
		fprintf(stderr, "candex build: --metric: %s\n", cdx_last_error());
		return CLI_EXIT_USAGE;
	}
	if (refine != NULL && cdx_refine_parse(refine, &o.refine) != CDX_OK) {
		fprintf(stderr, "candex build: --refine: %s\n", cdx_last_error());
		return CLI_EXIT_USAGE;
	}
	if (mode == ONESHOT || mode == TRAIN) {
		if (o.input == NULL || o.collection == NULL || metric == NULL || o.out == NULL) {
			fprintf(stderr,
			    "candex %s: --input, --collection, --metric and --out are required\n"
			    "(see candex build --help)\n",
			    mode == TRAIN ? "build train" : "build");
			return CLI_EXIT_USAGE;
		}
		if (!cdx_name_valid(o.collection)) {
			fprintf(stderr,
			    "candex build: --collection '%s': names are [A-Za-z0-9_.-]{1,63}, not starting "
			    "with '.'\n",
			    o.collection);
			return CLI_EXIT_USAGE;
		}
	}
	if (mode != ONESHOT && o.work == NULL) {
		fprintf(stderr, "candex build %s: --work WORKDIR is required\n", modename);
		return CLI_EXIT_USAGE;
	}
	if (mode == ENCODE && (shard == UINT64_MAX || of == 0)) {
		fprintf(stderr, "candex build encode: --shard I and --of N are required\n");
		return CLI_EXIT_USAGE;
	}
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
