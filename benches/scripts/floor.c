/*
 * The floor of a fork server's request -> pid on this machine, in C, without forkserver:
 * what any server of this design (a separate process, a request and a reply on a Unix
 * socket) pays, measured beside the bare fork() it is compared with. Issue 16's breakdowns
 * in benches/BENCHMARKS.md ("Issue 16: where the time goes") come from it.
 *
 *   gcc -O2 -o /tmp/floor benches/scripts/floor.c && /tmp/floor 3000
 *
 * Scenarios, interleaved (each round runs all of them in a new random order, so that no
 * scenario always follows the same one: the pool's refill fork after its reply, or a child's
 * exit, still running on the other core, would always land on the same neighbour), medians
 * in µs:
 *   fork_to_pid   fork() in this process to its return in the parent (child _exit(0))
 *   pingpong      a 64-byte request, a 16-byte reply, to a second process (SOCK_STREAM)
 *   pingpong_fds3 the same with 3 fds (SCM_RIGHTS) in the request, closed after the reply
 *   server_fork   the second process forks a child per request (child _exit(0)), then
 *                 replies with its pid: request -> pid of a minimal fork server
 *   server_pool   the second process keeps a pre-forked child blocked in sigwait(); per
 *                 request it sends the job (with the 3 fds) into the child's socket, then
 *                 the pid to the client, then wakes the child (kill) and forks the next
 *                 one: forkserver's pooled path (§6.4: the job is in the child's socket
 *                 before the pid goes out), minimal
 *   *_poll        pingpong_fds3 and server_fork with the client waiting in poll(POLLIN)
 *                 before its recv: a task blocked in recv on a Unix stream socket is also
 *                 woken when its peer reads the request (the sender's "write space"
 *                 wake-up); a poll(POLLIN) waiter is not
 *   server_fork_work   server_fork whose child writes 32 pages before _exit (about what
 *                 forkserver's noop child does: ~35 page faults): the child now competes with
 *                 the client for a CPU while the client's wake-up with the pid is pending
 *   server_fork_yield  the same with the child calling sched_yield() first
 *
 * With PIN=1 in the environment the client runs on CPU 0 and the servers (and so their
 * children) on CPU 1: a server's new child then never competes with the client for a CPU.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { FORK, PING, PING3, SFORK, SPOOL, PING3P, SFORKP, SWORK, SYIELD, NS };
static const char *names[NS] = {
    "fork_to_pid",      "pingpong",    "pingpong_fds3", "server_fork", "server_pool",
    "pingpong_fds3_poll", "server_fork_poll", "server_fork_work", "server_fork_yield"};
/* The server mode of each scenario (the _poll ones differ on the client side only). */
static const int mode_of[NS] = {FORK, PING, PING3, SFORK, SPOOL, PING3, SFORK, SWORK, SYIELD};
/* What a server_fork_work child writes before it exits: 32 pages, as many copy-on-write
 * faults as forkserver's noop child takes (~100 µs of its own). */
static char ballast[32 * 4096];

static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Sends len bytes with nfds fds. */
static void send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    struct iovec iov = {(void *)buf, len};
    char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        m.msg_control = cbuf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    if (sendmsg(sock, &m, MSG_NOSIGNAL) != (ssize_t)len)
        die("sendmsg");
}

/* Receives up to len bytes and the fds that came with them; returns the fd count. */
static int recv_fds(int sock, void *buf, size_t len, int *fds) {
    struct iovec iov = {buf, len};
    char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    if (n <= 0)
        exit(0);
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_type == SCM_RIGHTS) {
            nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(c), sizeof(int) * nfds);
        }
    return nfds;
}

/* A pooled child: blocked in sigwait until woken, then reads its job and exits. */
static pid_t prefork(int *sock) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        die("socketpair");
    pid_t p = fork();
    if (p == 0) {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        int sig;
        sigwait(&s, &sig);
        char buf[256];
        int fds[8];
        int n = recv_fds(sv[1], buf, sizeof buf, fds);
        (void)n;
        _exit(0);
    }
    close(sv[1]);
    *sock = sv[0];
    return p;
}

/* The second process: mode PING/PING3 reply at once, SFORK forks, SPOOL hands off. */
static void pin(int cpu) {
    if (!getenv("PIN"))
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set))
        die("sched_setaffinity");
}

static void serve(int sock, int mode) {
    pin(1);
    signal(SIGCHLD, SIG_IGN); /* children reaped by the kernel: no wait4 on the path */
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, NULL); /* inherited by the pooled children */
    int child_sock = -1;
    pid_t child = mode == SPOOL ? prefork(&child_sock) : 0;
    char buf[256], reply[16] = {0};
    int fds[8];
    for (;;) {
        int nfds = recv_fds(sock, buf, sizeof buf, fds);
        int32_t pid = 0;
        if (mode == SFORK || mode == SWORK || mode == SYIELD) {
            pid = fork();
            if (pid == 0) {
                if (mode == SYIELD)
                    sched_yield();
                if (mode != SFORK)
                    for (size_t i = 0; i < sizeof ballast; i += 4096)
                        ballast[i] = 1;
                _exit(0);
            }
        } else if (mode == SPOOL) {
            send_fds(child_sock, buf, 64, fds, nfds);
            pid = child;
        }
        memcpy(reply, &pid, sizeof pid);
        send_fds(sock, reply, sizeof reply, NULL, 0);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (mode == SPOOL) {
            kill(child, SIGUSR1);
            close(child_sock);
            child = prefork(&child_sock);
        }
    }
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 3000;
    int socks[NS] = {0};
    for (int s = PING; s < NS; s++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
            die("socketpair");
        if (fork() == 0) {
            close(sv[0]);
            serve(sv[1], mode_of[s]);
        }
        close(sv[1]);
        socks[s] = sv[0];
    }
    pin(0);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    uint64_t *t[NS];
    for (int s = 0; s < NS; s++)
        t[s] = calloc(n, sizeof(uint64_t));
    char req[64] = {1}, rep[16];
    for (int round = -200; round < n; round++) {
        int order[NS];
        for (int k = 0; k < NS; k++)
            order[k] = k;
        for (int k = NS - 1; k > 0; k--) {
            int j = rand() % (k + 1), x = order[k];
            order[k] = order[j];
            order[j] = x;
        }
        for (int k = 0; k < NS; k++) {
            int s = order[k];
            int fds[3];
            int nfds = s == PING ? 0 : 3;
            for (int i = 0; i < nfds; i++)
                fds[i] = fcntl(devnull, F_DUPFD_CLOEXEC, 0);
            uint64_t t0 = now(), t1;
            if (s == FORK) {
                pid_t p = fork();
                if (p == 0)
                    _exit(0);
                t1 = now();
                waitpid(p, NULL, 0);
            } else {
                send_fds(socks[s], req, sizeof req, fds, nfds);
                if (s == PING3P || s == SFORKP) {
                    struct pollfd pfd = {socks[s], POLLIN, 0};
                    if (poll(&pfd, 1, -1) != 1)
                        die("poll");
                }
                if (recv(socks[s], rep, sizeof rep, MSG_WAITALL) != sizeof rep)
                    die("recv");
                t1 = now();
            }
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            if (round >= 0)
                t[s][round] = t1 - t0;
        }
    }
    printf("%-14s %9s %9s %9s %9s\n", "scenario", "median", "p90", "p99", "x fork");
    qsort(t[FORK], n, sizeof(uint64_t), cmp);
    double base = t[FORK][n / 2];
    for (int s = 0; s < NS; s++) {
        qsort(t[s], n, sizeof(uint64_t), cmp);
        printf("%-14s %9.1f %9.1f %9.1f %9.2f\n", names[s], t[s][n / 2] / 1e3,
               t[s][n * 9 / 10] / 1e3, t[s][n * 99 / 100] / 1e3, t[s][n / 2] / base);
    }
    return 0;
}
