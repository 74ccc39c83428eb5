#!/usr/bin/env bash
# Run a command up to three times, 30 s and then 60 s apart, until it succeeds; its status is that of the last try.
# Set-up wraps every registry download in it (scripts/dev.sh, .ci/run): a download can break off mid-file and stay
# broken (PyTorch and its CUDA wheels are several GB), and pip or apt-get give up after resuming a few times at once.
for try in 1 2 3; do
    "$@" && exit 0
    status=$?
    ((try < 3)) && { echo "try $try of 3 failed: $*; again in $((30 * try)) s" >&2; sleep $((30 * try)); }
done
echo "failed 3 times: $*" >&2
exit "$status"
