/* cmd_recall.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_recall(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex recall: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
