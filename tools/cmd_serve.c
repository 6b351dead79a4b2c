/* cmd_serve.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_serve(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex serve: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
