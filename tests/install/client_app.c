/*
 * client_app.c — a program that uses only the installed client library:
 * client_pkgconfig_test builds it with `pkg-config --cflags --libs
 * candex-client` and runs it against a live server.
 *
 *   client_app URL COLLECTION KEY
 *
 * prints the server's health, then the 5 nearest items to the stored item
 * KEY, one "hit <rank> <id> <key> <score>" line each.
 */
#include <stdio.h>
#include <stdlib.h>

#include <candex/client.h>

int
main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: client_app URL COLLECTION KEY\n");
		return 2;
	}
	struct cdx_client_options opts = { .timeout_ms = 5000, .retries = 2 };
	struct cdx_client_error err;
	cdx_client *c = NULL;
	if (cdx_client_open(&c, argv[1], &opts, &err) != CDX_OK) {
		fprintf(stderr, "open: %s\n", err.message);
		return 1;
	}
	int rc = cdx_client_health(c, &err);
	printf("health %s\n", cdx_errname(rc));
	const char *keys[] = { argv[3] };
	struct cdx_query q = { .collection = argv[2], .keys = keys, .nkeys = 1, .k = 5 };
	struct cdx_result *r = NULL;
	if ((rc = cdx_client_search(c, &q, &r, &err)) != CDX_OK) {
		fprintf(stderr, "search: %s: %s\n", cdx_strerror(rc), err.message);
		cdx_client_close(c);
		return 1;
	}
	for (size_t i = 0; i < r->nqueries; i++)
		for (size_t j = 0; j < r->queries[i].nhits; j++)
			printf("hit %zu %lld %s %g\n", j + 1, (long long) r->queries[i].hits[j].id,
			    r->queries[i].hits[j].key, (double) r->queries[i].hits[j].score);
	cdx_result_free(r);
	cdx_client_close(c);
	return 0;
}
