/* cmd_inspect.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_inspect(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex inspect: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
