#!/usr/bin/env bash
# System packages beyond the Python virtualenv: Debian's Chromium, which the browser tests (tests/browser.py,
# Playwright with executable_path) drive instead of a browser Playwright would download, and bubblewrap, the
# sandbox milestone commands run in (quantapilot/sandbox.py; the worker needs it in production too, see
# docs/DEPLOY.md). Called by `make test`; it does nothing when everything is already there, and it only installs
# when it can (Debian's apt as root), so a developer without root still gets a working install: the browser and
# sandbox tests then skip locally (they fail in CI, where CI is set).
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
# prlimit and setpriv (the sandbox's limits and user switch) come with util-linux, present on nearly every system.
command -v prlimit >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing ${missing[*]}; install them with your package manager (apt: ${missing[*]})" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system-deps: installed ${missing[*]}"
