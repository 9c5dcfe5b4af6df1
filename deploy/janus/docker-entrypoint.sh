#!/bin/sh
# Start Janus in the foreground with the configuration of deploy/janus/ (copied to
# $JANUS_TEMPLATE_DIR in the image), adjusted from the environment:
#
#   JANUS_HTTP_PORT        port of the HTTP API (default 8088)
#   JANUS_RTP_PORT_RANGE   UDP ports for media, MIN-MAX (default 20000-20999)
#   JANUS_ADMIN_KEY        VideoRoom admin_key, = cam.videoAdminKey (default: none)
#   JANUS_SERVER_NAME      shown in /janus/info (default: the host name)
#   JANUS_NAT_1_1_MAPPING  address to announce in ICE candidates (default: none)
#
# Extra arguments go to janus as they are.
set -eu

templates=${JANUS_TEMPLATE_DIR:-/etc/cam-janus}
conf=${JANUS_CONF_DIR:-/tmp/janus}
port=${JANUS_HTTP_PORT:-8088}
range=${JANUS_RTP_PORT_RANGE:-20000-20999}
key=${JANUS_ADMIN_KEY:-}
name=${JANUS_SERVER_NAME:-$(hostname)}
nat=${JANUS_NAT_1_1_MAPPING:-}

fail() {
    echo "cam-janus: $*" >&2
    exit 2
}

case $port in
    '' | *[!0-9]*) fail "JANUS_HTTP_PORT='$port': expected a port number" ;;
esac
echo "$range" | grep -Eq '^[0-9]+-[0-9]+$' \
    || fail "JANUS_RTP_PORT_RANGE='$range': expected MIN-MAX, e.g. 20000-20199"
echo "$key" | grep -Eq '^[A-Za-z0-9._-]*$' \
    || fail "JANUS_ADMIN_KEY: expected letters, digits, '.', '_' or '-' only"

mkdir -p "$conf"
cp "$templates"/janus.jcfg "$templates"/janus.transport.http.jcfg \
   "$templates"/janus.plugin.videoroom.jcfg "$conf"/
sed -i "s/^\([[:space:]]*port = \).*/\1$port/" "$conf/janus.transport.http.jcfg"
if [ -n "$key" ]; then
    sed -i "s/^\([[:space:]]*admin_key = \).*/\1\"$key\"/" "$conf/janus.plugin.videoroom.jcfg"
else
    echo "cam-janus: no JANUS_ADMIN_KEY: anyone who reaches the API can create rooms" >&2
    sed -i "/^[[:space:]]*admin_key = /d" "$conf/janus.plugin.videoroom.jcfg"
fi
chmod 600 "$conf/janus.plugin.videoroom.jcfg"

# Command-line options override janus.jcfg.
set -- --configs-folder="$conf" --disable-colors --server-name="$name" \
    --rtp-port-range="$range" "$@"
if [ -n "$nat" ]; then
    # Keep the private address too, so containers on the compose network still
    # reach the media directly.
    set -- --nat-1-1="$nat" --keep-private-host "$@"
fi
exec janus "$@"
