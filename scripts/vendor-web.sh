#!/bin/sh
# Fetch the web app's vendored libraries (pinned versions) into
# services/edge/cam_edge/web/vendor/. Needs npm; runs nothing from the packages.
# To refresh: change a version below, run this script, check the diff, update
# services/edge/cam_edge/web/vendor/README.md.
set -eu

HTM_VERSION=3.1.1
# htm's preact/standalone bundle carries Preact's code; its licence text comes from
# the Preact package (MIT, the same text in every 10.x release).
PREACT_VERSION=10.29.8
# sha256 of htm@3.1.1 preact/standalone.module.js (npm checks the tarball's integrity;
# this catches a changed pin without a README update).
BUNDLE_SHA256=72284e8e9079c87817145df1110f74e8a2aa040b2fc384922e18dfcb46fc1fd7
# The Janus client for conferences, and the WebRTC adapter it is built against (the
# version janus-gateway itself depends on).
JANUS_VERSION=1.4.2
ADAPTER_VERSION=9.0.3

here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/services/edge/cam_edge/web/vendor"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm pack --silent "htm@$HTM_VERSION" >/dev/null
npm pack --silent "preact@$PREACT_VERSION" >/dev/null
npm pack --silent "janus-gateway@$JANUS_VERSION" >/dev/null
npm pack --silent "webrtc-adapter@$ADAPTER_VERSION" >/dev/null
mkdir htm preact janus adapter
tar -xzf "htm-$HTM_VERSION.tgz" -C htm
tar -xzf "preact-$PREACT_VERSION.tgz" -C preact
tar -xzf "janus-gateway-$JANUS_VERSION.tgz" -C janus
tar -xzf "webrtc-adapter-$ADAPTER_VERSION.tgz" -C adapter

mkdir -p "$dest"
cp htm/package/preact/standalone.module.js "$dest/htm-preact-standalone.module.js"
cp htm/package/LICENSE "$dest/LICENSE.htm"
cp preact/package/LICENSE "$dest/LICENSE.preact"
# janus.es.js: the ES module build of janus.js (MIT, in the file's own header; the
# package's COPYING is the GPL of the Janus server, which is not vendored). adapter.js: webrtc-adapter's browser build (BSD-3-Clause), which sets
# window.adapter, the global janus.js reads.
cp janus/package/npm/dist/janus.es.js "$dest/janus.es.js"
cp adapter/package/out/adapter.js "$dest/adapter.js"
cp adapter/package/LICENSE.md "$dest/LICENSE.webrtc-adapter"

# The bundle must stay self-contained: no bare imports, nothing loaded at run time.
if grep -Eq '(^|[;}])import[ {*]|import\(' "$dest/htm-preact-standalone.module.js"; then
    echo "vendor-web: $dest/htm-preact-standalone.module.js imports other modules" >&2
    exit 1
fi
sum=$(sha256sum "$dest/htm-preact-standalone.module.js" | cut -d' ' -f1)
if [ "$sum" != "$BUNDLE_SHA256" ]; then
    echo "vendor-web: unexpected sha256 $sum of the bundle; check it, then update BUNDLE_SHA256" >&2
    exit 1
fi
for lib in janus.es.js adapter.js; do
    if grep -Eq '(^|[;}])import[ {*]|import\(' "$dest/$lib"; then
        echo "vendor-web: $dest/$lib imports other modules" >&2
        exit 1
    fi
done
echo "vendored janus-gateway $JANUS_VERSION (janus.es.js) and webrtc-adapter $ADAPTER_VERSION (adapter.js)"
echo "vendored htm $HTM_VERSION (preact/standalone) and Preact's licence ($PREACT_VERSION) into $dest"
