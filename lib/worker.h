/*
 * One worker thread for CPU-bound work that touches nothing but its own input and output (page
 * parsing; ARCHITECTURE.md section 2: the store and all I/O stay on the loop thread).
 *
 * A task is a pair of functions with one userdata: work() runs on the worker thread, tasks one at
 * a time in the order they were submitted; done() then runs on the loop thread, from a later loop
 * turn, never from inside worker_submit(). done() is called exactly once per task: with cancelled
 * false after work() ran, or with cancelled true when the task was cancelled (work() may or may
 * not have run; the result is to be dropped and freed). Between worker_submit() and done() the
 * loop must not touch the userdata.
 *
 * The worker hands results back through an eventfd read by the loop, so libevent needs no
 * threading support. The thread runs with every signal blocked: signals stay with the loop.
 *
 * work() must not log, touch the store, metrics or any state shared with the loop.
 */
#pragma once

#include <stdbool.h>

struct event_base;
struct worker;
struct worker_task;

typedef void (*worker_work_fn)(void *userdata);
typedef void (*worker_done_fn)(void *userdata, bool cancelled);

/* Make a worker on base; its thread starts now. -errno on failure. */
int worker_new(struct event_base *base, struct worker **ret);

/*
 * Queue a task. *ret_task (may be NULL) identifies it for worker_cancel() until its done() is
 * called.
 */
void worker_submit(struct worker *w, worker_work_fn work, worker_done_fn done, void *userdata,
                   struct worker_task **ret_task);

/* Cancel a task whose done() has not been called yet: done() follows with cancelled true. */
void worker_cancel(struct worker *w, struct worker_task *task);

/*
 * Stop the thread (after the work() running, if any) and free the worker. Every task whose done()
 * was not called yet gets it now, from inside this call, with cancelled true. Not from inside a
 * done(). Accepts NULL; returns NULL.
 */
struct worker *worker_free(struct worker *w);
