#!/bin/bash
# Runs the whole test suite, installing what it needs:
#   1. unit, contract and integration suites on the host,
#   2. the same under AddressSanitizer + UndefinedBehaviorSanitizer,
#   3. the libFuzzer harnesses (tests/fuzz/), each for a bounded time,
#   4. a QEMU with the rdmig: transport (scripts/build-qemu.sh, cached by
#      content hash) migrating a real guest (tests/qemu/),
#   5. the soft-RoCE suite inside a VM (tests/rxe/run), where RDMA works.
# Prints every skip with its reason, then one closing line
# "rdmig-tests: N passed, N failed, N skipped", counting test cases (each
# GLib sub-test and each Python case), not test programs.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all || exit 1

passed=0 failed=0 skipped=0
# Adds a suite run's test cases (every TAP line: GLib sub-tests and Python
# cases alike) to the totals, and lists each skip with its reason.
count() { # $1: build directory, $2: label
	local log=$1/meson-logs/testlog.json
	[ -f "$log" ] || return 0
	local out
	out=$(python3 scripts/tap-count.py "$log" --label "$2")
	printf '%s\n' "$out" | sed '$d' | tee -a "$summary"
	read -r p f s < <(printf '%s\n' "$out" | tail -n 1)
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT

status=0
echo "== host suites (unit, contract, integration)"
rm -f build/meson-logs/testlog.json
meson test -C build --suite unit --suite contract --suite integration --print-errorlogs || status=1
count build host

echo "== the same under ASan + UBSan"
[ -f build-asan/build.ninja ] || meson setup build-asan -Db_sanitize=address,undefined \
	-Db_lundef=false --buildtype=debug >/dev/null
ninja -C build-asan >/dev/null || status=1
rm -f build-asan/meson-logs/testlog.json
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	meson test -C build-asan --suite unit --suite contract --suite integration \
	--print-errorlogs --timeout-multiplier 3 || status=1
count build-asan asan

echo "== fuzzing: each libFuzzer harness for ${RDMIG_FUZZ_SECONDS:-20} s (clang, ASan+UBSan)"
[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzz=true \
	-Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug >/dev/null
meson configure build-fuzz -Dfuzz_seconds="${RDMIG_FUZZ_SECONDS:-20}" >/dev/null
ninja -C build-fuzz >/dev/null || status=1
rm -f build-fuzz/meson-logs/testlog.json
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	meson test -C build-fuzz --suite fuzz --print-errorlogs || status=1
grep -h "stat::number_of_executed_units\|^#.*DONE" build-fuzz/meson-logs/testlog.txt 2>/dev/null | head -8
count build-fuzz fuzz

echo "== QEMU with the rdmig: transport (tests/qemu/)"
if qemu=$(scripts/build-qemu.sh build | tail -n 1) && [ -x "$qemu" ]; then
	rm -f build/meson-logs/testlog.json
	# exported: the rdma suite's QEMU cases run it inside the soft-RoCE VM,
	# which sees the build directory but not the host's /tmp (where
	# RDMIG_QEMU_CACHE may point): a copy in the build directory.
	mkdir -p build/qemu-rdmig
	cp "$qemu" build/qemu-rdmig/qemu-system-x86_64
	export RDMIG_QEMU=$PWD/build/qemu-rdmig/qemu-system-x86_64
	meson test -C build --suite qemu --print-errorlogs || status=1
	count build qemu
else
	echo "scripts/build-qemu.sh failed: the QEMU suite did not run" >&2
	status=1 failed=$((failed + 1))
fi

echo "== soft-RoCE suite (inside a VM)"
tests/rxe/run --timeout 1500 -- tests/rxe/smoke.sh || status=1
if grep -q "suite : 'rdma'\|suite: 'rdma'" tests/*/meson.build 2>/dev/null; then
	rm -f build/meson-logs/testlog.json
	tests/rxe/run --timeout 2400 -- meson test -C build --suite rdma --no-rebuild --print-errorlogs || status=1
	count build rdma
fi

echo "== summary (test cases: GLib sub-tests, Python cases, other programs)"
cat "$summary"
echo "rdmig-tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] || status=1
exit $status
