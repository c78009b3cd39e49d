/*
 * A C stand-in for compare's throughput limit (issue 16, `threads2_vs_limit` in
 * benches/BENCHMARKS.md): N threads of a process with a 3 MiB touched heap, each looping
 * fork + _exit + waitpid for 3 s; run under `perf stat` for its CPU time per spawn.
 *
 *   gcc -O2 -pthread -o /tmp/fork_threads benches/scripts/fork_threads.c
 *   perf stat -e task-clock,page-faults -- /tmp/fork_threads 2
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static long counts[8];

static void *run(void *a) {
    long i = (long)a;
    while (!stop) {
        pid_t p = fork();
        if (p == 0)
            _exit(0);
        waitpid(p, NULL, 0);
        counts[i]++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2;
    if (n < 1 || n > 8)
        return 2;
    pthread_t t[8];
    char *heap = malloc(3 << 20);
    for (int i = 0; i < 3 << 20; i += 4096)
        heap[i] = 1;
    for (long i = 0; i < n; i++)
        pthread_create(&t[i], NULL, run, (void *)i);
    sleep(3);
    stop = 1;
    long sum = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        sum += counts[i];
    }
    printf("%d threads: %ld forks/s (%ld in 3 s)\n", n, sum / 3, sum);
    return 0;
}
