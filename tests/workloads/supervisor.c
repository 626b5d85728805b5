/* A supervisor outside the service's memcg, as a container runtime or a watchdog is: it starts the service in the
 * memcg (the child writes itself into cgroup.procs before exec), SIGKILLs it every <kill-every> seconds (0: never)
 * and starts it again whenever it died, until <seconds> have passed or the memcg is gone.
 * supervisor <cgroup.procs> <kill-every seconds> <seconds> <program> [args...] */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>

#include "common.h"

static pid_t start(const char *procs, char **argv) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(procs, O_WRONLY);
        if (fd < 0 || write(fd, "0", 1) != 1)
            _exit(127);
        close(fd);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: supervisor <cgroup.procs> <kill-every> <seconds> <program> [args...]\n");
        return 2;
    }
    const char *procs = argv[1];
    double every = strtod(argv[2], NULL), end = now() + strtod(argv[3], NULL);
    int kills = 0, starts = 0;
    while (now() < end && access(procs, F_OK) == 0) {
        pid_t pid = start(procs, argv + 4);
        double started = now();
        starts++;
        int status;
        while (waitpid(pid, &status, WNOHANG) != pid) {
            if (every > 0 && now() - started >= every) {
                kill(pid, SIGKILL);
                kills++;
                waitpid(pid, &status, 0);
                break;
            }
            if (now() >= end)
                return 0;
            usleep(10000);
        }
        usleep(200000);
    }
    fprintf(stderr, "supervisor: %d starts, %d kills\n", starts, kills);
    return 0;
}
