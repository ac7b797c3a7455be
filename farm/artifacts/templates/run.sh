#!/bin/sh
# Run the reproducer and read its oracles back in plain words (POSIX sh, busybox is fine).
#   ./run.sh                       build if needed, run once, judge
#   ./run.sh --judge OUT [KLOG]    judge a saved program output (and kernel log excerpt)
# Exit: 0 nothing wrong, 1 the kernel misbehaved, 2 cannot judge (e.g. one NUMA node).
set -u
cd "$(dirname "$0")"
BIN=./@BINARY@

judge() {  # $1: the program's JSON line, $2: the kernel log of the run (may be empty)
	out=$1 klog=$2 bad=0
	field() { printf '%s\n' "$out" | sed -n "s/.*$1.*/\1/p" | head -n 1; }
	nodes=$(field '"numa_nodes": \([0-9]*\)')
	err=$(field '"error": "\([^"]*\)"')
	vma=$(field '"vma": {\([^}]*\)}')
	rss=$(field '"rss_shmem_kb": {\([^}]*\)}')
	[ -n "$vma" ] || { echo "no result from the program (crashed?): cannot judge"; return 2; }
	if [ "${nodes:-0}" -lt 2 ]; then echo "the run saw ${nodes:-0} NUMA node(s): @NEEDS@"; return 2; fi
	[ -z "$err" ] || echo "note: the program reported: $err"
	found=$(printf '%s' "$vma" | sed -n 's/.*"found": \([a-z]*\).*/\1/p')
	vrss=$(printf '%s' "$vma" | sed -n 's/.*"rss_kb": \([-0-9a-z]*\).*/\1/p')
	vpss=$(printf '%s' "$vma" | sed -n 's/.*"pss_shmem_kb": \([-0-9a-z]*\).*/\1/p')
	before=$(printf '%s' "$rss" | sed -n 's/.*"before": \([-0-9a-z]*\).*/\1/p')
	punched=$(printf '%s' "$rss" | sed -n 's/.*"punched": \([-0-9a-z]*\).*/\1/p')
	if [ "$found" != true ]; then
		echo "VMA oracle: the memfd mapping was not found in /proc/self/smaps: cannot judge"; return 2
	elif [ "$vrss" = 0 ] && [ "${vpss:-0}" = 0 ]; then
		echo "VMA oracle: ok, the mapping holds nothing after every page was punched (Rss 0 kB)"
	else
		echo "VMA oracle: AFFECTED, the mapping still maps pages after every page was punched" \
			"(Rss $vrss kB, Pss_Shmem $vpss kB; want 0)"; bad=1
	fi
	if [ -z "$before" ] || [ "$before" = null ] || [ "$punched" = null ]; then
		echo "counter oracle: RssShmem missing from /proc/self/status: cannot judge"; return 2
	elif [ "$before" = "$punched" ]; then
		echo "counter oracle: ok, RssShmem is back at its baseline ($before kB)"
	else
		echo "counter oracle: AFFECTED, RssShmem is $punched kB after punching, $before kB before" \
			"populating (the MM_SHMEMPAGES counter is off)"; bad=1
	fi
	if [ "$klog" = "-" ]; then
		echo "teardown and splat oracles: the kernel log was not readable (run as root)"
		return $bad
	fi
	if printf '%s\n' "$klog" | grep -q 'Bad rss-counter'; then
		echo "teardown oracle: AFFECTED, the kernel printed at exit:"
		printf '%s\n' "$klog" | grep 'Bad rss-counter' | head -n 3 | sed 's/^/    /'; bad=1
	else
		echo "teardown oracle: ok, no 'BUG: Bad rss-counter state' when the program exited"
	fi
	splat='WARNING:|BUG:|kernel BUG at|general protection fault|Oops|KASAN|soft lockup|hung_task|blocked for more than|rcu_.* detected stall|Kernel panic'
	if printf '%s\n' "$klog" | grep -v 'Bad rss-counter' | grep -Eq "$splat"; then
		echo "splat oracle: AFFECTED, the kernel reported during the run:"
		printf '%s\n' "$klog" | grep -Em 5 "$splat" | sed 's/^/    /'; bad=1
	else
		echo "splat oracle: ok, no kernel report (WARNING, BUG, Oops, ...) during the run"
	fi
	[ $bad = 0 ] && echo "verdict: this run did not show the bug" || echo "verdict: this kernel is affected"
	return $bad
}

if [ "${1:-}" = --judge ]; then
	judge "$(cat "$2")" "$(if [ -n "${3:-}" ]; then cat "$3"; else echo -; fi)"; exit $?
fi
nodes=$(ls -d /sys/devices/system/node/node[0-9]* 2>/dev/null | wc -l)
if [ "$nodes" -lt 2 ]; then
	echo "@BINARY@: @NEEDS@, this machine has $nodes: run it in a VM with two (see README.md)" >&2
	exit 2
fi
if [ ! -x "$BIN" ]; then
	echo "building: @BUILD@"
	@BUILD@ || exit 2
fi
echo "kernel $(uname -r), $nodes NUMA nodes; running $BIN with the token's parameters"
if dmesg >/dev/null 2>&1; then mark=$(dmesg | wc -l); else mark=; fi
out=$("$BIN" "$@")
status=$?
sleep 1  # let check_mm() speak for the exited program
klog=-
[ -z "$mark" ] || klog=$(dmesg | tail -n +"$((mark + 1))")
echo "program exit status $status"
judge "$out" "$klog"
