#!/usr/bin/env bash
# Run a command with tcmalloc preloaded (Debian's libtcmalloc-minimal4, which `scripts/dev.sh setup` installs where
# it can), or as it is where tcmalloc is not installed or DIGITS_MALLOC=glibc. The train stage runs under it: its
# epochs are 1.15× (AVX-512) to 1.20× (AVX2 kernels) faster than with glibc's malloc keeping freed memory
# (python benchmarks/train_speed.py, docs/benchmarks.md). metrics/train.json records which allocator ran.
lib=$(compgen -G '/usr/lib/*/libtcmalloc_minimal.so.4' | head -n 1)
if [[ -n $lib && ${DIGITS_MALLOC:-tcmalloc} != glibc ]]; then
    export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec "$@"
