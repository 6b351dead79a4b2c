/*
 * cmd_recall.c — `candex recall`: measure recall, latency, QPS and memory of
 * an index version (in process) or a live server, over a sweep of nprobe x
 * refine factor, and pick operating points. The options are parsed here; the
 * measurement is src/recall (cdx_recall_run). See docs/recall.md.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/opt.h"
#include "recall/recall.h"

static int
set_nprobes(const char *v, void *opts)
{
	struct cdx_recall_job *j = opts;
	double list[CDX_RECALL_MAX_LIST];
	size_t n;
	int rc = cdx_parse_list(v, 1, 1e6, list, CDX_RECALL_MAX_LIST, &n);
	for (size_t i = 0; rc == CDX_OK && i < n; i++) {
		if (list[i] != floor(list[i]))
			return cdx_error(CDX_EINVAL, "%g is not a positive integer", list[i]);
		j->nprobes[i] = (uint32_t) list[i];
	}
	j->n_nprobes = rc == CDX_OK ? n : 0;
	return rc;
}

static int
set_refines(const char *v, void *opts)
{
	struct cdx_recall_job *j = opts;
	double list[CDX_RECALL_MAX_LIST];
	size_t n;
	int rc = cdx_parse_list(v, 0, 1e6, list, CDX_RECALL_MAX_LIST, &n);
	for (size_t i = 0; rc == CDX_OK && i < n; i++) {
		if (list[i] != 0 && list[i] < 1)
			return cdx_error(CDX_EINVAL, "%g: use 0 (none) or a factor >= 1", list[i]);
		j->refines[i] = list[i] == 0 ? CDX_RECALL_REFINE_NONE : (float) list[i];
	}
	j->n_refines = rc == CDX_OK ? n : 0;
	return rc;
}

/* --target is repeatable: every use adds to the list. */
static int
add_targets(const char *v, void *opts)
{
	struct cdx_recall_job *j = opts;
	double list[CDX_RECALL_MAX_LIST];
	size_t n;
	int rc = cdx_parse_list(v, 0, 1, list, CDX_RECALL_MAX_LIST, &n);
	for (size_t i = 0; rc == CDX_OK && i < n; i++) {
		if (list[i] <= 0)
			return cdx_error(CDX_EINVAL, "%g is not a recall in (0, 1]", list[i]);
		if (j->n_targets >= CDX_RECALL_MAX_LIST)
			return cdx_error(CDX_EINVAL, "at most %d targets", CDX_RECALL_MAX_LIST);
		j->targets[j->n_targets++] = list[i];
	}
	return rc;
}

static int
set_format(const char *v, void *opts)
{
	return cdx_input_format_parse(v, &((struct cdx_recall_job *) opts)->format);
}

#define O(f) offsetof(struct cdx_recall_job, f)
static const struct cdx_opt recall_options[] = {
	CDX_OPT_HEADING("what to measure:"),
	CDX_OPT_STR_("index", O(index), "PATH",
	    "a version directory (DIR/NAME, DIR/NAME/CURRENT or DIR/NAME/<v>),\nsearched in process; with "
	    "--url, "
	    "only read for --save and memory"),
	CDX_OPT_STR_("url", O(url), "URL", "a live candex server (tcp://, ipc://, tls+tcp://)"),
	CDX_OPT_STR_("collection", O(collection), "NAME", "the collection on the server (with --url)"),
	CDX_OPT_NUM_("timeout-ms", CDX_OPT_U32, O(timeout_ms), "N",
	    "per-request client timeout (default 10000)", 0, 86400000),
	CDX_OPT_HEADING("queries and truth:"),
	CDX_OPT_STR_("queries", O(queries), "FILE", "query vectors (.fvecs, .npy float32/float16/float64)"),
	CDX_OPT_STR_("base", O(base), "FILE",
	    "the vectors the index was built from (the builder's --input);\nbase row i is the item with id i "
	    "unless "
	    "--ids is given"),
	CDX_OPT_STR_(
	    "ids", O(ids), "FILE", "the builder's --ids file (text or .npy int64): ids of the base rows"),
	CDX_OPT_STR_("gt", O(gt), "FILE.ivecs",
	    "ground truth: per query, the nearest base rows, nearest first;\nwithout --base, hits are "
	    "matched by row "
	    "only (no tie rule)"),
	CDX_OPT_CALL_("format", "FMT",
	    "fvecs, npy or raw: read --queries and --base as FMT whatever their\nnames (raw: little-endian "
	    "float32 of "
	    "the index's dimension)",
	    set_format),
	CDX_OPT_NUM_("max-queries", CDX_OPT_SIZE_T, O(max_queries), "N",
	    "use only the first N queries (and ground-truth rows)", 0, 0),
	CDX_OPT_STR_("cache-dir", O(cache_dir), "DIR",
	    "where computed truth is cached (default $CANDEX_CACHE/recall-truth,\ni.e. "
	    "~/.cache/candex/recall-truth)"),
	CDX_OPT_FLAG_("no-cache", O(no_cache), "neither read nor write the truth cache"),
	CDX_OPT_NUM_("epsilon", CDX_OPT_DOUBLE, O(eps), "E",
	    "tie tolerance, in distance units (l2: Euclidean distance;\nip: inner product; cos: 1 - cosine); "
	    "default "
	    "0.001",
	    0, 1e30),
	CDX_OPT_HEADING("sweep:"),
	CDX_OPT_ENTRY("k", 'k', CDX_OPT_U32, O(k), "K",
	    "results per query (default 10); recall at k is what targets use", 1, 100000, NULL),
	CDX_OPT_CALL_("nprobe", "LIST", "comma list (default 1,2,4,... up to min(nlist, 1024))", set_nprobes),
	CDX_OPT_CALL_("refine", "LIST",
	    "comma list of refine factors, 0 = none (default 0, and 2,4,8 when\nthe index has a refine "
	    "store)",
	    set_refines),
	CDX_OPT_NUM_("latency-queries", CDX_OPT_SIZE_T, O(latency_queries), "N",
	    "single-query calls per setting for latency (default: all queries)", 0, 0),
	CDX_OPT_NUM_("threads", CDX_OPT_U32, O(threads), "N",
	    "threads for the batched QPS pass (default: online CPUs)", 0, 64),
	CDX_OPT_NUM_(
	    "batch", CDX_OPT_U32, O(batch), "N", "queries per call in the QPS pass (default 64)", 1, 100000),
	CDX_OPT_NUM_("min-time", CDX_OPT_DOUBLE, O(min_time), "S",
	    "repeat each QPS pass (>= 2 times, the best counts) until S seconds\n(default 0.3)", 0, 3600),
	CDX_OPT_FLAG_("defaults", O(defaults),
	    "measure only what a request with no nprobe, refine factor or\nrecall target gets: the "
	    "collection's default "
	    "operating point\nat k (shown as nprobe 0, refine 0)"),
	CDX_OPT_FLAG_("baseline", O(baseline),
	    "also time exact search (Faiss flat over --base, every core) and\nreport each setting's QPS as a "
	    "speed-up "
	    "over it"),
	CDX_OPT_HEADING("output:"),
	CDX_OPT_STR_("csv", O(csv), "FILE", "results as CSV"),
	CDX_OPT_STR_("json", O(json), "FILE", "results, settings and operating points as JSON"),
	CDX_OPT_STR_("plot", O(plot), "FILE.png",
	    "recall against QPS (log scale), one line per refine factor, made\nby gnuplot (FILE.gp and "
	    "FILE.dat are kept "
	    "next to it)"),
	CDX_OPT_STR_("title", O(title), "TEXT", "plot title"),
	CDX_OPT_FLAG_("quiet", O(quiet), "no progress on stderr"),
	CDX_OPT_HEADING("operating points:"),
	CDX_OPT_CALL_("target", "R[,R...]",
	    "pick the cheapest setting (highest QPS) reaching recall R at k\nwith 95% confidence (recall - "
	    "1.645 x its "
	    "standard error over\nthe queries >= R); repeatable; exit status 1 if not reached",
	    add_targets),
	CDX_OPT_FLAG_("save", O(save),
	    "write the picked points into the version's manifest.json\n(operating_points), replacing points "
	    "of the "
	    "same k and target"),
};
#undef O

static const struct cdx_opt_command recall_command = {
	.prog = "candex recall",
	.head
	= "usage: candex recall (--index PATH | --url URL --collection NAME [--index PATH])\n"
	  "                     --queries FILE (--base FILE | --gt FILE.ivecs [--base FILE]) [options]\n"
	  "\n"
	  "Measures k-recall@k (10-recall@10, 100-recall@100, 1-recall@k), latency p50/p95/p99,\n"
	  "QPS and memory per vector for every nprobe x refine-factor setting, against exact\n"
	  "ground truth (a Faiss flat index over the base vectors, cached, or an .ivecs file).\n"
	  "A hit counts when its true distance is <= the k-th true distance + epsilon.\n",
	.tail = "Exit status: 0 success, 1 failure (or a target not reached), 2 usage error.\n",
	.opts = recall_options,
	.nopts = CDX_ARRAY_LEN(recall_options),
};

int
cmd_recall(int argc, char **argv)
{
	struct cdx_recall_job j;
	cdx_recall_job_init(&j);
	int prc = cdx_opt_command_parse(&recall_command, &j, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	if (cdx_recall_job_check(&j) != CDX_OK)
		return cdx_opt_command_fail(&recall_command, "%s", cdx_last_error());
	int unreached = 0;
	if (cdx_recall_run(&j, stdout, &unreached) != CDX_OK) {
		fprintf(stderr, "candex recall: %s\n", cdx_last_error());
		return CLI_EXIT_FAIL;
	}
	return unreached ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
