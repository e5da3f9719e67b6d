#!/bin/sh
# test_neon.sh - the arm64 build and its NEON kernels, under qemu.
#
# Cross-compiles the tree for aarch64 in a temporary directory and runs
# test_quant, test_model and test_backend under qemu user-mode emulation twice: on a
# Cortex-A53 model (Armv8.0: NEON without SDOT, so the vmull kernels run) and
# on qemu's "max" model (SDOT present, so the dotprod kernels run).  Binaries
# are linked statically so qemu needs no arm64 library path.
#
# Skips (exit 77) unless aarch64-linux-gnu-gcc, an arm64 liblzma and
# qemu-aarch64 are installed (Debian: gcc-aarch64-linux-gnu
# libc6-dev-arm64-cross qemu-user, and liblzma-dev:arm64 after
# dpkg --add-architecture arm64; .ci/neon does all that).
# Environment: srcdir (set by make check; default: this script's tree),
# CM_SHARED (fixtures; test_model skips without them), CM_NEON_CC (cross
# compiler, e.g. "clang --target=aarch64-linux-gnu"), CM_NEON_KEEP=1 (keep
# the build directory).
set -u
. "$(dirname "$0")/lib.sh"

host=aarch64-linux-gnu
cc=${CM_NEON_CC:-$host-gcc}

command -v "${cc%% *}" >/dev/null 2>&1 || tl_skip "no ${cc%% *} (apt-get install gcc-$host libc6-dev-arm64-cross)"
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static) ||
    tl_skip "no qemu-aarch64 (apt-get install qemu-user)"

srcdir=$(cd "${srcdir:-$TL_SRC}" && pwd) || exit 99
export srcdir # absolute: the tests look for $srcdir/../shared from elsewhere
[ -x "$srcdir/configure" ] || tl_skip "$srcdir/configure missing (run ./bootstrap)"
if [ -n "${CM_SHARED:-}" ]; then
    CM_SHARED=$(cd "$CM_SHARED" 2>/dev/null && pwd) || CM_SHARED=
fi
[ -n "${CM_SHARED:-}" ] || CM_SHARED=$(cd "$srcdir/../shared" 2>/dev/null && pwd) || CM_SHARED=
export CM_SHARED

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cm-neon.XXXXXX") || exit 99
[ "${CM_NEON_KEEP:-0}" = 1 ] && echo "build directory: $tmp" ||
    trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM
# a make check calling us must not lend its jobserver or flags to this build
unset MAKEFLAGS MFLAGS MAKELEVEL CFLAGS CPPFLAGS LDFLAGS LIBS

# configure refuses an out-of-tree build of a tree configured in place; then
# build from a copy of its sources (git's view, plus the bootstrap output).
src=$srcdir
if [ -f "$srcdir/config.status" ]; then
    git -C "$srcdir" rev-parse >/dev/null 2>&1 ||
        tl_skip "$srcdir is configured in place and not a git checkout (make distclean)"
    mkdir "$tmp/src" && src=$tmp/src
    (cd "$srcdir" && { git ls-files -co --exclude-standard; ls -d configure Makefile.in \
        config.h.in aclocal.m4 build-aux; } | tar -cf - -T -) | tar -C "$src" -xf - ||
        { echo "copying $srcdir failed"; exit 99; }
fi

echo "== cross-building for $host with $cc"
mkdir "$tmp/build" && cd "$tmp/build" || exit 99
# configure insists on liblzma (the corpus reader), here an arm64 one
printf '#include <lzma.h>\nint main(void){return lzma_stream_decoder(0,0,0);}\n' >lzma.c
$cc -static lzma.c -o lzma -llzma >/dev/null 2>&1 ||
    tl_skip "no static arm64 liblzma for $cc (Debian: dpkg --add-architecture arm64; apt-get install liblzma-dev:arm64)"
if ! "$src/configure" -q --host=$host CC="$cc" CFLAGS="-O2 -g" LDFLAGS=-static \
        --disable-openmp --without-openblas --without-cuda PKG_CONFIG=false >configure.out 2>&1; then
    cat configure.out config.log
    exit 99
fi
jobs=$(nproc 2>/dev/null || echo 2)
make -j"$jobs" tests/test_quant tests/test_model tests/test_backend >make.out 2>&1 || { cat make.out; exit 99; }
grep -i warning make.out | grep -v "unknown-pragmas" # visible, not fatal

for cpu in cortex-a53 max; do
    echo "== qemu -cpu $cpu: test_quant"
    "$qemu" -cpu $cpu tests/test_quant >quant.$cpu.log 2>&1
    rc=$?
    grep -E "isa |FAIL|PASS" quant.$cpu.log
    # the run must really have covered the NEON table, not only scalar
    if [ $rc -ne 0 ] || ! grep -Eq "^ *isa neon +:.* ok\$" quant.$cpu.log; then
        fail "test_quant under -cpu $cpu (rc $rc)"
    fi
    echo "== qemu -cpu $cpu: test_model"
    "$qemu" -cpu $cpu tests/test_model >model.$cpu.log 2>&1
    rc=$?
    grep -E "^kernels|FAIL|q4_0 vs|PASS|SKIP" model.$cpu.log
    case $rc in
    0) ;;
    77) echo "(test_model skipped: no fixtures; set CM_SHARED)" ;;
    *) fail "test_model under -cpu $cpu (rc $rc)" ;;
    esac
    echo "== qemu -cpu $cpu: test_backend"
    "$qemu" -cpu $cpu tests/test_backend >backend.$cpu.log 2>&1
    rc=$?
    grep -E "^kernels|FAIL|PASS|SKIP" backend.$cpu.log
    grep -q "^kernels: neon" backend.$cpu.log || fail "test_backend under -cpu $cpu: not on NEON"
    case $rc in
    0) ;;
    77) echo "(test_backend: ops tested, models skipped: no fixtures)" ;;
    *) fail "test_backend under -cpu $cpu (rc $rc)" ;;
    esac
done
tl_finish
