#!/usr/bin/env bash
# Screenshot a compare report.html in headless Chromium, to look at the page as a reviewer would.
#   bash benchmarks/screenshot_report.sh runs/compare/report.html [out.png] [height]
# Needs Debian's chromium (apt-get install -y chromium). The page is self-contained, so the browser runs
# with networking off; a fresh profile each run keeps earlier state out of the picture.
set -euo pipefail
html=$(realpath "${1:?usage: screenshot_report.sh REPORT.html [OUT.png] [HEIGHT]}")
out=$(realpath -m "${2:-${html%.html}.png}")
height=${3:-2000}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$out" --window-size=1280,"$height" "file://$html" 2>/dev/null
echo "$out"
