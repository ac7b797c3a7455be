"""The wire contract between the planes: what the scheduler sends for one trial
(``TrialMessage``, with the task and queue names and the console markers) and
what a worker returns (``TrialResult``), both validated and bounded.

A message names a kernel by name and sha256, never by path: each worker
resolves the name in its own cache (farm.artifacts.kernels.resolve_kernel)
and refuses what it does not have, so nothing from the broker becomes a path
on a host. Both sides validate a message with the same model.

Guest output is untrusted: a guest kernel can print anything, and the trial
program runs on the kernel under test. Everything that crosses from the guest
to the control plane goes through these models: sizes are capped, numbers are
range-checked and unknown fields are rejected, so one broken guest can mark
its own trial but never corrupt another's record.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from farm.params import MAX_TOKEN_CHARS
from farm.timing import MAX_DEADLINE_S

# Celery task and queue names (workers.tasks registers them; the scheduler sends by name).
TRIAL_TASK = "zapfarm.run_trial"
BATCH_TASK = "zapfarm.run_batch"
PING_TASK = "zapfarm.ping"
QUEUE_PREFIX = "zapfarm.k."

# The agent's kmsg lines around each trial (guest/agent.c writes them).
MARKER_PREFIX = "zapfarm: trial"


def kernel_queue(kernel_name: str) -> str:
    """The queue of trials for one kernel; workers that have the kernel consume it."""
    return QUEUE_PREFIX + kernel_name


def begin_marker(trial_id: str) -> str:
    return f"{MARKER_PREFIX} {trial_id} begin"


def end_marker(trial_id: str) -> str:
    return f"{MARKER_PREFIX} {trial_id} end"


MAX_CONSOLE_BYTES = 256 * 1024  # console excerpt kept with one trial
MAX_OUTPUT_BYTES = 64 * 1024  # the trial program's stdout, as the agent relays it
MAX_ERROR_CHARS = 2000

Count = Annotated[int, Field(ge=0, le=1 << 40)]
Int32 = Annotated[int, Field(ge=-(1 << 31), le=(1 << 31) - 1)]
Epoch = Annotated[float, Field(ge=0, le=1 << 40, allow_inf_nan=False)]
Kb = Annotated[int, Field(ge=-(1 << 40), le=1 << 40)]  # counters can go negative on a bad kernel
ShortStr = Annotated[str, Field(max_length=256)]
Token = Annotated[str, Field(max_length=MAX_TOKEN_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


KERNEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"  # farm.artifacts.kernels.check_name
TRIAL_ID = r"^[!-~]{1,128}$"  # printable ASCII without spaces: the agent writes it to kmsg


class KernelRef(_Strict):
    """A kernel as a message names it: what the image is, never where it lies."""

    name: Annotated[str, Field(pattern=KERNEL_NAME)]
    # None when the control plane never learnt it: every worker then refuses the trial
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None


class TrialMessage(_Strict):
    """What the control plane sends for one trial: the token is the only parameter source."""

    trial_id: Annotated[str, Field(pattern=TRIAL_ID)]
    token: Token
    kernel: KernelRef
    deadline_s: Annotated[float, Field(ge=1, le=MAX_DEADLINE_S, allow_inf_nan=False)]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class MessageError(ValueError):
    """A trial message that failed validation; the message names the field."""


def validate_message(data: Any) -> TrialMessage:
    try:
        return TrialMessage.model_validate(data)
    except ValidationError as exc:
        raise MessageError(f"malformed trial message: {_describe(exc)}") from exc


def trial_message(
    trial_id: str, token: str, kernel_name: str, kernel_sha256: str | None, deadline_s: float
) -> dict[str, Any]:
    """A validated message as the broker carries it (raises MessageError when malformed)."""
    return validate_message(
        {
            "trial_id": trial_id,
            "token": token,
            "kernel": {"name": kernel_name, "sha256": kernel_sha256},
            "deadline_s": deadline_s,
        }
    ).to_json()


class Migrate(_Strict):
    calls: Count
    call_errors: Count
    moved: Count
    enoent: Count
    ebusy: Count
    other: Count
    other_errnos: dict[Annotated[str, Field(pattern=r"^-?\d{1,4}$")], Count] = Field(
        default_factory=dict, max_length=64
    )


class Punch(_Strict):
    calls: Count
    errors: Count
    unpunched: Count | None = None  # pages still unpunched after the final sweep (format 1 later)


class Vma(_Strict):
    """The memfd mapping's smaps fields, summed over its VMAs (mbind() may split it)."""

    found: bool
    rss_kb: Kb | None
    pss_shmem_kb: Kb | None  # Pss when the kernel prints no per-VMA Pss_Shmem
    # private scenarios: COWed pages are anonymous and may legitimately stay (hole punch)
    anon_kb: Kb | None = None
    swap_kb: Kb | None = None

    @property
    def file_rss_kb(self) -> int | None:
        """The memfd's own pages still mapped: Rss without the private COWs."""
        return None if self.rss_kb is None else self.rss_kb - (self.anon_kb or 0)

    @property
    def file_pss_kb(self) -> int | None:
        return None if self.pss_shmem_kb is None else self.pss_shmem_kb - (self.anon_kb or 0)


class Rollup(_Strict):
    pss_shmem_kb: Kb | None


class RssShmem(_Strict):
    before: Kb | None
    populated: Kb | None
    punched: Kb | None


PageState = Literal["zero", "file", "cow", "other", "sigbus", "sigsegv"]
MAX_MISMATCHES = 8  # offending pages the trial program lists


class DataMismatch(_Strict):
    """One page that did not read what POSIX requires after the zap."""

    page: Count
    round: Annotated[int, Field(ge=0, le=64)]
    phase: Literal["zapped", "truncated", "extended"]
    want: PageState
    got: PageState
    word: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]  # the page's first 64-bit word


class DataCheck(_Strict):
    """The data oracle: every page read after every round's zap (docs/protocol.md)."""

    checked: Count  # page reads, over all rounds and phases
    mismatches: Count
    first: list[DataMismatch] = Field(default_factory=list, max_length=MAX_MISMATCHES)


class Proxy(_Strict):
    """The user-space window proxy: pages whose zap overlapped their raced move in time."""

    overlapped: Count
    moved: Count  # of those, pages the move reported on its target node
    gone: Count  # of those, pages the move found gone (-ENOENT/-EFAULT)


class Swap(_Strict):
    total_kb: Kb | None  # active swap in /proc/swaps
    paged_out_kb: Kb | None  # the mapping's Swap after MADV_PAGEOUT (swapped scenarios)


class ProgramOutput(_Strict):
    """The JSON object guest/zapmigrate.c prints (docs/protocol.md)."""

    program: Literal["zapmigrate"]
    format: Literal[1]
    inputs: dict[ShortStr, int | ShortStr] = Field(max_length=64)
    kernel: ShortStr
    numa_nodes: Annotated[int, Field(ge=0, le=1024)]
    page_size: Annotated[int, Field(ge=0, le=1 << 30)]
    migrate: Migrate
    punch: Punch
    vma: Vma
    rollup: Rollup
    rss_shmem_kb: RssShmem
    # since parameter space v3's program; None in results of older programs
    data: DataCheck | None = None
    proxy: Proxy | None = None
    swap: Swap | None = None
    numa_balancing: Annotated[int, Field(ge=0, le=3)] | None = None  # sysctl during the trial
    timing_us: dict[ShortStr, Count] = Field(max_length=32)
    # non-fatal trouble (a thread not pinned, no pressure thread): the oracles still count
    warnings: list[ShortStr] = Field(default_factory=list, max_length=8)
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] | None  # fatal: not run as asked

    @property
    def scenario(self) -> str:
        """The scenario the program ran (older programs ran only the seed's)."""
        value = self.inputs.get("scenario", "shared-punch")
        return value if isinstance(value, str) else "shared-punch"


Outcome = Literal[
    "ok",  # the agent answered and the program printed valid JSON
    "program-error",  # the agent answered, the program's output is missing or invalid
    "timeout",  # stopped making progress: a silent guest, or a program whose CPU time stood still
    "slow",  # still making progress at its deadline (the agent killed it): not hung, not judged
    "guest-died",  # the guest stopped answering: panic, reset, or the domain is gone
    "invalid-guest",  # the guest cannot run this trial (fewer than 2 NUMA nodes)
    "infra-error",  # boot failure, libvirt error, missing image: not the kernel's fault
]


class GuestInfo(_Strict):
    name: ShortStr
    boot_id: ShortStr
    kernel_release: ShortStr
    numa_nodes: Annotated[int, Field(ge=0, le=1024)]
    virt_type: Literal["kvm", "qemu"]
    boot_seconds: Annotated[float, Field(ge=0)]
    trials_on_boot: Count  # trials this boot ran, this one included


MAX_BOOT_CONSOLE_BYTES = 64 * 1024


class BootReport(_Strict):
    """What a guest printed between two trials, or that it died then: the boot's, no trial's.

    The worker checks a kept guest before its next trial; on a report or a dead
    domain it boots afresh and hands this on with that trial's result.
    """

    boot_id: ShortStr
    kernel_release: ShortStr
    after_trial: ShortStr  # the last trial the boot ran
    died: bool
    titles: list[ShortStr] = Field(default_factory=list, max_length=16)
    console: Annotated[str, Field(max_length=MAX_BOOT_CONSOLE_BYTES)] = ""


class Window(_Strict):
    """The race window during one trial, from a ``--instrument count`` kernel.

    How often a zap with details (hole punch, truncation) met a migration or
    swap entry, and how often it left one in place that the fixed code removes
    (only a ``--revert-fix`` kernel does). The agent's difference of the
    ``zapfarm_*`` lines of /proc/vmstat over the trial (docs/kernels.md).
    """

    entries: Count
    skipped: Count
    swap_entries: Count
    swap_skipped: Count

    @model_validator(mode="after")
    def _skips_are_entries(self) -> Window:
        if self.skipped > self.entries or self.swap_skipped > self.swap_entries:
            raise ValueError("more skipped than met: skipped <= entries for both kinds")
        return self


class TrialResult(_Strict):
    """One trial's outcome as a worker reports it; the recorder stores it once."""

    trial_id: ShortStr
    token: Token
    kernel: ShortStr
    worker: ShortStr
    outcome: Outcome
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] | None = None
    guest: GuestInfo | None = None
    booted: bool = False  # this trial paid for a fresh boot
    exit_code: Int32 | None = None
    signal: Int32 | None = None
    elapsed_ms: Count | None = None
    program: ProgramOutput | None = None
    window: Window | None = None  # None: the kernel has no window counters
    output: Annotated[str, Field(max_length=MAX_OUTPUT_BYTES)] = ""  # raw stdout when unparsable
    console: Annotated[str, Field(max_length=MAX_CONSOLE_BYTES)] = ""
    console_truncated: bool = False
    # the agent saw the trial's mm freed before its end marker (None: it could not tell)
    mm_released: bool | None = None
    mm_wait_ms: Count | None = None  # from the child's reap to the mm's release (or the bound)
    prior_boot: BootReport | None = None  # the guest this trial did not use, and why
    started_at: Epoch
    finished_at: Epoch

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def window_entries(result: TrialResult) -> int:
    """The trial's graded race signal: migration and swap entries a zap with details met.

    The kernel's own count on --instrument count builds; on every other kernel the
    trial program's user-space proxy (pages whose zap overlapped their raced move);
    0 when neither is there (older programs, foreign programs).
    """
    window = result.window
    if window is not None:
        return window.entries + window.swap_entries
    proxy = result.program.proxy if result.program is not None else None
    return proxy.overlapped if proxy is not None else 0


MIN_GUEST_SECONDS = 0.001  # a trial never costs nothing: rates per guest-second stay finite


def guest_seconds(result: TrialResult) -> float:
    """What a trial cost: its wall time on the guest slot (the search's cost, docs/search.md)."""
    return max(result.finished_at - result.started_at, MIN_GUEST_SECONDS)


class ResultError(ValueError):
    """A result that failed validation; the message names the field."""


def clip(text: str, limit: int) -> tuple[str, bool]:
    """Keep the head and tail of an oversized text: reports start early, panics come last."""
    if len(text) <= limit:
        return text, False
    marker = "\n[... zapfarm: {} characters cut ...]\n"
    keep = limit - len(marker.format(len(text))) - 8
    head = keep // 2
    return text[:head] + marker.format(len(text) - keep) + text[-(keep - head) :], True


def parse_program_output(raw: str) -> ProgramOutput:
    """Parse and validate the trial program's stdout (one JSON object)."""
    if len(raw) > MAX_OUTPUT_BYTES:
        raise ResultError(f"trial program printed {len(raw)} bytes, limit {MAX_OUTPUT_BYTES}")
    text = raw.strip()
    if not text:
        raise ResultError("trial program printed nothing")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(f"trial program output is not JSON: {exc.msg} at char {exc.pos}") from exc
    try:
        return ProgramOutput.model_validate(data)
    except ValidationError as exc:
        raise ResultError(f"trial program output failed validation: {_describe(exc)}") from exc


def validate_result(data: Any) -> TrialResult:
    """Validate a result dict from the broker; the error names the bad fields."""
    try:
        return TrialResult.model_validate(data)
    except ValidationError as exc:
        raise ResultError(f"trial result failed validation: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
