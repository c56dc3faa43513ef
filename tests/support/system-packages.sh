#!/usr/bin/env bash
# The system packages the tests start for real: a mosquitto broker, the GStreamer RTSP server (run by
# the system python with python3-gi), openssl for a throwaway CA, systemd-analyze for the unit file,
# and Debian's chromium with its chromedriver, which selenium drives for the web page (tests/support/browser.py).
# Installs what is missing when it can (root, or sudo without a password, on a Debian-like system);
# otherwise says the one command to run, and fails.
set -euo pipefail

packages=(
    mosquitto mosquitto-clients
    gir1.2-gst-rtsp-server-1.0 python3-gi
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly  # jpegdec, x264enc, rtph264pay
    gstreamer1.0-tools
    openssl
    systemd
    chromium chromium-driver  # /usr/bin/chromium, /usr/bin/chromedriver
)

# `make test` builds .venv with this python: Debian's needs python3-venv for that.
python=${PYTHON:-python3}
if ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
    packages+=(python3-venv)
fi

present() {
    "$python" -c "import ensurepip, venv" >/dev/null 2>&1 &&
    command -v mosquitto >/dev/null && command -v mosquitto_sub >/dev/null &&
        command -v openssl >/dev/null && command -v systemd-analyze >/dev/null &&
        command -v gst-inspect-1.0 >/dev/null &&
        gst-inspect-1.0 x264enc >/dev/null 2>&1 && gst-inspect-1.0 rtph264pay >/dev/null 2>&1 &&
        gst-inspect-1.0 jpegdec >/dev/null 2>&1 &&
        /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" >/dev/null 2>&1 &&
        command -v chromium >/dev/null && command -v chromedriver >/dev/null
}

present && exit 0

command="apt-get install -y --no-install-recommends ${packages[*]}"
if ! command -v apt-get >/dev/null; then
    echo "make test: the tests need a mosquitto broker, the GStreamer RTSP server with x264enc, python3-gi," \
        "openssl, systemd-analyze, chromium and chromedriver; install them with this system's package manager" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "make test: system packages missing; run: sudo apt-get update && sudo $command" >&2
    exit 1
fi
echo "make test: installing the system packages the tests start: ${packages[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive $command
present || { echo "make test: the system packages are installed but still not usable; see the output above" >&2; exit 1; }
