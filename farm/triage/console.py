"""Kernel console parser: find the kernel reports in a console log and title them.

Why this shape: the farm's splat and teardown oracles must turn whatever a guest kernel
prints into stable titles that deduplicate across runs and kernels, and those titles should
read like syzbot's so findings can be compared with upstream reports. So the rules follow
syzkaller's pkg/report conventions (title shapes, skipped frames, "corrupted" verdicts), are
kept as data (a table of report formats, like syzkaller's linux.go and LAVA's kernel message
table), and what a report *is* (kind, fatal) is decided apart from how it was *found*.

Guest output is untrusted: only the head of a log is read (MAX_LOG_BYTES, MAX_LOG_LINES),
lines are clipped to MAX_LINE before any regex sees them, no pattern nests unbounded
repetitions ("A.*B.*C" is matched piecewise, see Ordered), and the number of reports and
the lines and bytes each may span are bounded, so work grows linearly with the log.

API: parse(log) -> all reports, title(log) -> the primary one (syzkaller's title of a log),
both taking str or bytes (any bytes: offsets in a Report are byte offsets into the log).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress
from operator import add
from typing import Final, TypeVar, cast

_T = TypeVar("_T")

MAX_LOG_BYTES: Final = 32 << 20  # the head of a longer log is parsed, the rest is ignored
MAX_LOG_LINES: Final = 1_000_000  # likewise (a real 32 MiB console has some 400k lines)
MAX_LINE: Final = 1024  # printk lines are < 1 KiB: longer "lines" are merged garbage, clipped
MAX_REPORTS: Final = 1000
WINDOW_LINES: Final = 2000  # how far a report may extend past its first line, in lines
WINDOW_BYTES: Final = 1 << 20  # and in bytes (hostile logs have huge "lines")
REPORT_SECONDS: Final = 60.0  # a report prints within this; a task's later lines are not in it
# With caller ids a report may borrow from the task's next report (a lockdep splat cut short
# by an oops, a BUG then its WARNING), as syzkaller lets it, but not from the one after.
TAGGED_REPORTS: Final = 2
MAX_CANDIDATES: Final = 16  # header lines of a report tried by its formats
MAX_TEXT_LINES: Final = 400  # shown to people; the title may look further


@dataclass(frozen=True)
class Report:
    """One kernel report found in a console log."""

    title: str  # syzkaller-style, stable across runs: "WARNING in zap_pte_range"
    kind: str  # what it is (see KINDS): WARNING, BUG, KASAN, GPF, PANIC, HANG, RSS_COUNTER...
    corrupted: bool  # truncated or interleaved, or without the stack its kind promises
    frame: str | None  # the guilty function, when the title names one
    start: int  # byte offset of the report's header line in the log
    end: int  # byte offset just past the last line shown in `text`
    text: str  # the report for a reader: a few lines of context, then the report itself
    fatal: bool  # a panic: the machine is dead or about to be


# --------------------------------------------------------------------------------------------
# Pattern vocabulary


_PLACEHOLDERS: Final = {
    "{{PC}}": r"\[<?(?:0x)?[0-9a-f]+>?\]",
    "{{FUNC}}": r"([a-zA-Z0-9_]+)(?:\.|\+)",
    "{{SRC}}": r"([a-zA-Z0-9\-_/.]{1,255}\.[a-z]+:[0-9]+)",  # bounded: no runaway backtracking
}


def _re(pattern: str) -> re.Pattern[str]:
    """Compile a pattern with the {{PC}}/{{FUNC}}/{{SRC}} shorthands kernel frames need."""
    for name, value in _PLACEHOLDERS.items():
        pattern = pattern.replace(name, value)
    return re.compile(pattern, re.ASCII)


def _memo(fn: Callable[[str], _T]) -> Callable[[str], _T]:
    """Memoise a function of a frame name: names repeat across reports, and the skip and
    anchor lists are long alternations. Bounded, since the names come from the guest."""
    cache: dict[str, _T] = {}

    def wrapper(name: str) -> _T:
        try:
            return cache[name]
        except KeyError:
            if len(cache) > 50_000:
                cache.clear()
            got = cache[name] = fn(name)
            return got

    wrapper.__doc__ = fn.__doc__
    return wrapper


@dataclass(frozen=True)
class _OrderedMatch:
    at: int
    found: tuple[str | None, ...]

    def start(self) -> int:
        return self.at

    def groups(self) -> tuple[str | None, ...]:
        return self.found


@dataclass(frozen=True)
class Ordered:
    """Patterns that must occur in this order on one line: "A.*B.*C" without the polynomial
    backtracking a regex engine spends on a hostile line. Each piece is searched from where
    the previous one ended; for existence this equals the regex (the leftmost A that works
    is the first one, since a later A only leaves less line)."""

    pieces: tuple[re.Pattern[str], ...]

    def search(self, line: str) -> _OrderedMatch | None:
        first = self.pieces[0].search(line)
        if first is None:
            return None
        found, at = list(first.groups()), first.end()
        for piece in self.pieces[1:]:
            m = piece.search(line, at)
            if m is None:
                return None
            found.extend(m.groups())
            at = m.end()
        return _OrderedMatch(first.start(), tuple(found))


def _seq(*pieces: str) -> Ordered:
    return Ordered(tuple(_re(p) for p in pieces))


@dataclass(frozen=True)
class Pat:
    """A pattern on one line, then optionally patterns on later lines, in order.

    Kernel reports put what a title needs on different lines (the KASAN header, then the
    "Read of size" line); matching line by line keeps that linear. `later` patterns are
    tried from the start of each later line (write a leading `.*` to search); with `adjacent`
    each one must match the very next line.
    """

    head: re.Pattern[str] | Ordered
    later: tuple[re.Pattern[str], ...] = ()
    adjacent: bool = False

    def find(
        self, lines: Sequence[str], candidates: Sequence[int]
    ) -> tuple[int, int, list[str]] | None:
        """Return (line, column, groups) of the first match among candidate lines."""
        for i in candidates:
            m = self.head.search(lines[i])
            if m is None:
                continue
            groups = [g or "" for g in m.groups()]
            at = i
            for pattern in self.later:
                stop = min(at + 2, len(lines)) if self.adjacent else len(lines)
                for j in range(at + 1, stop):
                    mm = pattern.match(lines[j])
                    if mm is not None:
                        groups.extend(g or "" for g in mm.groups())
                        at = j
                        break
                else:
                    break
            else:
                return i, m.start(), groups
            if not self.adjacent:
                return None  # later lines only shrink from here on: no later head can succeed
        return None


def _p(head: str | Ordered, *later: str, adjacent: bool = False) -> Pat:
    return Pat(
        head if isinstance(head, Ordered) else _re(head), tuple(_re(x) for x in later), adjacent
    )


class _Trace:
    """Marker in a stack recipe: parse the stack trace that starts here."""

    def __repr__(self) -> str:
        return "TRACE"


TRACE: Final = _Trace()
Part = re.Pattern[str] | _Trace


@dataclass(frozen=True)
class Stack:
    """How to find the guilty frame: patterns to walk through in order, frames to skip."""

    parts: tuple[Part, ...]
    parts2: tuple[Part, ...] = ()  # tried when `parts` finds no frame
    skip: tuple[str, ...] = ()
    pick: Callable[[list[str]], tuple[str, int]] | None = None  # custom choice among frames
    skip_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _skipped: dict[str, bool] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_re", re.compile("|".join(SKIP_FRAMES + self.skip), re.ASCII))

    def skips(self, frame: str) -> bool:
        """Is this frame generic? (Memoised: the skip list is a long alternation.)"""
        got = self._skipped.get(frame)
        if got is None:
            if len(self._skipped) > 50_000:  # bounded: frame names come from the guest
                self._skipped.clear()
            got = self._skipped[frame] = self.skip_re.search(frame) is not None
        return got


@dataclass(frozen=True)
class Format:
    """One shape of report under a header: how to recognise it and how to title it.

    `template` takes the groups of `report` (or of `title` when there is no `report`),
    then one guilty frame per stack trace the recipe walks.
    """

    title: Pat
    template: str
    report: Pat | None = None
    stack: Stack | None = None
    no_stack: bool = False  # such reports carry no call trace: don't call them corrupted for it
    corrupted: bool = False  # matching this format means the real header was lost


@dataclass(frozen=True)
class Oops:
    """A header substring that starts a report, its formats (first listed wins ties), and
    look-alike lines that must not count."""

    header: str
    formats: tuple[Format, ...]
    ignore: tuple[re.Pattern[str], ...] = ()


# --------------------------------------------------------------------------------------------
# Stack recognition (Linux, all architectures syzkaller sees)


RIP: Final = _re(
    r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{{PC}} +){0,2}{{FUNC}}|(?:[0-9]+:)?0x[0-9a-f]+"
    r"|(?:[0-9]+:)?{{PC}} +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))"
)
CALL_TRACE: Final = _re(r"(?:Call (?:T|t)race:)|(?:Backtrace:)")
_RISCV_STACK_START: Final = _re(r"status: [0-9a-f]{16} badaddr: [0-9a-f]{16} cause: [0-9a-f]{16}")
STACK_STARTS: Final = (
    _re(r"Call (?:T|t)race"),
    _re(r"Allocated:"),
    _re(r"Allocated by task [0-9]+:"),
    _re(r"Freed:"),
    _re(r"Freed by task [0-9]+:"),
    # kmemleak's, not "stack backtrace:" (at a line start the previous line's newline counts)
    _re(r"(?:^|[^k]) backtrace(?: \(crc [0-9a-fA-F]*\))?:"),
    _re(r"Backtrace:"),
    _re(r"Uninit was stored to memory at"),
    _RISCV_STACK_START,  # riscv show_regs() prints the stack with no header
)
FRAME_LINES: Final = (
    _re(r"^ *(?:{{PC}} ){0,2}{{FUNC}}"),
    _re(r"^ *{{PC}} \(([a-zA-Z0-9_.]+)\) from {{PC}} \({{FUNC}}"),  # arm: "pc (f) from lr (g)"
)
# Fault-injection stacks interleave with real reports and make them unreliable.
CORRUPTING_LINES: Final = (
    _re(r"^( \[<?(?:0x)?[0-9a-f]+>?\])? should_fail(slab)?(\.[a-z0-9.]+)?\+0x"),
)
SYSCALL_PREFIXES: Final = (
    "SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_", "__sys_",
    "__se_", "__se_sys_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_",
)  # fmt: skip

# Frames that never explain a bug: reporting machinery, sanitizers, locking, allocation,
# string/copy helpers, generic teardown paths (matched anywhere in the function name).
SKIP_FRAMES: Final = (
    "__sanitizer", "__asan", "kasan", "hwasan", "__msan", "kmsan", "kcsan_setup_watchpoint",
    "check_memory_region", "check_heap_object", "check_object", "read_word_at_a_time",
    "(read|write)_once_.*nocheck", "print_address_description", "panic", "invalid_op",
    "report_bug", "fixup_bug", "print_report", "print_usage_bug", "do_error", "_trap$|do_trap",
    "show_stack", "dump_stack", "walk_stack", "dump_backtrace", "warn_slowpath", "warn_alloc",
    "warn_bogus", "__warn", "alloc_page", "k?v?(?:m|z|c)alloc", "krealloc", "kmem_cache",
    "allocate_slab", "__alloc_frozen_pages_noprof", "folio_(?:alloc|unlock)",
    "filemap_alloc_folio", "__filemap_get_folio", "find_or_create_page", "do_read_cache_folio",
    "read_cache_page", "pagecache_get_page", "grab_cache_page_write_begin", "slab_",
    "debug_object", "timer_is_static_object", "work_is_static_object", "__might_fault",
    "print_unlock", "imbalance_bug", "lockdep", "bh_enable", "bh_disable", "perf_trace",
    "lock_acquire", "lock_release", "lock_class", "mark_lock", "(reacquire|mark)_held_locks",
    "raw_spin_rq", "spin_lock", "spin_trylock", "spin_unlock", "read_lock", "read_trylock",
    "write_lock", "write_trylock", "read_unlock", "write_unlock", "^down$", "down_read",
    "down_write", "down_read_trylock", "down_write_trylock", "down_trylock", "up_read",
    "up_write", "^mutex_", "^__mutex_", "^rt_mutex_", "owner_on_cpu", "osq_lock", "osq_unlock",
    "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)",
    "(set|clear|change|test)_bit", "__wake_up", "^refcount_", "^kref_", "ref_tracker",
    "seqprop_assert", "memcpy", "memcmp", "memset", "memchr", "memmove", "memdup", "strcmp",
    "strncmp", "strcpy", "strlcpy", "strncpy", "strscpy", "strlen", "strstr", "strnstr",
    "strnlen", "strchr", "strdup", "strndup", "copy_to_user", "copy_from_user", "copy_to_iter",
    "copy_from_iter", "copy_page_to_iter", "copy_page_from_iter", "copy_folio_to_iter",
    "^copyin$", "^copyout$", "put_user", "get_user", "might_fault", "might_sleep", "list_add",
    "list_del", "list_replace", "list_move", "list_splice", "^rb_", "^__rb_",
    "_indirect_thunk_", "string", "pointer", "snprintf", "scnprintf", "kasprintf",
    "kvasprintf", "printk", "va_format", "dev_info", "dev_notice", "dev_warn", "dev_err",
    "dev_alert", "dev_crit", "dev_emerg", "program_check_exception", "program_check_common",
    "del_timer", "flush_work", "__cancel_work_timer", "cancel_work_sync",
    "try_to_grab_pending", "flush_workqueue", "drain_workqueue", "destroy_workqueue",
    "queue_work", "finish_wait", "kthread_stop", "kobject_", "add_uevent_var",
    "get_device_parent", "device_add", "device_del", "device_unregister", "device_destroy",
    "device_release", "devres_release_all", "hwrng_unregister", "i2c_del_adapter",
    "__unregister_client", "device_for_each_child", "rollback_registered",
    "unregister_netdev", "sysfs_remove", "device_remove_file", "tty_unregister_device",
    "dummy_urb_enqueue", "usb_kill_urb", "usb_kill_anchored_urbs", "usb_control_msg",
    "usb_hcd_submit_urb", "usb_submit_urb", "^complete$", "wait_for_completion", "^kv?free$",
    "kfree_skb", "readb$", "readw$", "readl$", "readq$", "writeb$", "writew$", "writel$",
    "writeq$", "logic_in", "logic_out", r"^crc\d+", "crc_itu_t", "__might_resched",
    "assertfail", "^iput$", "^iput_final$", "^ihold$", "hex_dump_to_buffer", "print_hex_dump",
    "^klist_", "(trace|lockdep)_(hard|soft)irq", "^(un)?lock_page",
    "stack_trace_consume_entry", "arch_stack_walk", "stack_trace_save", "insert_work",
    "__queue_delayed_work", "queue_delayed_work_on", "ida_free",
    "do_(kernel|translation)_fault", "do_mem_abort", "el1_abort", "el1h_64_sync(?:_handler)?",
    "print_tainted", "xas_(?:start|load|find)", "find_lock_entries",
    "truncate_inode_pages_range", "__phys_addr", "__fortify_report", "cleanup_srcu_struct",
    "rhashtable_lookup", "extract_(user|iter)_to_sg", "drop_nlink", "^get_taint$",
    "^put_device$", "lock_timer_base", "__timer_delete_sync", "sk_stop_timer_sync",
    "__mod_timer", "fast_dput", "dput",
    "mark_buffer_dirty",  # warns about its caller's buffer, like drop_nlink
    # zapfarm: x86 exception entry of BUG()/WARN() (invalid_op above covers exc_invalid_op).
    "^asm_exc_", "^handle_bug$",
)  # fmt: skip


# Generic dispatchers: a stall or lockup is titled by the frame just above the first of these
# (the syscall, work item, timer or file operation that looped), not by where the NMI landed.
_STALL_ANCHORS: Final = re.compile(
    "|".join(
        (
            "process_one_work", "do_syscall_", "do_fast_syscall_", "sysenter_dispatch",
            "tracesys_phase2", "el0_svc_handler", "invoke_syscall", "ret_fast_syscall",
            "netif_receive_skb", "do_softirq", "call_timer_fn", "_run_timers",
            "run_timer_softirq", "hrtimer_run", "run_ksoftirqd", "smpboot_thread_fn",
            "^kthread$", "start_secondary", "cpu_startup_entry", "ret_from_fork",
            "vfs_write", "vfs_read", "vfs_iter_read", "vfs_iter_write", "do_iter_read",
            "do_iter_write", "call_read_iter", "call_write_iter", "new_sync_read",
            "new_sync_write", "vfs_ioctl", "ksys_ioctl", "compat_ioctl", "compat_sys_ioctl",
            "blkdev_driver_ioctl", "blkdev_ioctl", "do_iter_readv_writev", "^call_mmap",
            "mmap_region", "do_mmap", "do_dentry_open", "vfs_open", "^sock_sendmsg",
            "^sock_recvmsg", "^sock_release", "^__sock_release", "^setsockopt$",
            "kernel_setsockopt", "sock_common_setsockopt", "^listen$", "kernel_listen",
            "sk_common_release", "^sock_mmap", "^accept$", "kernel_accept", "^sock_do_ioctl",
            "^sock_ioctl", "^compat_sock_ioctl", "^nfnetlink_rcv_msg", "^rtnetlink_rcv_msg",
            "^netlink_dump", "^(sys_)?(socketpair|connect|ioctl)", "__do_fault",
            "do_page_fault", "^page_fault$", "__fput", "task_work_run", "exit_to_usermode",
            "smp_call_function", "tasklet_action", "tasklet_hi_action",
        )
    ),
    re.ASCII,
)  # fmt: skip


@_memo
def _is_stall_anchor(frame: str) -> bool:
    return _STALL_ANCHORS.search(frame) is not None


def _stall_frame(frames: list[str]) -> tuple[str, int]:
    """Pick the frame just above the first generic dispatcher (see _STALL_ANCHORS)."""
    prev, prev_idx = frames[0], 0
    for i, frame in enumerate(frames):
        if _is_stall_anchor(frame):
            if "smp_call_function" in frame:
                return "smp_call_function", i
            return prev, prev_idx
        prev, prev_idx = frame, i
    return "", -1


_HANG_BUCKETS: Final = (
    ("rtnl_lock", "rtnl_lock"),
    ("synchronize_rcu", "synchronize_rcu"),
    ("synchronize_srcu", "synchronize_rcu"),
    ("synchronize_net", "synchronize_rcu"),
    ("synchronize_sched", "synchronize_rcu"),
)
_HANG_SKIP: Final = (
    "sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait",
    "synchronize", "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier",
)  # fmt: skip


def _hang_frame(frames: list[str]) -> tuple[str, int]:
    """Hung tasks show victims: bucket rtnl and RCU waits, else skip the waiting machinery."""
    for i, frame in enumerate(frames):
        for anchor, bucket in _HANG_BUCKETS:
            if anchor in frame:
                return (frame if anchor == "rtnl_lock" else bucket), i
    for i, frame in enumerate(frames):
        if not any(s in frame for s in _HANG_SKIP):
            return frame, i
    return "", -1


def _stack(
    *parts: Part | str,
    skip: Sequence[str] = (),
    pick: Callable[[list[str]], tuple[str, int]] | None = None,
    parts2: Sequence[Part | str] = (),
) -> Stack:
    def compiled(seq: Sequence[Part | str]) -> tuple[Part, ...]:
        return tuple(_re(p) if isinstance(p, str) else p for p in seq)

    return Stack(compiled(parts), compiled(parts2), tuple(skip), pick)


_RIP_STACK: Final = (RIP, CALL_TRACE, TRACE)
_TRACE_ONLY: Final = (CALL_TRACE, TRACE)


def _warning_stack(*skip: str) -> Stack:
    """WARN(): x86 traps and starts at the RIP line, powerpc at '--- interrupt:', else plain."""
    first = _re("(?:" + RIP.pattern + "|--- interrupt: [0-9]+ at {{FUNC}})")
    return Stack((first, TRACE), _TRACE_ONLY, skip, None)


def _f(
    title: str | Ordered | Pat,
    template: str,
    *,
    report: str | Pat | None = None,
    stack: Stack | None = None,
    no_stack: bool = False,
    corrupted: bool = False,
) -> Format:
    return Format(
        title=title if isinstance(title, Pat) else _p(title),
        template=template,
        report=report if report is None or isinstance(report, Pat) else _p(report),
        stack=stack,
        no_stack=no_stack,
        corrupted=corrupted,
    )


# --------------------------------------------------------------------------------------------
# The table. Order matters twice: for a line, the first header listed wins; within a header,
# the format that matches earliest in the report wins, the first listed on a tie.

_KASAN_HW_SKIP: Final = ("kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_")
_KASAN_FREE: Final = (
    r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {{FUNC}}"
)
_KFENCE_AT: Final = r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"
_KMSAN_ORIGIN: Final = "(Local variable .* created at:|Uninit was created at:)"
_LOCK_AT: Final = r".*at: (?:{{PC}} +)?{{FUNC}}"
_LOCKDEP_AT: Final = r".*at: {{PC}} +{{FUNC}}"
_PANIC: Final = "Kernel panic - not syncing: "
_USB_MSG: Final = ("usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg", "usb_control_msg")


def _ignore(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_re(p) for p in patterns)


OOPSES: Final[tuple[Oops, ...]] = (
    Oops("BUG:", (
        _f("BUG: KASAN:", "KASAN: {0} {2} in {3}",
           report=_p(r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}",
                     r".*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)"),
           stack=_stack(r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}", *_TRACE_ONLY,
                        skip=_KASAN_HW_SKIP)),
        _f("BUG: KASAN:", "KASAN: invalid-free in {1}", report=_KASAN_FREE,
           stack=_stack(_KASAN_FREE, *_TRACE_ONLY, skip=("slab_", "kfree", "vunmap", "vfree"))),
        _f(_p(r"BUG: KASAN: ([a-z\-]+) on address", r".*(Read|Write) of size ([0-9]+)"),
           "KASAN: {0} {1}"),
        _f("BUG: KASAN: (.*)", "KASAN: {0}", corrupted=True),
        _f("BUG: KMSAN: kernel-usb-infoleak", "KMSAN: kernel-usb-infoleak in {1}",
           report=r"BUG: KMSAN: kernel-usb-infoleak in {{FUNC}}", no_stack=True,
           stack=_stack(TRACE, _KMSAN_ORIGIN, TRACE,
                        skip=("alloc_skb", "usb_submit_urb", *_USB_MSG))),
        _f("BUG: KMSAN:", "KMSAN: {0} in {2}", report=r"BUG: KMSAN: ([a-z\-]+) in {{FUNC}}",
           no_stack=True,
           stack=_stack(TRACE, _KMSAN_ORIGIN, TRACE, skip=(
               "alloc_skb", "netlink_ack", "netlink_rcv_skb",
               # Encryption is where such bugs show, never what they are about.
               "_encrypt$", "^(?:crypto|cipher|drbg|rng)_"))),
        _f("BUG: KCSAN: data-race", "KCSAN: {0}", report="BUG: KCSAN: (.*)", no_stack=True),
        _f("BUG: KCSAN:", "KCSAN: {0}", report="BUG: KCSAN: (.*)", no_stack=True),
        _f(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in {{FUNC}}",
           "KFENCE: {0} {1} in {3}", stack=_stack(_KFENCE_AT, TRACE)),
        _f("BUG: KFENCE: invalid free in {{FUNC}}", "KFENCE: invalid free in {1}",
           no_stack=True, stack=_stack(_KFENCE_AT, TRACE)),
        _f("BUG: KFENCE: invalid (read|write) in {{FUNC}}", "KFENCE: invalid {0} in {2}",
           stack=_stack(_KFENCE_AT, TRACE)),
        _f("BUG: KFENCE: memory corruption in {{FUNC}}", "KFENCE: memory corruption in {1}",
           no_stack=True, stack=_stack(_KFENCE_AT, TRACE)),
        _f("BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
           "|Unable to handle kernel data access)",
           "BUG: unable to handle kernel paging request in {0}", stack=_stack(*_RIP_STACK)),
        _f("BUG: (?:unable to handle kernel NULL pointer dereference"
           "|kernel NULL pointer dereference|Kernel NULL pointer dereference)",
           "BUG: unable to handle kernel NULL pointer dereference in {0}",
           stack=_stack(*_RIP_STACK)),
        # The kernel prints the rest of this header with a second printk that can get lost.
        _f("BUG: (?:unable to handle kernel|Unable to handle kernel)",
           "BUG: unable to handle kernel", corrupted=True),
        _f("BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion"
           "|bad magic|wrong owner|wrong CPU|trylock failure on UP)",
           "BUG: {0} {1} in {2}",
           stack=_stack(*_TRACE_ONLY, skip=("spin_", "_lock", "_unlock"))),
        _f("BUG: soft lockup", "BUG: soft lockup in {0}",
           stack=_stack(*_RIP_STACK, pick=_stall_frame)),
        _f("BUG: .*still has locks held!", "BUG: still has locks held in {0}",
           report=_p("BUG: .*still has locks held!", r".*{{PC}} +{{FUNC}}")),
        _f("BUG: scheduling while atomic", "BUG: scheduling while atomic in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("schedule",))),
        _f("BUG: lock held when returning to user space",
           "BUG: lock held when returning to user space in {0}",
           report=_p("BUG: lock held when returning to user space",
                     ".*leaving the kernel with locks still held", _LOCK_AT),
           no_stack=True),
        _f("BUG: bad unlock balance detected!", "BUG: bad unlock balance in {0}",
           stack=_stack("{{PC}} +{{FUNC}}", *_TRACE_ONLY)),
        _f("BUG: held lock freed!", "BUG: held lock freed in {0}",
           report=_p("BUG: held lock freed!", r".*{{PC}} +{{FUNC}}")),
        # zapfarm's teardown oracle: check_mm() found an mm counter off ("type:", older "idx:").
        _f("BUG: Bad rss-counter state", "BUG: Bad rss-counter state", no_stack=True),
        _f("BUG: non-zero nr_ptes on freeing mm", "BUG: non-zero nr_ptes on freeing mm",
           no_stack=True),
        _f("BUG: non-zero nr_pmds on freeing mm", "BUG: non-zero nr_pmds on freeing mm",
           no_stack=True),
        # File system type and block device (loop0/1/2) would only split one bug into many.
        _f("BUG: Dentry .* still in use", "BUG: Dentry still in use in {0}",
           report=r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of ([^\]]+)\]"),
        # Titled by who allocated the page (page_owner), not by who noticed: without
        # page_owner=on there is no such stack and the title says "corrupted".
        _f("BUG: Bad page (state|cache)", "BUG: Bad page {0} in {1}",
           stack=_stack("page last allocated", TRACE, skip=(
               "(free|put|get|update|release)_page", "free_unref", "^_*folio",
               "truncate_inode_pages", "page_frag_free", "alloc", "vmap", "page_owner"))),
        # The process name would split one bug per program: syzkaller keeps the bare title.
        _f("BUG: Bad page map", "BUG: Bad page map"),
        _f("BUG: workqueue lockup", "BUG: workqueue lockup", no_stack=True),
        _f("BUG: sleeping function called from invalid context at (.*)",
           "BUG: sleeping function called from invalid context in {1}",
           stack=_stack(*_TRACE_ONLY)),
        _f(r"BUG: using ([a-z_]+)\(\) in preemptible",
           "BUG: using {0}() in preemptible code in {1}",
           stack=_stack(*_TRACE_ONLY, skip=(
               "dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu"))),
        _f("BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {0}",
           report=_p("BUG: workqueue leaked lock or atomic",
                     ".*last function: ([a-zA-Z0-9_]+)$"),
           no_stack=True),
        _f("BUG: memory leak", "memory leak in {0}",
           stack=_stack(r"backtrace(?: \(crc [0-9a-fA-F]*\))?:", TRACE, skip=(
               "kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get",
               "list_lru_init", "kasprintf", "kvasprintf", "pcpu_create", "strdup",
               "strndup", "memdup"))),
        _f("BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {0}",
           stack=_stack(*_RIP_STACK, pick=_stall_frame)),
        # arm's spelling of lockdep's wait-context check, titled like the x86 one.
        _f("BUG: Invalid wait context", "WARNING: locking bug in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("lock_sock", "release_sock"))),
        _f(r"BUG:\s*$", "BUG: corrupted", corrupted=True),
    ), ignore=_ignore("ODEBUG:", "Boot_DEBUG:", "xlog_status:", "DEBUG:",
                      "BUG: no syscalls can create resource")),
    Oops("WARNING:", (
        _f(_seq("WARNING: ", r"lib/debugobjects\.c", " (?:debug_print|debug_check|at)"),
           "WARNING: ODEBUG bug in {0}",
           stack=_warning_stack("debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_",
                                "vunmap", "vfree", "__free_", "debug_check", "kobject_")),
        _f(_seq("WARNING: ", r"mm/usercopy\.c", " (?:usercopy_warn|at)"),
           "WARNING: bad usercopy in {0}", stack=_warning_stack("usercopy", "__check")),
        _f(_seq("WARNING: ", r"lib/kobject\.c", " (?:kobject_|at)"),
           "WARNING: kobject bug in {0}", stack=_warning_stack("kobject_")),
        _f(_seq("WARNING: ", r"fs/proc/generic\.c", " (?:proc_register|at)"),
           "WARNING: proc registration bug in {0}", stack=_warning_stack("proc_")),
        _f(_seq("WARNING: ", r"lib/refcount\.c", " (?:refcount_|at)"),
           "WARNING: refcount bug in {0}", stack=_warning_stack("refcount", "kobject_")),
        _f(_seq("WARNING: ", r"kernel/locking/lockdep\.c", "lock_"),
           "WARNING: locking bug in {0}", stack=_warning_stack("lock_sock", "release_sock")),
        _f("WARNING: .*still has locks held!", "WARNING: still has locks held in {0}",
           report=_p("WARNING: .*still has locks held!", ".*at: {{FUNC}}")),
        _f("WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {0}",
           stack=_warning_stack()),
        _f("WARNING: lock held when returning to user space",
           "WARNING: lock held when returning to user space in {0}",
           report=_p("WARNING: lock held when returning to user space",
                     ".*leaving the kernel with locks still held", _LOCK_AT),
           no_stack=True),
        _f(_seq("WARNING: ", "mm/", r"\.c", " k?.?malloc"), "WARNING: kmalloc bug in {0}",
           stack=_warning_stack("kmalloc", "krealloc", "slab", "kmem")),
        _f(_seq("WARNING: ", "mm/vmalloc.c", "__vmalloc_node"),
           "WARNING: zero-size vmalloc in {0}", stack=_warning_stack()),
        _f("WARNING: .* usb_submit_urb", "WARNING in {0}/usb_submit_urb",
           stack=_warning_stack("usb_submit_urb", *_USB_MSG)),
        _f(r"WARNING: {{SRC}} at 0x\d+, CPU#\d+", "WARNING in {1}", stack=_warning_stack()),
        # "WARNING: CPU: 1 PID: 123 at mm/memory.c:1390 zap_pte_range+0x5c0/0x8a0"
        _f("WARNING: .* at {{SRC}} {{FUNC}}", "WARNING in {2}", stack=_warning_stack()),
        # Since late 2025: "WARNING: mm/memory.c:1705 at zap_pte_range+0x9a1/0x1170, CPU#1: ..."
        _f("WARNING: {{SRC}} at {{FUNC}}", "WARNING in {2}", stack=_warning_stack()),
        _f(r"WARNING: \[.*\] {{SRC}} at {{FUNC}}", "WARNING in {2}", stack=_warning_stack()),
        _f("WARNING: possible circular locking dependency detected", "possible deadlock in {0}",
           report=_p("WARNING: possible circular locking dependency detected",
                     ".*is trying to acquire lock"),
           stack=_stack(r"at: (?:{{PC}} +)?{{FUNC}}", r"at: (?:{{PC}} +)?{{FUNC}}", TRACE,
                        # Work items' own locks: such deadlocks are about the work item.
                        skip=("process_one_work", "flush_workqueue", "drain_workqueue",
                              "destroy_workqueue"))),
        _f("WARNING: possible irq lock inversion dependency detected", "possible deadlock in {0}",
           report=_p("WARNING: possible irq lock inversion dependency detected",
                     ".*just changed the state of lock", _LOCK_AT)),
        _f(_seq("WARNING: ", "-safe -> ", "-unsafe lock order detected"),
           "possible deadlock in {0}", stack=_stack("which became (?:.*) at:", TRACE)),
        _f("WARNING: possible recursive locking detected", "possible deadlock in {0}",
           report=_p("WARNING: possible recursive locking detected",
                     ".*is trying to acquire lock", _LOCK_AT)),
        _f("WARNING: inconsistent lock state", "inconsistent lock state in {1}",
           report=_p("WARNING: inconsistent lock state", ".*takes", _LOCK_AT),
           stack=_stack(*_TRACE_ONLY)),
        _f("WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage in {1}",
           report=_p("WARNING: suspicious RCU usage", ".*?{{SRC}}"),
           stack=_stack(*_TRACE_ONLY, skip=("rcu", "kmem", "slab"))),
        _f("WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value",
           "WARNING: kernel stack regs has bad '{0}' value", no_stack=True),
        _f("WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value",
           "WARNING: kernel stack frame pointer has bad value", no_stack=True),
        _f("WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {0}",
           stack=_stack("{{PC}} +{{FUNC}}", *_TRACE_ONLY)),
        _f("WARNING: held lock freed!", "WARNING: held lock freed in {0}",
           report=_p("WARNING: held lock freed!", ".*at:(?: {{PC}})? +{{FUNC}}")),
        _f("WARNING: kernel stack regs .* has bad 'bp' value",
           "WARNING: kernel stack regs has bad value", no_stack=True),
        _f("WARNING: kernel stack frame pointer .* has bad value",
           "WARNING: kernel stack regs has bad value", no_stack=True),
        _f(r"WARNING:\s*$", "WARNING: corrupted", corrupted=True),
    ), ignore=_ignore(
        "WARNING: /etc/ssh/moduli does not exist, using fixed modulus",  # sshd
        "WARNING: workqueue cpumask: online intersect > possible intersect",
        "WARNING: [Tt]he mand mount option",
        r"WARNING: Unsupported flag value\(s\) of 0x%x in DT_FLAGS_1",  # a glibc dump
        "WARNING: Unprivileged eBPF is enabled with eIBRS",
        r"WARNING: fbcon: Driver '(.*)' missed to adjust virtual screen size",
        "WARNING: See https.* for mitigation options.",
        "WARNING: kernel not compiled with CPU_SRSO",
        # zapfarm: the CPU vulnerability notes of arch/x86/kernel/cpu/bugs.c at boot.
        "(?:RETBleed|Spectre V[12]|MDS|TAA|MMIO Stale Data|SRBDS|GDS|SRSO|L1TF|RFDS|BHI|ITS)"
        " *: WARNING:",
        r"EXT4-[Ff][Ss](?: \(.*\))?:",
        "(?i)warning: .* uses (deprecated v2 capabilities|wireless extensions)",
        r"XFS \(\w+\): WARNING",
    )),
    Oops("INFO:", (
        _f("INFO: possible circular locking dependency detected", "possible deadlock in {0}",
           report=_p(r"INFO: possible circular locking dependency detected \]",
                     ".*is trying to acquire lock", _LOCKDEP_AT)),
        _f("INFO: possible irq lock inversion dependency detected", "possible deadlock in {0}",
           report=_p(r"INFO: possible irq lock inversion dependency detected \]",
                     ".*just changed the state of lock", _LOCKDEP_AT)),
        _f("INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", "possible deadlock in {0}",
           report=_p(r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected \]",
                     ".*is trying to acquire", _LOCKDEP_AT)),
        _f("INFO: possible recursive locking detected", "possible deadlock in {0}",
           report=_p(r"INFO: possible recursive locking detected \]",
                     ".*is trying to acquire lock", _LOCKDEP_AT)),
        _f("INFO: inconsistent lock state", "inconsistent lock state in {0}",
           report=_p(r"INFO: inconsistent lock state \]", ".*takes", _LOCKDEP_AT)),
        _f("INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected(?: expedited)? stall",
           "INFO: rcu detected stall in {0}",
           stack=_stack("apic_timer_interrupt", RIP, TRACE,
                        parts2=("(?:apic_timer_interrupt|Exception stack|el1h_64_irq)", TRACE),
                        skip=("apic_timer_interrupt", "rcu"), pick=_stall_frame)),
        _f("INFO: rcu_tasks detected stalls? on tasks", "INFO: rcu detected stall in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("rcu",), pick=_stall_frame)),
        _f("INFO: trying to register non-static key",
           "INFO: trying to register non-static key in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("stack", "lock", "IRQ"))),
        _f("INFO: suspicious RCU usage", "INFO: suspicious RCU usage in {1}",
           report=_p("INFO: suspicious RCU usage", ".*?{{SRC}}"),
           stack=_stack(*_TRACE_ONLY, skip=("rcu", "kmem", "slab"))),
        _f("INFO: task .* blocked for more than [0-9]+ seconds", "INFO: task hung in {0}",
           stack=_stack(*_TRACE_ONLY, pick=_hang_frame)),
        # A task name (comm) may contain a newline: the header then spans two lines.
        _f(_p("INFO: task ", ".* blocked for more than [0-9]+ seconds", adjacent=True),
           "INFO: task hung in {0}", stack=_stack(*_TRACE_ONLY, pick=_hang_frame)),
        _f(_seq("INFO: task ", " can't die for more than ", " seconds"),
           "INFO: task can't die in {0}", stack=_stack(*_TRACE_ONLY, skip=("schedule",))),
        # What is left of an old-style KASAN report whose header was lost.
        _f("INFO: (Freed|Allocated) in (.*)", "INFO: {0} in {1}", corrupted=True),
        _f(r"INFO:\s*$", "INFO: corrupted", corrupted=True),
    ), ignore=_ignore(
        "INFO: lockdep is turned off", "INFO: Stall ended before state dump start",
        "INFO: NMI handler", "INFO: recovery required on readonly filesystem",
        "(handler|interrupt).*took too long", "INFO: sys_.* is not present in /proc/kallsyms",
        "INFO: no syscalls can create resource", "rmt_storage:INFO:", "_INFO:",
    )),
    Oops("Unable to handle kernel", (
        _f("Unable to handle kernel (paging request|NULL pointer dereference"
           "|access to user memory)",
           "BUG: unable to handle kernel {0} in {1}", stack=_stack(*_RIP_STACK)),
    )),
    Oops("general protection fault", (
        _f("general protection fault.*:", "general protection fault in {0}",
           stack=_stack(*_RIP_STACK)),
    ), ignore=_ignore(r"general protection fault .* error:\d+ in ")),  # in user space
    Oops("stack segment: ", (
        _f("stack segment: ", "stack segment fault in {0}", stack=_stack(*_RIP_STACK)),
    )),
    Oops("Kernel panic", (
        _f(_PANIC + "stack-protector:", "kernel panic: stack is corrupted in {0}",
           report=_PANIC + "stack-protector: Kernel stack is corrupted in: {{FUNC}}",
           no_stack=True),
        _f(_PANIC + "stack-protector:", "kernel panic: stack is corrupted in {0}",
           report=_PANIC + "stack-protector: Kernel stack is corrupted in: [a-f0-9]+",
           stack=_stack(*_TRACE_ONLY, skip=("stack_chk",))),
        _f(_PANIC + "corrupted stack end", "kernel panic: corrupted stack end in {0}",
           report=_PANIC + "corrupted stack end detected inside scheduler",
           stack=_stack(*_TRACE_ONLY, skip=("schedule", "retint_kernel"), pick=_stall_frame)),
        _f(_PANIC + "kernel stack overflow", "kernel stack overflow in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("bad_stack",), pick=_stall_frame)),
        _f(_PANIC + "Attempted to kill init!", "kernel panic: Attempted to kill init!"),
        _f(_PANIC + "Couldn't open N_TTY ldisc for [^ ]+ --- error -[0-9]+",
           "kernel panic: Couldn't open N_TTY ldisc"),
        # These follow another report: seeing them first means its header was lost.
        _f(_PANIC + "Fatal exception", "kernel panic: Fatal exception", corrupted=True),
        _f(_PANIC + "panic_on_warn set", "kernel panic: panic_on_warn set", corrupted=True),
        _f(_PANIC + "hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks",
           corrupted=True),
        _f(_PANIC + "(.*)", "kernel panic: {0}"),
    )),
    Oops("PANIC: double fault", (
        _f("PANIC: double fault", "PANIC: double fault in {0}", stack=_stack(RIP)),
    )),
    Oops("rust_kernel: panicked", (
        # The panic message is the line after the header.
        _f("rust_kernel: panicked", "{0} in {1}",
           report=_p("rust_kernel: panicked at ", "(.+)", adjacent=True),
           stack=_stack(*_TRACE_ONLY, skip=(re.escape("__rustc::rust_begin_unwind"),))),
    )),
    Oops("kernel BUG", (
        _f("kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("usercopy", "__check"))),
        _f("kernel BUG at lib/list_debug.c", "BUG: corrupted list in {0}",
           stack=_stack(*_TRACE_ONLY)),
        # skb helpers BUG_ON() on their callers' mistakes.
        _f("kernel BUG at (.*)", "kernel BUG in {1}", stack=_stack(*_RIP_STACK, skip=("^skb_",))),
    )),
    Oops("Kernel BUG", (_f("Kernel BUG (.*)", "kernel BUG {0}"),)),
    Oops("BUG kmalloc-", (_f("BUG kmalloc-.*: Object already free", "BUG: Object already free"),)),
    Oops("divide error:", (_f("divide error: ", "divide error in {0}", stack=_stack(RIP)),)),
    # A misspelling of the above in some kernels.
    Oops("divide_error:", (_f("divide_error: ", "divide error in {0}", stack=_stack(RIP)),)),
    Oops("invalid opcode:", (_f("invalid opcode: ", "invalid opcode in {0}", stack=_stack(RIP)),)),
    Oops("int3:", (_f("int3: ", "int3 in {0}", stack=_stack(*_RIP_STACK)),)),
    Oops("UBSAN:", (
        _f("UBSAN:", "UBSAN: undefined-behaviour in {0}", report="UBSAN: Undefined behaviour in",
           stack=_stack(*_TRACE_ONLY, skip=("ubsan", "overflow"))),
        _f("UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {0}",
           stack=_stack(*_TRACE_ONLY, skip=("ubsan", "overflow"))),
        _f("UBSAN:", "UBSAN: {0} in {1}", report="UBSAN: (.*?) in",
           stack=_stack(*_TRACE_ONLY, skip=("ubsan", "overflow"))),
    )),
    Oops("Booting the kernel.", (
        _f("^Booting the kernel", "unexpected kernel reboot", no_stack=True),
    ), ignore=_ignore("Parsing ELF|Decompressing Linux|Unknown parameter '")),  # echoed text
    Oops("unregister_netdevice: waiting for", (
        _f("unregister_netdevice: waiting for (?:.*) to become free",
           "unregister_netdevice: waiting for DEV to become free", no_stack=True),
    )),
    Oops("VFS: Close: file count is 0", (
        _f("VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)",
           no_stack=True),
    )),
    Oops("VFS: Busy inodes after unmount", (
        _f("VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)",
           no_stack=True),
    )),
    Oops("Internal error:", (
        _f("Internal error:", "Internal error in {0}", stack=_stack(*_RIP_STACK)),
    )),
    Oops("Unhandled fault:", (
        _f("Unhandled fault:", "Unhandled fault in {0}", stack=_stack(*_RIP_STACK)),
    )),
    Oops("Alignment trap:", (
        _f("Alignment trap:", "Alignment trap in {0}", stack=_stack(*_RIP_STACK)),
    )),
    Oops("trusty: panic", (
        _f("trusty: panic.* ASSERT FAILED", "trusty: ASSERT FAILED: {0}",
           report=r"trusty: panic \([^)]*\):(?: DEBUG)? ASSERT FAILED at \([^)]*\): (.+)",
           no_stack=True),
        _f(_seq("trusty: panic", " ASSERT FAILED", ".*: *(.*)"), "trusty: ASSERT FAILED: {0}",
           corrupted=True),
        _f("trusty: panic", "trusty: panic: {0}", report=r"trusty: panic \(.*?\): (.+)",
           no_stack=True),
    )),
    Oops("fatal error:", (_f("fatal error:", "go runtime error", no_stack=True),),
         ignore=_ignore("ALSA", "fatal error: cannot create timer")),
    # Messages of syzkaller's own tools, kept so that its corpus parses the same way.
    Oops("SYZFAIL:", (_f("SYZFAIL:(.*)", "SYZFAIL:{0}", no_stack=True),)),
    Oops("SYZFATAL:", (_f("SYZFATAL:(.*)", "SYZFATAL:{0}", no_stack=True),)),
    Oops("panic:", (
        _f("panic: Sentry detected .* stuck task", "panic: Sentry detected stuck tasks",
           no_stack=True),
        _f("panic:(.*)", "panic:{0}", no_stack=True),
    ), ignore=_ignore("_panic:", "xlog_status:", r"ddb\.onpanic:", "evtlog_status:")),
)  # fmt: skip

# A line with one of these inside a report does not start a new one (an oops line says
# "invalid opcode", a panic follows its report, a double fault can hit mid-report).
NOT_A_NEW_REPORT: Final = tuple(
    _re(x)
    for x in (
        "invalid opcode: 0000",
        "Kernel panic - not syncing",
        "unregister_netdevice: waiting for",
        "PANIC: double fault",
        "Internal error:",
    )
)
# Not bugs, but they print a stack: inside another report they mean the text is mixed up.
INFO_WITH_STACK: Final = (
    "vmalloc: allocation failure:",
    "FAULT_INJECTION: forcing a failure",
    "FAULT_FLAG_ALLOW_RETRY missing",
)
# The serial console of a GCE VM dropped: whatever we have is truncated.
CONSOLE_HANGUP: Final = "serialport: VM disconnected."
# zapfarm's own trial markers: boundaries between trials, never part of a report.
TRIAL_MARKER: Final = re.compile(r"zapfarm: trial \S+ (?:begin|end)\b", re.ASCII)


# --------------------------------------------------------------------------------------------
# Kind and severity: decided from the final title, apart from detection.

KINDS: Final = (
    ("BUG: Bad rss-counter state", "RSS_COUNTER"),
    ("BUG: non-zero nr_p", "RSS_COUNTER"),
    ("BUG: Bad page ", "BAD_PAGE"),
    ("KASAN:", "KASAN"),
    ("KMSAN:", "KMSAN"),
    ("KFENCE:", "KFENCE"),
    ("KCSAN:", "KCSAN"),
    ("UBSAN:", "UBSAN"),
    ("general protection fault", "GPF"),
    ("stack segment fault", "GPF"),
    ("BUG: unable to handle kernel", "PAGE_FAULT"),
    ("Unhandled fault", "PAGE_FAULT"),
    ("INFO: task hung", "HANG"),
    ("INFO: task can't die", "HANG"),
    ("unregister_netdevice: waiting for", "HANG"),
    ("INFO: rcu detected stall", "RCU_STALL"),
    ("BUG: soft lockup", "LOCKUP"),
    ("BUG: spinlock lockup", "LOCKUP"),
    ("BUG: workqueue lockup", "LOCKUP"),
    ("possible deadlock", "LOCKDEP"),
    ("inconsistent lock state", "LOCKDEP"),
    ("WARNING: locking bug", "LOCKDEP"),
    ("WARNING: nested lock", "LOCKDEP"),
    ("BUG: bad unlock balance", "LOCKDEP"),
    ("WARNING: bad unlock balance", "LOCKDEP"),
    ("BUG: held lock freed", "LOCKDEP"),
    ("WARNING: held lock freed", "LOCKDEP"),
    ("BUG: still has locks held", "LOCKDEP"),
    ("WARNING: still has locks held", "LOCKDEP"),
    ("BUG: lock held when returning", "LOCKDEP"),
    ("WARNING: lock held when returning", "LOCKDEP"),
    ("INFO: trying to register non-static key", "LOCKDEP"),
    ("WARNING: suspicious RCU usage", "LOCKDEP"),
    ("INFO: suspicious RCU usage", "LOCKDEP"),
    ("BUG: spinlock", "LOCKDEP"),
    ("BUG: rwlock", "LOCKDEP"),
    ("memory leak", "LEAK"),
    ("BUG: sleeping function called", "ATOMIC_SLEEP"),
    ("BUG: scheduling while atomic", "ATOMIC_SLEEP"),
    ("kernel panic", "PANIC"),
    ("PANIC:", "PANIC"),
    ("kernel stack overflow", "PANIC"),
    ("unexpected kernel reboot", "REBOOT"),
    ("WARNING", "WARNING"),
    ("kernel BUG", "BUG"),
    ("BUG:", "BUG"),
    ("INFO:", "INFO"),
    ("SYZFAIL", "TOOL"),
    ("SYZFATAL", "TOOL"),
    ("panic:", "TOOL"),
    ("go runtime error", "TOOL"),
)
# Headers whose reports have no telling title prefix: CPU exceptions and friends.
KIND_BY_HEADER: Final = {"rust_kernel: panicked": "RUST_PANIC"}
DEFAULT_KIND: Final = "OOPS"
# A report is fatal when its header is one of these or a panic line follows it (before the
# next report): the machine is dead, or about to be.
FATAL_HEADERS: Final = ("Kernel panic", "PANIC: double fault")


_KIND_PREFIX: Final = re.compile("|".join(re.escape(prefix) for prefix, _ in KINDS))
_KIND_OF_PREFIX: Final = dict(KINDS)


def kind_of(title: str, header: str = "") -> str:
    """Classify a report by its title: the first prefix of KINDS it starts with (an ordered
    alternation tries them in that order), else by its header."""
    m = _KIND_PREFIX.match(title)
    return _KIND_OF_PREFIX[m.group()] if m else KIND_BY_HEADER.get(header, DEFAULT_KIND)


# --------------------------------------------------------------------------------------------
# Title normalisation: keep titles stable across runs (pids, addresses, lines, CPUs, sizes).

# (pattern, replacement, a substring the pattern needs: a cheap test before the regex)
_TITLE_REWRITES: Final = tuple(
    (re.compile(pattern, re.ASCII), repl, hint)
    for pattern, repl, hint in (
        (r"syz-executor\.?[0-9]+((/|:)[0-9]+)?", "syz-executor", "syz-executor"),
        (r"syzkaller[0-9]+((/|:)[0-9]+)?", "syzkaller", "syzkaller"),
        (r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}", r"\1ADDR", ""),
        (r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})", "IP", "."),
        (r"(\.\w+)(:[0-9]+)+", r"\1:LINE", ":"),
        # (Tried at the start of each identifier run only: linear, same result.)
        (
            r"(?<![a-zA-Z0-9_.])([0-9_.]*)([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+",
            r"\1\2",
            "+0x",
        ),
        (r"CPU#[0-9]+", "CPU", "CPU#"),
        (r"(\W)(\d+)(\W|$)", r"\1NUM\3", ""),
        (r"\d{7,}", "NUM", ""),  # short digit runs stay: cfg80211, nl802154
    )
)
_MAX_TITLE: Final = 120
_TITLE_DROP: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\xff]+")
_TITLE_SPACES: Final = re.compile(r" {2,}")
_TIMESTAMP_IN_TITLE: Final = re.compile(r"\[ *[0-9]+\.[0-9]+\]")
_TITLE_FRAME: Final = re.compile(r".* in ((?:<[a-zA-Z0-9_: ]+>)?[a-zA-Z0-9_:]+)")


def normalize_title(title: str) -> str:
    """Make a title stable across runs like syzkaller: addresses, pids, line numbers, CPUs
    and sizes become ADDR/NUM/LINE/CPU (each rewrite to a fixed point), then the first 120
    bytes are kept without control or non-ASCII bytes and with single spaces.

    The 120 are bytes: the parser's titles hold one char per byte (its latin-1 view).
    """
    if not title.isascii() and max(title) > "\xff":
        title = title.encode("utf-8", "surrogateescape").decode("latin-1")
    for pattern, repl, hint in _TITLE_REWRITES:
        if hint not in title:
            continue
        while True:
            new = pattern.sub(repl, title)
            if new == title:
                break
            title = new
    title = _TITLE_DROP.sub("", title[:_MAX_TITLE]).replace("\t", " ")
    return _TITLE_SPACES.sub(" ", title).strip()


# --------------------------------------------------------------------------------------------
# Symbol demangling, so Rust (v0) and C++ (Itanium) frames read like their source names.

_B62: Final = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_RUST_BASIC: Final = {
    "a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8",
    "i": "isize", "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128", "s": "i16",
    "t": "u16", "u": "()", "v": "...", "x": "i64", "y": "u64", "z": "!", "p": "_",
}  # fmt: skip


class _RustV0:
    """A small v0 demangler (paths, impls, generic args, common types), bounded in depth."""

    def __init__(self, sym: str) -> None:
        self.s = sym
        self.i = 2  # after "_R"
        self.depth = 0

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _next(self) -> str:
        if self.i >= len(self.s):
            raise ValueError("truncated")
        self.i += 1
        return self.s[self.i - 1]

    def _eat(self, ch: str) -> bool:
        if self._peek() == ch:
            self.i += 1
            return True
        return False

    def _b62(self) -> int:
        if self._eat("_"):
            return 0
        value = 0
        for _ in range(24):
            ch = self._next()
            if ch == "_":
                return value + 1
            value = value * 62 + _B62.index(ch)
        raise ValueError("number")

    def _disambiguator(self) -> None:
        if self._eat("s"):
            self._b62()

    def _ident(self) -> str:
        self._disambiguator()
        self._eat("u")  # punycode: shown raw
        start = self.i
        while self._peek().isdigit():
            self.i += 1
        if start == self.i:
            raise ValueError("ident")
        n = int(self.s[start : self.i])
        self._eat("_")
        name = self.s[self.i : self.i + n]
        if len(name) != n:
            raise ValueError("ident")
        self.i += n
        return name

    def _backref(self, parse: Callable[[], str]) -> str:
        at = self.i - 1
        pos = self._b62() + 2
        if pos >= at:
            raise ValueError("backref")
        saved, self.i = self.i, pos
        try:
            return parse()
        finally:
            self.i = saved

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > 64:
            raise ValueError("depth")

    def path(self) -> str:
        self._enter()
        try:
            tag = self._next()
            if tag == "C":
                return self._ident()
            if tag == "N":
                ns = self._next()
                parent = self.path()
                name = self._ident()
                if ns.isupper():
                    return f"{parent}::{{{'closure' if ns == 'C' else 'shim'}}}"
                return f"{parent}::{name}" if name else parent
            if tag == "M":
                self._disambiguator()
                self.path()
                return f"<{self.type()}>"
            if tag == "X":
                self._disambiguator()
                self.path()
                ty = self.type()
                return f"<{ty} as {self.path()}>"
            if tag == "Y":
                ty = self.type()
                return f"<{ty} as {self.path()}>"
            if tag == "I":
                base = self.path()
                args = []
                while not self._eat("E"):
                    args.append(self._generic_arg())
                return f"{base}::<{', '.join(args)}>"
            if tag == "B":
                return self._backref(self.path)
            raise ValueError("path")
        finally:
            self.depth -= 1

    def _generic_arg(self) -> str:
        if self._eat("L"):
            self._b62()
            return "'_"
        if self._eat("K"):
            return self._const()
        return self.type()

    def _const(self) -> str:
        if self._eat("p"):
            return "_"
        if self._eat("B"):
            return self._backref(self._const)
        self._next()  # the constant's type
        neg = self._eat("n")
        start = self.i
        while self._peek() not in ("_", ""):
            self.i += 1
        digits = self.s[start : self.i]
        self._next()
        return ("-" if neg else "") + (str(int(digits, 16)) if digits else "0")

    def type(self) -> str:
        self._enter()
        try:
            tag = self._peek()
            if tag and tag in _RUST_BASIC:
                self.i += 1
                return _RUST_BASIC[tag]
            if tag in ("R", "Q"):
                self.i += 1
                if self._eat("L"):
                    self._b62()
                return ("&" if tag == "R" else "&mut ") + self.type()
            if tag in ("P", "O"):
                self.i += 1
                return ("*const " if tag == "P" else "*mut ") + self.type()
            if tag == "S":
                self.i += 1
                return f"[{self.type()}]"
            if tag == "A":
                self.i += 1
                ty = self.type()
                self._eat("K")
                return f"[{ty}; {self._const()}]"
            if tag == "T":
                self.i += 1
                items = []
                while not self._eat("E"):
                    items.append(self.type())
                return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
            if tag == "B":
                self.i += 1
                return self._backref(self.type)
            return self.path()
        finally:
            self.depth -= 1


_CXX_NAME: Final = re.compile(r"([0-9]+)")


def _demangle_cxx(name: str) -> str:
    """Itanium names without parameters: `_Z3foov` -> foo, `_ZN2ns3barEi` -> ns::bar."""
    i = 2
    nested = name.startswith("N", i)
    if nested:
        i += 1
        while i < len(name) and name[i] in "rVKRO":  # cv/ref qualifiers of member functions
            i += 1
    parts: list[str] = []
    while i < len(name) and name[i].isdigit():
        m = _CXX_NAME.match(name, i)
        assert m is not None
        n = int(m.group(1))
        i = m.end()
        if n == 0 or i + n > len(name):
            return name
        parts.append(name[i : i + n])
        i += n
        if not nested:
            break
    if not parts or (nested and not name.startswith("E", i)):
        return name
    return "::".join(parts)


@_memo
def demangle(name: str) -> str:
    """Demangle a Rust v0 (`_R...`) or C++ (`_Z...`) symbol; anything else is unchanged."""
    if len(name) > 1024:
        return name
    if name.startswith("_R"):
        try:
            return _RustV0(name).path()
        except (ValueError, IndexError):
            return name
    if name.startswith("_Z"):
        return _demangle_cxx(name)
    return name


# --------------------------------------------------------------------------------------------
# The log: lines, their console context, and indexes of the lines that matter.

_CONSOLE_PREFIX: Final = re.compile(
    r"(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? ",
    re.ASCII,
)
_CONSOLE_PREFIX_LOGIN: Final = re.compile(  # "syzkaller login: [  12.3] ..." on a serial console
    r"(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:.* login: )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? ",
    re.ASCII,
)
_TASK_CONTEXT: Final = re.compile(r"\[ *T[0-9]+\]", re.ASCII)
_CPU_CONTEXT: Final = re.compile(r"\[ *C[0-9]+\]", re.ASCII)
_NO_CONTEXT: Final = ""
_CONSOLE: Final = "console"  # timestamped, but no caller id
# Header search over the whole log: capitalised headers in one regex, the rest by str.find
# (faster than one big alternation, whose first-character filter lowercase letters defeat).
# Cheap hints that cover every header (checked exactly per line by _Log._match_oops).
_HEADER_HINTS: Final = ("BUG", "panic", "divide")
_UPPER_HEADERS: Final = re.compile(
    "|".join(
        [*_HEADER_HINTS[:1]]
        + [
            re.escape(o.header)
            for o in OOPSES
            if o.header[0].isupper() and _HEADER_HINTS[0] not in o.header
        ]
    )
)
_OTHER_HEADERS: Final = (
    *_HEADER_HINTS[1:],
    *(
        o.header
        for o in OOPSES
        if not o.header[0].isupper() and not any(h in o.header for h in _HEADER_HINTS)
    ),
)
# Substrings of every STACK_STARTS match, to index candidate lines with str.find.
_STACK_START_HINTS: Final = (
    "Call Trace", "Call trace", "acktrace", "Alloc", "Freed", "Uninit was stored", "badaddr: ",
)  # fmt: skip
_NMI_TRACEBACK: Final = "Sending NMI from CPU"


def _to_text(log: str | bytes) -> str:
    """Bytes -> one char per byte (latin-1), so offsets are byte offsets and nothing fails.

    Only the head of a log is kept: MAX_LOG_BYTES, and MAX_LOG_LINES lines (a flood of empty
    lines would otherwise cost far more memory than its bytes)."""
    if isinstance(log, str):
        log = log.encode("utf-8", "surrogateescape")
    text = log[:MAX_LOG_BYTES].decode("latin-1")
    if text.count("\n") > MAX_LOG_LINES:
        head = text.split("\n", MAX_LOG_LINES)[:-1]
        text = text[: sum(map(len, head)) + MAX_LOG_LINES]
    return text


def _display(text: str) -> str:
    """Back from the parser's one-char-per-byte view to text for people (bad UTF-8 as \ufffd)."""
    return text.encode("latin-1").decode("utf-8", "replace")


def _find_all(text: str, needle: str) -> list[int]:
    out = []
    pos = text.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = text.find(needle, pos + 1)
    return out


class _Log:
    """A console log split in lines, with per-line facts computed on demand."""

    def __init__(self, text: str) -> None:
        self.text = text
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        n = len(lines)
        # starts[i]: offset of line i (lengths plus one newline per line), computed in C loops.
        self.starts = list(map(add, accumulate(map(len, lines), initial=0), range(n + 1)))
        self.long_lines: list[int] = []  # clipped to MAX_LINE before any regex sees them
        if n and max(map(len, lines)) > MAX_LINE:
            self.long_lines = list(compress(range(n), map(MAX_LINE.__lt__, map(len, lines))))
            lines = lines.copy()
            for i in self.long_lines:
                lines[i] = lines[i][:MAX_LINE]
        self.raw = lines
        # Per line: (caller id, " " if there is a console prefix, text after it); by chunks.
        self.parts: list[tuple[str, str, str] | None] = [None] * n
        self.markers = self._lines_with(
            ("zapfarm: trial",), lambda ln: TRIAL_MARKER.search(ln) is not None
        )
        marker_set = set(self.markers)
        self.oops_at: dict[int, int] = {}
        offsets = [m.start() for m in _UPPER_HEADERS.finditer(text)]
        for header in _OTHER_HEADERS:
            offsets.extend(_find_all(text, header))
        for i in {bisect_right(self.starts, off) - 1 for off in offsets}:
            if i < n and i not in marker_set and (idx := self._match_oops(self.raw[i])) is not None:
                self.oops_at[i] = idx
        self.oops_lines = sorted(self.oops_at)
        self._stack_lines: list[int] | None = None
        self._nmi_lines: list[int] | None = None
        self._info_lines: list[int] | None = None
        self._special_lines: list[int] | None = None

    def _lines_with(
        self, needles: Sequence[str], keep: Callable[[str], bool] | None = None
    ) -> list[int]:
        found: set[int] = set()
        for needle in needles:
            for off in _find_all(self.text, needle):
                found.add(bisect_right(self.starts, off) - 1)
        return sorted(i for i in found if i < len(self.raw) and (keep is None or keep(self.raw[i])))

    @property
    def stack_lines(self) -> list[int]:
        """Lines that may start a stack trace (a superset: check STACK_STARTS on them)."""
        if self._stack_lines is None:
            self._stack_lines = self._lines_with(_STACK_START_HINTS)
        return self._stack_lines

    @property
    def nmi_lines(self) -> list[int]:
        """Lines that start an all-CPU backtrace (their lines count for the report)."""
        if self._nmi_lines is None:
            self._nmi_lines = self._lines_with((_NMI_TRACEBACK,))
        return self._nmi_lines

    @staticmethod
    def _match_oops(line: str) -> int | None:
        """The first OOPSES entry whose header is on the line and not excused by its ignores."""
        for idx, oops in enumerate(OOPSES):
            if oops.header in line and not any(r.search(line) for r in oops.ignore):
                return idx
        return None

    def info(self, i: int) -> tuple[str, str, bool]:
        """(context, line without console prefix, is a questionable ' ? ' frame)."""
        tag, space, rest = self.parts[i] or self.line_parts(i)
        if not space:
            return _NO_CONTEXT, rest, False
        return _line_info_rest(tag or _CONSOLE, rest)

    def line_parts(self, i: int) -> tuple[str, str, str]:
        self.fill(i, i + 1)
        got = self.parts[i]
        assert got is not None
        return got

    def fill(self, lo: int, hi: int) -> None:
        """Split lines lo..hi-1 into their parts, a chunk at a time (one C-level regex pass)."""
        for c in range(lo // _CHUNK, (hi - 1) // _CHUNK + 1):
            if self.parts[c * _CHUNK] is not None:
                continue
            lo_c, hi_c = c * _CHUNK, min(len(self.raw), (c + 1) * _CHUNK)
            chunk = self.text[self.starts[lo_c] : self.starts[hi_c] - 1]
            found = [] if "\r" in chunk or " login: " in chunk else _LINE_PARTS.findall(chunk)
            if len(found) != hi_c - lo_c:  # those rare chunks, line by line
                found = [_line_parts(line) for line in self.raw[lo_c:hi_c]]
            self.parts[lo_c:hi_c] = found
            for i in self.long_lines[
                bisect_left(self.long_lines, lo_c) : bisect_left(self.long_lines, hi_c)
            ]:
                tag, space, rest = found[i - lo_c]
                self.parts[i] = (tag, space, rest[:MAX_LINE])

    @property
    def special_lines(self) -> list[int]:
        """Lines that change how a report's lines are collected (see _collect)."""
        if self._special_lines is None:
            panics = [
                j
                for j in self.oops_lines
                if "Kernel panic - not syncing" in self.raw[j]
                or "WARNING: possible circular locking dependency detected" in self.raw[j]
            ]
            disabling = self._lines_with(("Disabling lock debugging due to kernel taint",))
            self._special_lines = sorted({*panics, *disabling, *self.nmi_lines})
        return self._special_lines

    def next_info_with_stack(self, after: int) -> int | None:
        """The first line after `after` with a not-a-bug message that prints a stack."""
        if self._info_lines is None:
            self._info_lines = self._lines_with(INFO_WITH_STACK)
        k = bisect_right(self._info_lines, after)
        return self._info_lines[k] if k < len(self._info_lines) else None

    def next_report(self, after: int) -> int | None:
        """The first line after `after` whose header starts a new report."""
        for i in self.oops_lines[bisect_right(self.oops_lines, after) :]:
            if not _continues_report(self.raw[i]):
                return i
        return None


_CHUNK: Final = 128
_LINE_PARTS: Final = re.compile(
    r"(?m)^(?:(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])?( ))?(.*)$",
    re.ASCII,
)


def _line_parts(line: str) -> tuple[str, str, str]:
    """Like _LINE_PARTS for one line, also handling "\r" ends and "... login: [ 1.2] ..."."""
    if line.endswith("\r"):
        line = line[:-1]
    m = (_CONSOLE_PREFIX_LOGIN if " login: " in line else _CONSOLE_PREFIX).match(line)
    if m is None:
        return "", "", line
    return m.group(1) or "", " ", line[line.find("] ") + 2 :]


def _line_info_rest(ctx: str, rest: str) -> tuple[str, str, bool]:
    """x86 marks unreliable frames with ' ? ', powerpc with ' (unreliable)' (not in <EOI>)."""
    if "<EOI>" not in rest:
        if " ? " in rest:  # syzkaller's "([<pc>])? \? " matches exactly when " ? " occurs
            return ctx, rest[rest.find(" ? ") + 2 :], True
        if rest.endswith(" (unreliable)"):
            return ctx, rest[:-13], True
    return ctx, rest, False


def _continues_report(line: str) -> bool:
    """A header line that belongs to the report before it (see NOT_A_NEW_REPORT)."""
    return any(r.search(line) for r in NOT_A_NEW_REPORT)


# --------------------------------------------------------------------------------------------
# Guilty frames

_STACK_START_ANY: Final = re.compile("|".join(r.pattern for r in STACK_STARTS), re.ASCII)


def _is_stack_start(line: str) -> bool:
    """Does a stack trace start here? (Literal tests first: most lines are frames.)"""
    return (
        "race" in line or "Alloc" in line or "Freed" in line or "Uninit" in line
        or "badaddr" in line
    ) and _STACK_START_ANY.search(line) is not None  # fmt: skip


def _frames(stack: Stack, lines: list[str], faults: bool) -> tuple[list[str], bool]:
    """Walk the stack recipe over report lines: one guilty frame per stack trace walked.

    `faults`: the lines mention should_fail (fault injection), so walk everything."""
    frames, ok = _walk(stack, stack.parts, lines, faults)
    if not ok and stack.parts2:
        frames, ok = _walk(stack, stack.parts2, lines, faults)
    return frames, ok


def _walk(
    stack: Stack, parts: tuple[Part, ...], lines: list[str], faults: bool
) -> tuple[list[str], bool]:
    """Match `parts` one after another down the lines; TRACE collects frames until the next
    stack starts (or the next part matches). Fault-injection lines make the result unreliable.

    Once the last stack trace of the recipe has a usable frame, the rest cannot change the
    answer (unless a fault-injection line follows), so the walk stops there."""
    found: list[str] = []  # raw names; generic ones are skipped lazily in _choose
    frame_line, arm_frame_line = FRAME_LINES[0].match, FRAME_LINES[1].match
    results: list[str] = []
    ok = True
    traces = 0
    pos, n = 0, len(lines)
    last_trace = max((i for i, p in enumerate(parts) if p is TRACE), default=-1)
    can_stop = stack.pick is None and not faults

    def collect(m: re.Match[str]) -> bool:
        """Add the match's frames; True when the walk can stop."""
        names = [g for g in m.groups() if g is not None]
        found.extend(names)
        return can_stop and k >= last_trace and any(not stack.skips(demangle(g)) for g in names)

    k = 0
    while True:
        if k == len(parts) or (parts[k] is TRACE and traces > 0):
            frame = _choose(stack, found)
            if not frame:
                frame, ok = "corrupted", False
            results.append(frame)
            found = []
        if k == len(parts):
            return results, ok
        part = parts[k]
        if part is TRACE:
            traces += 1
            nxt = parts[k + 1] if k + 1 < len(parts) else None
            following = nxt if isinstance(nxt, re.Pattern) else None
            while pos < n:
                ln = lines[pos]
                pos += 1
                if "should_fail" in ln and any(r.search(ln) for r in CORRUPTING_LINES):
                    ok = False
                    break
                if (
                    "race" in ln
                    or "Alloc" in ln
                    or "Freed" in ln
                    or "Uninit" in ln
                    or "badaddr" in ln
                ) and _STACK_START_ANY.search(ln):
                    break
                if following is not None and (m := following.search(ln)) is not None:
                    k += 1
                    if collect(m):
                        return [*results, _choose(stack, found)], ok
                    break
                if (
                    (m := frame_line(ln)) is not None or (m := arm_frame_line(ln)) is not None
                ) and collect(m):
                    return [*results, _choose(stack, found)], ok
        else:
            assert isinstance(part, re.Pattern)
            while pos < n:
                ln = lines[pos]
                pos += 1
                if "should_fail" in ln and any(r.search(ln) for r in CORRUPTING_LINES):
                    ok = False
                    break
                if (m := part.search(ln)) is not None:
                    if collect(m):
                        return [*results, _choose(stack, found)], ok
                    break
        k += 1


def _choose(stack: Stack, found: list[str]) -> str:
    """The first frame that is not generic, or the custom pick among all of them."""
    if stack.pick is None:
        for raw in found:
            name = demangle(raw)
            if not stack.skips(name):
                return _strip_syscall(name)
        return ""
    names = [n for n in map(demangle, found) if not stack.skips(n)]
    return stack.pick([_strip_syscall(n) for n in names])[0] if names else ""


@_memo
def _strip_syscall(frame: str) -> str:
    """sys_/__x64_sys_/__se_sys_... wrappers differ by arch and version: keep the shortest."""
    best = frame
    for prefix in SYSCALL_PREFIXES:
        if frame.startswith(prefix) and len(frame) - len(prefix) < len(best):
            best = frame[len(prefix) :]
    return best


# --------------------------------------------------------------------------------------------
# Titling one report


@dataclass
class _Described:
    title: str
    corrupted: bool
    fmt: Format | None
    frame: str | None


def _describe(
    oops: Oops,
    lines: list[str],
    faults: bool = True,
    unreliable: Callable[[], bool] = lambda: False,
) -> _Described | None:
    """Title a report's lines with the oops' formats (earliest match wins, first on ties).

    `faults`: the lines may mention should_fail (fault injection); False lets stack walks
    stop early. `unreliable()`: the report's call trace has only ' ? ' frames (a kernel
    without frame pointers or ORC); then a stack without frames falls back to the RIP line.
    """
    header = oops.header
    candidates = [i for i, ln in enumerate(lines) if header in ln][:MAX_CANDIDATES]
    if not candidates:
        return None
    best: tuple[int, int] | None = None
    title, bad, used, frame = "", False, None, None
    matched_title = False
    for f in oops.formats:
        m = f.title.find(lines, candidates)
        if m is None:
            continue
        at = (m[0], m[1])
        if best is not None and (at > best or (at == best and title)):
            continue
        if best is None or at < best:
            title, used, frame, best = "", None, None, at
        matched_title = True
        if f.report is not None:
            m = f.report.find(lines, candidates)
            if m is None:
                continue
        frames: list[str] = []
        bad = False
        if f.stack is not None:
            frames, ok = _frames(f.stack, [lines[m[0]][m[1] :], *lines[m[0] + 1 :]], faults)
            bad = not ok
            if (
                bad
                and "corrupted" in frames
                and unreliable()
                and (rip := _rip_frame(f.stack, lines))
            ):
                frames = [rip if x == "corrupted" else x for x in frames]
                bad = False
        title = f.template.format(*m[2], *frames)
        used = f
        frame = frames[0] if frames and frames[0] != "corrupted" else None
    if not title:
        bad = matched_title  # the header matched but the rest of its format did not
        line = lines[candidates[0]]
        title = line[line.find(header) :]
    if used is not None and used.corrupted:
        bad = True
    return _Described(title, bad, used, frame)


def _rip_frame(stack: Stack, lines: list[str]) -> str | None:
    """The function of the report's first RIP/PC line, unless it is a generic one."""
    for ln in lines:
        if ("IP" in ln or "pc " in ln or "PC is at" in ln) and (m := RIP.search(ln)) is not None:
            names = [demangle(g) for g in m.groups() if g is not None]
            name = names[0] if names else None
            return _strip_syscall(name) if name and not stack.skips(name) else None
    return None


def _lacks_stack(
    lines: Sequence[str],
    hints: Sequence[int],
    beyond: _Beyond | None = None,
    unreliable: Callable[[], bool] = lambda: False,
) -> bool:
    """A report that promises a stack must show a frame within 15 lines of each stack header.

    `lines` is the report as titled, `hints` the positions of its lines that may start a
    stack, `beyond` its lines past the titled part. A trace of only ' ? ' frames
    (`unreliable()`: kernels without frame pointers or ORC) is there, just unvouched for,
    not missing.
    """
    has_stack = False
    for k, key in enumerate(STACK_STARTS):
        found: tuple[str, list[str]] | None = None
        for i in hints:
            if key.search(lines[i]):
                following = list(lines[i + 1 : i + 17])
                if len(following) < 16 and beyond is not None and beyond.scan.resume is not None:
                    following += beyond.lines_from(beyond.scan.resume, 16 - len(following))
                found = (lines[i], following)
                break
        else:
            found = beyond.first(k) if beyond is not None else None
        if found is None:
            continue
        following = found[1]
        if len(following) < 2:
            return True  # the header is (nearly) the last line
        ok = False
        for ln in following[:15]:
            if _is_stack_start(ln):
                break
            if "(stack is not available)" in ln or any(r.search(ln) for r in FRAME_LINES):
                ok = True
                break
        if ok or unreliable():
            has_stack = True
        elif key is not _RISCV_STACK_START:
            return True
    return not has_stack


# --------------------------------------------------------------------------------------------
# Finding reports


@dataclass
class _Scan:
    """A report's own lines (console prefix stripped), the log line of each, and what the
    titling needs to look past them."""

    ctx: str
    lines: list[str] = field(default_factory=list)
    nos: list[int] = field(default_factory=list)
    limit: int = 0  # window end (exclusive)
    resume: int | None = None  # untagged: where the next report interrupted the titled part
    tagged: bool = False
    counted: int = 0
    skip_text: bool = False
    cpu_traceback: bool = False
    min_lines: int = 22


def _window_end(log: _Log, start: int) -> int:
    """Where a report's lines must end: WINDOW_LINES/WINDOW_BYTES on, or a trial marker."""
    limit = min(len(log.raw), start + WINDOW_LINES)
    limit = min(limit, bisect_right(log.starts, log.starts[start] + WINDOW_BYTES, lo=start + 1) - 1)
    k = bisect_right(log.markers, start)
    if k < len(log.markers):
        limit = min(limit, log.markers[k])
    return max(limit, start + 1)


def _scan(log: _Log, start: int) -> _Scan:
    """Collect a report's lines like syzkaller: same console context, no ' ? ' frames, and
    without the panic that repeats the report's stack.

    Without caller ids (printk CONFIG_PRINTK_CALLER) the titled part ends where the next
    report starts; with them, other tasks' lines are dropped and the task's own lines run on.
    """
    ctx, _, _ = log.info(start)
    scan = _Scan(ctx=ctx, limit=_window_end(log, start))
    scan.min_lines = 16 if "BUG: KMSAN:" in log.raw[start] else 22
    scan.tagged = ctx not in (_NO_CONTEXT, _CONSOLE)
    if scan.tagged:
        _collect(log, scan, _tagged_lines(log, scan, start), start)
        return scan
    end = scan.limit
    for stop in (log.next_report(start), log.next_info_with_stack(start)):
        if stop is not None and stop < end:
            end = scan.resume = stop
    log.fill(start, end)
    _collect(log, scan, (start,), start)
    pos = start + 1
    special = log.special_lines
    for j in special[bisect_left(special, pos) :]:
        if j >= end or scan.cpu_traceback or scan.skip_text:
            break
        _collect_plain(log, scan, pos, j)
        _collect(log, scan, (j,), start)
        pos = j + 1
    if scan.skip_text:
        return scan  # nothing after the cut belongs to the report
    if scan.cpu_traceback:
        _collect(log, scan, range(pos, end), start)
    else:
        _collect_plain(log, scan, pos, end)
    return scan


def _collect_plain(log: _Log, scan: _Scan, lo: int, hi: int) -> None:
    """_collect for an untagged run of lines that change no state (see special_lines), as
    a filter over the line parts."""
    parts = cast(list[tuple[str, str, str]], log.parts[lo:hi])  # filled by _scan
    seg = zip(range(lo, hi), parts, strict=True)
    if scan.ctx == _CONSOLE:
        picked = [
            (i, rest)
            for i, (tag, space, rest) in seg
            if space
            and not tag
            and ((" ? " not in rest and not rest.endswith(" (unreliable)")) or "<EOI>" in rest)
        ]
    else:
        picked = [(i, rest) for i, (_tag, space, rest) in seg if not space]
    scan.counted += len(picked)
    scan.nos.extend(i for i, _ in picked)
    scan.lines.extend(rest for _, rest in picked)


def _collect(log: _Log, scan: _Scan, indices: Iterable[int], start: int) -> None:
    """Apply the per-line rules to `indices` (ascending), appending the report's lines.

    `start` is the header line (always kept); the scan's running state (line count, the cut
    before a trailing panic, all-CPU backtraces) carries across calls.
    """
    parts, raw = log.parts, log.raw
    ctx, lines, nos, tagged = scan.ctx, scan.lines, scan.nos, scan.tagged
    counted, skip_text, min_lines = scan.counted, scan.skip_text, scan.min_lines
    for i in indices:
        line = raw[i]
        if i != start:
            if tagged and not scan.cpu_traceback and ctx not in line:
                continue  # another task's line: its prefix carries another caller id
            tag, space, stripped = parts[i] or log.line_parts(i)
            ctx1 = (tag or _CONSOLE) if space else _NO_CONTEXT
            if space and (" ? " in stripped or stripped.endswith(" (unreliable)")):
                ctx1, stripped, questionable = _line_info_rest(ctx1, stripped)
                if questionable:
                    continue
            if ctx1 != ctx and not (scan.cpu_traceback and _CPU_CONTEXT.search(ctx1)):
                continue
            if skip_text:
                break  # past the cut nothing belongs to the report
            counted += 1
            if "Disabling lock debugging due to kernel taint" in line:
                continue
        else:
            stripped = log.info(i)[1]
            counted += 1
        if _NMI_TRACEBACK in line:
            scan.cpu_traceback = True  # all CPUs' backtraces belong to the report
        elif counted > min_lines and (
            "Kernel panic - not syncing" in line
            or "WARNING: possible circular locking dependency detected" in line
        ):
            skip_text = True  # the panic's own stack would repeat the report's
            if i != start:
                continue
        lines.append(stripped)
        nos.append(i)
    scan.counted, scan.skip_text = counted, skip_text


def _tagged_lines(log: _Log, scan: _Scan, start: int) -> Iterator[int]:
    """The window's lines that carry the report's caller id, found with str.find since other
    tasks may print most of the window; every line once the report turns into an all-CPU
    backtrace (those lines carry CPU ids). Stops at lines printed much later (see
    REPORT_SECONDS) or before (a reboot)."""
    text, starts, end = log.text, log.starts, log.starts[scan.limit]
    t0 = _timestamp(log.raw[start])

    def later(i: int) -> bool:
        t = _timestamp(log.raw[i])
        return t0 is not None and t is not None and not t0 <= t <= t0 + REPORT_SECONDS

    raw, ctx, limit, oops_at = log.raw, scan.ctx, scan.limit, log.oops_at
    i, reports = start, 0
    while True:
        if i != start and i in oops_at and not _continues_report(raw[i]) and log.info(i)[0] == ctx:
            reports += 1
            if reports == TAGGED_REPORTS:
                return
        yield i
        if scan.cpu_traceback:
            for j in range(i + 1, limit):
                if later(j):
                    return
                yield j
            return
        if i + 1 < limit and ctx in raw[i + 1]:
            i += 1  # runs of the task's own lines: no search, no clock check
            continue
        pos = text.find(ctx, starts[i + 1], end)
        if pos < 0:
            return
        i = bisect_right(starts, pos, lo=i + 1) - 1
        if later(i):
            return


_TIMESTAMP: Final = re.compile(r"\[ *([0-9]+\.[0-9]+)\]", re.ASCII)


def _timestamp(line: str) -> float | None:
    """The printk time stamp of a line ("[   12.345678]"), if it has one."""
    if line.startswith("["):  # the common case, without a regex
        end = line.find("]", 1, 32)
        stamp = line[1:end].lstrip(" ")
        if end > 0 and stamp.replace(".", "", 1).isdigit():
            return float(stamp)
    m = _TIMESTAMP.search(line, 0, 64)
    return float(m.group(1)) if m is not None else None


class _Beyond:
    """The report's own lines past its titled part, for an untagged report cut short by the
    next one: syzkaller checks stacks over everything the report's context printed to the
    end of the log. Rescanning that for every report would be quadratic, so candidate lines
    come from the log's indexes and only their neighbourhood is read; nothing is computed
    unless a check needs it."""

    def __init__(self, log: _Log, scan: _Scan) -> None:
        self.log, self.scan = log, scan
        self._ready = False
        self.cut = self.walked = scan.resume or 0
        self.taken: set[int] = set()

    def _prepare(self) -> None:
        """Find where the report's lines end (the panic cut) past the titled part."""
        self._ready = True
        log, scan, resume = self.log, self.scan, self.scan.resume
        if resume is None:
            return
        state = _Scan(
            ctx=scan.ctx,
            counted=scan.counted,
            skip_text=scan.skip_text,
            cpu_traceback=scan.cpu_traceback,
            min_lines=scan.min_lines,
        )
        nmi = log.nmi_lines
        k = bisect_right(nmi, resume - 1)
        slow = state.cpu_traceback or (k < len(nmi) and nmi[k] < scan.limit)  # rare: walk all
        cut = resume if state.skip_text else scan.limit
        i = resume
        # Follow the line count until the panic cut could apply, then find the cut by index.
        while not state.skip_text and i < scan.limit and (slow or state.counted <= state.min_lines):
            _collect(log, state, (i,), -1)
            if state.skip_text:
                cut = i
            i += 1
        if not state.skip_text and not slow:
            for j in log.oops_lines[bisect_right(log.oops_lines, i - 1) :]:
                if j >= scan.limit:
                    break
                line = log.raw[j]
                if (
                    "Kernel panic - not syncing" in line
                    or "WARNING: possible circular locking dependency detected" in line
                ) and _own(log, scan.ctx, j):
                    cut = j
                    break
        self.cut, self.walked, self.taken = cut, i, set(state.nos)

    def _member(self, j: int) -> bool:
        if j >= self.cut:
            return False
        if j < self.walked:
            return j in self.taken
        return (
            _own(self.log, self.scan.ctx, j)
            and "Disabling lock debugging due to kernel taint" not in self.log.raw[j]
        )

    def lines_from(self, j: int, count: int) -> list[str]:
        """Up to `count` of the report's lines from log line j on."""
        if not self._ready:
            self._prepare()
        out: list[str] = []
        while j < self.cut and len(out) < count:
            if self._member(j):
                out.append(self.log.info(j)[1])
            j += 1
        return out

    def first(self, k: int) -> tuple[str, list[str]] | None:
        """The first line matching STACK_STARTS[k] past the titled part, and 16 lines after."""
        if self.scan.resume is None:
            return None
        if not self._ready:
            self._prepare()
        key, index = STACK_STARTS[k], self.log.stack_lines
        for j in index[bisect_left(index, self.scan.resume) :]:
            if j >= self.cut:
                return None
            if key.search(self.log.raw[j]) and self._member(j):  # cheap test first
                return self.log.info(j)[1], self.lines_from(j + 1, 16)
        return None


def _stack_hints(log: _Log, scan: _Scan) -> list[int]:
    """Positions in the report of its lines that may start a stack (from the log's index)."""
    nos = scan.nos
    if not nos:
        return []
    index = log.stack_lines
    out = []
    for j in index[bisect_left(index, nos[0]) : bisect_right(index, nos[-1])]:
        k = bisect_left(nos, j)
        if k < len(nos) and nos[k] == j:
            out.append(k)
    return out


class _Once:
    """A lazily computed, remembered bool (for checks only failure paths need)."""

    def __init__(self, compute: Callable[[], bool]) -> None:
        self._compute: Callable[[], bool] | None = compute
        self._value = False

    def __call__(self) -> bool:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


def _only_questionable_frames(log: _Log, scan: _Scan) -> bool:
    """Is this a report from a kernel that cannot vouch for its call trace: every frame
    marked ' ? ' (no frame pointers or ORC), but a RIP/PC line naming the function?

    Without the RIP line the report is just truncated, as syzkaller says."""
    first = scan.nos[0]
    last = min(scan.limit, scan.nos[-1] + 2)
    log.fill(first, last)
    questionable = rip = False
    for j in range(first + 1, last):
        ctx, stripped, q = log.info(j)
        if ctx != scan.ctx:
            continue
        if q:
            questionable = True
        elif FRAME_LINES[0].match(stripped) and "+0x" in stripped:
            return False  # a reliable frame: the trace is not all questionable
        elif not rip and (m := RIP.search(stripped)) is not None and any(m.groups()):
            rip = True
    return questionable and rip


def _own(log: _Log, ctx: str, j: int) -> bool:
    """Is line j the report's own (its console context), and not a ' ? ' frame?"""
    ctx1, _, questionable = log.info(j)
    return ctx1 == ctx and not questionable


def _prefix(log: _Log, start: int) -> list[str]:
    """Up to 5 lines before the report (10 with a task id), same context, for the reader."""
    ctx, _, _ = log.info(start)
    keep = 10 if _TASK_CONTEXT.search(ctx) else 5
    stop = max(0, start - 4 * keep, bisect_left(log.starts, log.starts[start] - WINDOW_BYTES))
    k = bisect_right(log.markers, start - 1)
    if k:
        stop = max(stop, log.markers[k - 1] + 1)
    out: list[str] = []
    tagged = ctx not in (_NO_CONTEXT, _CONSOLE)
    i = start - 1
    while i >= stop:
        if tagged:  # jump to the previous line with the same caller id
            pos = log.text.rfind(ctx, log.starts[stop], log.starts[i + 1])
            if pos < 0:
                break
            i = bisect_right(log.starts, pos) - 1
        c, stripped, q = log.info(i)
        if c == ctx and stripped and not q:
            out.append(stripped)
            if len(out) == keep:
                break
        i -= 1
    out.reverse()
    return out


def _report_at(log: _Log, start: int, hangup: bool) -> Report:
    """The report whose header is log line `start`: detection (_scan, _describe) first,
    then what it is (kind, fatal) and what a reader sees (text, offsets)."""
    oops = OOPSES[log.oops_at[start]]
    scan = _scan(log, start)
    span = (log.starts[scan.nos[0]], log.starts[scan.nos[-1] + 1])
    shaky = _Once(lambda: _only_questionable_frames(log, scan))
    described = _describe(oops, scan.lines, log.text.find("should_fail", *span) >= 0, shaky)
    if described is None:  # the header hid in a console prefix: look at the raw lines
        last = start
        for j in log.oops_lines[bisect_right(log.oops_lines, start) :]:
            if j >= scan.limit:
                break
            last = j
        described = _describe(oops, log.raw[start : last + 1]) or _Described(
            oops.header, False, None, None
        )
    title = described.title
    corrupted = (
        described.corrupted
        or hangup
        or _TIMESTAMP_IN_TITLE.search(title) is not None  # a timestamp merged into the header
        or (
            described.fmt is not None
            and not described.fmt.no_stack
            and _lacks_stack(scan.lines, _stack_hints(log, scan), _Beyond(log, scan), shaky)
        )
    )
    title = normalize_title(title)
    frame = described.frame
    if frame is None and (m := _TITLE_FRAME.match(title)) is not None and m.group(1) != "corrupted":
        frame = m.group(1)
    nxt = log.next_report(start)
    last = _last_shown(log, scan, nxt)
    region_end = min(nxt if nxt is not None else len(log.raw), scan.limit)
    fatal = oops.header in FATAL_HEADERS or any(
        "Kernel panic - not syncing" in log.raw[j]
        for j in log.oops_lines[
            bisect_right(log.oops_lines, start - 1) : bisect_right(log.oops_lines, region_end - 1)
        ]
    )
    return Report(
        title=title,
        kind=kind_of(title, oops.header),
        corrupted=corrupted,
        frame=frame,
        start=log.starts[start],
        end=min(log.starts[last + 1], len(log.text)),
        text=_display("\n".join([*_prefix(log, start), *_shown(log, scan, start, last)]) + "\n"),
        fatal=fatal,
    )


_END_OF_REPORT: Final = ("---[ end ", "=" * 30)


def _last_shown(log: _Log, scan: _Scan, nxt: int | None) -> int:
    """The report's last line for a reader: its end-of-report line, else its last line before
    the next report (at most MAX_TEXT_LINES lines)."""
    nos = scan.nos
    count = min(bisect_left(nos, nxt) if nxt is not None else len(nos), MAX_TEXT_LINES)
    if count > 1:  # find the first end-of-report line with str.find over the log
        lo, hi = log.starts[nos[1]], log.starts[nos[count - 1] + 1]
        for marker in _END_OF_REPORT:
            pos = log.text.find(marker, lo, hi)
            while pos >= 0:
                line_no = bisect_right(log.starts, pos) - 1
                k = bisect_left(nos, line_no)
                if 1 <= k < len(nos) and nos[k] == line_no and scan.lines[k].startswith(marker):
                    count = min(count, k + 1)
                    break
                pos = log.text.find(marker, pos + 1, hi)
    return nos[max(count, 1) - 1]


def _shown(log: _Log, scan: _Scan, start: int, last: int) -> list[str]:
    """The report as printed, for a reader: console prefixes removed, ' ? ' frames kept,
    and (with caller ids) only the report's own lines."""
    log.fill(start, last + 1)
    parts = cast(list[tuple[str, str, str]], log.parts[start : last + 1])
    if scan.tagged and not scan.cpu_traceback:
        ctx = scan.ctx
        return [rest for tag, _space, rest in parts if tag == ctx]
    return [rest for _tag, _space, rest in parts]


def _reports(log: str | bytes, first_only: bool) -> list[Report]:
    """Reports from the first header line on; each next one at the next header that starts
    a report (see NOT_A_NEW_REPORT), at most MAX_REPORTS."""
    text = _to_text(log)
    parsed = _Log(text)
    if not parsed.oops_lines:
        return []
    hangup = CONSOLE_HANGUP in text
    out: list[Report] = []
    start: int | None = parsed.oops_lines[0]
    while start is not None and len(out) < MAX_REPORTS:
        out.append(_report_at(parsed, start, hangup))
        if first_only:
            break
        start = parsed.next_report(start)
    return out


def parse(log: str | bytes) -> list[Report]:
    """All kernel reports in a console log, in order of their first line.

    A report starts at a header line (see OOPSES) and runs to the next one, except lines that
    continue a report (NOT_A_NEW_REPORT: the oops line of a BUG, the panic that follows it).
    """
    return _reports(log, first_only=False)


def title(log: str | bytes) -> Report | None:
    """The log's primary report (its first) as syzkaller titles a log; None if there is none."""
    found = _reports(log, first_only=True)
    return found[0] if found else None
