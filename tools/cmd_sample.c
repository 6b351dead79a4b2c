/* cmd_sample.c — placeholder until the subcommand lands. */
#include <stdio.h>

#include "cli.h"

int
cmd_sample(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	fprintf(stderr, "candex sample: not implemented yet\n");
	return CLI_EXIT_FAIL;
}
