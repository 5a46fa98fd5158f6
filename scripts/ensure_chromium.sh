#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed for the browser tests.
# Idempotent: does nothing when /usr/bin/chromium exists; installs it with apt-get when apt
# is usable (root, or password-less sudo); otherwise prints why and exits 0, and the browser
# tests skip with a clear message.
set -u
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get not found; browser tests will be skipped" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ensure_chromium: not root and no password-less sudo; browser tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure_chromium: installing chromium with apt-get" >&2
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null \
        && "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
if [ -x "$CHROMIUM" ]; then
    echo "ensure_chromium: $("$CHROMIUM" --version 2>/dev/null || echo chromium installed)" >&2
else
    echo "ensure_chromium: chromium could not be installed; browser tests will be skipped" >&2
fi
exit 0
