/*
 * bench-h6-loopstall: how long azs-usaged's loop stays away from epoll_wait, whatever else runs
 * on the machine (issue 13: /healthz always under 50 ms while catching up). Preloaded into the
 * daemon (LD_PRELOAD=.../libbench-h6-loopstall.so AZS_H6_STALLS=FILE); it wraps epoll_wait and
 * measures, for the main thread (libevent's loop; other threads' calls pass), every turn: from one
 * epoll_wait's return to the next call, in wall time and in the thread's CPU time. A /healthz
 * request that arrives during a turn waits for its end. The wall time of a turn counts the time the
 * thread waited for a core on a busy machine; "own" is the wall time less that wait (the run queue
 * delay of /proc/thread-self/schedstat): the CPU time plus the time blocked in fsync, reads and
 * other calls, what the daemon itself makes a request wait, unless the turn took a major page fault
 * (code or data the kernel had dropped under memory pressure, read back from the disk): "clean"
 * is the own time of the turns without one. Every second and at exit it writes FILE (rewritten
 * whole):
 *
 *   turns N
 *   wall_max_ms X at_s T     (seconds since the first turn)
 *   own_max_ms X at_s T
 *   cpu_max_ms X at_s T
 *   clean_max_ms X at_s T
 *   faulting_turns N
 *   wall_over_ms 10 N 25 N 50 N 100 N   (turns longer than 10, 25, 50, 100 ms)
 *   own_over_ms ...
 *   cpu_over_ms ...
 *
 * Not a test and not part of the daemon: bench-h6-backlog.py --stalls uses it.
 */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const double limits_ms[] = {10, 25, 50, 100};

enum { WALL, OWN, CPU, CLEAN, _KINDS };
static const char *const kind_names[_KINDS] = {"wall", "own", "cpu", "clean"};

static struct {
	uint64_t turns, faulting;
	double max[_KINDS], at[_KINDS];
	uint64_t over[_KINDS][4];
	double first, last_write;
} st;

static __thread double turn_wall = -1, turn_cpu, turn_queued;
static __thread long turn_majflt;

static long
majflt(void)
{
	struct rusage ru;

	return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_majflt : 0;
}

/* The time this thread has waited on a run queue, in ms (0 when the kernel does not say). */
static double
queued_ms(void)
{
	unsigned long long run = 0, wait = 0;
	FILE *f = fopen("/proc/thread-self/schedstat", "re");

	if (!f)
		return 0;
	if (fscanf(f, "%llu %llu", &run, &wait) != 2)
		wait = 0;
	fclose(f);
	return (double)wait / 1e6;
}

static double
clock_ms(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void
write_stats(void)
{
	const char *path = getenv("AZS_H6_STALLS");
	char tmp[4096];
	FILE *f;

	if (!path)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return;
	fprintf(f, "turns %llu\nfaulting_turns %llu\n", (unsigned long long)st.turns,
	        (unsigned long long)st.faulting);
	for (size_t k = 0; k < _KINDS; k++)
		fprintf(f, "%s_max_ms %.1f at_s %.1f\n", kind_names[k], st.max[k], st.at[k]);
	for (size_t k = 0; k < _KINDS; k++) {
		fprintf(f, "%s_over_ms", kind_names[k]);
		for (size_t i = 0; i < 4; i++)
			fprintf(f, " %.0f %llu", limits_ms[i], (unsigned long long)st.over[k][i]);
		fprintf(f, "\n");
	}
	fclose(f);
	rename(tmp, path);
}

static void
at_exit(void)
{
	write_stats();
}

int
epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
	static int (*real)(int, struct epoll_event *, int, int);
	static atomic_int registered;
	double now = clock_ms(CLOCK_MONOTONIC);
	int r;

	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "epoll_wait"); /* POSIX's way to a function */
	if (gettid() != getpid()) /* the health server's thread has a loop of its own */
		return real(epfd, events, maxevents, timeout);
	if (atomic_exchange(&registered, 1) == 0) {
		atexit(at_exit);
		st.first = now;
	}
	if (turn_wall >= 0) {
		double t[_KINDS];

		t[WALL] = now - turn_wall;
		t[OWN] = t[WALL] - (queued_ms() - turn_queued);
		t[CPU] = clock_ms(CLOCK_THREAD_CPUTIME_ID) - turn_cpu;
		t[CLEAN] = majflt() == turn_majflt ? t[OWN] : 0;
		st.turns++;
		st.faulting += majflt() != turn_majflt;
		for (size_t k = 0; k < _KINDS; k++) {
			if (t[k] > st.max[k]) {
				st.max[k] = t[k];
				st.at[k] = (now - st.first) / 1e3;
			}
			for (size_t i = 0; i < 4; i++)
				st.over[k][i] += t[k] > limits_ms[i];
		}
		if (now - st.last_write > 1000) {
			st.last_write = now;
			write_stats();
		}
	}
	r = real(epfd, events, maxevents, timeout);
	turn_queued = queued_ms();
	turn_majflt = majflt();
	turn_wall = clock_ms(CLOCK_MONOTONIC);
	turn_cpu = clock_ms(CLOCK_THREAD_CPUTIME_ID);
	return r;
}
