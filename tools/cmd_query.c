/* cmd_query.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_query(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex query: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
