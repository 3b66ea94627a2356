/*
 * Unit tests for lib/worker.c: tasks run on another thread in the order submitted, each done()
 * comes from the loop (a later turn, never from inside worker_submit) exactly once, a cancelled
 * task's done() says so, and worker_free() delivers what is left as cancelled, also while a task
 * is running. Waiting is for events (a count of done() calls), bounded by a guard, never for time.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>

#include "macro.h"
#include "worker.h"

#define N_TASKS 200
#define GUARD_S 60 /* a hang becomes a failure, never a wait for time */

struct task {
	int index;
	pthread_t ran_on;
	bool ran;
	int done_calls;
	bool cancelled;
	int done_order;
};

struct ctx {
	struct event_base *base;
	struct worker *w;
	struct task tasks[N_TASKS];
	int n_done;
	bool in_submit;
	pthread_t loop_thread;
	/* a task that blocks on the worker thread until the test lets it go */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool blocking, release;
};

static struct ctx *current;

static void
work(void *userdata)
{
	struct task *t = userdata;

	t->ran_on = pthread_self();
	t->ran = true;
}

static void
done(void *userdata, bool cancelled)
{
	struct task *t = userdata;

	assert_false(current->in_submit);
	assert_true(pthread_equal(pthread_self(), current->loop_thread));
	t->done_calls++;
	t->cancelled = cancelled;
	t->done_order = current->n_done++;
}

/* Blocks until the test sets release. */
static void
work_blocking(void *userdata)
{
	struct ctx *t = current;

	pthread_mutex_lock(&t->lock);
	t->blocking = true;
	pthread_cond_broadcast(&t->cond);
	while (!t->release)
		pthread_cond_wait(&t->cond, &t->lock);
	pthread_mutex_unlock(&t->lock);
	work(userdata);
}

static int
setup(void **state)
{
	struct ctx *t = calloc(1, sizeof(*t));

	assert_non_null(t);
	t->base = event_base_new();
	assert_non_null(t->base);
	assert_int_equal(worker_new(t->base, &t->w), 0);
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	for (int i = 0; i < N_TASKS; i++)
		t->tasks[i].index = i;
	t->loop_thread = pthread_self();
	current = t;
	*state = t;
	return 0;
}

static int
teardown(void **state)
{
	struct ctx *t = *state;

	worker_free(t->w);
	event_base_free(t->base);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	free(t);
	current = NULL;
	return 0;
}

/* Run the loop until n done() calls were made; fails after the guard. */
static void
wait_done(struct ctx *t, int n)
{
	time_t end = time(NULL) + GUARD_S;

	while (t->n_done < n) {
		assert_true(time(NULL) < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
}

static void
test_worker_order_and_thread(void **state)
{
	struct ctx *t = *state;
	pthread_t self = pthread_self();

	for (int i = 0; i < N_TASKS; i++) {
		t->in_submit = true;
		worker_submit(t->w, work, done, &t->tasks[i], NULL);
		t->in_submit = false;
	}
	wait_done(t, N_TASKS);
	for (int i = 0; i < N_TASKS; i++) {
		assert_true(t->tasks[i].ran);
		assert_false(pthread_equal(t->tasks[i].ran_on, self));
		assert_int_equal(t->tasks[i].done_calls, 1);
		assert_false(t->tasks[i].cancelled);
		assert_int_equal(t->tasks[i].done_order, i);
	}
}

static void
test_worker_cancel(void **state)
{
	struct ctx *t = *state;
	struct worker_task *running, *waiting;

	/* one task held on the thread, one waiting behind it: both cancelled */
	worker_submit(t->w, work_blocking, done, &t->tasks[0], &running);
	worker_submit(t->w, work, done, &t->tasks[1], &waiting);
	worker_submit(t->w, work, done, &t->tasks[2], NULL);
	pthread_mutex_lock(&t->lock);
	while (!t->blocking)
		pthread_cond_wait(&t->cond, &t->lock);
	pthread_mutex_unlock(&t->lock);
	worker_cancel(t->w, running);
	worker_cancel(t->w, waiting);
	pthread_mutex_lock(&t->lock);
	t->release = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	wait_done(t, 3);
	assert_true(t->tasks[0].cancelled);
	assert_true(t->tasks[0].ran); /* it was running: it ends, its result is dropped */
	assert_true(t->tasks[1].cancelled);
	assert_false(t->tasks[1].ran); /* cancelled before it started: never run */
	assert_false(t->tasks[2].cancelled);
	assert_true(t->tasks[2].ran);
	for (int i = 0; i < 3; i++)
		assert_int_equal(t->tasks[i].done_calls, 1);
}

static void
test_worker_free_in_flight(void **state)
{
	struct ctx *t = *state;

	worker_submit(t->w, work_blocking, done, &t->tasks[0], NULL);
	for (int i = 1; i < 10; i++)
		worker_submit(t->w, work, done, &t->tasks[i], NULL);
	pthread_mutex_lock(&t->lock);
	while (!t->blocking)
		pthread_cond_wait(&t->cond, &t->lock);
	t->release = true; /* the running task ends while worker_free() waits for the thread */
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	t->w = worker_free(t->w);
	assert_null(t->w);
	assert_int_equal(t->n_done, 10);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(t->tasks[i].done_calls, 1);
		assert_true(t->tasks[i].cancelled);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_worker_order_and_thread, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_worker_cancel, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_worker_free_in_flight, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
