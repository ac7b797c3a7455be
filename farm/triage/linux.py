"""The Linux oops table, as data: report headers, their formats and title templates.

Why data: like syzkaller's linux.go and LAVA's kernel message table, adding a report shape is
adding a row, and the engine (farm.triage.engine) stays the same for every row. Order matters
twice: for a line, the first header listed wins; within a header, the format that matches
earliest in the report wins, the first listed on a tie.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from farm.protocol import MARKER_PREFIX
from farm.triage.patterns import Ordered, Pat, pat, rx, seq
from farm.triage.stacks import (
    RIP,
    RIP_STACK,
    TRACE,
    TRACE_ONLY,
    Stack,
    hang_frame,
    recipe,
    stall_frame,
    warning_stack,
)


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
        title=title if isinstance(title, Pat) else pat(title),
        template=template,
        report=report if report is None or isinstance(report, Pat) else pat(report),
        stack=stack,
        no_stack=no_stack,
        corrupted=corrupted,
    )


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
    return tuple(rx(p) for p in patterns)


OOPSES: Final[tuple[Oops, ...]] = (
    Oops("BUG:", (
        _f("BUG: KASAN:", "KASAN: {0} {2} in {3}",
           report=pat(r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}",
                     r".*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)"),
           stack=recipe(r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}", *TRACE_ONLY,
                        skip=_KASAN_HW_SKIP)),
        _f("BUG: KASAN:", "KASAN: invalid-free in {1}", report=_KASAN_FREE,
           stack=recipe(_KASAN_FREE, *TRACE_ONLY, skip=("slab_", "kfree", "vunmap", "vfree"))),
        _f(pat(r"BUG: KASAN: ([a-z\-]+) on address", r".*(Read|Write) of size ([0-9]+)"),
           "KASAN: {0} {1}"),
        _f("BUG: KASAN: (.*)", "KASAN: {0}", corrupted=True),
        _f("BUG: KMSAN: kernel-usb-infoleak", "KMSAN: kernel-usb-infoleak in {1}",
           report=r"BUG: KMSAN: kernel-usb-infoleak in {{FUNC}}", no_stack=True,
           stack=recipe(TRACE, _KMSAN_ORIGIN, TRACE,
                        skip=("alloc_skb", "usb_submit_urb", *_USB_MSG))),
        _f("BUG: KMSAN:", "KMSAN: {0} in {2}", report=r"BUG: KMSAN: ([a-z\-]+) in {{FUNC}}",
           no_stack=True,
           stack=recipe(TRACE, _KMSAN_ORIGIN, TRACE, skip=(
               "alloc_skb", "netlink_ack", "netlink_rcv_skb",
               # Encryption is where such bugs show, never what they are about.
               "_encrypt$", "^(?:crypto|cipher|drbg|rng)_"))),
        _f("BUG: KCSAN: data-race", "KCSAN: {0}", report="BUG: KCSAN: (.*)", no_stack=True),
        _f("BUG: KCSAN:", "KCSAN: {0}", report="BUG: KCSAN: (.*)", no_stack=True),
        _f(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in {{FUNC}}",
           "KFENCE: {0} {1} in {3}", stack=recipe(_KFENCE_AT, TRACE)),
        _f("BUG: KFENCE: invalid free in {{FUNC}}", "KFENCE: invalid free in {1}",
           no_stack=True, stack=recipe(_KFENCE_AT, TRACE)),
        _f("BUG: KFENCE: invalid (read|write) in {{FUNC}}", "KFENCE: invalid {0} in {2}",
           stack=recipe(_KFENCE_AT, TRACE)),
        _f("BUG: KFENCE: memory corruption in {{FUNC}}", "KFENCE: memory corruption in {1}",
           no_stack=True, stack=recipe(_KFENCE_AT, TRACE)),
        _f("BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
           "|Unable to handle kernel data access)",
           "BUG: unable to handle kernel paging request in {0}", stack=recipe(*RIP_STACK)),
        _f("BUG: (?:unable to handle kernel NULL pointer dereference"
           "|kernel NULL pointer dereference|Kernel NULL pointer dereference)",
           "BUG: unable to handle kernel NULL pointer dereference in {0}",
           stack=recipe(*RIP_STACK)),
        # The kernel prints the rest of this header with a second printk that can get lost.
        _f("BUG: (?:unable to handle kernel|Unable to handle kernel)",
           "BUG: unable to handle kernel", corrupted=True),
        _f("BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion"
           "|bad magic|wrong owner|wrong CPU|trylock failure on UP)",
           "BUG: {0} {1} in {2}",
           stack=recipe(*TRACE_ONLY, skip=("spin_", "_lock", "_unlock"))),
        _f("BUG: soft lockup", "BUG: soft lockup in {0}",
           stack=recipe(*RIP_STACK, pick=stall_frame)),
        _f("BUG: .*still has locks held!", "BUG: still has locks held in {0}",
           report=pat("BUG: .*still has locks held!", r".*{{PC}} +{{FUNC}}")),
        _f("BUG: scheduling while atomic", "BUG: scheduling while atomic in {0}",
           stack=recipe(*TRACE_ONLY, skip=("schedule",))),
        _f("BUG: lock held when returning to user space",
           "BUG: lock held when returning to user space in {0}",
           report=pat("BUG: lock held when returning to user space",
                     ".*leaving the kernel with locks still held", _LOCK_AT),
           no_stack=True),
        _f("BUG: bad unlock balance detected!", "BUG: bad unlock balance in {0}",
           stack=recipe("{{PC}} +{{FUNC}}", *TRACE_ONLY)),
        _f("BUG: held lock freed!", "BUG: held lock freed in {0}",
           report=pat("BUG: held lock freed!", r".*{{PC}} +{{FUNC}}")),
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
           stack=recipe("page last allocated", TRACE, skip=(
               "(free|put|get|update|release)_page", "free_unref", "^_*folio",
               "truncate_inode_pages", "page_frag_free", "alloc", "vmap", "page_owner"))),
        # The process name would split one bug per program: syzkaller keeps the bare title.
        _f("BUG: Bad page map", "BUG: Bad page map"),
        _f("BUG: workqueue lockup", "BUG: workqueue lockup", no_stack=True),
        _f("BUG: sleeping function called from invalid context at (.*)",
           "BUG: sleeping function called from invalid context in {1}",
           stack=recipe(*TRACE_ONLY)),
        _f(r"BUG: using ([a-z_]+)\(\) in preemptible",
           "BUG: using {0}() in preemptible code in {1}",
           stack=recipe(*TRACE_ONLY, skip=(
               "dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu"))),
        _f("BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {0}",
           report=pat("BUG: workqueue leaked lock or atomic",
                     ".*last function: ([a-zA-Z0-9_]+)$"),
           no_stack=True),
        _f("BUG: memory leak", "memory leak in {0}",
           stack=recipe(r"backtrace(?: \(crc [0-9a-fA-F]*\))?:", TRACE, skip=(
               "kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get",
               "list_lru_init", "kasprintf", "kvasprintf", "pcpu_create", "strdup",
               "strndup", "memdup"))),
        _f("BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {0}",
           stack=recipe(*RIP_STACK, pick=stall_frame)),
        # arm's spelling of lockdep's wait-context check, titled like the x86 one.
        _f("BUG: Invalid wait context", "WARNING: locking bug in {0}",
           stack=recipe(*TRACE_ONLY, skip=("lock_sock", "release_sock"))),
        _f(r"BUG:\s*$", "BUG: corrupted", corrupted=True),
    ), ignore=_ignore("ODEBUG:", "Boot_DEBUG:", "xlog_status:", "DEBUG:",
                      "BUG: no syscalls can create resource")),
    Oops("WARNING:", (
        _f(seq("WARNING: ", r"lib/debugobjects\.c", " (?:debug_print|debug_check|at)"),
           "WARNING: ODEBUG bug in {0}",
           stack=warning_stack("debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_",
                                "vunmap", "vfree", "__free_", "debug_check", "kobject_")),
        _f(seq("WARNING: ", r"mm/usercopy\.c", " (?:usercopy_warn|at)"),
           "WARNING: bad usercopy in {0}", stack=warning_stack("usercopy", "__check")),
        _f(seq("WARNING: ", r"lib/kobject\.c", " (?:kobject_|at)"),
           "WARNING: kobject bug in {0}", stack=warning_stack("kobject_")),
        _f(seq("WARNING: ", r"fs/proc/generic\.c", " (?:proc_register|at)"),
           "WARNING: proc registration bug in {0}", stack=warning_stack("proc_")),
        _f(seq("WARNING: ", r"lib/refcount\.c", " (?:refcount_|at)"),
           "WARNING: refcount bug in {0}", stack=warning_stack("refcount", "kobject_")),
        _f(seq("WARNING: ", r"kernel/locking/lockdep\.c", "lock_"),
           "WARNING: locking bug in {0}", stack=warning_stack("lock_sock", "release_sock")),
        _f("WARNING: .*still has locks held!", "WARNING: still has locks held in {0}",
           report=pat("WARNING: .*still has locks held!", ".*at: {{FUNC}}")),
        _f("WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {0}",
           stack=warning_stack()),
        _f("WARNING: lock held when returning to user space",
           "WARNING: lock held when returning to user space in {0}",
           report=pat("WARNING: lock held when returning to user space",
                     ".*leaving the kernel with locks still held", _LOCK_AT),
           no_stack=True),
        _f(seq("WARNING: ", "mm/", r"\.c", " k?.?malloc"), "WARNING: kmalloc bug in {0}",
           stack=warning_stack("kmalloc", "krealloc", "slab", "kmem")),
        _f(seq("WARNING: ", "mm/vmalloc.c", "__vmalloc_node"),
           "WARNING: zero-size vmalloc in {0}", stack=warning_stack()),
        _f("WARNING: .* usb_submit_urb", "WARNING in {0}/usb_submit_urb",
           stack=warning_stack("usb_submit_urb", *_USB_MSG)),
        _f(r"WARNING: {{SRC}} at 0x\d+, CPU#\d+", "WARNING in {1}", stack=warning_stack()),
        # "WARNING: CPU: 1 PID: 123 at mm/memory.c:1390 zap_pte_range+0x5c0/0x8a0"
        _f("WARNING: .* at {{SRC}} {{FUNC}}", "WARNING in {2}", stack=warning_stack()),
        # Since late 2025: "WARNING: mm/memory.c:1705 at zap_pte_range+0x9a1/0x1170, CPU#1: ..."
        _f("WARNING: {{SRC}} at {{FUNC}}", "WARNING in {2}", stack=warning_stack()),
        _f(r"WARNING: \[.*\] {{SRC}} at {{FUNC}}", "WARNING in {2}", stack=warning_stack()),
        _f("WARNING: possible circular locking dependency detected", "possible deadlock in {0}",
           report=pat("WARNING: possible circular locking dependency detected",
                     ".*is trying to acquire lock"),
           stack=recipe(r"at: (?:{{PC}} +)?{{FUNC}}", r"at: (?:{{PC}} +)?{{FUNC}}", TRACE,
                        # Work items' own locks: such deadlocks are about the work item.
                        skip=("process_one_work", "flush_workqueue", "drain_workqueue",
                              "destroy_workqueue"))),
        _f("WARNING: possible irq lock inversion dependency detected", "possible deadlock in {0}",
           report=pat("WARNING: possible irq lock inversion dependency detected",
                     ".*just changed the state of lock", _LOCK_AT)),
        _f(seq("WARNING: ", "-safe -> ", "-unsafe lock order detected"),
           "possible deadlock in {0}", stack=recipe("which became (?:.*) at:", TRACE)),
        _f("WARNING: possible recursive locking detected", "possible deadlock in {0}",
           report=pat("WARNING: possible recursive locking detected",
                     ".*is trying to acquire lock", _LOCK_AT)),
        _f("WARNING: inconsistent lock state", "inconsistent lock state in {1}",
           report=pat("WARNING: inconsistent lock state", ".*takes", _LOCK_AT),
           stack=recipe(*TRACE_ONLY)),
        _f("WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage in {1}",
           report=pat("WARNING: suspicious RCU usage", ".*?{{SRC}}"),
           stack=recipe(*TRACE_ONLY, skip=("rcu", "kmem", "slab"))),
        _f("WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value",
           "WARNING: kernel stack regs has bad '{0}' value", no_stack=True),
        _f("WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value",
           "WARNING: kernel stack frame pointer has bad value", no_stack=True),
        _f("WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {0}",
           stack=recipe("{{PC}} +{{FUNC}}", *TRACE_ONLY)),
        _f("WARNING: held lock freed!", "WARNING: held lock freed in {0}",
           report=pat("WARNING: held lock freed!", ".*at:(?: {{PC}})? +{{FUNC}}")),
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
           report=pat(r"INFO: possible circular locking dependency detected \]",
                     ".*is trying to acquire lock", _LOCKDEP_AT)),
        _f("INFO: possible irq lock inversion dependency detected", "possible deadlock in {0}",
           report=pat(r"INFO: possible irq lock inversion dependency detected \]",
                     ".*just changed the state of lock", _LOCKDEP_AT)),
        _f("INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", "possible deadlock in {0}",
           report=pat(r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected \]",
                     ".*is trying to acquire", _LOCKDEP_AT)),
        _f("INFO: possible recursive locking detected", "possible deadlock in {0}",
           report=pat(r"INFO: possible recursive locking detected \]",
                     ".*is trying to acquire lock", _LOCKDEP_AT)),
        _f("INFO: inconsistent lock state", "inconsistent lock state in {0}",
           report=pat(r"INFO: inconsistent lock state \]", ".*takes", _LOCKDEP_AT)),
        _f("INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected(?: expedited)? stall",
           "INFO: rcu detected stall in {0}",
           stack=recipe("apic_timer_interrupt", RIP, TRACE,
                        parts2=("(?:apic_timer_interrupt|Exception stack|el1h_64_irq)", TRACE),
                        skip=("apic_timer_interrupt", "rcu"), pick=stall_frame)),
        _f("INFO: rcu_tasks detected stalls? on tasks", "INFO: rcu detected stall in {0}",
           stack=recipe(*TRACE_ONLY, skip=("rcu",), pick=stall_frame)),
        _f("INFO: trying to register non-static key",
           "INFO: trying to register non-static key in {0}",
           stack=recipe(*TRACE_ONLY, skip=("stack", "lock", "IRQ"))),
        _f("INFO: suspicious RCU usage", "INFO: suspicious RCU usage in {1}",
           report=pat("INFO: suspicious RCU usage", ".*?{{SRC}}"),
           stack=recipe(*TRACE_ONLY, skip=("rcu", "kmem", "slab"))),
        _f("INFO: task .* blocked for more than [0-9]+ seconds", "INFO: task hung in {0}",
           stack=recipe(*TRACE_ONLY, pick=hang_frame)),
        # A task name (comm) may contain a newline: the header then spans two lines.
        _f(pat("INFO: task ", ".* blocked for more than [0-9]+ seconds", adjacent=True),
           "INFO: task hung in {0}", stack=recipe(*TRACE_ONLY, pick=hang_frame)),
        _f(seq("INFO: task ", " can't die for more than ", " seconds"),
           "INFO: task can't die in {0}", stack=recipe(*TRACE_ONLY, skip=("schedule",))),
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
           "BUG: unable to handle kernel {0} in {1}", stack=recipe(*RIP_STACK)),
    )),
    Oops("general protection fault", (
        _f("general protection fault.*:", "general protection fault in {0}",
           stack=recipe(*RIP_STACK)),
    ), ignore=_ignore(r"general protection fault .* error:\d+ in ")),  # in user space
    Oops("stack segment: ", (
        _f("stack segment: ", "stack segment fault in {0}", stack=recipe(*RIP_STACK)),
    )),
    Oops("Kernel panic", (
        _f(_PANIC + "stack-protector:", "kernel panic: stack is corrupted in {0}",
           report=_PANIC + "stack-protector: Kernel stack is corrupted in: {{FUNC}}",
           no_stack=True),
        _f(_PANIC + "stack-protector:", "kernel panic: stack is corrupted in {0}",
           report=_PANIC + "stack-protector: Kernel stack is corrupted in: [a-f0-9]+",
           stack=recipe(*TRACE_ONLY, skip=("stack_chk",))),
        _f(_PANIC + "corrupted stack end", "kernel panic: corrupted stack end in {0}",
           report=_PANIC + "corrupted stack end detected inside scheduler",
           stack=recipe(*TRACE_ONLY, skip=("schedule", "retint_kernel"), pick=stall_frame)),
        _f(_PANIC + "kernel stack overflow", "kernel stack overflow in {0}",
           stack=recipe(*TRACE_ONLY, skip=("bad_stack",), pick=stall_frame)),
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
        _f("PANIC: double fault", "PANIC: double fault in {0}", stack=recipe(RIP)),
    )),
    Oops("rust_kernel: panicked", (
        # The panic message is the line after the header.
        _f("rust_kernel: panicked", "{0} in {1}",
           report=pat("rust_kernel: panicked at ", "(.+)", adjacent=True),
           stack=recipe(*TRACE_ONLY, skip=(re.escape("__rustc::rust_begin_unwind"),))),
    )),
    Oops("kernel BUG", (
        _f("kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {0}",
           stack=recipe(*TRACE_ONLY, skip=("usercopy", "__check"))),
        _f("kernel BUG at lib/list_debug.c", "BUG: corrupted list in {0}",
           stack=recipe(*TRACE_ONLY)),
        # skb helpers BUG_ON() on their callers' mistakes.
        _f("kernel BUG at (.*)", "kernel BUG in {1}", stack=recipe(*RIP_STACK, skip=("^skb_",))),
    )),
    Oops("Kernel BUG", (_f("Kernel BUG (.*)", "kernel BUG {0}"),)),
    Oops("BUG kmalloc-", (_f("BUG kmalloc-.*: Object already free", "BUG: Object already free"),)),
    Oops("divide error:", (_f("divide error: ", "divide error in {0}", stack=recipe(RIP)),)),
    # A misspelling of the above in some kernels.
    Oops("divide_error:", (_f("divide_error: ", "divide error in {0}", stack=recipe(RIP)),)),
    Oops("invalid opcode:", (_f("invalid opcode: ", "invalid opcode in {0}", stack=recipe(RIP)),)),
    Oops("int3:", (_f("int3: ", "int3 in {0}", stack=recipe(*RIP_STACK)),)),
    Oops("UBSAN:", (
        _f("UBSAN:", "UBSAN: undefined-behaviour in {0}", report="UBSAN: Undefined behaviour in",
           stack=recipe(*TRACE_ONLY, skip=("ubsan", "overflow"))),
        _f("UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {0}",
           stack=recipe(*TRACE_ONLY, skip=("ubsan", "overflow"))),
        _f("UBSAN:", "UBSAN: {0} in {1}", report="UBSAN: (.*?) in",
           stack=recipe(*TRACE_ONLY, skip=("ubsan", "overflow"))),
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
        _f("Internal error:", "Internal error in {0}", stack=recipe(*RIP_STACK)),
    )),
    Oops("Unhandled fault:", (
        _f("Unhandled fault:", "Unhandled fault in {0}", stack=recipe(*RIP_STACK)),
    )),
    Oops("Alignment trap:", (
        _f("Alignment trap:", "Alignment trap in {0}", stack=recipe(*RIP_STACK)),
    )),
    Oops("trusty: panic", (
        _f("trusty: panic.* ASSERT FAILED", "trusty: ASSERT FAILED: {0}",
           report=r"trusty: panic \([^)]*\):(?: DEBUG)? ASSERT FAILED at \([^)]*\): (.+)",
           no_stack=True),
        _f(seq("trusty: panic", " ASSERT FAILED", ".*: *(.*)"), "trusty: ASSERT FAILED: {0}",
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
    rx(x)
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
TRIAL_MARKER: Final = re.compile(re.escape(MARKER_PREFIX) + r" \S+ (?:begin|end)\b", re.ASCII)
