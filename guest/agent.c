// SPDX-License-Identifier: GPL-2.0-only
/*
 * agent: the guest's /init. It answers the worker on /dev/ttyS1 with framed
 * JSON messages (docs/protocol.md) and runs one trial program at a time.
 *
 * Why it is shaped like this:
 * - ttyS1 is opened once and kept open in raw mode: reopening it per message
 *   loses the first bytes of the next one (measured under TCG with QEMU 7.2).
 * - Every message is framed with a length and a CRC-32, and junk between
 *   frames is skipped, so a noisy or lossy serial line costs one request,
 *   never the agent's state.
 * - A trial runs in its own process group with a deadline; the agent never
 *   waits on it without one, and kills the whole group when it is over.
 * - The "end" marker goes to /dev/kmsg only once the trial's mm is freed, so
 *   check_mm()'s "Bad rss-counter" lines sit inside the markers whatever
 *   kernel thread (khugepaged, a lazy TLB user) held the mm last. The signal
 *   is exact: the child runs in a user namespace of its own, which its mm
 *   keeps alive (mm->user_ns) and __mmdrop() drops right after check_mm();
 *   with max_user_namespaces at 1 the agent can create a user namespace
 *   again exactly when that one is freed (docs/protocol.md).
 * - As PID 1 it must never exit (the kernel would panic): fatal trouble is
 *   logged and the agent sleeps forever.
 * - The window counters of --instrument count kernels (zapfarm_* lines of
 *   /proc/vmstat) are read right before the fork and after the reap; the
 *   result carries their difference, or null when the kernel has none.
 * - The host may restore this guest from a memory image taken right after
 *   "ready" and start a new life with "resume": the agent marks the new life
 *   on the console, takes the host's wall clock (the image's is stale) and
 *   answers "resumed" with what "ready" carried. Before the image is taken
 *   ("save") the agent starts writing a newline every BEACON_MS until its next
 *   request: QEMU notices a newly opened pty only when the guest writes (or
 *   after up to 1 s), so the restored life's first request gets through at once.
 *
 * Host testing: `agent --tty PATH --program PATH [--kmsg PATH|--no-kmsg]
 * [--userns-probe] [--mm-wait-ms N] [--vmstat PATH]` skips PID-1 duties
 * (mounts, console level) and exits when the tty hangs up; --userns-probe
 * (only inside a user namespace of the test's own: it sets that namespace's
 * limit) turns on the mm signal that PID 1 always uses.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION 1
#define MAX_REQUEST (64 * 1024)		/* payload bytes of one host->guest frame */
#define MAX_LINE (MAX_REQUEST + 32)	/* header + payload + newline */
#define MAX_OUTPUT (64 * 1024)		/* trial stdout relayed to the host */
#define MAX_ARGS 256
#define MAX_ARG_LEN 4096
#define MAX_ID 128
#define MAX_DEADLINE_MS (24LL * 3600 * 1000)
#define LINGER_MS 100			/* after the child exits, wait this long for EOF */
#define KILL_WAIT_MS 5000		/* after SIGKILL, wait this long to reap */
#define HEARTBEAT_MS 2000		/* while a trial runs: "still here", with its CPU time */
#define MM_WAIT_MS 8000			/* how long the trial's mm may outlive it (khugepaged, lazy TLB) */
#define USERNS_LIMIT_PATH "/proc/sys/user/max_user_namespaces"
#define BEACON_MS 20			/* see "save" in docs/protocol.md */
#define CONSOLE_LOGLEVEL 7		/* everything but KERN_DEBUG on ttyS0 (hung-task traces are KERN_INFO) */

static const char *tty_path = "/dev/ttyS1";
static const char *program = "/bin/zapmigrate";
static const char *kmsg_path = "/dev/kmsg";	/* NULL: no markers */
static const char *vmstat_path = "/proc/vmstat";
static bool pid1;
static int tty = -1;
static bool tty_eof;		/* read() gave EOF or an error: the host hung up */
static bool beacon;		/* between "save" and the next request: write a newline every BEACON_MS */
static int sigchld_pipe[2] = { -1, -1 };
static bool userns_wanted;	/* host mode: --userns-probe */
static bool mm_signal;		/* the trial's user namespace tells when its mm is freed */
static long long mm_wait_ms = MM_WAIT_MS;
static bool mm_pending;		/* the last trial's mm was not seen freed */

static char inbuf[2 * MAX_LINE];
static size_t inlen;

/* ---- logging and dying ------------------------------------------------- */

/* Write one line to /dev/kmsg; opened per line so its write ratelimit never
 * applies to a long-lived file (10 lines per 5 s per open file by default). */
static void kmsg(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int fd, n;

	if (!kmsg_path)
		return;
	n = snprintf(line, sizeof(line), "<5>");
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	fd = open(kmsg_path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return;
	if (write(fd, line, (size_t)n) < 0) {
		/* best effort: the host then simply sees no markers */
	}
	close(fd);
}

static void logmsg(const char *fmt, ...)
{
	char line[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (pid1)
		kmsg("zapfarm: agent: %s", line);
	else
		fprintf(stderr, "agent: %s\n", line);
}

static void __attribute__((noreturn)) die(const char *fmt, ...)
{
	char line[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	logmsg("fatal: %s", line);
	if (!pid1)
		exit(1);
	for (;;)
		pause();	/* init must not exit: the kernel would panic */
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- growable string buffer -------------------------------------------- */

struct sbuf {
	char *data;
	size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	while (b->len + extra + 1 > b->cap)
		b->cap = b->cap ? b->cap * 2 : 1024;
	b->data = realloc(b->data, b->cap);
	if (!b->data)
		die("out of memory");
}

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	sb_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (RFC 3629), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t len;

	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;	/* overlong */
	else if (c == 0xed)
		hi = 0x9f;	/* surrogates */
	else if (c == 0xf0)
		lo = 0x90;	/* overlong */
	else if (c == 0xf4)
		hi = 0x8f;	/* above U+10FFFF */
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/* A JSON string from untrusted bytes: invalid UTF-8 becomes U+FFFD. */
static void sb_json_bytes(struct sbuf *b, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;

	sb_add(b, "\"", 1);
	for (size_t i = 0; i < n;) {
		unsigned char c = p[i];
		size_t len;

		if (c == '"' || c == '\\') {
			char esc[2] = { '\\', (char)c };

			sb_add(b, esc, 2);
			i++;
		} else if (c == '\n') {
			sb_add(b, "\\n", 2);
			i++;
		} else if (c == '\t') {
			sb_add(b, "\\t", 2);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			sb_printf(b, "\\u%04x", c);
			i++;
		} else if (c < 0x80) {
			sb_add(b, (const char *)p + i, 1);
			i++;
		} else if ((len = utf8_len(p + i, n - i))) {
			sb_add(b, (const char *)p + i, len);
			i += len;
		} else {
			sb_add(b, "\\ufffd", 6);
			i++;
		}
	}
	sb_add(b, "\"", 1);
}

static void sb_json_str(struct sbuf *b, const char *s)
{
	if (s)
		sb_json_bytes(b, s, strlen(s));
	else
		sb_add(b, "null", 4);
}

/* ---- framing ------------------------------------------------------------ */

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* CRC-32 (IEEE 802.3), the same as zlib's crc32(). */
static uint32_t crc32_ieee(const char *data, size_t n)
{
	uint32_t c = 0xffffffffu;

	for (size_t i = 0; i < n; i++)
		c = crc_table[(c ^ (unsigned char)data[i]) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

static void write_all(int fd, const char *data, size_t n)
{
	while (n) {
		ssize_t w = write(fd, data, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = { .fd = fd, .events = POLLOUT };

				poll(&pfd, 1, 1000);
				continue;
			}
			logmsg("write to %s: %s", tty_path, strerror(errno));
			return;
		}
		data += w;
		n -= (size_t)w;
	}
}

static void send_frame(const struct sbuf *payload)
{
	struct sbuf frame = { 0 };

	sb_printf(&frame, "@ZF %zu %08x ", payload->len, crc32_ieee(payload->data, payload->len));
	sb_add(&frame, payload->data, payload->len);
	sb_add(&frame, "\n", 1);
	write_all(tty, frame.data, frame.len);
	free(frame.data);
}

static void send_error(const char *id, const char *error)
{
	struct sbuf b = { 0 };

	sb_add(&b, "{\"op\": \"error\", \"id\": ", 22);
	sb_json_str(&b, id);
	sb_add(&b, ", \"error\": ", 11);
	sb_json_str(&b, error);
	sb_add(&b, "}", 1);
	send_frame(&b);
	free(b.data);
}

/* ---- request parsing: flat JSON objects ---------------------------------- */

struct request {
	char op[16];
	char id[MAX_ID + 1];
	bool has_op, has_id, has_argv, has_deadline, has_time;
	char *argv[MAX_ARGS + 2];	/* [0] is the program, NULL-terminated */
	int argc;
	long long deadline_ms;
	long long time_ms;	/* resume: the host's wall clock, ms since the epoch */
	char error[128];
};

struct parser {
	const char *p, *end;
	struct request *rq;
};

static bool fail(struct parser *ps, const char *fmt, ...)
{
	va_list ap;

	if (!ps->rq->error[0]) {
		va_start(ap, fmt);
		vsnprintf(ps->rq->error, sizeof(ps->rq->error), fmt, ap);
		va_end(ap);
	}
	return false;
}

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static bool expect(struct parser *ps, char c)
{
	skip_ws(ps);
	if (ps->p >= ps->end || *ps->p != c)
		return fail(ps, "malformed JSON: expected '%c'", c);
	ps->p++;
	return true;
}

static int hex4(const char *s)
{
	int v = 0;

	for (int i = 0; i < 4; i++) {
		char c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/* A JSON string into a NUL-terminated sbuf; NUL characters are refused. */
static bool parse_string(struct parser *ps, struct sbuf *out)
{
	skip_ws(ps);
	if (ps->p >= ps->end || *ps->p != '"')
		return fail(ps, "malformed JSON: expected a string");
	ps->p++;
	sb_add(out, "", 0);
	while (ps->p < ps->end && *ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p++;
		char utf8[4];
		long cp;
		int n;

		if (c < 0x20)
			return fail(ps, "malformed JSON: control character in string");
		if (c != '\\') {
			sb_add(out, (const char *)&c, 1);
			continue;
		}
		if (ps->p >= ps->end)
			break;
		c = (unsigned char)*ps->p++;
		switch (c) {
		case '"': case '\\': case '/':
			sb_add(out, (const char *)&c, 1);
			continue;
		case 'b': sb_add(out, "\b", 1); continue;
		case 'f': sb_add(out, "\f", 1); continue;
		case 'n': sb_add(out, "\n", 1); continue;
		case 'r': sb_add(out, "\r", 1); continue;
		case 't': sb_add(out, "\t", 1); continue;
		case 'u': break;
		default:
			return fail(ps, "malformed JSON: bad escape");
		}
		if (ps->end - ps->p < 4 || (cp = hex4(ps->p)) < 0)
			return fail(ps, "malformed JSON: bad \\u escape");
		ps->p += 4;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			long lo;

			if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
			    (lo = hex4(ps->p + 2)) < 0xdc00 || lo > 0xdfff)
				return fail(ps, "malformed JSON: lone surrogate");
			ps->p += 6;
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		} else if (cp >= 0xdc00 && cp <= 0xdfff) {
			return fail(ps, "malformed JSON: lone surrogate");
		}
		if (cp == 0)
			return fail(ps, "NUL character in string");
		if (cp < 0x80) {
			utf8[0] = (char)cp;
			n = 1;
		} else if (cp < 0x800) {
			utf8[0] = (char)(0xc0 | (cp >> 6));
			utf8[1] = (char)(0x80 | (cp & 0x3f));
			n = 2;
		} else if (cp < 0x10000) {
			utf8[0] = (char)(0xe0 | (cp >> 12));
			utf8[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
			utf8[2] = (char)(0x80 | (cp & 0x3f));
			n = 3;
		} else {
			utf8[0] = (char)(0xf0 | (cp >> 18));
			utf8[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
			utf8[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
			utf8[3] = (char)(0x80 | (cp & 0x3f));
			n = 4;
		}
		sb_add(out, utf8, (size_t)n);
	}
	if (ps->p >= ps->end)
		return fail(ps, "malformed JSON: unterminated string");
	ps->p++;
	return true;
}

/* An integer without fraction or exponent, as deadline_ms must be. */
static char peek(struct parser *ps)
{
	skip_ws(ps);
	return ps->p < ps->end ? *ps->p : '\0';
}

static bool parse_int(struct parser *ps, const char *key, long long *value)
{
	bool neg = false;
	long long v = 0;
	int digits = 0;

	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == '-') {
		neg = true;
		ps->p++;
	}
	while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
		if (++digits > 15)
			return fail(ps, "%s is too large", key);
		v = v * 10 + (*ps->p++ - '0');
	}
	if (!digits || (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E')))
		return fail(ps, "%s must be an integer", key);
	*value = neg ? -v : v;
	return true;
}

/* Any JSON value, discarded: unknown keys are ignored, not refused. */
static bool skip_value(struct parser *ps, int depth)
{
	skip_ws(ps);
	if (depth > 8)
		return fail(ps, "JSON nested too deeply");
	if (ps->p >= ps->end)
		return fail(ps, "malformed JSON: value expected");
	if (*ps->p == '"') {
		struct sbuf s = { 0 };
		bool ok = parse_string(ps, &s);

		free(s.data);
		return ok;
	}
	if (*ps->p == '[' || *ps->p == '{') {
		char close = *ps->p == '[' ? ']' : '}';

		ps->p++;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == close) {
			ps->p++;
			return true;
		}
		for (;;) {
			if (close == '}') {
				struct sbuf key = { 0 };
				bool ok = parse_string(ps, &key) && expect(ps, ':');

				free(key.data);
				if (!ok)
					return false;
			}
			if (!skip_value(ps, depth + 1))
				return false;
			skip_ws(ps);
			if (ps->p < ps->end && *ps->p == ',') {
				ps->p++;
				continue;
			}
			return expect(ps, close);
		}
	}
	if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
		while (ps->p < ps->end && strchr("+-.eE0123456789", *ps->p))
			ps->p++;
		return true;
	}
	for (const char *const *lit = (const char *const[]){ "true", "false", "null", NULL }; *lit; lit++) {
		size_t n = strlen(*lit);

		if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, *lit, n)) {
			ps->p += n;
			return true;
		}
	}
	return fail(ps, "malformed JSON: unexpected character");
}

static bool parse_argv(struct parser *ps)
{
	struct request *rq = ps->rq;

	if (peek(ps) != '[')
		return fail(ps, "argv must be an array of strings");
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == ']') {
		ps->p++;
		return true;
	}
	for (;;) {
		struct sbuf s = { 0 };

		if (rq->argc >= MAX_ARGS + 1)
			return fail(ps, "argv has more than %d entries", MAX_ARGS);
		if (peek(ps) != '"' || !parse_string(ps, &s)) {
			free(s.data);
			return fail(ps, "argv must be an array of strings");
		}
		if (s.len > MAX_ARG_LEN) {
			free(s.data);
			return fail(ps, "argv entry longer than %d bytes", MAX_ARG_LEN);
		}
		rq->argv[rq->argc++] = s.data;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			continue;
		}
		if (peek(ps) != ']')
			return fail(ps, "argv must be an array of strings");
		ps->p++;
		return true;
	}
}

static bool valid_id(const char *id, size_t len)
{
	if (!len || len > MAX_ID)
		return false;
	for (size_t i = 0; i < len; i++)
		if (id[i] < 0x21 || id[i] > 0x7e)
			return false;	/* printable ASCII without spaces: it goes into kmsg lines */
	return true;
}

static bool parse_request(const char *payload, size_t len, struct request *rq)
{
	struct parser ps = { payload, payload + len, rq };

	rq->argv[0] = strdup(program);
	rq->argc = 1;
	if (!expect(&ps, '{'))
		return false;
	skip_ws(&ps);
	if (ps.p < ps.end && *ps.p == '}') {
		ps.p++;
		goto done;
	}
	for (;;) {
		struct sbuf key = { 0 };
		bool ok = parse_string(&ps, &key) && expect(&ps, ':');

		if (ok && !strcmp(key.data, "op")) {
			struct sbuf v = { 0 };

			ok = !rq->has_op || fail(&ps, "duplicate key \"op\"");
			ok = ok && (peek(&ps) == '"' || fail(&ps, "op must be a string"));
			ok = ok && parse_string(&ps, &v);
			if (ok && v.len >= sizeof(rq->op))
				ok = fail(&ps, "unknown op");
			if (ok)
				memcpy(rq->op, v.data, v.len + 1);
			rq->has_op = true;
			free(v.data);
		} else if (ok && !strcmp(key.data, "id")) {
			struct sbuf v = { 0 };

			ok = !rq->has_id || fail(&ps, "duplicate key \"id\"");
			ok = ok && (peek(&ps) == '"' || fail(&ps, "id must be a string"));
			ok = ok && parse_string(&ps, &v);
			if (ok && !valid_id(v.data, v.len))
				ok = fail(&ps, "id must be 1-%d printable ASCII characters without spaces", MAX_ID);
			if (ok) {
				memcpy(rq->id, v.data, v.len + 1);
				rq->has_id = true;
			}
			free(v.data);
		} else if (ok && !strcmp(key.data, "argv")) {
			ok = (!rq->has_argv || fail(&ps, "duplicate key \"argv\"")) && parse_argv(&ps);
			rq->has_argv = true;
		} else if (ok && !strcmp(key.data, "deadline_ms")) {
			ok = !rq->has_deadline || fail(&ps, "duplicate key \"deadline_ms\"");
			ok = ok && parse_int(&ps, "deadline_ms", &rq->deadline_ms);
			rq->has_deadline = true;
		} else if (ok && !strcmp(key.data, "time_ms")) {
			ok = !rq->has_time || fail(&ps, "duplicate key \"time_ms\"");
			ok = ok && parse_int(&ps, "time_ms", &rq->time_ms);
			rq->has_time = true;
		} else if (ok) {
			ok = skip_value(&ps, 1);
		}
		free(key.data);
		if (!ok)
			return false;
		skip_ws(&ps);
		if (ps.p < ps.end && *ps.p == ',') {
			ps.p++;
			continue;
		}
		if (!expect(&ps, '}'))
			return false;
		break;
	}
done:
	skip_ws(&ps);
	if (ps.p != ps.end)
		return fail(&ps, "malformed JSON: trailing data after the object");
	rq->argv[rq->argc] = NULL;
	return true;
}

static void free_request(struct request *rq)
{
	for (int i = 0; i < rq->argc; i++)
		free(rq->argv[i]);
}

/* ---- the window counters (--instrument count) ---------------------------- */

#define MAX_VMSTAT (256 * 1024)	/* /proc/vmstat is ~5 KB; more is not a vmstat */

/* The zapfarm_* vm events of guest/kernel/patches/count, in reply order. */
static const char *const window_items[] = {
	"zapfarm_migration_entries", "zapfarm_migration_skipped",
	"zapfarm_swap_entries", "zapfarm_swap_skipped",
};
static const char *const window_keys[] = { "entries", "skipped", "swap_entries", "swap_skipped" };
#define WINDOW_ITEMS 4

struct window {
	bool found;	/* every item was present exactly once, with a decimal value */
	unsigned long long v[WINDOW_ITEMS];
};

/*
 * Parse vmstat text ("name value" lines) for the window items. Anything else
 * (a kernel without the patch, a missing item, a duplicate, a value that is
 * not a plain decimal below 2^63) leaves found false: the result says null.
 */
static struct window window_parse(const char *text, size_t n)
{
	struct window w = { 0 };
	bool seen[WINDOW_ITEMS] = { false };
	const char *p = text, *end = text + n;
	int count = 0;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p)), *eol = nl ? nl : end;
		const char *sp = memchr(p, ' ', (size_t)(eol - p));

		for (int i = 0; sp && i < WINDOW_ITEMS; i++) {
			size_t len = strlen(window_items[i]);
			unsigned long long v = 0;
			const char *q = sp + 1;
			int digits = 0;

			if ((size_t)(sp - p) != len || memcmp(p, window_items[i], len))
				continue;
			if (seen[i])
				return (struct window){ 0 };
			for (; q < eol && *q >= '0' && *q <= '9' && digits < 19; q++, digits++)
				v = v * 10 + (unsigned long long)(*q - '0');
			if (!digits || q != eol)
				return (struct window){ 0 };
			seen[i] = true;
			w.v[i] = v;
			count++;
		}
		p = eol + 1;
	}
	w.found = count == WINDOW_ITEMS;
	return w;
}

static struct window window_read(void)
{
	static char text[MAX_VMSTAT];
	size_t n = 0;
	ssize_t r;
	int fd = open(vmstat_path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return (struct window){ 0 };
	while (n < sizeof(text) && (r = read(fd, text + n, sizeof(text) - n)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			close(fd);
			return (struct window){ 0 };
		}
		n += (size_t)r;
	}
	close(fd);
	if (n == sizeof(text))
		return (struct window){ 0 };
	return window_parse(text, n);
}

/* ", \"window\": {...}" with after - before, or null when either read failed
 * or a counter went backwards (not a counter, then). */
static void sb_window(struct sbuf *b, const struct window *before, const struct window *after)
{
	bool ok = before->found && after->found;

	for (int i = 0; ok && i < WINDOW_ITEMS; i++)
		ok = after->v[i] >= before->v[i];
	if (!ok) {
		sb_add(b, ", \"window\": null", 16);
		return;
	}
	sb_add(b, ", \"window\": {", 13);
	for (int i = 0; i < WINDOW_ITEMS; i++)
		sb_printf(b, "%s\"%s\": %llu", i ? ", " : "", window_keys[i],
			  after->v[i] - before->v[i]);
	sb_add(b, "}", 1);
}

/* ---- running a trial ------------------------------------------------------ */

static void on_sigchld(int sig)
{
	int saved = errno;
	char c = (char)sig;

	if (write(sigchld_pipe[1], &c, 1) < 0) {
		/* pipe full: a wakeup is already pending */
	}
	errno = saved;
}

static void drain_fd(int fd)
{
	char scratch[256];

	while (read(fd, scratch, sizeof(scratch)) > 0)
		;
}

/* Read what the host sent while a trial runs, so the line never stalls. */
static void read_tty(void)
{
	ssize_t n = read(tty, inbuf + inlen, sizeof(inbuf) - inlen);

	if (n > 0)
		inlen += (size_t)n;
	else if (n == 0 || (errno != EINTR && errno != EAGAIN))
		tty_eof = true;
}

/* The tty to poll, or -1 while the host is gone or inbuf has no room. */
static int tty_poll_fd(void)
{
	return tty_eof || inlen >= sizeof(inbuf) ? -1 : tty;
}

static void reap_orphans(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

/* Run every CPU once so lazily held mms of the dead child get dropped now. */
static void visit_all_cpus(void)
{
	cpu_set_t orig, one;

	if (sched_getaffinity(0, sizeof(orig), &orig))
		return;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &orig))
			continue;
		CPU_ZERO(&one);
		CPU_SET(c, &one);
		sched_setaffinity(0, sizeof(one), &one);
	}
	sched_setaffinity(0, sizeof(orig), &orig);
}

/* CPU time (user + system, all threads) of process `pid` in ms, or -1. */
static long long cpu_ms_of(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long utime, stime;
	long hz = sysconf(_SC_CLK_TCK);
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')');	/* comm may hold spaces and parentheses */
	/* after ")": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime */
	if (!p || hz <= 0 ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
		return -1;
	return (long long)((utime + stime) * 1000ULL / (unsigned long long)hz);
}

/*
 * Tell the host the guest is alive and whether the trial makes progress: the
 * host calls a trial hung only when these stop (and the console is silent) or
 * when the program's CPU time stands still, never merely because it is slow.
 */
static void send_heartbeat(const char *id, pid_t pid, uint64_t elapsed)
{
	struct sbuf b = { 0 };
	long long cpu = cpu_ms_of(pid);

	sb_printf(&b, "{\"op\": \"heartbeat\", \"id\": ");
	sb_json_str(&b, id);
	sb_printf(&b, ", \"elapsed_ms\": %llu, \"cpu_ms\": ", (unsigned long long)elapsed);
	if (cpu >= 0)
		sb_printf(&b, "%lld}", cpu);
	else
		sb_add(&b, "null}", 5);
	send_frame(&b);
	free(b.data);
}

static void write_file(const char *path, const char *text);

/* ---- knowing when the trial's mm is gone -------------------------------------
 *
 * The child unshares a user namespace before it execs, so the trial's mm has
 * mm->user_ns = that namespace, and nothing else outlives the reaped child
 * holding it (its creds go one RCU grace period after the reap). __mmdrop()
 * calls check_mm() and then put_user_ns(mm->user_ns); the namespace is freed
 * (free_user_ns(), a work item) after the last put, and only then is the
 * count of user namespaces decremented. With max_user_namespaces at 1 in the
 * agent's namespace, creating a user namespace succeeds again exactly when
 * the trial's one, and so its mm, is gone: check_mm() has printed by then.
 * Same code on 5.10, 6.1 and 6.12.
 */

/* 1: a user namespace could be created (none other exists), 0: ENOSPC, -1: error. */
static int probe_userns(void)
{
	int status = 0;
	pid_t pid = fork();

	if (pid == 0)
		_exit(unshare(CLONE_NEWUSER) == 0 ? 0 : errno == ENOSPC ? 1 : 2);
	if (pid < 0)
		return -1;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) > 1)
		return -1;
	return WEXITSTATUS(status) == 0;
}

/* Wake khugepaged: writing its scan interval (unchanged) ends its sleep, so it
 * lets go of an exited mm it was scanning now rather than up to 10 s later. */
static void nudge_khugepaged(void)
{
	static const char *path = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs";
	char value[32];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, value, sizeof(value) - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n <= 0 || !pid1)
		return;
	value[n] = '\0';
	write_file(path, value);
}

/* Wait until the trial's mm is freed: ms waited, -1 past mm_wait_ms, -2 no signal. */
static long long wait_mm_gone(void)
{
	uint64_t start = now_ms(), pause = 1;
	bool nudged = false;

	for (;;) {
		int vacant = probe_userns();
		uint64_t waited = now_ms() - start;

		if (vacant < 0)
			return -2;
		if (vacant)
			return (long long)waited;
		reap_orphans();	/* a zombie of the trial keeps its creds, so its namespace */
		if (waited >= (uint64_t)mm_wait_ms)
			return -1;
		if (!nudged && waited >= 20) {
			nudge_khugepaged();
			nudged = true;
		}
		{
			struct pollfd pfd = { .fd = tty_poll_fd(), .events = POLLIN };

			if (poll(&pfd, 1, (int)pause) > 0 && pfd.revents)
				read_tty();	/* keep the line drained while waiting */
		}
		if (pause < 64)
			pause *= 2;
	}
}

/* Read a small integer from a /proc file, -1 when absent. */
static long read_long(const char *path)
{
	char text[32];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	text[n] = '\0';
	return strtol(text, NULL, 10);
}

/* Whether this process is in the initial user namespace (uid_map maps everything). */
static bool in_initial_userns(void)
{
	char text[128] = "";
	unsigned long inside, outside, count;
	int fd = open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n > 0)
		text[n] = '\0';
	return sscanf(text, "%lu %lu %lu", &inside, &outside, &count) == 3 && inside == 0 &&
	       outside == 0 && count == 4294967295UL;
}

/* Turn the mm signal on: limit user namespaces to 1 and check that it works. */
static void setup_mm_signal(void)
{
	long long waited;

	if (!pid1 && !userns_wanted)
		return;
	if (!pid1 && in_initial_userns()) {
		logmsg("--userns-probe refused: it would limit the host's user namespaces");
		return;
	}
	write_file(USERNS_LIMIT_PATH, "1\n");
	if (read_long(USERNS_LIMIT_PATH) != 1) {
		logmsg("cannot limit %s: the end marker only follows a visit of every CPU",
		       USERNS_LIMIT_PATH);
		return;
	}
	if (probe_userns() != 1) {
		logmsg("no user namespaces (CONFIG_USER_NS?): the end marker only follows a visit of every CPU");
		return;
	}
	mm_signal = true;
	waited = wait_mm_gone();	/* the probe's own namespace */
	if (waited < 0) {
		logmsg("user namespace not freed within %lld ms: mm signal off", mm_wait_ms);
		mm_signal = false;
	}
}

/* In the child: a user namespace of its own, so that its mm carries it. */
static int child_enter_userns(void)
{
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	int fd;

	/* Root outside keeps its rlimits; inside, capable(CAP_IPC_LOCK) no longer
	 * holds, and the trial program mlocks itself to prefault its pages. */
	setrlimit(RLIMIT_MEMLOCK, &unlimited);
	for (int tries = 0; unshare(CLONE_NEWUSER); tries++) {
		if (errno != ENOSPC || tries >= 5000)
			return errno;
		usleep(1000);	/* the last probe's namespace is on its way out */
	}
	/* exec of an unreadable program moves mm->user_ns to an ancestor
	 * (would_dump()), which would make the signal fire early: refuse it. */
	fd = open(program, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

/*
 * Whether the trial needs root's capabilities in the initial user namespace,
 * which a process in a namespace of its own does not have: the NUMA-balancing
 * mover switches kernel.numa_balancing on, and that sysctl checks
 * capable(CAP_SYS_ADMIN). Such a trial runs without the mm signal (its end
 * marker only follows a visit of every CPU, and mm_released is null).
 */
static bool needs_initial_caps(const struct request *rq)
{
	for (int i = 1; i + 1 < rq->argc; i++)
		if (!strcmp(rq->argv[i], "--mover") && !strcmp(rq->argv[i + 1], "numa-balancing"))
			return true;
	return false;
}

static void run_trial(const struct request *rq)
{
	static char scratch[16384];
	struct sbuf out = { 0 }, reply = { 0 };
	int pipe_out[2], pipe_exec[2], exec_errno = 0, wstatus = 0;
	bool reaped = false, exited = false, timed_out = false, truncated = false, killed = false;
	long long mm_waited = -3;	/* -3: not waited (not reaped), -2: no signal, -1: too long */
	bool own_userns = mm_signal && !needs_initial_caps(rq);
	uint64_t start, deadline, linger = 0, elapsed, next_beat;
	struct window window_before, window_after;
	pid_t pid;

	if (rq->deadline_ms < 1 || rq->deadline_ms > MAX_DEADLINE_MS) {
		send_error(rq->id, "deadline_ms must be between 1 and 86400000");
		return;
	}
	if (mm_signal && mm_pending && wait_mm_gone() == -1) {
		/* A previous trial's mm (or a process of it) is still held: its late
		 * reports would land in this trial. The host reboots the guest. */
		send_error(rq->id, "the previous trial's mm is still held: reboot the guest");
		return;
	}
	if (pipe2(pipe_out, O_CLOEXEC) || pipe2(pipe_exec, O_CLOEXEC)) {
		send_error(rq->id, "pipe failed");
		return;
	}
	window_before = window_read();
	kmsg("zapfarm: trial %s begin", rq->id);
	start = now_ms();
	pid = fork();
	if (pid == 0) {
		static char *const envp[] = { "PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/", NULL };
		sigset_t none;
		int null = open("/dev/null", O_RDWR);

		setpgid(0, 0);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		dup2(pipe_out[1], 1);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 2);	/* never onto ttyS0: that is the kernel's channel */
		}
		if (own_userns && (exec_errno = child_enter_userns())) {
			exec_errno = -exec_errno;	/* negative: the namespace, not the exec */
			if (write(pipe_exec[1], &exec_errno, sizeof(exec_errno)) < 0)
				_exit(126);
			_exit(127);
		}
		execve(program, rq->argv, envp);
		exec_errno = errno;
		if (write(pipe_exec[1], &exec_errno, sizeof(exec_errno)) < 0)
			_exit(126);
		_exit(127);
	}
	close(pipe_out[1]);
	close(pipe_exec[1]);
	if (pid < 0) {
		close(pipe_out[0]);
		close(pipe_exec[0]);
		kmsg("zapfarm: trial %s end", rq->id);
		send_error(rq->id, "fork failed");
		return;
	}
	setpgid(pid, pid);	/* both sides, so the group exists before any kill */
	if (read(pipe_exec[0], &exec_errno, sizeof(exec_errno)) != sizeof(exec_errno))
		exec_errno = 0;
	close(pipe_exec[0]);
	if (exec_errno)
		close(pipe_out[0]), pipe_out[0] = -1;
	deadline = start + (uint64_t)rq->deadline_ms;
	next_beat = start + HEARTBEAT_MS;

	while (!reaped) {
		struct pollfd pfd[3] = {
			{ .fd = pipe_out[0], .events = POLLIN },
			{ .fd = sigchld_pipe[0], .events = POLLIN },
			{ .fd = tty_poll_fd(), .events = POLLIN },
		};
		uint64_t now = now_ms(), until = linger ? linger : deadline, wake;
		siginfo_t si = { 0 };

		if (now >= next_beat) {
			send_heartbeat(rq->id, pid, now - start);
			next_beat = now + HEARTBEAT_MS;
		}

		if (now >= until) {
			if (exited && pipe_out[0] >= 0 && !killed) {
				/* A leftover group member still holds stdout: end it. */
				kill(-pid, SIGKILL);
				killed = true;
				linger = now + KILL_WAIT_MS;
			} else if (exited) {
				break;	/* output still open after SIGKILL: give up on it */
			} else if (!timed_out) {
				kill(-pid, SIGKILL);
				timed_out = true;
				deadline = now + KILL_WAIT_MS;
			} else {
				break;	/* unkillable (stuck in the kernel): report, reap later */
			}
			continue;
		}
		wake = until < next_beat ? until : next_beat;
		if (poll(pfd, 3, (int)(wake - now)) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (pfd[0].revents) {
			char *dst = scratch;
			size_t room = sizeof(scratch);
			ssize_t n;

			if (out.len < MAX_OUTPUT) {
				sb_reserve(&out, MAX_OUTPUT - out.len);
				dst = out.data + out.len;
				room = MAX_OUTPUT - out.len;
			}
			n = read(pipe_out[0], dst, room);
			if (n > 0 && dst != scratch)
				out.len += (size_t)n;
			else if (n > 0)
				truncated = true;	/* past the limit: keep draining, drop it */
			else if (n == 0 || errno != EINTR)
				close(pipe_out[0]), pipe_out[0] = -1;
		}
		if (pfd[1].revents)
			drain_fd(sigchld_pipe[0]);
		if (pfd[2].revents)
			read_tty();
		/* Look without reaping: while the zombie exists its pgid cannot be reused. */
		if (!exited && waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
		    si.si_pid == pid) {
			exited = true;
			linger = now_ms() + LINGER_MS;
		}
		if (exited && pipe_out[0] < 0) {
			kill(-pid, SIGKILL);	/* leftovers of the group, if any */
			reaped = waitpid(pid, &wstatus, 0) == pid;
		}
	}
	if (exited && !reaped) {
		kill(-pid, SIGKILL);
		reaped = waitpid(pid, &wstatus, 0) == pid;
	}
	elapsed = now_ms() - start;
	if (pipe_out[0] >= 0)
		close(pipe_out[0]);
	if (reaped && !exec_errno) {
		visit_all_cpus();
		mm_waited = own_userns ? wait_mm_gone() : -2;
		mm_pending = mm_waited == -1;
	}
	window_after = window_read();
	kmsg("zapfarm: trial %s end", rq->id);

	sb_add(&reply, "{\"op\": \"result\", \"id\": ", 23);
	sb_json_str(&reply, rq->id);
	if (exec_errno) {
		sb_printf(&reply, ", \"status\": \"error\", \"exit_code\": null, \"signal\": null");
	} else if (timed_out) {
		sb_printf(&reply, ", \"status\": \"timeout\", \"exit_code\": null, \"signal\": ");
		if (reaped && WIFSIGNALED(wstatus))
			sb_printf(&reply, "%d", WTERMSIG(wstatus));
		else
			sb_printf(&reply, "null");
	} else if (WIFSIGNALED(wstatus)) {
		sb_printf(&reply, ", \"status\": \"signaled\", \"exit_code\": null, \"signal\": %d",
			  WTERMSIG(wstatus));
	} else {
		sb_printf(&reply, ", \"status\": \"exited\", \"exit_code\": %d, \"signal\": 0",
			  WEXITSTATUS(wstatus));
	}
	sb_printf(&reply, ", \"elapsed_ms\": %llu, \"output\": ", (unsigned long long)elapsed);
	sb_json_bytes(&reply, out.data ? out.data : "", out.len);
	sb_printf(&reply, ", \"output_truncated\": %s", truncated ? "true" : "false");
	if (mm_waited >= 0)
		sb_printf(&reply, ", \"mm_released\": true, \"mm_wait_ms\": %lld", mm_waited);
	else if (mm_waited == -1)
		sb_printf(&reply, ", \"mm_released\": false, \"mm_wait_ms\": %lld", mm_wait_ms);
	else
		sb_printf(&reply, ", \"mm_released\": null");
	sb_window(&reply, &window_before, &window_after);
	if (exec_errno) {
		char why[300];

		if (exec_errno < 0)
			snprintf(why, sizeof(why), "user namespace for the trial: %s", strerror(-exec_errno));
		else
			snprintf(why, sizeof(why), "exec %s: %s", program, strerror(exec_errno));
		sb_add(&reply, ", \"error\": ", 11);
		sb_json_str(&reply, why);
	} else if (timed_out && !reaped) {
		sb_add(&reply, ", \"error\": \"not reaped after SIGKILL\"", 37);
	}
	sb_add(&reply, "}", 1);
	send_frame(&reply);
	free(reply.data);
	free(out.data);
}

/* ---- the loop ------------------------------------------------------------- */

static void send_ready(const char *op, const char *id);

/* A new life restored from a memory image (docs/protocol.md, "Restore"). */
static void resume(const struct request *rq)
{
	struct timespec ts;

	kmsg("zapfarm: resume %s", rq->id);
	if (pid1 && rq->has_time && rq->time_ms > 0) {	/* host mode: leave the clock alone */
		ts.tv_sec = (time_t)(rq->time_ms / 1000);
		ts.tv_nsec = (long)(rq->time_ms % 1000) * 1000000L;
		if (clock_settime(CLOCK_REALTIME, &ts))
			logmsg("clock_settime: %s", strerror(errno));
	}
	send_ready("resumed", rq->id);
}

static void handle_payload(const char *payload, size_t len)
{
	struct request rq = { 0 };

	beacon = false;	/* the host got through: the line is connected */
	if (!parse_request(payload, len, &rq)) {
		send_error(rq.has_id ? rq.id : NULL, rq.error);
	} else if (!rq.has_op) {
		send_error(rq.has_id ? rq.id : NULL, "missing op");
	} else if (!rq.has_id) {
		send_error(NULL, "missing id");
	} else if (!strcmp(rq.op, "ping")) {
		struct sbuf b = { 0 };

		sb_add(&b, "{\"op\": \"pong\", \"id\": ", 21);
		sb_json_str(&b, rq.id);
		sb_add(&b, "}", 1);
		send_frame(&b);
		free(b.data);
	} else if (!strcmp(rq.op, "resume")) {
		resume(&rq);
	} else if (!strcmp(rq.op, "save")) {
		struct sbuf b = { 0 };

		sb_add(&b, "{\"op\": \"saving\", \"id\": ", 23);
		sb_json_str(&b, rq.id);
		sb_add(&b, "}", 1);
		send_frame(&b);
		free(b.data);
		beacon = true;
	} else if (!strcmp(rq.op, "run")) {
		if (!rq.has_argv)
			send_error(rq.id, "run needs argv");
		else if (!rq.has_deadline)
			send_error(rq.id, "run needs deadline_ms");
		else
			run_trial(&rq);
		reap_orphans();	/* whatever the trial left behind and init inherited */
	} else {
		send_error(rq.id, "unknown op");
	}
	free_request(&rq);
}

static void consume(size_t n)
{
	memmove(inbuf, inbuf + n, inlen - n);
	inlen -= n;
}

/* Handle every complete frame in inbuf; keep a partial one for later. */
static void handle_frames(void)
{
	for (;;) {
		char *start = memmem(inbuf, inlen, "@ZF ", 4), *nl, *p, *payload;
		unsigned long len = 0, crc = 0;
		int digits = 0;

		if (!start) {
			consume(inlen > 3 ? inlen - 3 : 0);	/* keep a possible "@ZF" prefix */
			return;
		}
		consume((size_t)(start - inbuf));
		nl = memchr(inbuf, '\n', inlen);
		if (!nl) {
			if (inlen <= MAX_LINE)
				return;	/* wait for the rest */
			send_error(NULL, "frame too long");
			consume(4);
			continue;
		}
		p = inbuf + 4;
		while (p < nl && *p >= '0' && *p <= '9' && digits < 8)
			len = len * 10 + (unsigned long)(*p++ - '0'), digits++;
		if (!digits || p >= nl || *p++ != ' ') {
			send_error(NULL, "malformed frame header");
			consume(4);
			continue;
		}
		for (digits = 0; p < nl && digits < 8; digits++, p++) {
			if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
				break;
			crc = crc << 4 | (unsigned long)(*p <= '9' ? *p - '0' : *p - 'a' + 10);
		}
		if (digits != 8 || p >= nl || *p++ != ' ') {
			send_error(NULL, "malformed frame header");
			consume(4);
			continue;
		}
		payload = p;
		if ((size_t)(nl - payload) != len) {
			send_error(NULL, "frame length mismatch");
			consume(4);
			continue;
		}
		if (crc32_ieee(payload, len) != crc) {
			send_error(NULL, "frame crc mismatch");
			consume(4);
			continue;
		}
		*nl = '\0';
		handle_payload(payload, len);
		consume((size_t)(nl + 1 - inbuf));
	}
}

/* ---- start-up ------------------------------------------------------------- */

static void mount_one(const char *src, const char *dir, const char *type, const char *data)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, MS_NOSUID, data) && errno != EBUSY)
		logmsg("mount %s on %s: %s", type, dir, strerror(errno));
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (write(fd, text, strlen(text)) < 0) {
		/* optional knob: absent or locked on this kernel */
	}
	close(fd);
}

/*
 * Modules for this kernel: /lib/modules/<release>/zapfarm.order names .ko files
 * of that folder in load order (farm/artifacts/modules.py appends an archive of
 * zram and its dependencies, per kernel, for kernels that build them as
 * modules). Only the running kernel's folder is read.
 */
static void load_modules(void)
{
	char dir[200], path[512], name[256];
	struct utsname uts;
	FILE *order;

	if (uname(&uts))
		return;
	snprintf(dir, sizeof(dir), "/lib/modules/%.150s", uts.release);
	snprintf(path, sizeof(path), "%s/zapfarm.order", dir);
	order = fopen(path, "re");
	if (!order)
		return;
	while (fgets(name, sizeof(name), order)) {
		int fd;

		name[strcspn(name, "\n")] = '\0';
		if (!name[0] || strchr(name, '/'))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST))
			logmsg("module %s: %s", name, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	fclose(order);
}

#define ZRAM_SWAP_MB 128	/* keep in step with the disksize written below */

/*
 * Swap on zram0 when the kernel has zram (built in, or loaded above): the
 * swapped scenarios push private COWed pages to swap. A swap header is one
 * page: version 1 and the last page at byte 1024, "SWAPSPACE2" at its end.
 */
static void setup_swap(void)
{
	long page = sysconf(_SC_PAGESIZE);
	uint32_t header[3] = { 1, (uint32_t)((ZRAM_SWAP_MB << 20) / page - 1), 0 };
	char *first;
	int fd;

	if (access("/sys/block/zram0/disksize", W_OK))
		return;	/* no zram: the swapped scenarios report "no active swap" */
	write_file("/sys/block/zram0/disksize", "128M\n");
	first = calloc(1, (size_t)page);
	fd = open("/dev/zram0", O_WRONLY | O_CLOEXEC);
	if (!first || fd < 0) {
		logmsg("zram swap: open /dev/zram0: %s", strerror(errno));
		free(first);
		return;
	}
	memcpy(first + 1024, header, sizeof(header));
	memcpy(first + page - 10, "SWAPSPACE2", 10);
	if (write(fd, first, (size_t)page) != page)
		logmsg("zram swap: write header: %s", strerror(errno));
	close(fd);
	free(first);
	if (swapon("/dev/zram0", 0))
		logmsg("zram swap: swapon: %s", strerror(errno));
	else
		logmsg("zram swap: %d MiB on /dev/zram0", ZRAM_SWAP_MB);
}

static void init_system(void)
{
	mount_one("proc", "/proc", "proc", NULL);
	mount_one("sysfs", "/sys", "sysfs", NULL);
	mount_one("devtmpfs", "/dev", "devtmpfs", NULL);
	mount_one("tmpfs", "/tmp", "tmpfs", "mode=1777");
	/* "quiet" (level 4) would hide WARN_ON splats, which print at KERN_WARNING;
	 * only debug chatter goes. The console stays where the cmdline put it. */
	klogctl(8 /* SYSLOG_ACTION_CONSOLE_LEVEL */, NULL, CONSOLE_LOGLEVEL);
	write_file("/proc/sys/kernel/printk_devkmsg", "on\n");
	load_modules();
	setup_swap();
	if (chdir("/")) {
		/* cannot happen for / */
	}
}

static int open_tty(void)
{
	struct termios t;
	int fd;

	for (int tries = 0;; tries++) {
		fd = open(tty_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (fd >= 0)
			break;
		if (!pid1)
			die("open %s: %s", tty_path, strerror(errno));
		if (tries == 0)
			logmsg("open %s: %s (retrying)", tty_path, strerror(errno));
		sleep(1);
	}
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		t.c_cflag |= CLOCAL | CREAD;
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
		cfsetispeed(&t, B115200);
		cfsetospeed(&t, B115200);
		if (tcsetattr(fd, TCSANOW, &t))
			logmsg("tcsetattr %s: %s", tty_path, strerror(errno));
	} else {
		logmsg("%s is not a tty (%s); using it as is", tty_path, strerror(errno));
	}
	return fd;
}

static long mem_kb(void)
{
	char text[4096];
	int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;
	char *p;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	text[n] = '\0';
	p = strstr(text, "MemTotal:");
	return p ? strtol(p + 9, NULL, 10) : 0;
}

static int numa_nodes(void)
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
		for (p += 4; *p >= '0' && *p <= '9'; p++)
			;
		if (!*p)
			count++;
	}
	closedir(dir);
	return count;
}

/* "ready" after boot (id NULL), "resumed" after a restore (id: the host's epoch). */
static void send_ready(const char *op, const char *id)
{
	struct sbuf b = { 0 };
	struct utsname u;

	uname(&u);
	sb_printf(&b, "{\"op\": \"%s\", ", op);
	if (id) {
		sb_add(&b, "\"id\": ", 6);
		sb_json_str(&b, id);
		sb_add(&b, ", ", 2);
	}
	sb_printf(&b, "\"agent\": %d, \"kernel\": ", AGENT_VERSION);
	sb_json_str(&b, u.release);
	sb_printf(&b, ", \"numa_nodes\": %d, \"cpus\": %ld, \"mem_kb\": %ld, \"mm_signal\": \"%s\"}",
		  numa_nodes(), sysconf(_SC_NPROCESSORS_ONLN), mem_kb(), mm_signal ? "userns" : "cpus");
	send_frame(&b);
	free(b.data);
}

static void usage(void)
{
	fprintf(stderr, "usage: agent [--tty PATH] [--program PATH] [--kmsg PATH | --no-kmsg] "
		"[--userns-probe] [--mm-wait-ms N] [--vmstat PATH]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP };

	pid1 = getpid() == 1;
	/* As init, the kernel passes on cmdline words it did not know: ignore them. */
	for (int i = 1; i < argc && !pid1; i++) {
		if (!strcmp(argv[i], "--no-kmsg"))
			kmsg_path = NULL;
		else if (!strcmp(argv[i], "--userns-probe"))
			userns_wanted = true;
		else if (i + 1 >= argc)
			usage();
		else if (!strcmp(argv[i], "--tty"))
			tty_path = argv[++i];
		else if (!strcmp(argv[i], "--program"))
			program = argv[++i];
		else if (!strcmp(argv[i], "--kmsg"))
			kmsg_path = argv[++i];
		else if (!strcmp(argv[i], "--mm-wait-ms"))
			mm_wait_ms = strtoll(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--vmstat"))
			vmstat_path = argv[++i];
		else
			usage();
	}
	crc_init();
	signal(SIGPIPE, SIG_IGN);
	if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK))
		die("pipe: %s", strerror(errno));
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);
	if (pid1)
		init_system();
	else
		prctl(PR_SET_CHILD_SUBREAPER, 1);	/* orphans of a trial come to us, as to init */
	setup_mm_signal();
	tty = open_tty();
	logmsg("agent %d on %s, program %s", AGENT_VERSION, tty_path, program);
	send_ready("ready", NULL);

	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = tty, .events = POLLIN },
			{ .fd = sigchld_pipe[0], .events = POLLIN },
		};

		handle_frames();
		if (tty_eof) {
			if (!pid1)
				return 0;	/* the host closed the line */
			sleep(1);	/* a UART does not hang up; do not spin if it does */
			tty_eof = false;
		}
		int ready = poll(pfd, 2, beacon ? BEACON_MS : -1);

		if (ready < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (ready == 0 && beacon)
			write_all(tty, "\n", 1);	/* junk between frames: the host skips it */
		if (ready > 0 && pfd[1].revents) {
			drain_fd(sigchld_pipe[0]);
			reap_orphans();
		}
		if (ready > 0 && pfd[0].revents)
			read_tty();
	}
}
