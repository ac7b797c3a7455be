"""Stack traces: where they start, which lines are frames, and the guilty frame of a report.

Why apart: a title names the first frame that explains the bug, so the frames that never do
(reporting machinery, locking, allocation, generic dispatchers) are the bulk of the rules.
The recipes (Stack) say, per report format, which stack traces to walk and what to skip,
following syzkaller's pkg/report for every architecture it sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from farm.triage.demangle import demangle
from farm.triage.patterns import memo, rx


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


# --------------------------------------------------------------------------------------------
# Recognising stack traces and frames (Linux, all architectures syzkaller sees)

RIP: Final = rx(
    r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{{PC}} +){0,2}{{FUNC}}|(?:[0-9]+:)?0x[0-9a-f]+"
    r"|(?:[0-9]+:)?{{PC}} +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))"
)
CALL_TRACE: Final = rx(r"(?:Call (?:T|t)race:)|(?:Backtrace:)")
_RISCV_STACK_START: Final = rx(r"status: [0-9a-f]{16} badaddr: [0-9a-f]{16} cause: [0-9a-f]{16}")
STACK_STARTS: Final = (
    rx(r"Call (?:T|t)race"),
    rx(r"Allocated:"),
    rx(r"Allocated by task [0-9]+:"),
    rx(r"Freed:"),
    rx(r"Freed by task [0-9]+:"),
    # kmemleak's, not "stack backtrace:" (at a line start the previous line's newline counts)
    rx(r"(?:^|[^k]) backtrace(?: \(crc [0-9a-fA-F]*\))?:"),
    rx(r"Backtrace:"),
    rx(r"Uninit was stored to memory at"),
    _RISCV_STACK_START,  # riscv show_regs() prints the stack with no header
)
FRAME_LINES: Final = (
    rx(r"^ *(?:{{PC}} ){0,2}{{FUNC}}"),
    rx(r"^ *{{PC}} \(([a-zA-Z0-9_.]+)\) from {{PC}} \({{FUNC}}"),  # arm: "pc (f) from lr (g)"
)
# Fault-injection stacks interleave with real reports and make them unreliable.
CORRUPTING_LINES: Final = (
    rx(r"^( \[<?(?:0x)?[0-9a-f]+>?\])? should_fail(slab)?(\.[a-z0-9.]+)?\+0x"),
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


@memo
def _is_stall_anchor(frame: str) -> bool:
    return _STALL_ANCHORS.search(frame) is not None


def stall_frame(frames: list[str]) -> tuple[str, int]:
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


def hang_frame(frames: list[str]) -> tuple[str, int]:
    """Hung tasks show victims: bucket rtnl and RCU waits, else skip the waiting machinery."""
    for i, frame in enumerate(frames):
        for anchor, bucket in _HANG_BUCKETS:
            if anchor in frame:
                return (frame if anchor == "rtnl_lock" else bucket), i
    for i, frame in enumerate(frames):
        if not any(s in frame for s in _HANG_SKIP):
            return frame, i
    return "", -1


# --------------------------------------------------------------------------------------------
# Building recipes


def recipe(
    *parts: Part | str,
    skip: Sequence[str] = (),
    pick: Callable[[list[str]], tuple[str, int]] | None = None,
    parts2: Sequence[Part | str] = (),
) -> Stack:
    """A Stack recipe from patterns (strings are compiled with rx), TRACE markers and the
    frames to skip beyond SKIP_FRAMES; `pick` replaces "the first frame not skipped"."""

    def compiled(seq: Sequence[Part | str]) -> tuple[Part, ...]:
        return tuple(rx(p) if isinstance(p, str) else p for p in seq)

    return Stack(compiled(parts), compiled(parts2), tuple(skip), pick)


RIP_STACK: Final = (RIP, CALL_TRACE, TRACE)
TRACE_ONLY: Final = (CALL_TRACE, TRACE)


def warning_stack(*skip: str) -> Stack:
    """WARN(): x86 traps and starts at the RIP line, powerpc at '--- interrupt:', else plain."""
    first = rx("(?:" + RIP.pattern + "|--- interrupt: [0-9]+ at {{FUNC}})")
    return Stack((first, TRACE), TRACE_ONLY, skip, None)


# --------------------------------------------------------------------------------------------
# Guilty frames

_STACK_START_ANY: Final = re.compile("|".join(r.pattern for r in STACK_STARTS), re.ASCII)


def _is_stack_start(line: str) -> bool:
    """Does a stack trace start here? (Literal tests first: most lines are frames.)"""
    return (
        "race" in line or "Alloc" in line or "Freed" in line or "Uninit" in line
        or "badaddr" in line
    ) and _STACK_START_ANY.search(line) is not None  # fmt: skip


def guilty_frames(stack: Stack, lines: list[str], faults: bool) -> tuple[list[str], bool]:
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


@memo
def _strip_syscall(frame: str) -> str:
    """sys_/__x64_sys_/__se_sys_... wrappers differ by arch and version: keep the shortest."""
    best = frame
    for prefix in SYSCALL_PREFIXES:
        if frame.startswith(prefix) and len(frame) - len(prefix) < len(best):
            best = frame[len(prefix) :]
    return best


def rip_frame(stack: Stack, lines: list[str]) -> str | None:
    """The function of the report's first RIP/PC line, unless it is a generic one."""
    for ln in lines:
        if ("IP" in ln or "pc " in ln or "PC is at" in ln) and (m := RIP.search(ln)) is not None:
            names = [demangle(g) for g in m.groups() if g is not None]
            name = names[0] if names else None
            return _strip_syscall(name) if name and not stack.skips(name) else None
    return None


# --------------------------------------------------------------------------------------------
# Reports that lack the stack their kind promises


class ReportTail(Protocol):
    """The report's own lines past its titled part (the engine reads them on demand)."""

    @property
    def resume(self) -> int | None:
        """The log line where the next report interrupted the titled part, if one did."""

    def lines_from(self, j: int, count: int) -> list[str]:
        """Up to `count` of the report's lines from log line j on."""

    def first(self, k: int) -> tuple[str, list[str]] | None:
        """The first line matching STACK_STARTS[k] past the titled part, and 16 lines after."""


def lacks_stack(
    lines: Sequence[str],
    hints: Sequence[int],
    beyond: ReportTail | None = None,
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
                if len(following) < 16 and beyond is not None and beyond.resume is not None:
                    following += beyond.lines_from(beyond.resume, 16 - len(following))
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
