/*
 * One worker thread and two FIFO lists under one mutex: the tasks waiting for the thread and the
 * tasks whose done() the loop still owes. The thread writes to an eventfd whenever it puts a task
 * on the second list; the loop's persistent read event on it calls the done()s, one task at a
 * time (a done() may submit or cancel). See worker.h for the rules.
 */
#define LOG_MODULE "worker"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "macro.h"
#include "worker.h"
#include "xmalloc.h"

struct worker_task {
	worker_work_fn work;
	worker_done_fn done;
	void *userdata;
	bool cancelled;
	struct worker_task *next;
};

struct list {
	struct worker_task *head, *tail;
};

struct worker {
	struct event_base *base;
	struct event *ev;
	int efd;
	bool started; /* the thread runs */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stopping;     /* under lock */
	struct list queue; /* under lock: waiting for the thread */
	struct list done;  /* under lock: done() owed */
};

static void
list_push(struct list *l, struct worker_task *t)
{
	t->next = NULL;
	if (l->tail)
		l->tail->next = t;
	else
		l->head = t;
	l->tail = t;
}

static struct worker_task *
list_pop(struct list *l)
{
	struct worker_task *t = l->head;

	if (t) {
		l->head = t->next;
		if (!l->head)
			l->tail = NULL;
		t->next = NULL;
	}
	return t;
}

/* Tell the loop that the done list has grown. */
static void
wake_loop(struct worker *w)
{
	uint64_t one = 1;
	ssize_t n;

	do
		n = write(w->efd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
	/* EAGAIN: the counter is full, so the loop has a wake-up waiting anyway */
}

static void *
worker_main(void *userdata)
{
	struct worker *w = userdata;

	pthread_mutex_lock(&w->lock);
	for (;;) {
		struct worker_task *t;
		bool cancelled;

		while (!w->stopping && !w->queue.head)
			pthread_cond_wait(&w->cond, &w->lock);
		if (w->stopping)
			break;
		t = list_pop(&w->queue);
		cancelled = t->cancelled;
		pthread_mutex_unlock(&w->lock);
		if (!cancelled)
			t->work(t->userdata);
		pthread_mutex_lock(&w->lock);
		list_push(&w->done, t);
		wake_loop(w);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* The eventfd is readable: call the done()s owed, one task at a time. */
static void
on_wake(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	struct worker *w = userdata;
	uint64_t n;

	(void)!read(w->efd, &n, sizeof(n));
	for (;;) {
		struct worker_task *t;
		bool cancelled;

		pthread_mutex_lock(&w->lock);
		t = list_pop(&w->done);
		cancelled = t && t->cancelled;
		pthread_mutex_unlock(&w->lock);
		if (!t)
			break;
		t->done(t->userdata, cancelled);
		free(t);
	}
}

int
worker_new(struct event_base *base, struct worker **ret)
{
	struct worker *w;
	sigset_t all, old;
	int r;

	if (!base || !ret)
		return -EINVAL;
	w = xcalloc(1, sizeof(*w));
	w->base = base;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->efd < 0) {
		r = -errno;
		worker_free(w);
		return r;
	}
	w->ev = event_new(base, w->efd, EV_READ | EV_PERSIST, on_wake, w);
	if (!w->ev || event_add(w->ev, NULL) < 0) {
		worker_free(w);
		return -ENOMEM;
	}
	/* signals stay with the loop thread: the thread starts with all of them blocked */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&w->thread, NULL, worker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0) {
		worker_free(w);
		return r;
	}
	w->started = true;
	*ret = w;
	return 0;
}

void
worker_submit(struct worker *w, worker_work_fn work, worker_done_fn done, void *userdata,
              struct worker_task **ret_task)
{
	struct worker_task *t = xcalloc(1, sizeof(*t));

	t->work = work;
	t->done = done;
	t->userdata = userdata;
	if (ret_task)
		*ret_task = t;
	pthread_mutex_lock(&w->lock);
	list_push(&w->queue, t);
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

void
worker_cancel(struct worker *w, struct worker_task *task)
{
	if (!w || !task)
		return;
	pthread_mutex_lock(&w->lock);
	task->cancelled = true;
	pthread_mutex_unlock(&w->lock);
}

struct worker *
worker_free(struct worker *w)
{
	struct worker_task *t;

	if (!w)
		return NULL;
	if (w->started) {
		pthread_mutex_lock(&w->lock);
		w->stopping = true;
		pthread_cond_signal(&w->cond);
		pthread_mutex_unlock(&w->lock);
		pthread_join(w->thread, NULL);
	}
	/* the thread is gone: nothing else touches the lists */
	while ((t = list_pop(&w->done)) || (t = list_pop(&w->queue))) {
		t->done(t->userdata, true);
		free(t);
	}
	if (w->ev)
		event_free(w->ev);
	if (w->efd >= 0)
		close(w->efd);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	free(w);
	return NULL;
}
