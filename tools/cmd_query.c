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
	    "  --vector-file F       query vectors from an .fvecs or .npy (float32/float16) file\n"
	    "  --row I               first row of --vector-file to send [0]\n"
	    "  --count N             rows to send as one batch [1]\n"
	    "  --key KEY             search with a stored item's vector (repeatable: a batch)\n"
	    "  --stdin               read vectors from stdin: whitespace-separated floats, one vector a "
	    "line\n"
	    "  -k, --k K             candidates per query [10]\n"
	    "  --nprobe N            IVF lists to scan (0 = the operating point for --recall-target,\n"
	    "                        else for the collection's default target) [0]\n"
	    "  --refine F            re-rank F x (k's tier) candidates exactly (0 = the operating point's or\n"
	    "                        the collection's default) [0]\n"
	    "  --recall-target R     the cheapest measured operating point reaching R at this k (0 = the\n"
	    "                        collection's default target); the answer says the point's measured\n"
	    "                        recall (expected_recall) and whether no point reaches R\n"
	    "  --exclude-key K       never return this item (repeatable)\n"
	    "  --exclude-id ID       never return this id (repeatable)\n"
	    "  --model-version V     refuse if the index was built from another embedding model\n"
	    "  --json                JSON output: "
	    "{\"index_version\",\"nprobe\",\"results\":[{\"hits\":[{\"id\",\"key\",\"score\"}]}]}\n"
	    "  --timeout MS          per-attempt timeout and server deadline [5000]\n"
	    "  --retries N           retries on timeout/unavailable/overload, with backoff [2]\n"
	    "  --info                print the server's collections (JSON) instead of searching\n"
	    "  --reload              ask an admin listener to reload (--collection NAME: only that one)\n"
	    "  --drop NAME           ask an admin listener to stop serving NAME, whose CURRENT link is\n"
	    "                        gone (a reload keeps serving such a collection)\n"
	    "  --tls-ca F, --tls-cert F, --tls-key F, --tls-server-name NAME   for tls+tcp:// (--tls-ca\n"
	    "                        is required: the CA that signed the server's certificate)\n"
	    "  --tls-insecure        tls+tcp:// without --tls-ca: encrypt but do not verify the server\n"
	    "  -h, --help            show this help\n");
}

/* ---- vector input --------------------------------------------------- */

/* read_fvecs_rows reads rows [row, row+count) of an .fvecs file. */
static int
read_fvecs_rows(FILE *f, const char *path, uint64_t row, size_t count, float **out, uint32_t *dimp)
{
	int32_t d;
	if (fread(&d, sizeof(d), 1, f) != 1 || d <= 0 || d > 1 << 20)
		return cdx_error(CDX_ECORRUPT, "%s: not an .fvecs file (bad first dimension)", path);
	uint64_t stride = 4 + 4 * (uint64_t) d;
	if (fseeko(f, (off_t) (row * stride), SEEK_SET) != 0)
		return cdx_error_errno(CDX_EIO, "%s: seek", path);
	float *v = malloc(count * (size_t) d * sizeof(float));
	if (v == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	for (size_t i = 0; i < count; i++) {
		int32_t di;
		if (fread(&di, sizeof(di), 1, f) != 1) {
			free(v);
			return cdx_error(CDX_EINVAL, "%s: row %llu is past the end of the file", path,
			    (unsigned long long) (row + i));
		}
		if (di != d || fread(v + i * (size_t) d, sizeof(float), (size_t) d, f) != (size_t) d) {
			free(v);
			return cdx_error(CDX_ECORRUPT, "%s: row %llu is truncated or has another dimension",
			    path, (unsigned long long) (row + i));
		}
	}
	*out = v;
	*dimp = (uint32_t) d;
	return CDX_OK;
}

/* read_npy_rows reads rows of a 2-D C-order float32/float16 .npy array. */
static int
read_npy_rows(FILE *f, const char *path, uint64_t row, size_t count, float **out, uint32_t *dimp)
{
	unsigned char pre[10];
	if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
		return cdx_error(CDX_ECORRUPT, "%s: not an .npy file", path);
	size_t hlen, pre_len;
	if (pre[6] == 1) {
		hlen = pre[8] | (size_t) pre[9] << 8;
		pre_len = 10;
	} else {
		unsigned char more[2];
		if (fread(more, 1, 2, f) != 2)
			return cdx_error(CDX_ECORRUPT, "%s: truncated .npy header", path);
		hlen = pre[8] | (size_t) pre[9] << 8 | (size_t) more[0] << 16 | (size_t) more[1] << 24;
		pre_len = 12;
	}
	if (hlen > 1 << 16)
		return cdx_error(CDX_ECORRUPT, "%s: .npy header too large", path);
	char *h = calloc(1, hlen + 1);
	if (h == NULL || fread(h, 1, hlen, f) != hlen) {
		free(h);
		return cdx_error(CDX_ECORRUPT, "%s: truncated .npy header", path);
	}
	int f16 = strstr(h, "'<f2'") != NULL, f32 = strstr(h, "'<f4'") != NULL;
	const char *shape = strstr(h, "'shape':");
	unsigned long long n = 0, d = 0;
	int ok = (f16 || f32) && strstr(h, "'fortran_order': False") != NULL && shape != NULL
	    && sscanf(shape, "'shape': (%llu, %llu)", &n, &d) == 2 && d > 0;
	free(h);
	if (!ok)
		return cdx_error(CDX_EINVAL, "%s: want a 2-D C-order float32 or float16 array", path);
	if (row + count > n)
		return cdx_error(CDX_EINVAL, "%s: rows %llu..%llu are past its %llu rows", path,
		    (unsigned long long) row, (unsigned long long) (row + count - 1), n);
	size_t esz = f16 ? 2 : 4;
	if (fseeko(f, (off_t) (pre_len + hlen + row * d * esz), SEEK_SET) != 0)
		return cdx_error_errno(CDX_EIO, "%s: seek", path);
	float *v = malloc(count * d * sizeof(float));
	uint16_t *tmp = f16 ? malloc(count * d * sizeof(uint16_t)) : NULL;
	if (v == NULL || (f16 && tmp == NULL)) {
		free(v);
		free(tmp);
		return cdx_error(CDX_ENOMEM, "out of memory");
	}
	size_t got = f16 ? fread(tmp, 2, count * d, f) : fread(v, 4, count * d, f);
	if (got != count * d) {
		free(v);
		free(tmp);
		return cdx_error(CDX_ECORRUPT, "%s: truncated data", path);
	}
	for (size_t i = 0; f16 && i < count * d; i++)
		v[i] = cdx_f16_to_f32(tmp[i]);
	free(tmp);
	*out = v;
	*dimp = (uint32_t) d;
	return CDX_OK;
}

static int
read_vector_file(const char *path, uint64_t row, size_t count, float **out, uint32_t *dim)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return cdx_error_errno(CDX_EIO, "cannot open %s", path);
	size_t len = strlen(path);
	int rc;
	if (len >= 4 && strcmp(path + len - 4, ".npy") == 0)
		rc = read_npy_rows(f, path, row, count, out, dim);
	else if (len >= 6 && strcmp(path + len - 6, ".fvecs") == 0)
		rc = read_fvecs_rows(f, path, row, count, out, dim);
	else
		rc = cdx_error(CDX_EINVAL, "%s: unknown vector format (want .fvecs or .npy)", path);
	fclose(f);
	return rc;
}

/* read_stdin reads one vector a line: floats separated by spaces, tabs or commas. */
static int
read_stdin(float **out, size_t *nvec, uint32_t *dimp)
{
	char *line = NULL;
	size_t cap = 0, n = 0, dim = 0;
	cdx_buf vals = { 0 };
	ssize_t len;
	unsigned lineno = 0;
	int rc = CDX_OK;

	while ((len = getline(&line, &cap, stdin)) >= 0) {
		lineno++;
		size_t cnt = 0;
		char *p = line, *end;
		for (;;) {
			while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\n' || *p == '\r')
				p++;
			if (*p == '\0' || *p == '#')
				break;
			errno = 0;
			float v = strtof(p, &end);
			if (end == p || errno == ERANGE) {
				rc = cdx_error(
				    CDX_EINVAL, "stdin line %u: '%.20s' is not a number", lineno, p);
				goto done;
			}
			cdx_buf_append(&vals, &v, sizeof(v));
			cnt++;
			p = end;
		}
		if (cnt == 0)
			continue;
		if (dim == 0)
			dim = cnt;
		else if (cnt != dim) {
			rc = cdx_error(CDX_EDIM, "stdin line %u has %zu values, the first vector had %zu",
			    lineno, cnt, dim);
			goto done;
		}
		n++;
	}
	if (n == 0) {
		rc = cdx_error(CDX_EEMPTY, "no vector on stdin");
		goto done;
	}
	*out = (float *) vals.data;
	vals.data = NULL;
	*nvec = n;
	*dimp = (uint32_t) dim;
done:
	free(line);
	cdx_buf_fini(&vals);
	return rc;
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
	json_object_set_new(root, "expected_recall", json_real(r->expected_recall));
	json_object_set_new(root, "target_unmet", json_boolean(r->target_unmet));
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
	if (r->expected_recall > 0)
		printf("  expected_recall %.4f", (double) r->expected_recall);
	if (r->target_unmet)
		printf("  (target unmet: no measured setting reaches it at this k)");
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
	OPT_DROP,
	OPT_TLS_CA,
	OPT_TLS_CERT,
	OPT_TLS_KEY,
	OPT_TLS_NAME,
	OPT_TLS_INSECURE,
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
		{ "drop", required_argument, NULL, OPT_DROP },
		{ "tls-ca", required_argument, NULL, OPT_TLS_CA },
		{ "tls-cert", required_argument, NULL, OPT_TLS_CERT },
		{ "tls-key", required_argument, NULL, OPT_TLS_KEY },
		{ "tls-server-name", required_argument, NULL, OPT_TLS_NAME },
		{ "tls-insecure", no_argument, NULL, OPT_TLS_INSECURE },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = NULL, *collection = NULL, *vecfile = NULL, *model = NULL, *drop = NULL;
	struct strlist keys = { 0 }, exkeys = { 0 };
	int64_t *exids = NULL;
	size_t nexids = 0;
	double row = 0, count = 1, k = 10, nprobe = 0, refine = 0, recall = 0, timeout = 5000, retries = 2;
	int use_stdin = 0, json = 0, info = 0, reload = 0, rc = CLI_EXIT_USAGE, c;
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
		case OPT_DROP:
			drop = optarg;
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
		case OPT_TLS_INSECURE:
			co.tls_insecure = 1;
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
	if (reload || drop != NULL)
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
		if (vecfile != NULL) {
			r = read_vector_file(vecfile, (uint64_t) row, (size_t) count, &vectors, &dim);
			nvec = (size_t) count;
		} else if (use_stdin) {
			r = read_stdin(&vectors, &nvec, &dim);
		}
		if (r != CDX_OK) {
			fprintf(stderr, "candex query: %s\n", cdx_last_error());
			goto out;
		}
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
	if (drop != NULL) {
		if (cdx_client_drop(client, drop, &err) != CDX_OK) {
			fprintf(stderr, "candex query: drop: %s: %s\n", cdx_errname(err.code), err.message);
			goto out;
		}
		printf("dropped %s\n", drop);
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
