#!/usr/bin/env bash
# `pip install` into a virtual environment, retried when the network drops.
#
#   deploy/pip-install.sh VENV [pip install arguments...]
#
# Large wheels (torch's CUDA builds, TensorFlow) break off mid-download on flaky links; pip resumes an interrupted
# download (--resume-retries) and retries failed connections (--retries), and this script reruns the whole command
# a few times more, waiting longer each time (PIP_INSTALL_ATTEMPTS, default 4; PIP_INSTALL_WAIT_S, the first pause,
# default 30 s), because an outage of a minute outlasts pip's own retries. Wheels already fetched come from pip's
# cache on the next attempt. pip's exit status does not tell a dropped link from a real error, so a package that
# does not exist also costs the pauses (3 minutes by default) before the script gives up with pip's status.
set -uo pipefail
venv="${1:?usage: deploy/pip-install.sh VENV [pip install arguments...]}"
shift
attempts="${PIP_INSTALL_ATTEMPTS:-4}"
options=(--quiet --progress-bar off --retries 10 --timeout 60)
# pip 25.1 and newer resume a broken download; the pip a new venv starts with (before its upgrade) may be older
if "$venv/bin/python" -m pip install --help 2>/dev/null | grep -q -- --resume-retries; then
    options+=(--resume-retries 20)
fi
for attempt in $(seq 1 "$attempts"); do
    "$venv/bin/python" -m pip install "${options[@]}" "$@" && exit 0
    status=$?
    if [ "$attempt" -lt "$attempts" ]; then
        wait_s=$((${PIP_INSTALL_WAIT_S:-30} * attempt))
        echo "pip-install.sh: pip install $* failed (exit $status, attempt $attempt of $attempts); again in ${wait_s}s" >&2
        sleep "$wait_s"
    fi
done
echo "pip-install.sh: pip install $* failed $attempts times; the last exit status was $status" >&2
exit "$status"
