#!/usr/bin/env bash
# Run a command with tcmalloc preloaded (Debian's libtcmalloc-minimal4, which `scripts/dev.sh setup` installs where
# it can), or as it is where tcmalloc is not installed or DIGITS_MALLOC=glibc. The train stage runs under it: its
# epochs ran faster than with glibc's malloc keeping freed memory in every measurement on this project's hosts
# (python benchmarks/train_speed.py; figures and machine classes in docs/benchmarks.md). metrics/train.json records
# which allocator ran.
lib=$(compgen -G '/usr/lib/*/libtcmalloc_minimal.so.4' | head -n 1)
if [[ -n $lib && ${DIGITS_MALLOC:-tcmalloc} != glibc ]]; then
    export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec "$@"
