/*
 * candex.c — main(): process set-up, then dispatch to a subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common/common.h"

struct subcommand {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct subcommand subcommands[] = {
	{ "build", cmd_build, "quantize embeddings into IVF-PQ shards and publish a version" },
	{ "inspect", cmd_inspect, "verify checksums and show a version's manifest and stats" },
	{ "serve", cmd_serve, "serve every collection of an index directory over nng" },
	{ "route", cmd_route, "one front for many shard groups: fan-out, exact merge, failover" },
	{ "query", cmd_query, "ask a server for the top-k candidates of vectors or keys" },
	{ "recall", cmd_recall, "measure recall, latency and QPS; pick operating points" },
	{ "sample", cmd_sample, "generate the embedded sample catalogue (tracks, podcasts)" },
	{ "demo", cmd_demo, "sample -> build -> serve -> query -> recall, end to end" },
	{ "takedown", cmd_takedown, "add or remove items of a served collection's takedown list" },
	{ "ope", cmd_ope, "estimate a new policy's value from impression logs (IPS, SNIPS)" },
};

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: candex <command> [options]   (candex <command> --help for details)\n\n"
	    "commands:\n");
	for (size_t i = 0; i < CDX_ARRAY_LEN(subcommands); i++)
		fprintf(out, "  %-8s %s\n", subcommands[i].name, subcommands[i].summary);
	fprintf(out, "\ncandex %s\n", CANDEX_VERSION);
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	if (argc < 2) {
		usage(stderr);
		return CLI_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("candex %s\n", CANDEX_VERSION);
		return CLI_EXIT_OK;
	}
	for (size_t i = 0; i < CDX_ARRAY_LEN(subcommands); i++)
		if (strcmp(argv[1], subcommands[i].name) == 0)
			return subcommands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "candex: unknown command '%s'; see candex --help\n", argv[1]);
	return CLI_EXIT_USAGE;
}
