// SPDX-License-Identifier: GPL-2.0-only
/*
 * zapmigrate: one trial of a zap vs. page-migration race, and a check of the
 * data it leaves behind.
 *
 * The main thread moves the pages of a memfd mapping between two NUMA nodes
 * (the mover: move_pages(), mbind(MPOL_MF_MOVE) or automatic NUMA balancing)
 * while evictor threads, woken by a semaphore, zap the same pages after a
 * random delay: a hole punch (fallocate(PUNCH_HOLE) or madvise(MADV_REMOVE))
 * or a truncation of the file. The scenario picks the mapping (MAP_SHARED, or
 * MAP_PRIVATE with COWed pages, optionally pushed to swap first) and the zap.
 * Afterwards five oracles read the result: the mapping's smaps entry, the
 * RssShmem counter, and page by page the data against what POSIX says (the
 * agent and the host add the teardown and splat oracles).
 *
 * Written for the farm, not copied from the seed thread's zap-migrate.c:
 * migration results are data (never asserted), every wait has an end, the
 * oracle reads the mapping's own smaps entries rather than smaps_rollup (which
 * counts the binary itself when it lives on a tmpfs rootfs), a page read that
 * faults is data (SIGBUS/SIGSEGV are caught), and the output is one JSON
 * object (docs/protocol.md). Exit 0 when the JSON was printed, 2 for a bad
 * command line (the JSON's "error" says which flag).
 *
 * Rounds: round r first (re)populates every page and moves it to the round's
 * "from" node, then races each batch's move to the "to" node against its zap;
 * "from"/"to" alternate (src->dst, dst->src, ...). A page is zapped once per
 * round, after the round populated it; pages the evictors did not zap (early
 * stop, failed punch) are zapped by a final sweep. The data check follows
 * every round, before the next one overwrites what the round left behind.
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
#include <setjmp.h>
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
#ifndef MPOL_BIND
#define MPOL_BIND 2
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define STATUS_UNSET INT32_MIN /* move_pages() did not write this status */
#define MAX_ERRNOS 64
#define MAX_EVICTORS 16
#define MAX_PAGES (1L << 16)
#define MAX_MISMATCHES 8	/* offending pages kept for the JSON */

enum { PUNCH_FALLOCATE, PUNCH_MADVISE };
enum { PLACE_ANY, PLACE_SAME, PLACE_SPLIT };
enum {
	SC_SHARED_PUNCH, SC_SHARED_TRUNCATE, SC_PRIVATE_TRUNCATE, SC_PRIVATE_PUNCH,
	SC_SWAPPED_PRIVATE_TRUNCATE, SC_SWAPPED_PRIVATE_PUNCH
};
enum { MV_MOVE_PAGES, MV_MBIND, MV_NUMA_BALANCING };

static const char *const punch_names[] = { "fallocate", "madvise", NULL };
static const char *const placement_names[] = { "any", "same", "split", NULL };
static const char *const scenario_names[] = {
	"shared-punch", "shared-truncate", "private-truncate", "private-punch",
	"swapped-private-truncate", "swapped-private-punch", NULL
};
static const char *const mover_names[] = { "move_pages", "mbind", "numa-balancing", NULL };

/* ---- command line ------------------------------------------------------ */

struct flag {
	const char *name;		/* as TrialParams.argv() spells it */
	const char *key;		/* as the JSON "inputs" spells it */
	long min, max;
	const char *const *choices;	/* NULL: an integer */
	long value;			/* the integer, or the index in choices */
	bool seen;
	int optional;			/* 0: required; 1: defaults to value 0; 2: hidden test hook */
};

static struct flag flags[] = {
	{ "--pages", "pages", 1, MAX_PAGES, NULL, 0, false, 0 },
	{ "--evict-delay-min-us", "evict_delay_min_us", 0, 1000000, NULL, 0, false, 0 },
	{ "--evict-delay-max-us", "evict_delay_max_us", 0, 1000000, NULL, 0, false, 0 },
	{ "--kick-delay-us", "kick_delay_us", 0, 1000000, NULL, 0, false, 0 },
	{ "--batch", "batch", 1, MAX_PAGES, NULL, 0, false, 0 },
	{ "--src-node", "src_node", 0, 63, NULL, 0, false, 0 },
	{ "--dst-node", "dst_node", 0, 63, NULL, 0, false, 0 },
	{ "--rounds", "rounds", 1, 64, NULL, 0, false, 0 },
	{ "--punch", "punch", 0, 0, punch_names, 0, false, 0 },
	{ "--evictors", "evictors", 1, MAX_EVICTORS, NULL, 0, false, 0 },
	{ "--placement", "placement", 0, 0, placement_names, 0, false, 0 },
	{ "--rng-seed", "rng_seed", 0, 0xFFFFFFFFL, NULL, 0, false, 0 },
	{ "--pressure-mb", "pressure_mb", 0, 4096, NULL, 0, false, 0 },
	/* parameter space v3: absent from older tokens' command lines */
	{ "--scenario", "scenario", 0, 0, scenario_names, 0, false, 1 },
	{ "--mover", "mover", 0, 0, mover_names, 0, false, 1 },
	/* test hook: overwrite this page before the last data check (the oracle must see it) */
	{ "--corrupt-page", "corrupt_page", 0, MAX_PAGES - 1, NULL, 0, false, 2 },
};

enum {
	F_PAGES, F_EVICT_MIN, F_EVICT_MAX, F_KICK, F_BATCH, F_SRC, F_DST,
	F_ROUNDS, F_PUNCH, F_EVICTORS, F_PLACEMENT, F_RNG_SEED, F_PRESSURE,
	F_SCENARIO, F_MOVER, F_CORRUPT, F_COUNT
};

#define ARG(i) (flags[i].value)
#define SCENARIO (ARG(F_SCENARIO))
#define MOVER (ARG(F_MOVER))

static bool is_private(void)
{
	return SCENARIO != SC_SHARED_PUNCH && SCENARIO != SC_SHARED_TRUNCATE;
}

static bool is_truncate(void)
{
	return SCENARIO == SC_SHARED_TRUNCATE || SCENARIO == SC_PRIVATE_TRUNCATE ||
	       SCENARIO == SC_SWAPPED_PRIVATE_TRUNCATE;
}

static bool is_swapped(void)
{
	return SCENARIO == SC_SWAPPED_PRIVATE_TRUNCATE || SCENARIO == SC_SWAPPED_PRIVATE_PUNCH;
}

/* ---- results ----------------------------------------------------------- */

static char error_text[1024];	/* fatal: the trial did not run as asked */
#define MAX_WARNINGS 8
static char warnings[MAX_WARNINGS][160];	/* non-fatal: recorded beside the oracles */
static int nwarnings;

static struct {
	unsigned long calls, call_errors, moved, enoent, ebusy, other;
	int nerrnos;
	struct { int err; unsigned long count; } errnos[MAX_ERRNOS];
} mig;

static atomic_ulong punch_calls, punch_errors;

static struct {
	bool found;
	long rss_kb, pss_shmem_kb;	/* -1: not reported */
	long anon_kb, swap_kb;		/* -1: not reported */
} vma = { false, -1, -1, -1, -1 };

static long rollup_pss_shmem_kb = -1;
static long rss_before = -1, rss_populated = -1, rss_punched = -1;
static long unpunched = -1;	/* pages still mapped after the sweep; -1: never populated */
static struct { const char *name; unsigned long us; } timings[8];
static int ntimings;

static struct utsname uts;
static int numa_nodes;
static long page_size;

/*
 * The window proxy: pages whose zap (the evictor's syscall for their batch)
 * and whose raced move (the mover's call for that batch) were in flight at
 * the same time, and of those, the pages the move reported on the target
 * node ("moved") or gone ("gone"). See docs/protocol.md.
 */
static struct { unsigned long overlapped, moved, gone; } proxy;

/* Page states the data oracle names. */
enum state { ST_ZERO, ST_FILE, ST_COW, ST_OTHER, ST_SIGBUS, ST_SIGSEGV };
static const char *const state_names[] = { "zero", "file", "cow", "other", "sigbus", "sigsegv" };
enum phase { PH_ZAPPED, PH_TRUNCATED, PH_EXTENDED };
static const char *const phase_names[] = { "zapped", "truncated", "extended" };

static struct {
	unsigned long checked, mismatches;
	int nfirst;
	struct {
		size_t page;
		long round;
		enum phase phase;
		enum state want, got;
		uint64_t word;
	} first[MAX_MISMATCHES];
} data;

static long swap_total_kb = -1, paged_out_kb = -1;
static int numa_balancing = -1;		/* sysctl value during the trial; -1: not there */

/* ---- the buffer and the evictors' work queue --------------------------- */

static int memfd = -1;
static char *buf = MAP_FAILED;
static size_t npages, buf_len, nbatches;
static unsigned char *punched;		/* per page: zapped since last populated */
static int *race_status;		/* per page: the raced move's status, this round */
static off_t file_size;			/* truncate scenarios: current size, under size_lock */
static pthread_mutex_t size_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t salt;			/* per trial and round: stale data never looks current */

/* Per batch, this round: when its move and its zap were in flight (µs, 0: never). */
struct span { uint64_t start, end; };
static struct span *move_span, *zap_span;

/*
 * Work item k is batch k % nbatches (in descending order for truncation, so
 * each ftruncate() cuts off exactly one batch). The main thread bumps `posted`
 * before each sem_post; an evictor takes the next index after each sem_wait.
 * Items at or past `posted` are stop tokens, posted once per evictor at the
 * end, so no evictor is ever left waiting.
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

/* Trouble that leaves the trial valid (a thread not pinned, no pressure thread). */
static void add_warning(const char *fmt, ...)
{
	va_list ap;

	if (nwarnings >= MAX_WARNINGS)
		return;
	va_start(ap, fmt);
	vsnprintf(warnings[nwarnings++], sizeof(warnings[0]), fmt, ap);
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
 * Since 6.2 MM_SHMEMPAGES is a percpu_counter: each CPU keeps a delta below
 * the batch (max(32, 2 x online CPUs)) and folds it into the shared count
 * only when an update would reach the batch. /proc/self/status reads the
 * shared count (percpu_counter_read_positive) on kernels that lack the
 * "get_mm_counter_sum" change (6.2 to 6.15, unless backported), so a reading
 * there can be off by up to a batch per CPU. An update that folds leaves
 * that CPU's delta at exactly 0, so on every CPU in turn we map FOLD_PAGES
 * pages of a scratch memfd (each fault adds to this CPU's delta) and zap
 * them with one MADV_DONTNEED: a 2 MiB-aligned range is one page table, so
 * the zap is one update of -FOLD_PAGES, which folds whenever FOLD_PAGES is
 * at least twice the batch (up to 128 CPUs). Afterwards every delta is 0 and
 * the shared count is the exact sum, whatever the kernel reads. Read faults
 * keep the PTEs clean, so the zap gathers all of them in one batch. On
 * older kernels the scratch pages are counted like any other shmem page and
 * leave the count where it was.
 */
#define FOLD_PAGES 512
#define FOLD_MAX_CPUS 128
static char *fold_buf = MAP_FAILED;

static void fold_shmem_counter(void)
{
	size_t len = FOLD_PAGES * (size_t)page_size, align = len;
	long ncpus = sysconf(_SC_NPROCESSORS_CONF);
	cpu_set_t orig, one;

	if (fold_buf == MAP_FAILED) {
		int fd = memfd_create("zapmigrate-fold", MFD_CLOEXEC);
		char *area = mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uintptr_t at;

		if (fd < 0 || area == MAP_FAILED || ftruncate(fd, (off_t)len)) {
			add_warning("counter fold: scratch memfd: %s", errname(errno));
			if (fd >= 0)
				close(fd);
			return;
		}
		at = ((uintptr_t)area + align - 1) & ~(uintptr_t)(align - 1);
		fold_buf = mmap((void *)at, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
		close(fd);
		if ((char *)at > area)
			munmap(area, (size_t)((char *)at - area));
		munmap((char *)at + len, (size_t)(area + len + align - ((char *)at + len)));
		if (fold_buf == MAP_FAILED) {
			add_warning("counter fold: mmap: %s", errname(errno));
			return;
		}
	}
	if (ncpus > FOLD_MAX_CPUS)
		add_warning("counter fold: %ld CPUs, exact up to %d", ncpus, FOLD_MAX_CPUS);
	if (sched_getaffinity(0, sizeof(orig), &orig))
		CPU_ZERO(&orig);
	for (long c = 0; c < ncpus && c < CPU_SETSIZE; c++) {
		CPU_ZERO(&one);
		CPU_SET((int)c, &one);
		if (sched_setaffinity(0, sizeof(one), &one))
			continue;	/* offline: it folded its deltas when it went down */
		for (size_t off = 0; off < len; off += (size_t)page_size)
			(void)*(volatile char *)(fold_buf + off);
		madvise(fold_buf, len, MADV_DONTNEED);
	}
	if (CPU_COUNT(&orig))
		sched_setaffinity(0, sizeof(orig), &orig);
}

/*
 * RssShmem as /proc/self/status shows MM_SHMEMPAGES, read exactly. Kernels
 * before 6.2 (SPLIT_RSS_COUNTING) keep a thread's fault-time counts in the
 * thread and fold them into the mm only once per 64 page faults, so a
 * reading right after populating can be short by up to 64 pages. Faulting
 * 2 x 64 scratch anonymous pages first folds this thread's shmem counts; the
 * scratch pages only move the anon counter. From 6.2 on, the per-CPU deltas
 * are folded first (fold_shmem_counter). Called only while no other thread
 * of the trial runs.
 */
static long read_rss_shmem(void)
{
	size_t len = 130 * (size_t)page_size;
	char *scratch;
	char *text;
	long kb;

	fold_shmem_counter();
	scratch = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
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

/* First CPU of a NUMA node (its cpulist), or -1. */
static int node_first_cpu(long node)
{
	char path[80];
	char *text;
	int cpu = -1;

	snprintf(path, sizeof(path), "/sys/devices/system/node/node%ld/cpulist", node);
	text = slurp(path);
	if (text && isdigit((unsigned char)text[0]))
		cpu = atoi(text);
	free(text);
	return cpu;
}

/* Total size of active swap in kB (sum of /proc/swaps), -1 if unreadable. */
static long read_swap_total_kb(void)
{
	char *text = slurp("/proc/swaps");
	long total = 0;

	if (!text)
		return -1;
	for (char *line = strchr(text, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
		char name[256], type[32];
		long size;

		if (sscanf(line + 1, "%255s %31s %ld", name, type, &size) == 3)
			total += size;
	}
	free(text);
	return total;
}

static long read_long_file(const char *path)
{
	char *text = slurp(path);
	long value = -1;

	if (text && isdigit((unsigned char)text[0]))
		value = strtol(text, NULL, 10);
	free(text);
	return value;
}

static bool write_long_file(const char *path, long value)
{
	char text[32];
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	int len = snprintf(text, sizeof(text), "%ld\n", value);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, text, (size_t)len) == len;
	close(fd);
	return ok;
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

static void print_data(FILE *out)
{
	fprintf(out, ", \"data\": {\"checked\": %lu, \"mismatches\": %lu, \"first\": [",
		data.checked, data.mismatches);
	for (int i = 0; i < data.nfirst; i++) {
		fprintf(out, "%s{\"page\": %zu, \"round\": %ld, \"phase\": \"%s\", \"want\": \"%s\", "
			"\"got\": \"%s\", \"word\": \"%016llx\"}", i ? ", " : "", data.first[i].page,
			data.first[i].round, phase_names[data.first[i].phase],
			state_names[data.first[i].want], state_names[data.first[i].got],
			(unsigned long long)data.first[i].word);
	}
	fputs("]}", out);
}

static void print_result(void)
{
	FILE *out = stdout;
	bool first = true;

	fputs("{\"program\": \"zapmigrate\", \"format\": 1, \"inputs\": {", out);
	for (int i = 0; i < F_COUNT; i++) {
		if (!flags[i].seen && flags[i].optional != 1)
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
	fprintf(out, "}}, \"punch\": {\"calls\": %lu, \"errors\": %lu, \"unpunched\": ",
		atomic_load(&punch_calls), atomic_load(&punch_errors));
	json_kb(out, unpunched);
	fputs("}", out);
	fprintf(out, ", \"vma\": {\"found\": %s, \"rss_kb\": ", vma.found ? "true" : "false");
	json_kb(out, vma.rss_kb);
	fputs(", \"pss_shmem_kb\": ", out);
	json_kb(out, vma.pss_shmem_kb);
	fputs(", \"anon_kb\": ", out);
	json_kb(out, vma.anon_kb);
	fputs(", \"swap_kb\": ", out);
	json_kb(out, vma.swap_kb);
	fputs("}, \"rollup\": {\"pss_shmem_kb\": ", out);
	json_kb(out, rollup_pss_shmem_kb);
	fputs("}, \"rss_shmem_kb\": {\"before\": ", out);
	json_kb(out, rss_before);
	fputs(", \"populated\": ", out);
	json_kb(out, rss_populated);
	fputs(", \"punched\": ", out);
	json_kb(out, rss_punched);
	fputs("}", out);
	print_data(out);
	fprintf(out, ", \"proxy\": {\"overlapped\": %lu, \"moved\": %lu, \"gone\": %lu}",
		proxy.overlapped, proxy.moved, proxy.gone);
	fputs(", \"swap\": {\"total_kb\": ", out);
	json_kb(out, swap_total_kb);
	fputs(", \"paged_out_kb\": ", out);
	json_kb(out, paged_out_kb);
	fputs("}, \"numa_balancing\": ", out);
	if (numa_balancing < 0)
		fputs("null", out);
	else
		fprintf(out, "%d", numa_balancing);
	fputs(", \"timing_us\": {", out);
	for (int i = 0; i < ntimings; i++)
		fprintf(out, "%s\"%s\": %lu", i ? ", " : "", timings[i].name, timings[i].us);
	fputs("}, \"warnings\": [", out);
	for (int i = 0; i < nwarnings; i++) {
		fputs(i ? ", " : "", out);
		json_string(out, warnings[i]);
	}
	fputs("], \"error\": ", out);
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

static void choices_text(const char *const *choices, char *text, size_t size)
{
	size_t len = 0;

	text[0] = '\0';
	for (int k = 0; choices[k] && len + 1 < size; k++)
		len += (size_t)snprintf(text + len, size - len, "%s%s", k ? "|" : "", choices[k]);
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
			char names[160];
			int k;

			for (k = 0; f->choices[k]; k++)
				if (!strcmp(argv[i + 1], f->choices[k]))
					break;
			if (!f->choices[k]) {
				choices_text(f->choices, names, sizeof(names));
				add_error("usage: %s '%.32s' is not one of %s", f->name, argv[i + 1], names);
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
		if (!flags[j].seen && !flags[j].optional) {
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
	if (flags[F_CORRUPT].seen && ARG(F_CORRUPT) >= ARG(F_PAGES)) {
		add_error("usage: --corrupt-page must be below --pages");
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

static void pin_to(pthread_attr_t *attr, int cpu)
{
	cpu_set_t set;
	int err;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (attr)
		err = pthread_attr_setaffinity_np(attr, sizeof(set), &set);
	else
		err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (err)
		add_warning("affinity cpu %d: %s", cpu, errname(err));
}

static void pin(pthread_attr_t *attr, int slot)
{
	if (cpu_for(slot) >= 0)
		pin_to(attr, cpu_for(slot));
}

/* Main's placement again after the NUMA-balancing mover pinned it to the target node. */
static void restore_affinity(void)
{
	cpu_set_t set;

	if (cpu_for(0) >= 0) {
		pin(NULL, 0);
		return;
	}
	CPU_ZERO(&set);
	for (int i = 0; i < nallowed; i++)
		CPU_SET(allowed_cpus[i], &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* ---- page contents ----------------------------------------------------- */

/*
 * Each page carries one 64-bit word at its start and the same word at its
 * end: the file's pattern (written through the file) or, in private
 * scenarios, the COW pattern (written through the private mapping). Both
 * depend on the page, the trial and the round, so nothing stale looks current.
 */
static uint64_t file_word(size_t page)
{
	return (salt ^ ((uint64_t)page + 1) * 0x9e3779b97f4a7c15ULL) | 1;
}

static uint64_t cow_word(size_t page)
{
	return file_word(page) ^ 0xc0c0c0c0c0c0c0c0ULL;
}

static void put_words(char *page, uint64_t word)
{
	*(volatile uint64_t *)page = word;
	*(volatile uint64_t *)(page + page_size - 8) = word;
}

/* Private scenarios COW every other page; the rest keep mapping the file's page. */
static bool cowed(size_t page)
{
	return is_private() && page % 2 == 0;
}

static void set_salt(long round)
{
	uint64_t state = (uint64_t)ARG(F_RNG_SEED) * 31 + (uint64_t)round + 0x5a17;

	salt = rng_next(&state);
}

/* The state POSIX requires of a page after this round's zap, in a phase. */
static enum state expected(size_t page, enum phase phase)
{
	if (phase == PH_TRUNCATED)
		return ST_SIGBUS;	/* beyond EOF, in shared and private mappings alike */
	if (phase == PH_EXTENDED)
		return ST_ZERO;		/* truncation discards even private COWs */
	return cowed(page) ? ST_COW : ST_ZERO;	/* a hole punch keeps private COWs */
}

static sigjmp_buf probe_jmp;
static volatile sig_atomic_t probing;

static void on_fault(int sig)
{
	if (!probing) {
		signal(sig, SIG_DFL);	/* a real crash: let it happen */
		raise(sig);
		return;
	}
	siglongjmp(probe_jmp, sig);
}

/* Read one page; a SIGBUS or SIGSEGV is an answer, not a crash. */
static enum state probe(size_t page, uint64_t *word)
{
	volatile const uint64_t *p = (const uint64_t *)(buf + page * (size_t)page_size);
	volatile uint64_t head = 0, tail = 0;
	int sig;

	*word = 0;
	probing = 1;
	sig = sigsetjmp(probe_jmp, 1);
	if (sig) {
		probing = 0;
		return sig == SIGBUS ? ST_SIGBUS : ST_SIGSEGV;
	}
	head = p[0];
	tail = p[page_size / 8 - 1];
	probing = 0;
	*word = head;
	if (head != tail)
		return ST_OTHER;
	if (head == 0)
		return ST_ZERO;
	if (head == file_word(page))
		return ST_FILE;
	if (head == cow_word(page))
		return ST_COW;
	return ST_OTHER;
}

/* Read one byte of a page that may be gone (truncated: SIGBUS); the mover's touch. */
static void touch(size_t page)
{
	probing = 1;
	if (!sigsetjmp(probe_jmp, 1))
		(void)*(volatile const char *)(buf + page * (size_t)page_size);
	probing = 0;
}

static void check_pages(long round, enum phase phase)
{
	for (size_t i = 0; i < npages; i++) {
		uint64_t word;
		enum state want = expected(i, phase), got = probe(i, &word);

		data.checked++;
		if (got == want)
			continue;
		data.mismatches++;
		if (data.nfirst < MAX_MISMATCHES) {
			data.first[data.nfirst].page = i;
			data.first[data.nfirst].round = round;
			data.first[data.nfirst].phase = phase;
			data.first[data.nfirst].want = want;
			data.first[data.nfirst].got = got;
			data.first[data.nfirst].word = word;
			data.nfirst++;
		}
	}
}

/* ---- the race ---------------------------------------------------------- */

static size_t batch_len(size_t b)
{
	size_t first = b * (size_t)ARG(F_BATCH);

	return npages - first < (size_t)ARG(F_BATCH) ? npages - first : (size_t)ARG(F_BATCH);
}

/* The batch of work item k: truncation cuts the file from its end downwards. */
static size_t batch_of(unsigned long k)
{
	size_t b = k % nbatches;

	return is_truncate() ? nbatches - 1 - b : b;
}

static void punch_range(size_t first, size_t count)
{
	off_t off = (off_t)(first * (size_t)page_size);
	size_t len = count * (size_t)page_size;
	int ret;

	/* MADV_REMOVE needs a shared writable mapping: private scenarios punch the file */
	if (ARG(F_PUNCH) == PUNCH_MADVISE && !is_private())
		ret = madvise(buf + off, len, MADV_REMOVE);
	else
		ret = fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)len);
	atomic_fetch_add(&punch_calls, 1);
	if (ret)
		atomic_fetch_add(&punch_errors, 1);
	else
		memset(punched + first, 1, count);
}

/* Shrink the file to `pages` pages (never extend: evictors may finish out of order).
 * False when there was nothing to cut (a lower batch's truncation came first). */
static bool truncate_to(size_t pages)
{
	off_t size = (off_t)(pages * (size_t)page_size);
	bool cut = false;
	int ret = 0;

	pthread_mutex_lock(&size_lock);
	if (size < file_size) {
		ret = ftruncate(memfd, size);
		cut = true;
		if (!ret)
			file_size = size;
		atomic_fetch_add(&punch_calls, 1);
		if (ret)
			atomic_fetch_add(&punch_errors, 1);
	}
	pthread_mutex_unlock(&size_lock);
	if (!ret)
		memset(punched + pages, 1, npages - pages);
	return cut;
}

static bool extend_file(void)
{
	pthread_mutex_lock(&size_lock);
	file_size = (off_t)buf_len;
	pthread_mutex_unlock(&size_lock);
	if (ftruncate(memfd, (off_t)buf_len)) {
		add_error("ftruncate: %s", errname(errno));
		return false;
	}
	return true;
}

/* The zap of one batch: its hole punch, or the truncation that cuts it off. */
static void zap_batch(size_t b)
{
	size_t first = b * (size_t)ARG(F_BATCH);

	uint64_t start = now_us();

	if (is_truncate() && !truncate_to(first))
		return;	/* already cut off with a lower batch: no zap of its own */
	if (!is_truncate())
		punch_range(first, batch_len(b));
	zap_span[b].start = start;
	zap_span[b].end = now_us();
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
		zap_batch(batch_of(k));
		atomic_fetch_add(&done, 1);
	}
	atomic_fetch_sub(&alive, 1);
	return NULL;
}

static void count_status(int status, int node)
{
	if (status == node) {
		mig.moved++;
	} else if (status == -ENOENT) {
		mig.enoent++;
	} else if (status == -EBUSY) {
		mig.ebusy++;
	} else {
		mig.other++;
		if (status < 0 && status > -4096)
			count_errno(-status);
	}
}

/* move_pages() of pages [first, first + count) to `node` (NULL nodes: query only). */
static long move_pages_call(size_t first, size_t count, const int *nodes, int *status,
			    void **addrs)
{
	for (size_t i = 0; i < count; i++) {
		addrs[i] = buf + (first + i) * (size_t)page_size;
		status[i] = STATUS_UNSET;
	}
	return syscall(SYS_move_pages, 0, count, addrs, nodes, status, MPOL_MF_MOVE);
}

struct mover_buffers {
	void **addrs;
	int *nodes;
};

/*
 * Move one batch with the chosen mover; `status` gets each page's node or
 * -errno afterwards. move_pages() reports it; for mbind() and NUMA balancing
 * (which moves pages on the hinting faults of touching them from the target
 * node's CPU) the pages' nodes are queried right after.
 */
static void move_batch(size_t b, int node, int mover, struct mover_buffers *mb, int *status)
{
	size_t first = b * (size_t)ARG(F_BATCH), count = batch_len(b);
	long ret;

	for (size_t i = 0; i < count; i++)
		mb->nodes[i] = node;
	mig.calls++;
	if (mover == MV_MOVE_PAGES) {
		ret = move_pages_call(first, count, mb->nodes, status, mb->addrs);
	} else {
		if (mover == MV_MBIND) {
			unsigned long mask[2] = { 0, 0 };

			mask[node / 64] = 1UL << (node % 64);
			ret = syscall(SYS_mbind, buf + first * (size_t)page_size,
				      count * (size_t)page_size, MPOL_BIND, mask, 128, MPOL_MF_MOVE);
		} else {
			for (size_t i = 0; i < count; i++)
				touch(first + i);
			ret = 0;
		}
		if (ret == 0)
			ret = move_pages_call(first, count, NULL, status, mb->addrs);
	}
	if (ret < 0) {
		mig.call_errors++;
		count_errno(errno);
		for (size_t i = 0; i < count; i++)
			status[i] = STATUS_UNSET;
		return;
	}
	for (size_t i = 0; i < count; i++)
		count_status(status[i], node);
}

/* Fill every page with this round's pattern; private scenarios COW every other page. */
static bool populate(void)
{
	if (is_private()) {
		char *file = mmap(NULL, buf_len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);

		if (file == MAP_FAILED) {
			add_error("mmap (fill): %s", errname(errno));
			return false;
		}
		for (size_t i = 0; i < npages; i++)
			put_words(file + i * (size_t)page_size, file_word(i));
		munmap(file, buf_len);
		for (size_t i = 0; i < npages; i++) {
			char *page = buf + i * (size_t)page_size;

			if (cowed(i))
				put_words(page, cow_word(i));
			else
				(void)*(volatile char *)page;	/* map the file's page */
		}
	} else {
		for (size_t i = 0; i < npages; i++)
			put_words(buf + i * (size_t)page_size, file_word(i));
	}
	memset(punched, 0, npages);
	return true;
}

/* Sum the smaps fields of every VMA inside the buffer (mbind may split it). */
static bool read_vma(long *rss, long *pss, long *anon, long *swap)
{
	char *text = slurp("/proc/self/smaps");
	bool found = false;

	*rss = *pss = *anon = *swap = 0;
	for (char *line = text; line && *line;) {
		unsigned long start, end;
		char *next = strchr(line, '\n');

		if (isxdigit((unsigned char)line[0]) && sscanf(line, "%lx-%lx ", &start, &end) == 2 &&
		    start >= (unsigned long)buf && end <= (unsigned long)buf + buf_len) {
			/* This VMA's fields run until the next header line ("VmFlags" is last). */
			char *stop = next, saved = 0;
			long pss_shmem;

			while (stop && stop[1] && !(isxdigit((unsigned char)stop[1]) &&
						   !isupper((unsigned char)stop[1])))
				stop = strchr(stop + 1, '\n');
			if (stop) {
				saved = stop[0];
				stop[0] = '\0';
			}
			found = true;
			*rss += field_kb(line, "Rss");
			*anon += field_kb(line, "Anonymous");
			*swap += field_kb(line, "Swap");
			/* Kernels print Pss_Shmem in smaps_rollup only; for a VMA that maps
			 * nothing but the memfd, its Pss is its Pss_Shmem. */
			pss_shmem = field_kb(line, "Pss_Shmem");
			*pss += pss_shmem >= 0 ? pss_shmem : field_kb(line, "Pss");
			if (stop) {
				stop[0] = saved;
				next = stop;
			}
		}
		line = next ? next + 1 : NULL;
	}
	free(text);
	return found;
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

/* Push the private mapping's pages to swap (swapped scenarios), recording how much went. */
static bool page_out(void)
{
	long rss, pss, anon, swap;

	if (madvise(buf, buf_len, MADV_PAGEOUT)) {
		add_error("swap: madvise(MADV_PAGEOUT): %s", errname(errno));
		return false;
	}
	if (!read_vma(&rss, &pss, &anon, &swap) || swap <= 0) {
		add_error("swap: MADV_PAGEOUT left no page in swap (%ld kB active swap)", swap_total_kb);
		return false;
	}
	paged_out_kb = swap;
	return true;
}

/* The proxy for this round: pages whose zap and raced move overlapped in time. */
static void count_proxy(int to)
{
	for (size_t b = 0; b < nbatches; b++) {
		size_t first = b * (size_t)ARG(F_BATCH);

		if (!move_span[b].end || !zap_span[b].end || zap_span[b].start >= move_span[b].end ||
		    move_span[b].start >= zap_span[b].end)
			continue;
		for (size_t i = first; i < first + batch_len(b); i++) {
			proxy.overlapped++;
			if (race_status[i] == to)
				proxy.moved++;
			else if (race_status[i] == -ENOENT || race_status[i] == -EFAULT)
				proxy.gone++;
		}
	}
}

/*
 * Zap whatever the evictors did not since it was last populated. The NUMA
 * balancing mover reads pages that may have been punched already, which
 * faults them back in: then the whole range is punched again.
 */
static void sweep(void)
{
	if (is_truncate()) {
		(void)truncate_to(0);
		return;
	}
	if (MOVER == MV_NUMA_BALANCING)
		memset(punched, 0, npages);
	for (size_t i = 0; i < npages;) {
		size_t j = i;

		while (j < npages && !punched[j])
			j++;
		if (j > i)
			punch_range(i, j - i);
		i = j + 1;
	}
}

static void measure(void);

/* The test hook: make one page read what a leak would (the file's old data). */
static void corrupt(void)
{
	if (flags[F_CORRUPT].seen)
		put_words(buf + (size_t)ARG(F_CORRUPT) * (size_t)page_size,
			  file_word((size_t)ARG(F_CORRUPT)));
}

/* After a round's zaps: read every page (and, for truncation, again once re-extended). */
static bool check_round(long round, bool last)
{
	if (last)
		measure();	/* the VMA and counter oracles first: reading pages maps them */
	if (is_truncate()) {
		check_pages(round, PH_TRUNCATED);
		if (!extend_file())
			return false;
		if (last)
			corrupt();
		check_pages(round, PH_EXTENDED);
	} else {
		if (last)
			corrupt();
		check_pages(round, PH_ZAPPED);
	}
	return true;
}

/* Populate, race, zap everything, check the data; errors land in error_text. */
static void run_trial(void)
{
	size_t batch = (size_t)ARG(F_BATCH);
	struct mover_buffers mb = { calloc(batch, sizeof(void *)), calloc(batch, sizeof(int)) };
	int *status = calloc(batch, sizeof(*status));
	int started = 0, mover_cpu[2] = { -1, -1 };
	pthread_t pressure_thread;
	bool pressure_started = false, ok = true;
	uint64_t t, t_race = 0, t_check = 0;
	long r;

	pin(NULL, 0);	/* before populating: with a placement, pages start on main's node */
	npages = (size_t)ARG(F_PAGES);
	buf_len = npages * (size_t)page_size;
	nbatches = (npages + batch - 1) / batch;
	punched = calloc(npages, 1);
	race_status = calloc(npages, sizeof(int));
	move_span = calloc(nbatches, sizeof(struct span));
	zap_span = calloc(nbatches, sizeof(struct span));
	if (!mb.addrs || !mb.nodes || !status || !punched || !race_status || !move_span || !zap_span) {
		add_error("calloc: ENOMEM");
		goto out;
	}
	if (MOVER == MV_NUMA_BALANCING) {
		/* hinting faults move a page towards the CPU that touches it */
		mover_cpu[0] = node_first_cpu(ARG(F_DST));
		mover_cpu[1] = node_first_cpu(ARG(F_SRC));
	}
	memfd = memfd_create("zapmigrate", MFD_CLOEXEC);
	if (memfd < 0) {
		add_error("memfd_create: %s", errname(errno));
		goto out;
	}
	if (!extend_file())
		goto out;
	buf = mmap(NULL, buf_len, PROT_READ | PROT_WRITE, is_private() ? MAP_PRIVATE : MAP_SHARED,
		   memfd, 0);
	if (buf == MAP_FAILED) {
		add_error("mmap: %s", errname(errno));
		goto out;
	}
	t = now_us();
	set_salt(0);
	if (!populate())
		goto out;
	add_timing("populate", t);
	rss_populated = read_rss_shmem();

	if (sem_init(&kick, 0, 0)) {
		add_error("sem_init: %s", errname(errno));
		goto out;
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
			if (started)	/* fewer evictors than asked: the race still ran */
				add_warning("pthread_create (evictor %d): %s", i, errname(err));
			else
				add_error("pthread_create: %s", errname(err));
			break;
		}
		started++;
	}

	if (ARG(F_PRESSURE) > 0 &&
	    (errno = pthread_create(&pressure_thread, NULL, pressure_main, NULL)) == 0)
		pressure_started = true;
	else if (ARG(F_PRESSURE) > 0)
		add_warning("pthread_create (pressure): %s", errname(errno));

	for (r = 0; ok && started && r < ARG(F_ROUNDS); r++) {
		int from = (int)(r % 2 ? ARG(F_DST) : ARG(F_SRC));
		int to = (int)(r % 2 ? ARG(F_SRC) : ARG(F_DST));
		unsigned long first_item = atomic_load(&posted);

		if (r > 0) {
			set_salt(r);
			if (!populate())
				break;
		}
		t = now_us();
		/* set-up: everything to the round's "from" node, always with move_pages() */
		for (size_t b = 0; b < nbatches; b++)
			move_batch(b, from, MV_MOVE_PAGES, &mb, status);
		if (is_swapped() && !page_out())
			break;
		memset(move_span, 0, nbatches * sizeof(struct span));
		memset(zap_span, 0, nbatches * sizeof(struct span));
		for (size_t i = 0; i < npages; i++)
			race_status[i] = STATUS_UNSET;
		if (mover_cpu[r % 2] >= 0)
			pin_to(NULL, mover_cpu[r % 2]);
		for (unsigned long k = first_item; k < first_item + nbatches && !stop_signal; k++) {
			size_t b = batch_of(k);	/* rounds post whole multiples of nbatches */

			atomic_fetch_add(&posted, 1);
			sem_post(&kick);
			usleep((useconds_t)ARG(F_KICK));
			move_span[b].start = now_us();
			move_batch(b, to, (int)MOVER, &mb, race_status + b * batch);
			move_span[b].end = now_us();
		}
		wait_for_evictors();
		t_race += now_us() - t;
		if (mover_cpu[r % 2] >= 0)
			restore_affinity();
		t = now_us();
		sweep();
		count_proxy(to);
		ok = check_round(r, r + 1 == ARG(F_ROUNDS) || stop_signal);
		t_check += now_us() - t;
		if (stop_signal)
			break;
	}
	timings[ntimings].name = "migrate";
	timings[ntimings++].us = t_race;
	timings[ntimings].name = "check";
	timings[ntimings++].us = t_check;
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
out:
	if (rss_punched < 0 && buf != MAP_FAILED && memfd >= 0) {
		sweep();	/* a trial cut short still leaves the oracles a zapped range */
		measure();
	}
	free(mb.addrs);
	free(mb.nodes);
	free(status);
}

/* The VMA and counter oracles: read after the last zap, before any page is read again. */
static void measure(void)
{
	char *text;

	rss_punched = read_rss_shmem();
	if (punched && buf != MAP_FAILED) {
		unpunched = 0;
		for (size_t i = 0; i < npages; i++)
			unpunched += !punched[i];
	}
	text = slurp("/proc/self/smaps_rollup");
	if (text)
		rollup_pss_shmem_kb = field_kb(text, "Pss_Shmem");
	free(text);
	if (buf == MAP_FAILED)
		return;
	vma.found = read_vma(&vma.rss_kb, &vma.pss_shmem_kb, &vma.anon_kb, &vma.swap_kb);
	if (!vma.found)
		vma.rss_kb = vma.pss_shmem_kb = vma.anon_kb = vma.swap_kb = -1;
}

/* Automatic NUMA balancing as the mover: switched on for the trial when it is off. */
static int numa_balancing_before = -1;

static void numa_balancing_on(void)
{
	const char *path = "/proc/sys/kernel/numa_balancing";

	numa_balancing = (int)read_long_file(path);
	if (numa_balancing < 0) {
		add_error("numa-balancing: %s is missing (CONFIG_NUMA_BALANCING)", path);
		return;
	}
	if (numa_balancing == 0 && numa_nodes >= 2) {	/* one node: nothing it could move */
		if (write_long_file(path, 1)) {
			numa_balancing_before = 0;
			numa_balancing = 1;
		} else {
			add_error("numa-balancing: cannot enable %s: %s", path, errname(errno));
		}
	}
}

static void numa_balancing_restore(void)
{
	if (numa_balancing_before >= 0)
		write_long_file("/proc/sys/kernel/numa_balancing", numa_balancing_before);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct sigaction fault = { .sa_handler = on_fault };
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
	sigaction(SIGBUS, &fault, NULL);
	sigaction(SIGSEGV, &fault, NULL);
	swap_total_kb = read_swap_total_kb();
	if (is_swapped() && swap_total_kb <= 0) {
		add_error("swap: no active swap in /proc/swaps (the guest needs zram or a swap disk)");
		add_timing("total", t0);
		print_result();
		return 0;
	}
	if (MOVER == MV_NUMA_BALANCING)
		numa_balancing_on();
	init_cpus();
	prefault_self();
	rss_before = read_rss_shmem();
	run_trial();
	numa_balancing_restore();
	if (buf != MAP_FAILED)
		munmap(buf, buf_len);
	if (memfd >= 0)
		close(memfd);
	add_timing("total", t0);
	print_result();
	return 0;
}
