/*
 * cmd_query.c — `candex query`: ask a server for the top-k candidates of
 * vectors (.fvecs/.npy rows or stdin) or of stored items (--key), and print
 * them as a table or JSON. A thin user of the client library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "candex/client.h"
#include "cli.h"
#include "common/common.h"
#include "input/input.h"

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: candex query --url URL --collection NAME (--vector-file F [--row I] [--count N] | --key "
	    "KEY... | --stdin)\n"
	    "                    [-k K] [--nprobe N] [--refine F] [--recall-target R] [--exclude-key K...]\n"
	    "                    [--exclude-id ID...] [--model-version V] [--json] [--timeout MS]\n\n"
	    "Asks a candex server for the top-k candidates and prints rank, id, key and score.\n\n"
	    "  --url URL             server address (tcp://, ipc://, tls+tcp://)\n"
	    "  --collection NAME     collection to search\n"
	    "  --vector-file F       query vectors from an .fvecs or .npy (float32/float16/float64) file\n"
	    "  --format FMT          read --vector-file as fvecs, npy or raw (little-endian float32,\n"
	    "                        with --dim D) whatever its name\n"
	    "  --row I               first row of --vector-file to send [0]\n"
	    "  --count N             rows to send as one batch [1]\n"
	    "  --key KEY             search with a stored item's vector (repeatable: a batch)\n"
	    "  --stdin               read vectors from stdin: whitespace-separated floats, one vector a "
	    "line\n"
	    "  -k, --k K             candidates per query [10]\n"
	    "  --nprobe N            IVF lists to scan (0 = server default or --recall-target) [0]\n"
	    "  --refine F            re-rank k x F candidates exactly (0 = collection default) [0]\n"
	    "  --recall-target R     let the server pick the measured operating point reaching R\n"
	    "  --exclude-key K       never return this item (repeatable)\n"
	    "  --exclude-id ID       never return this id (repeatable)\n"
	    "  --model-version V     refuse if the index was built from another embedding model\n"
	    "  --json                JSON output: "
	    "{\"index_version\",\"nprobe\",\"results\":[{\"hits\":[{\"id\",\"key\",\"score\"}]}]}\n"
	    "  --timeout MS          per-attempt timeout and server deadline [5000]\n"
	    "  --retries N           retries on timeout/unavailable/overload, with backoff [2]\n"
	    "  --info                print the server's collections (JSON) instead of searching\n"
	    "  --reload              ask an admin listener to reload (--collection NAME: only that one)\n"
	    "  --tls-ca F, --tls-cert F, --tls-key F, --tls-server-name NAME   for tls+tcp://\n"
	    "  -h, --help            show this help\n");
}

/* ---- output ---------------------------------------------------------- */

static void
print_json(const struct cdx_result *r)
{
	json_t *root = json_object(), *results = json_array();
	json_object_set_new(root, "index_version", json_string(r->index_version ? r->index_version : ""));
	json_object_set_new(root, "metric", json_string(r->metric ? r->metric : ""));
	json_object_set_new(root, "nprobe", json_integer(r->nprobe));
	json_object_set_new(root, "refine_factor", json_real(r->refine_factor));
	json_object_set_new(root, "recall_target", json_real(r->recall_target));
	json_object_set_new(root, "server_time_us", json_integer((json_int_t) r->server_time_us));
	for (size_t i = 0; i < r->nqueries; i++) {
		json_t *hits = json_array();
		for (size_t j = 0; j < r->queries[i].nhits; j++) {
			const struct cdx_client_hit *h = &r->queries[i].hits[j];
			json_array_append_new(hits,
			    json_pack("{s:I, s:s, s:f}", "id", (json_int_t) h->id, "key",
			        h->key ? h->key : "", "score", (double) h->score));
		}
		json_array_append_new(results, json_pack("{s:o}", "hits", hits));
	}
	json_object_set_new(root, "results", results);
	char *text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(2) | JSON_REAL_PRECISION(7));
	if (text != NULL)
		printf("%s\n", text);
	free(text);
	json_decref(root);
}

static void
print_table(const struct cdx_result *r, const char *collection)
{
	printf("collection %s  version %s  metric %s  nprobe %u  refine %g", collection, r->index_version,
	    r->metric, r->nprobe, (double) r->refine_factor);
	if (r->recall_target > 0)
		printf("  recall_target %g", (double) r->recall_target);
	printf("  server %.2f ms\n", (double) r->server_time_us / 1000.0);
	for (size_t i = 0; i < r->nqueries; i++) {
		if (r->nqueries > 1)
			printf("\nquery %zu\n", i);
		printf("%5s  %-12s  %-40s  %s\n", "rank", "id", "key", "score");
		for (size_t j = 0; j < r->queries[i].nhits; j++) {
			const struct cdx_client_hit *h = &r->queries[i].hits[j];
			printf("%5zu  %-12lld  %-40s  %.6g\n", j + 1, (long long) h->id,
			    h->key && *h->key ? h->key : "-", (double) h->score);
		}
		if (r->queries[i].nhits == 0)
			printf("  (no candidates)\n");
	}
}

/* ---- main ------------------------------------------------------------ */

enum {
	OPT_URL = 256,
	OPT_COLLECTION,
	OPT_VECFILE,
	OPT_ROW,
	OPT_COUNT,
	OPT_KEY,
	OPT_STDIN,
	OPT_NPROBE,
	OPT_REFINE,
	OPT_RECALL,
	OPT_EXKEY,
	OPT_EXID,
	OPT_MODEL,
	OPT_JSON,
	OPT_TIMEOUT,
	OPT_RETRIES,
	OPT_INFO,
	OPT_RELOAD,
	OPT_TLS_CA,
	OPT_TLS_CERT,
	OPT_TLS_KEY,
	OPT_TLS_NAME,
	OPT_FORMAT,
	OPT_DIM,
};

static int
parse_num(const char *opt, const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (errno != 0 || end == v || *end != '\0' || !(d >= lo && d <= hi)) {
		fprintf(stderr, "candex query: %s wants a number in [%g, %g], not '%s'\n", opt, lo, hi, v);
		return -1;
	}
	*out = d;
	return 0;
}

struct strlist {
	const char **v;
	size_t n;
};

static int
strlist_add(struct strlist *l, const char *s)
{
	const char **grown = realloc(l->v, (l->n + 1) * sizeof(*grown));
	if (grown == NULL)
		return -1;
	l->v = grown;
	l->v[l->n++] = s;
	return 0;
}

int
cmd_query(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "url", required_argument, NULL, OPT_URL },
		{ "collection", required_argument, NULL, OPT_COLLECTION },
		{ "vector-file", required_argument, NULL, OPT_VECFILE },
		{ "row", required_argument, NULL, OPT_ROW },
		{ "count", required_argument, NULL, OPT_COUNT },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "stdin", no_argument, NULL, OPT_STDIN },
		{ "k", required_argument, NULL, 'k' },
		{ "nprobe", required_argument, NULL, OPT_NPROBE },
		{ "refine", required_argument, NULL, OPT_REFINE },
		{ "recall-target", required_argument, NULL, OPT_RECALL },
		{ "exclude-key", required_argument, NULL, OPT_EXKEY },
		{ "exclude-id", required_argument, NULL, OPT_EXID },
		{ "model-version", required_argument, NULL, OPT_MODEL },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "retries", required_argument, NULL, OPT_RETRIES },
		{ "info", no_argument, NULL, OPT_INFO },
		{ "reload", no_argument, NULL, OPT_RELOAD },
		{ "tls-ca", required_argument, NULL, OPT_TLS_CA },
		{ "tls-cert", required_argument, NULL, OPT_TLS_CERT },
		{ "tls-key", required_argument, NULL, OPT_TLS_KEY },
		{ "tls-server-name", required_argument, NULL, OPT_TLS_NAME },
		{ "format", required_argument, NULL, OPT_FORMAT },
		{ "dim", required_argument, NULL, OPT_DIM },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = NULL, *collection = NULL, *vecfile = NULL, *model = NULL;
	struct strlist keys = { 0 }, exkeys = { 0 };
	int64_t *exids = NULL;
	size_t nexids = 0;
	double row = 0, count = 1, dimopt = 0, k = 10, nprobe = 0, refine = 0, recall = 0, timeout = 5000,
	       retries = 2;
	int format = CDX_INPUT_AUTO, use_stdin = 0, json = 0, info = 0, reload = 0, rc = CLI_EXIT_USAGE, c;
	struct cdx_client_options co = { 0 };
	float *vectors = NULL;
	size_t nvec = 0;
	uint32_t dim = 0;
	cdx_client *client = NULL;
	struct cdx_result *res = NULL;
	struct cdx_client_error err;

	optind = 1;
	while ((c = getopt_long(argc, argv, "k:h", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_URL:
			url = optarg;
			break;
		case OPT_COLLECTION:
			collection = optarg;
			break;
		case OPT_VECFILE:
			vecfile = optarg;
			break;
		case OPT_ROW:
			if (parse_num("--row", optarg, 0, 1e15, &row))
				goto out;
			break;
		case OPT_COUNT:
			if (parse_num("--count", optarg, 1, 1e7, &count))
				goto out;
			break;
		case OPT_FORMAT:
			if (cdx_input_format_parse(optarg, &format) != CDX_OK) {
				fprintf(stderr, "candex query: --format: %s\n", cdx_last_error());
				goto out;
			}
			break;
		case OPT_DIM:
			if (parse_num("--dim", optarg, 1, CDX_INPUT_MAX_DIM, &dimopt))
				goto out;
			break;
		case OPT_KEY:
			if (strlist_add(&keys, optarg))
				goto out;
			break;
		case OPT_STDIN:
			use_stdin = 1;
			break;
		case 'k':
			if (parse_num("-k", optarg, 1, 1e7, &k))
				goto out;
			break;
		case OPT_NPROBE:
			if (parse_num("--nprobe", optarg, 0, 1e9, &nprobe))
				goto out;
			break;
		case OPT_REFINE:
			if (parse_num("--refine", optarg, 0, 1e6, &refine))
				goto out;
			break;
		case OPT_RECALL:
			if (parse_num("--recall-target", optarg, 0, 1, &recall))
				goto out;
			break;
		case OPT_EXKEY:
			if (strlist_add(&exkeys, optarg))
				goto out;
			break;
		case OPT_EXID: {
			char *end;
			errno = 0;
			long long id = strtoll(optarg, &end, 10);
			int64_t *grown;
			if (errno || end == optarg || *end) {
				fprintf(stderr, "candex query: --exclude-id wants an integer, not '%s'\n",
				    optarg);
				goto out;
			}
			if ((grown = realloc(exids, (nexids + 1) * sizeof(*grown))) == NULL)
				goto out;
			exids = grown;
			exids[nexids++] = id;
			break;
		}
		case OPT_MODEL:
			model = optarg;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case OPT_TIMEOUT:
			if (parse_num("--timeout", optarg, 1, 3600000, &timeout))
				goto out;
			break;
		case OPT_RETRIES:
			if (parse_num("--retries", optarg, 0, 100, &retries))
				goto out;
			break;
		case OPT_INFO:
			info = 1;
			break;
		case OPT_RELOAD:
			reload = 1;
			break;
		case OPT_TLS_CA:
			co.tls_ca_file = optarg;
			break;
		case OPT_TLS_CERT:
			co.tls_cert_file = optarg;
			break;
		case OPT_TLS_KEY:
			co.tls_key_file = optarg;
			break;
		case OPT_TLS_NAME:
			co.tls_server_name = optarg;
			break;
		case 'h':
			usage(stdout);
			rc = CLI_EXIT_OK;
			goto out;
		default:
			usage(stderr);
			goto out;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "candex query: unexpected argument '%s'\n", argv[optind]);
		goto out;
	}
	if (reload)
		info = 1; /* no query vectors either */
	if (url == NULL || (!info && collection == NULL)) {
		fprintf(stderr, "candex query: --url and --collection are required (see --help)\n");
		goto out;
	}
	if (!info && (vecfile != NULL) + (keys.n > 0) + use_stdin != 1) {
		fprintf(stderr, "candex query: give exactly one of --vector-file, --key or --stdin\n");
		goto out;
	}

	rc = CLI_EXIT_FAIL;
	if (!info) {
		int r = CDX_OK;
		struct cdx_vecs v = { 0 };
		if (vecfile != NULL)
			r = cdx_vecs_read(
			    &v, vecfile, (uint32_t) dimopt, format, (uint64_t) row, (size_t) count);
		else if (use_stdin)
			r = cdx_vecs_read_text(&v, stdin, "stdin");
		if (r != CDX_OK) {
			fprintf(stderr, "candex query: %s\n", cdx_last_error());
			goto out;
		}
		vectors = v.x;
		nvec = v.n;
		dim = v.dim;
	}
	co.timeout_ms = (uint32_t) timeout;
	co.retries = (uint32_t) retries;
	if (cdx_client_open(&client, url, &co, &err) != CDX_OK) {
		fprintf(stderr, "candex query: %s\n", err.message);
		goto out;
	}
	if (reload) {
		if (cdx_client_reload(client, collection, &err) != CDX_OK) {
			fprintf(stderr, "candex query: reload: %s: %s\n", cdx_errname(err.code), err.message);
			goto out;
		}
		printf("reloaded\n");
	}
	if (info) {
		char *text = NULL;
		if (cdx_client_info(client, collection, &text, &err) != CDX_OK) {
			fprintf(stderr, "candex query: %s: %s\n", cdx_errname(err.code), err.message);
			goto out;
		}
		printf("%s\n", text);
		free(text);
		rc = CLI_EXIT_OK;
		goto out;
	}
	struct cdx_query q = {
		.collection = collection,
		.vectors = vectors,
		.nvectors = nvec,
		.dim = dim,
		.keys = keys.v,
		.nkeys = keys.n,
		.k = (uint32_t) k,
		.nprobe = (uint32_t) nprobe,
		.refine_factor = (float) refine,
		.recall_target = (float) recall,
		.exclude_ids = exids,
		.n_exclude_ids = nexids,
		.exclude_keys = exkeys.v,
		.n_exclude_keys = exkeys.n,
		.model_version = model,
		.timeout_ms = (uint32_t) timeout,
	};
	if (vectors == NULL)
		q.nvectors = 0;
	if (cdx_client_search(client, &q, &res, &err) != CDX_OK) {
		fprintf(stderr, "candex query: %s: %s\n", cdx_errname(err.code), err.message);
		goto out;
	}
	if (json)
		print_json(res);
	else
		print_table(res, collection);
	rc = CLI_EXIT_OK;
out:
	cdx_result_free(res);
	cdx_client_close(client);
	free(vectors);
	free(keys.v);
	free(exkeys.v);
	free(exids);
	return rc;
}
