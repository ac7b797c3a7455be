// SPDX-License-Identifier: GPL-2.0-only
/*
 * program_wrapper: /bin/zapmigrate when the farm runs a reported program
 * (`farm reproduce --program`). The agent relays the trial program's stdout
 * and sends its stderr to /dev/null (never onto ttyS0, the kernel's channel);
 * a reported program says why it stopped on stderr (an assert()'s message),
 * so this joins stderr to stdout and then execs the program, unchanged, as
 * /bin/zapfarm-program. Same process: the agent sees its real exit status.
 */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static char path[] = "/bin/zapfarm-program";

	(void)argc;
	dup2(1, 2);
	argv[0] = path;
	execv(path, argv);
	perror("zapfarm: exec /bin/zapfarm-program");
	return 127;
}
