/*
 * cmd_takedown.c — `candex takedown`: change or list a served collection's
 * takedown list through a server's admin listener (a thin user of
 * cdx_client_takedown).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "candex/client.h"
#include "cli.h"
#include "common/common.h"

static const char usage_text[]
    = "usage: candex takedown --url ADMIN_URL --collection NAME [--add-id ID]... [--remove-id ID]...\n"
      "                       [--add-key KEY]... [--remove-key KEY]... [--timeout MS]\n"
      "\n"
      "Adds items to or removes them from a collection's takedown list, through the server's\n"
      "admin listener (candex serve --admin-listen). Taken-down items are never returned,\n"
      "from the next request on; the list is kept in INDEX_DIR/NAME/TAKEDOWNS, survives\n"
      "restarts and new versions, and loses an item once a build's input no longer has it.\n"
      "Without changes, prints the list. Prints the list after the change and the number of\n"
      "served items it blocks.\n"
      "\n"
      "Exit status: 0 done, 1 refused or failed, 2 usage.\n";

struct list {
	void *v;
	size_t n;
};

static int
push(struct list *l, const void *item, size_t size)
{
	void *grown = realloc(l->v, (l->n + 1) * size);
	if (grown == NULL)
		return -1;
	l->v = grown;
	memcpy((char *) l->v + l->n * size, item, size);
	l->n++;
	return 0;
}

static int
push_id(struct list *l, const char *arg)
{
	char *end;
	errno = 0;
	long long v = strtoll(arg, &end, 10);
	if (errno != 0 || end == arg || *end != '\0') {
		fprintf(stderr, "candex takedown: '%s' is not an int64 id\n", arg);
		return -1;
	}
	int64_t id = v;
	return push(l, &id, sizeof(id));
}

int
cmd_takedown(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "collection", required_argument, NULL, 'c' },
		{ "add-id", required_argument, NULL, 'a' },
		{ "remove-id", required_argument, NULL, 'r' },
		{ "add-key", required_argument, NULL, 'A' },
		{ "remove-key", required_argument, NULL, 'R' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = NULL, *collection = NULL;
	struct list add_ids = { 0 }, remove_ids = { 0 }, add_keys = { 0 }, remove_keys = { 0 };
	struct cdx_client_options co = { .timeout_ms = 60000 };
	int rc = CLI_EXIT_USAGE, c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'u':
			url = optarg;
			break;
		case 'c':
			collection = optarg;
			break;
		case 'a':
			bad = push_id(&add_ids, optarg);
			break;
		case 'r':
			bad = push_id(&remove_ids, optarg);
			break;
		case 'A':
			bad = push(&add_keys, &optarg, sizeof(char *));
			break;
		case 'R':
			bad = push(&remove_keys, &optarg, sizeof(char *));
			break;
		case 't': {
			char *end;
			unsigned long v = strtoul(optarg, &end, 10);
			bad = *end != '\0' || v == 0 || v > 3600000;
			co.timeout_ms = (uint32_t) v;
			break;
		}
		case 'h':
			fputs(usage_text, stdout);
			rc = CLI_EXIT_OK;
			goto out;
		default:
			bad = 1;
		}
		if (bad) {
			fputs(usage_text, stderr);
			goto out;
		}
	}
	if (optind < argc || url == NULL || collection == NULL) {
		fputs(usage_text, stderr);
		goto out;
	}
	rc = CLI_EXIT_FAIL;
	cdx_client *client = NULL;
	struct cdx_client_error err;
	struct cdx_takedown_result *res = NULL;
	if (cdx_client_open(&client, url, &co, &err) != CDX_OK) {
		fprintf(stderr, "candex takedown: %s\n", err.message);
		goto out;
	}
	struct cdx_takedown t = {
		.collection = collection,
		.add_ids = add_ids.v,
		.n_add_ids = add_ids.n,
		.remove_ids = remove_ids.v,
		.n_remove_ids = remove_ids.n,
		.add_keys = add_keys.v,
		.n_add_keys = add_keys.n,
		.remove_keys = remove_keys.v,
		.n_remove_keys = remove_keys.n,
	};
	if (cdx_client_takedown(client, &t, &res, &err) != CDX_OK) {
		fprintf(stderr, "candex takedown: %s: %s\n", cdx_errname(err.code), err.message);
	} else {
		for (size_t i = 0; i < res->nids; i++)
			printf("id\t%lld\n", (long long) res->ids[i]);
		for (size_t i = 0; i < res->nkeys; i++)
			printf("key\t%s\n", res->keys[i]);
		printf("# %zu id(s), %zu key(s); %llu served item(s) blocked\n", res->nids, res->nkeys,
		    (unsigned long long) res->blocked_items);
		rc = CLI_EXIT_OK;
	}
	cdx_takedown_result_free(res);
	cdx_client_close(client);
out:
	free(add_ids.v);
	free(remove_ids.v);
	free(add_keys.v);
	free(remove_keys.v);
	return rc;
}
