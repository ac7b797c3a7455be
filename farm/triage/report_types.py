"""Report types: what a kernel report is (its kind) and whether it is fatal.

Why apart: what a report *is* is decided from its final title, apart from how it was
*found* (farm.triage.engine and the table in farm.triage.linux), like syzkaller's crash
types. These are kinds of kernel report (WARNING, KASAN, RSS_COUNTER...), not verdict kinds
(farm.triage.kinds), which are about a whole trial.
"""

from __future__ import annotations

import re
from typing import Final

REPORT_KINDS: Final = (
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


_KIND_PREFIX: Final = re.compile("|".join(re.escape(prefix) for prefix, _ in REPORT_KINDS))
_KIND_OF_PREFIX: Final = dict(REPORT_KINDS)


def kind_of(title: str, header: str = "") -> str:
    """Classify a report by its title: the first prefix of REPORT_KINDS it starts with (an ordered
    alternation tries them in that order), else by its header."""
    m = _KIND_PREFIX.match(title)
    return _KIND_OF_PREFIX[m.group()] if m else KIND_BY_HEADER.get(header, DEFAULT_KIND)
