// SPDX-License-Identifier: GPL-2.0-only
/*
 * zapmigrate: one trial of the shmem hole-punch vs. page-migration race.
 *
 * The main thread migrates the pages of a memfd mapping between two NUMA
 * nodes with move_pages() while evictor threads punch the same pages
 * (fallocate(PUNCH_HOLE) or madvise(MADV_REMOVE)) after a random delay.
 * Afterwards every page has been punched, so the mapping's own smaps entry
 * must read Rss 0 / Pss 0 and RssShmem must be back at its baseline.
 *
 * Written for the farm, not copied from the seed thread's zap-migrate.c:
 * migration results are data (never asserted), every wait has an end, the
 * oracle reads the mapping's own smaps entry rather than smaps_rollup (which
 * counts the binary itself when it lives on a tmpfs rootfs), and the output
 * is one JSON object (docs/protocol.md). Exit 0 when the JSON was printed,
 * 2 for a bad command line (the JSON's "error" says which flag).
 *
 * Rounds: round r first (re)populates every page and moves it to the round's
 * "from" node, then races each batch's move to the "to" node against its
 * punch; "from"/"to" alternate (src->dst, dst->src, ...). A page is punched
 * once per round, after the round populated it; pages the evictors did not
 * punch (early stop, failed punch) are punched by a final sweep.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef MPOL_MF_MOVE
#define MPOL_MF_MOVE (1 << 1)
#endif

#define STATUS_UNSET INT32_MIN /* move_pages() did not write this status */
#define MAX_ERRNOS 64
#define MAX_EVICTORS 16
#define MAX_PAGES (1L << 16)

enum { PUNCH_FALLOCATE, PUNCH_MADVISE };
enum { PLACE_ANY, PLACE_SAME, PLACE_SPLIT };

static const char *const punch_names[] = { "fallocate", "madvise", NULL };
static const char *const placement_names[] = { "any", "same", "split", NULL };

/* ---- command line ------------------------------------------------------ */

struct flag {
	const char *name;		/* as TrialParams.argv() spells it */
	const char *key;		/* as the JSON "inputs" spells it */
	long min, max;
	const char *const *choices;	/* NULL: an integer */
	long value;			/* the integer, or the index in choices */
	bool seen;
};

static struct flag flags[] = {
	{ "--pages", "pages", 1, MAX_PAGES, NULL, 0, false },
	{ "--evict-delay-min-us", "evict_delay_min_us", 0, 1000000, NULL, 0, false },
	{ "--evict-delay-max-us", "evict_delay_max_us", 0, 1000000, NULL, 0, false },
	{ "--kick-delay-us", "kick_delay_us", 0, 1000000, NULL, 0, false },
	{ "--batch", "batch", 1, MAX_PAGES, NULL, 0, false },
	{ "--src-node", "src_node", 0, 63, NULL, 0, false },
	{ "--dst-node", "dst_node", 0, 63, NULL, 0, false },
	{ "--rounds", "rounds", 1, 64, NULL, 0, false },
	{ "--punch", "punch", 0, 0, punch_names, 0, false },
	{ "--evictors", "evictors", 1, MAX_EVICTORS, NULL, 0, false },
	{ "--placement", "placement", 0, 0, placement_names, 0, false },
	{ "--rng-seed", "rng_seed", 0, 0xFFFFFFFFL, NULL, 0, false },
	{ "--pressure-mb", "pressure_mb", 0, 4096, NULL, 0, false },
};

enum {
	F_PAGES, F_EVICT_MIN, F_EVICT_MAX, F_KICK, F_BATCH, F_SRC, F_DST,
	F_ROUNDS, F_PUNCH, F_EVICTORS, F_PLACEMENT, F_RNG_SEED, F_PRESSURE, F_COUNT
};

#define ARG(i) (flags[i].value)

/* ---- results ----------------------------------------------------------- */

static char error_text[1024];

static struct {
	unsigned long calls, call_errors, moved, enoent, ebusy, other;
	int nerrnos;
	struct { int err; unsigned long count; } errnos[MAX_ERRNOS];
} mig;

static atomic_ulong punch_calls, punch_errors;

static struct {
	bool found;
	long rss_kb, pss_shmem_kb;	/* -1: not reported */
} vma = { false, -1, -1 };

static long rollup_pss_shmem_kb = -1;
static long rss_before = -1, rss_populated = -1, rss_punched = -1;
static struct { const char *name; unsigned long us; } timings[8];
static int ntimings;

static struct utsname uts;
static int numa_nodes;
static long page_size;

/* ---- the buffer and the evictors' work queue --------------------------- */

static int memfd = -1;
static char *buf = MAP_FAILED;
static size_t npages, buf_len, nbatches;
static unsigned char *punched;		/* per page: punched since last populated */

/*
 * Work item k is batch k % nbatches. The main thread bumps `posted` before
 * each sem_post; an evictor takes the next index after each sem_wait. Items
 * at or past `posted` are stop tokens, posted once per evictor at the end,
 * so no evictor is ever left waiting.
 */
static sem_t kick;
static atomic_ulong posted, taken, done;
static atomic_int alive;
static volatile sig_atomic_t stop_signal;

struct evictor {
	pthread_t thread;
	uint64_t rng;
};

static struct evictor evictors[MAX_EVICTORS];

/* ---- small helpers ----------------------------------------------------- */

static void add_error(const char *fmt, ...)
{
	size_t len = strlen(error_text);
	va_list ap;

	if (len + 3 >= sizeof(error_text))
		return;
	if (len)
		len += (size_t)snprintf(error_text + len, sizeof(error_text) - len, "; ");
	va_start(ap, fmt);
	vsnprintf(error_text + len, sizeof(error_text) - len, fmt, ap);
	va_end(ap);
}

static const char *errname(int err)
{
	static char fallback[16];
	const char *name = strerrorname_np(err);

	if (name)
		return name;
	snprintf(fallback, sizeof(fallback), "errno %d", err);
	return fallback;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void add_timing(const char *name, uint64_t since)
{
	if (ntimings < (int)(sizeof(timings) / sizeof(timings[0]))) {
		timings[ntimings].name = name;
		timings[ntimings].us = now_us() - since;
		ntimings++;
	}
}

/* splitmix64: the trial's own RNG, so a seed means the same delays anywhere. */
static uint64_t rng_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void count_errno(int err)
{
	for (int i = 0; i < mig.nerrnos; i++) {
		if (mig.errnos[i].err == err) {
			mig.errnos[i].count++;
			return;
		}
	}
	if (mig.nerrnos < MAX_ERRNOS) {
		mig.errnos[mig.nerrnos].err = err;
		mig.errnos[mig.nerrnos].count = 1;
		mig.nerrnos++;
	}
}

/* Read a whole (proc) file into a NUL-terminated malloc'd buffer. */
static char *slurp(const char *path)
{
	size_t cap = 16384, len = 0;
	char *text = malloc(cap);
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || !text) {
		if (fd >= 0)
			close(fd);
		free(text);
		return NULL;
	}
	for (;;) {
		ssize_t n;

		if (cap - len < 4096) {
			char *bigger = realloc(text, cap * 2);

			if (!bigger)
				break;
			text = bigger;
			cap *= 2;
		}
		n = read(fd, text + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	text[len] = '\0';
	return text;
}

/* Value in kB of a "Name:   123 kB" line inside `text`, -1 if absent. */
static long field_kb(const char *text, const char *name)
{
	size_t nlen = strlen(name);

	for (const char *line = text; line && *line;) {
		if (!strncmp(line, name, nlen) && line[nlen] == ':')
			return strtol(line + nlen + 1, NULL, 10);
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return -1;
}

/*
 * RssShmem as /proc/self/status shows MM_SHMEMPAGES. Kernels before 6.2
 * (SPLIT_RSS_COUNTING) keep a thread's fault-time counts in the thread and
 * fold them into the mm only once per 64 page faults, so a reading right
 * after populating can be short by up to 64 pages. Faulting 2 x 64 scratch
 * anonymous pages first folds this thread's shmem counts; the scratch pages
 * only move the anon counter. Newer kernels are unaffected.
 */
static long read_rss_shmem(void)
{
	size_t len = 130 * (size_t)page_size;
	char *scratch = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *text;
	long kb;

	if (scratch != MAP_FAILED) {
		for (size_t off = 0; off < len; off += (size_t)page_size)
			*(volatile char *)(scratch + off) = 1;
		munmap(scratch, len);
	}
	text = slurp("/proc/self/status");
	kb = text ? field_kb(text, "RssShmem") : -1;
	free(text);
	return kb;
}

/*
 * Fault in everything mapped so far (this binary's text and data: on a tmpfs
 * rootfs they are shmem pages too), so that code first run after the
 * "before" reading does not add to RssShmem and break the baseline.
 */
static void prefault_self(void)
{
	if (mlockall(MCL_CURRENT) == 0)
		munlockall();
}

static int count_numa_nodes(void)
{
	DIR *dir = opendir("/sys/devices/system/node");
	struct dirent *de;
	int count = 0;

	if (!dir)
		return 0;
	while ((de = readdir(dir))) {
		const char *p = de->d_name;

		if (strncmp(p, "node", 4) || !p[4])
			continue;
		for (p += 4; isdigit((unsigned char)*p); p++)
			;
		if (!*p)
			count++;
	}
	closedir(dir);
	return count;
}

static bool node_present(long node)
{
	char path[64];

	snprintf(path, sizeof(path), "/sys/devices/system/node/node%ld", node);
	return access(path, F_OK) == 0;
}

/* ---- JSON output ------------------------------------------------------- */

static void json_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20 || *p >= 0x7f)
			fprintf(out, "\\u%04x", *p);	/* our strings are ASCII; never emit raw bytes */
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

static void json_kb(FILE *out, long kb)
{
	if (kb < 0)
		fputs("null", out);
	else
		fprintf(out, "%ld", kb);
}

static void print_result(void)
{
	FILE *out = stdout;
	bool first = true;

	fputs("{\"program\": \"zapmigrate\", \"format\": 1, \"inputs\": {", out);
	for (int i = 0; i < F_COUNT; i++) {
		if (!flags[i].seen)
			continue;
		fprintf(out, "%s\"%s\": ", first ? "" : ", ", flags[i].key);
		if (flags[i].choices)
			json_string(out, flags[i].choices[flags[i].value]);
		else
			fprintf(out, "%ld", flags[i].value);
		first = false;
	}
	fputs("}, \"kernel\": ", out);
	json_string(out, uts.release);
	fprintf(out, ", \"numa_nodes\": %d, \"page_size\": %ld", numa_nodes, page_size);
	fprintf(out, ", \"migrate\": {\"calls\": %lu, \"call_errors\": %lu, \"moved\": %lu, "
		"\"enoent\": %lu, \"ebusy\": %lu, \"other\": %lu, \"other_errnos\": {",
		mig.calls, mig.call_errors, mig.moved, mig.enoent, mig.ebusy, mig.other);
	for (int i = 0; i < mig.nerrnos; i++)
		fprintf(out, "%s\"%d\": %lu", i ? ", " : "", mig.errnos[i].err, mig.errnos[i].count);
	fprintf(out, "}}, \"punch\": {\"calls\": %lu, \"errors\": %lu}",
		atomic_load(&punch_calls), atomic_load(&punch_errors));
	fprintf(out, ", \"vma\": {\"found\": %s, \"rss_kb\": ", vma.found ? "true" : "false");
	json_kb(out, vma.rss_kb);
	fputs(", \"pss_shmem_kb\": ", out);
	json_kb(out, vma.pss_shmem_kb);
	fputs("}, \"rollup\": {\"pss_shmem_kb\": ", out);
	json_kb(out, rollup_pss_shmem_kb);
	fputs("}, \"rss_shmem_kb\": {\"before\": ", out);
	json_kb(out, rss_before);
	fputs(", \"populated\": ", out);
	json_kb(out, rss_populated);
	fputs(", \"punched\": ", out);
	json_kb(out, rss_punched);
	fputs("}, \"timing_us\": {", out);
	for (int i = 0; i < ntimings; i++)
		fprintf(out, "%s\"%s\": %lu", i ? ", " : "", timings[i].name, timings[i].us);
	fputs("}, \"error\": ", out);
	if (error_text[0])
		json_string(out, error_text);
	else
		fputs("null", out);
	fputs("}\n", out);
	fflush(out);
}

/* ---- argument parsing -------------------------------------------------- */

static bool parse_long(const char *text, long *value)
{
	long v = 0;

	if (!*text || strlen(text) > 10)
		return false;
	for (const char *p = text; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return false;
		v = v * 10 + (*p - '0');
	}
	*value = v;
	return true;
}

/* Returns false with error_text set when the command line is not usable. */
static bool parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i += 2) {
		struct flag *f = NULL;

		for (int j = 0; j < F_COUNT; j++)
			if (!strcmp(argv[i], flags[j].name))
				f = &flags[j];
		if (!f) {
			add_error("usage: unknown flag '%.64s'", argv[i]);
			return false;
		}
		if (f->seen) {
			add_error("usage: %s given twice", f->name);
			return false;
		}
		if (i + 1 >= argc) {
			add_error("usage: %s needs a value", f->name);
			return false;
		}
		if (f->choices) {
			int k;

			for (k = 0; f->choices[k]; k++)
				if (!strcmp(argv[i + 1], f->choices[k]))
					break;
			if (!f->choices[k]) {
				add_error("usage: %s '%.32s' is not one of %s", f->name, argv[i + 1],
					  f == &flags[F_PUNCH] ? "fallocate|madvise" : "any|same|split");
				return false;
			}
			f->value = k;
		} else if (!parse_long(argv[i + 1], &f->value) || f->value < f->min ||
			   f->value > f->max) {
			add_error("usage: %s '%.32s' is not an integer in [%ld, %ld]", f->name,
				  argv[i + 1], f->min, f->max);
			return false;
		}
		f->seen = true;
	}
	for (int j = 0; j < F_COUNT; j++) {
		if (!flags[j].seen) {
			add_error("usage: missing %s", flags[j].name);
			return false;
		}
	}
	if (ARG(F_EVICT_MIN) > ARG(F_EVICT_MAX)) {
		add_error("usage: --evict-delay-min-us is above --evict-delay-max-us");
		return false;
	}
	if (ARG(F_SRC) == ARG(F_DST)) {
		add_error("usage: --src-node and --dst-node must differ");
		return false;
	}
	return true;
}

/* ---- CPU placement ----------------------------------------------------- */

static int allowed_cpus[CPU_SETSIZE];
static int nallowed;

static void init_cpus(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &set))
				allowed_cpus[nallowed++] = c;
	if (!nallowed)
		allowed_cpus[nallowed++] = 0;
}

/* CPU for thread `slot` (0 = main, 1.. = evictors), or -1 for unpinned. */
static int cpu_for(int slot)
{
	switch (ARG(F_PLACEMENT)) {
	case PLACE_SAME:
		return allowed_cpus[0];
	case PLACE_SPLIT:
		return allowed_cpus[slot % nallowed];
	default:
		return -1;
	}
}

static void pin(pthread_attr_t *attr, int slot)
{
	int cpu = cpu_for(slot), err;
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (attr)
		err = pthread_attr_setaffinity_np(attr, sizeof(set), &set);
	else
		err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (err)
		add_error("affinity cpu %d: %s", cpu, errname(err));
}

/* ---- the race ---------------------------------------------------------- */

static void punch_range(size_t first, size_t count)
{
	off_t off = (off_t)(first * (size_t)page_size);
	size_t len = count * (size_t)page_size;
	int ret;

	if (ARG(F_PUNCH) == PUNCH_MADVISE)
		ret = madvise(buf + off, len, MADV_REMOVE);
	else
		ret = fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)len);
	atomic_fetch_add(&punch_calls, 1);
	if (ret)
		atomic_fetch_add(&punch_errors, 1);
	else
		memset(punched + first, 1, count);
}

static size_t batch_len(size_t b)
{
	size_t first = b * (size_t)ARG(F_BATCH);

	return npages - first < (size_t)ARG(F_BATCH) ? npages - first : (size_t)ARG(F_BATCH);
}

static void *evictor_main(void *arg)
{
	struct evictor *self = arg;
	uint64_t span = (uint64_t)(ARG(F_EVICT_MAX) - ARG(F_EVICT_MIN)) + 1;

	for (;;) {
		unsigned long k;

		if (sem_wait(&kick)) {
			if (errno == EINTR)
				continue;
			break;
		}
		k = atomic_fetch_add(&taken, 1);
		if (k >= atomic_load(&posted))
			break;	/* a stop token */
		usleep((useconds_t)(ARG(F_EVICT_MIN) + (long)(rng_next(&self->rng) % span)));
		punch_range((k % nbatches) * (size_t)ARG(F_BATCH), batch_len(k % nbatches));
		atomic_fetch_add(&done, 1);
	}
	atomic_fetch_sub(&alive, 1);
	return NULL;
}

static void migrate(size_t first, size_t count, int node, void **addrs, int *nodes, int *status)
{
	long ret;

	for (size_t i = 0; i < count; i++) {
		addrs[i] = buf + (first + i) * (size_t)page_size;
		nodes[i] = node;
		status[i] = STATUS_UNSET;
	}
	ret = syscall(SYS_move_pages, 0, count, addrs, nodes, status, MPOL_MF_MOVE);
	mig.calls++;
	if (ret < 0) {
		mig.call_errors++;
		count_errno(errno);
		return;
	}
	for (size_t i = 0; i < count; i++) {
		if (status[i] == node) {
			mig.moved++;
		} else if (status[i] == -ENOENT) {
			mig.enoent++;
		} else if (status[i] == -EBUSY) {
			mig.ebusy++;
		} else {
			mig.other++;
			if (status[i] < 0 && status[i] > -4096)
				count_errno(-status[i]);
		}
	}
}

static void populate(void)
{
	for (size_t i = 0; i < npages; i++)
		*(volatile size_t *)(buf + i * (size_t)page_size) = i + 1;
	memset(punched, 0, npages);
}

static void wait_for_evictors(void)
{
	while (atomic_load(&done) < atomic_load(&posted) && atomic_load(&alive) > 0)
		usleep(20);
}

static void on_signal(int sig)
{
	stop_signal = sig;
}

/*
 * Memory pressure during the race: anonymous memory touched and given back
 * over and over, so reclaim and compaction run beside migration. Anonymous
 * pages count in RssAnon, never in RssShmem: the counter oracle is unaffected.
 */
static atomic_bool pressure_stop;

static void *pressure_main(void *arg)
{
	size_t len = (size_t)ARG(F_PRESSURE) << 20;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	(void)arg;
	if (mem == MAP_FAILED)
		return NULL;
	while (!atomic_load(&pressure_stop)) {
		for (size_t off = 0; off < len && !atomic_load(&pressure_stop); off += (size_t)page_size)
			mem[off]++;
		madvise(mem, len, MADV_DONTNEED);
	}
	munmap(mem, len);
	return NULL;
}

/* Populate, race, punch everything; errors land in error_text. */
static void run_trial(void)
{
	size_t batch = (size_t)ARG(F_BATCH);
	void **addrs = calloc(batch, sizeof(*addrs));
	int *nodes = calloc(batch, sizeof(*nodes));
	int *status = calloc(batch, sizeof(*status));
	int started = 0;
	pthread_t pressure_thread;
	bool pressure_started = false;
	uint64_t t;

	pin(NULL, 0);	/* before populating: with a placement, pages start on main's node */
	npages = (size_t)ARG(F_PAGES);
	buf_len = npages * (size_t)page_size;
	nbatches = (npages + batch - 1) / batch;
	punched = calloc(npages, 1);
	if (!addrs || !nodes || !status || !punched) {
		add_error("calloc: ENOMEM");
		goto out;
	}
	memfd = memfd_create("zapmigrate", MFD_CLOEXEC);
	if (memfd < 0) {
		add_error("memfd_create: %s", errname(errno));
		goto out;
	}
	if (ftruncate(memfd, (off_t)buf_len)) {
		add_error("ftruncate: %s", errname(errno));
		goto out;
	}
	buf = mmap(NULL, buf_len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (buf == MAP_FAILED) {
		add_error("mmap: %s", errname(errno));
		goto out;
	}
	t = now_us();
	populate();
	add_timing("populate", t);
	rss_populated = read_rss_shmem();

	if (sem_init(&kick, 0, 0)) {
		add_error("sem_init: %s", errname(errno));
		goto sweep;
	}
	for (int i = 0; i < ARG(F_EVICTORS); i++) {
		pthread_attr_t attr;
		int err;

		evictors[i].rng = (uint64_t)ARG(F_RNG_SEED) * 0x100000001b3ULL + (uint64_t)i;
		pthread_attr_init(&attr);
		pin(&attr, 1 + i);
		atomic_fetch_add(&alive, 1);
		err = pthread_create(&evictors[i].thread, &attr, evictor_main, &evictors[i]);
		pthread_attr_destroy(&attr);
		if (err) {
			atomic_fetch_sub(&alive, 1);
			add_error("pthread_create: %s", errname(err));
			break;
		}
		started++;
	}

	if (ARG(F_PRESSURE) > 0 &&
	    (errno = pthread_create(&pressure_thread, NULL, pressure_main, NULL)) == 0)
		pressure_started = true;
	else if (ARG(F_PRESSURE) > 0)
		add_error("pthread_create (pressure): %s", errname(errno));

	t = now_us();
	for (long r = 0; started && r < ARG(F_ROUNDS) && !stop_signal; r++) {
		int from = (int)(r % 2 ? ARG(F_DST) : ARG(F_SRC));
		int to = (int)(r % 2 ? ARG(F_SRC) : ARG(F_DST));

		if (r > 0)
			populate();
		for (size_t b = 0; b < nbatches; b++)
			migrate(b * batch, batch_len(b), from, addrs, nodes, status);
		for (size_t b = 0; b < nbatches && !stop_signal; b++) {
			atomic_fetch_add(&posted, 1);
			sem_post(&kick);
			usleep((useconds_t)ARG(F_KICK));
			migrate(b * batch, batch_len(b), to, addrs, nodes, status);
		}
		wait_for_evictors();
	}
	add_timing("migrate", t);
	/* One stop token per evictor; each takes exactly one and returns. */
	for (int i = 0; i < started; i++)
		sem_post(&kick);
	for (int i = 0; i < started; i++)
		pthread_join(evictors[i].thread, NULL);
	atomic_store(&pressure_stop, true);
	if (pressure_started)
		pthread_join(pressure_thread, NULL);
	if (stop_signal)
		add_error("stopped by signal %d", (int)stop_signal);

sweep:
	/* Whatever the evictors did not punch since it was last populated. */
	t = now_us();
	for (size_t i = 0; i < npages;) {
		size_t j = i;

		while (j < npages && !punched[j])
			j++;
		if (j > i)
			punch_range(i, j - i);
		i = j + 1;
	}
	add_timing("sweep", t);
out:
	free(addrs);
	free(nodes);
	free(status);
}

/* The oracles: read after punching, before unmapping. */
static void measure(void)
{
	char *text;

	rss_punched = read_rss_shmem();
	text = slurp("/proc/self/smaps_rollup");
	if (text)
		rollup_pss_shmem_kb = field_kb(text, "Pss_Shmem");
	free(text);
	if (buf == MAP_FAILED)
		return;
	text = slurp("/proc/self/smaps");
	for (char *line = text; line && *line;) {
		unsigned long start, end;
		char *next = strchr(line, '\n');

		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 && isxdigit((unsigned char)line[0]) &&
		    start == (unsigned long)buf && end == (unsigned long)buf + buf_len) {
			/* This VMA's fields run until the next header line ("VmFlags" is last). */
			char *stop = next;

			while (stop && stop[1] && !(isxdigit((unsigned char)stop[1]) &&
						   !isupper((unsigned char)stop[1])))
				stop = strchr(stop + 1, '\n');
			if (stop)
				*stop = '\0';
			vma.found = true;
			vma.rss_kb = field_kb(line, "Rss");
			/* Kernels print Pss_Shmem in smaps_rollup only; for a VMA that maps
			 * nothing but the memfd, its Pss is its Pss_Shmem. */
			vma.pss_shmem_kb = field_kb(line, "Pss_Shmem");
			if (vma.pss_shmem_kb < 0)
				vma.pss_shmem_kb = field_kb(line, "Pss");
			break;
		}
		line = next ? next + 1 : NULL;
	}
	free(text);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	uint64_t t0 = now_us();

	uname(&uts);
	page_size = sysconf(_SC_PAGESIZE);
	numa_nodes = count_numa_nodes();
	if (!parse_args(argc, argv)) {
		print_result();
		return 2;
	}
	if (numa_nodes < 2)
		add_error("numa: %d node%s", numa_nodes, numa_nodes == 1 ? "" : "s");
	else if (!node_present(ARG(F_SRC)) || !node_present(ARG(F_DST)))
		add_error("numa: node %ld absent", node_present(ARG(F_SRC)) ? ARG(F_DST) : ARG(F_SRC));
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	init_cpus();
	prefault_self();
	rss_before = read_rss_shmem();
	run_trial();
	measure();
	if (buf != MAP_FAILED)
		munmap(buf, buf_len);
	if (memfd >= 0)
		close(memfd);
	add_timing("total", t0);
	print_result();
	return 0;
}
