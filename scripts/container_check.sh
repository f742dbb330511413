#!/usr/bin/env bash
# Build the `speechtune serve` image from ./Containerfile and check it end to end, with no container registry:
#
#   1. podman, runc and debootstrap (apt-get, if missing) and a containers.conf for this sandbox;
#   2. a base image, localhost/speechtune-base: a minimal Debian (the host's release and mirror) with
#      python3 + python3-venv, made with debootstrap and `podman import` (once; kept for later runs);
#   3. the image, `podman build --build-arg BASE=localhost/speechtune-base` (pip reaches PyPI; torch is the
#      CPU build: a local CPU wheel if the host has one, else PyTorch's CPU index);
#   4. tiny.en exported to CTranslate2 with the host's .venv, mounted read-only at /model;
#   5. the container started (non-root, --read-only, port and API key from -e), /health polled until ready,
#      the image's HEALTHCHECK run, one transcription through the `openai` client, a wrong key refused,
#      then stopped with SIGTERM and removed;
#   6. the same with --network none (no network at all), queried from inside with `podman exec`.
#
# Prints the timings, the image size and the transcription; exits non-zero on any failure. Idempotent:
# run it again and the base is reused and the build comes from podman's layer cache.
# Needs root (rootful podman, apt-get) and the project's .venv (`make install`). Took 22 minutes from
# nothing on 2 busy cores (base 3.5 min, image 14 min), 16 minutes again after a change under src/ (the
# dependencies are reinstalled). Not part of `make test`. Figures and output: docs/deploy.md, "Container".
#
# Environment: IMAGE (localhost/speechtune:check), BASE_IMAGE (localhost/speechtune-base:latest),
# REBUILD_BASE=1 (make the base again), MIRROR / SUITE (debootstrap's; default: the host's apt sources),
# TORCH (torch==2.13.0), TORCH_WHEELS (folder with a CPU torch wheel; default /opt/wheels if it has one),
# PIP_CA_BUNDLE (CA file for pip in the build; default: pip's configured cert, else the system bundle),
# STATE_DIR (/var/tmp/speechtune-container: the base rootfs while it is made, containers.conf).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${IMAGE:-localhost/speechtune:check}
BASE_IMAGE=${BASE_IMAGE:-localhost/speechtune-base:latest}
STATE_DIR=${STATE_DIR:-/var/tmp/speechtune-container}
TORCH=${TORCH:-torch==2.13.0}
VENV=$ROOT/.venv
SENTENCE="Please schedule the meeting for tomorrow morning."  # tiny.en gets it word for word (tests/test_e2e_models.py)
EXPECTED="please schedule the meeting for tomorrow morning"
NICE=(nice -n 19)

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'container_check: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

[ "$(id -u)" = 0 ] || die "run as root: rootful podman and apt-get"
[ -x "$VENV/bin/speechtune" ] || die "no $VENV/bin/speechtune: run 'make install' first"
"$VENV/bin/python" -c "import openai" 2>/dev/null || die "the openai client is missing from .venv: pip install -e '.[test]'"

# --- 1. tools -------------------------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do command -v "$tool" > /dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    "${NICE[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${NICE[@]}" apt-get install -y -qq "${missing[@]}" > /dev/null
fi
mkdir -p "$STATE_DIR"
# This sandbox refuses podman's default ulimits; a config of our own, so /etc/containers is left alone.
printf '[containers]\ndefault_ulimits = []\n' > "$STATE_DIR/containers.conf"
export CONTAINERS_CONF=$STATE_DIR/containers.conf
PODMAN=(podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs)

CIDS=()
WORK=$(mktemp -d /tmp/speechtune-container-check.XXXXXX)
cleanup() {
    for c in "${CIDS[@]}"; do "${PODMAN[@]}" rm -f -t 5 "$c" > /dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 2. base image --------------------------------------------------------------------------------------
host_mirror() {  # the first Debian/Ubuntu archive URI in the host's apt sources (deb822 or one-line)
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk 'tolower($1)=="uris:" && $2 !~ /security/ {print $2; exit}' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    echo http://deb.debian.org/debian
}

base_s=reused
if [ "${REBUILD_BASE:-0}" = 1 ] || ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    MIRROR=${MIRROR:-$(host_mirror)}
    SUITE=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")}
    say "base image $BASE_IMAGE: debootstrap $SUITE from $MIRROR"
    t=$(now)
    rootfs=$STATE_DIR/rootfs
    rm -rf "$rootfs"
    "${NICE[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR" > "$STATE_DIR/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE_DIR/debootstrap.log" >&2; die "debootstrap (log: $STATE_DIR/debootstrap.log)"; }
    # What a slim image leaves out: package caches and lists, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* 2>/dev/null || true
    "${NICE[@]}" tar -C "$rootfs" --numeric-owner -c . | "${NICE[@]}" "${PODMAN[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "minimal Debian $SUITE with python3 (debootstrap, $MIRROR)" - "$BASE_IMAGE" > /dev/null
    rm -rf "$rootfs"
    base_s=$(since "$t")
fi
base_size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$BASE_IMAGE")
base_py=$("${PODMAN[@]}" run --rm --network none "$BASE_IMAGE" python3 -c \
    'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

# --- 3. the image ---------------------------------------------------------------------------------------
build_args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "TORCH=$TORCH")
wheels=${TORCH_WHEELS:-/opt/wheels}
version=${TORCH#torch==}
if [ -d "$wheels" ] && ls "$wheels"/torch-"$version"+cpu-"$base_py"-*.whl > /dev/null 2>&1; then
    # A CPU wheel on this machine: PyTorch's own index is not reachable from here, and PyPI's wheel is
    # the CUDA build (about 3 GB more). torch==X matches X+cpu, which the folder offers.
    build_args+=(--volume "$(cd "$wheels" && pwd):/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels
                 --build-arg TORCH_INDEX= --build-arg "TORCH=torch==$version+cpu")
    torch_from="$wheels (local CPU wheel)"
else
    torch_from="PyTorch's CPU index (Containerfile default)"
fi
# pip inside the build checks TLS against the host's CA bundle (which knows any inspecting proxy's CA).
ca=${PIP_CA_BUNDLE:-${PIP_CERT:-$("$VENV/bin/pip" config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)}}
if [ -f "$ca" ]; then
    build_args+=(--volume "$(readlink -f "$ca"):/run/host-ca.pem:ro" --build-arg PIP_CA_BUNDLE=/run/host-ca.pem)
fi
say "building $IMAGE from Containerfile (base $BASE_IMAGE, $base_py; torch from $torch_from)"
old_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2> /dev/null || true)
t=$(now)
"${NICE[@]}" "${PODMAN[@]}" build --format docker --network host "${build_args[@]}" \
    -f Containerfile -t "$IMAGE" . > "$STATE_DIR/build.log" 2>&1 \
    || { tail -30 "$STATE_DIR/build.log" >&2; die "podman build (log: $STATE_DIR/build.log)"; }
build_s=$(since "$t")
new_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")
# vfs keeps a full copy per layer (about 2 GB an image): drop the image this build replaced, and build
# stages no longer tagged (not the ones still holding cached layers: those refuse, and stay).
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then "${PODMAN[@]}" rmi "$old_id" > /dev/null 2>&1 || true; fi
stages=$("${PODMAN[@]}" images -q --no-trunc --filter dangling=true --filter label=org.speechtune.stage=build)
if [ -n "$stages" ]; then
    # shellcheck disable=SC2086
    "${PODMAN[@]}" image inspect --format '{{.Created.Unix}} {{.Id}}' $stages | sort -rn | tail -n +2 \
        | while read -r _ id; do "${PODMAN[@]}" rmi "$id" > /dev/null 2>&1 || true; done
fi
image_size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
torch_line=$(grep -a '^torch ' "$STATE_DIR/build.log" | tail -1 || true)

# --- 4. an export and a clip ----------------------------------------------------------------------------
say "exporting tiny.en to CTranslate2 (host .venv)"
t=$(now)
HF_HUB_OFFLINE=1 "${NICE[@]}" "$VENV/bin/speechtune" export tiny.en --format ct2 --out "$WORK/export" > "$WORK/export.log" 2>&1 \
    || { cat "$WORK/export.log" >&2; die "speechtune export"; }
export_s=$(since "$t")
chmod -R a+rX "$WORK"  # the container's user (uid 10001) reads the mount
"$VENV/bin/python" - "$WORK/clip.wav" "$SENTENCE" <<'EOF'
import sys
import soundfile as sf
from speechtune.synth import speak
sf.write(sys.argv[1], speak(sys.argv[2]), 16000)
EOF

normalise() { python3 -c "import re, sys; print(' '.join(re.sub(r'[^a-z ]', ' ', sys.stdin.read().lower()).split()))"; }

wait_healthy() {  # $1 container, $2 command that exits 0 once /health is 200; prints seconds
    local c=$1 t0; shift
    t0=$(now)
    while [ "$(since "$t0" | cut -d. -f1)" -lt 300 ]; do
        [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$c")" = true ] \
            || { "${PODMAN[@]}" logs "$c" >&2; die "container $c exited before it was ready"; }
        if "$@" > /dev/null 2>&1; then since "$t0"; return; fi
        sleep 0.2
    done
    "${PODMAN[@]}" logs "$c" >&2; die "container $c not ready after 300 s"
}

stop_container() {  # SIGTERM, then the exit code must be 0 (graceful)
    local c=$1 code t0
    t0=$(now)
    "${PODMAN[@]}" stop -t 30 "$c" > /dev/null 2>&1
    stop_s=$(since "$t0")
    code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$c")
    [ "$code" = 0 ] || { "${PODMAN[@]}" logs "$c" >&2; die "container $c exited with $code after SIGTERM"; }
    "${PODMAN[@]}" rm "$c" > /dev/null
}

# --- 5. run it, reach it from the host ------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY=check-$RANDOM$RANDOM
URL=http://127.0.0.1:$PORT
say "running $IMAGE on $URL (--network host, --read-only, /model read-only)"
# Created, then started: with vfs, creating copies the image's whole filesystem (about 2 GB), which is
# storage work, not start-up. (Without systemd, podman 4.3 logs that it cannot time the HEALTHCHECK: that
# goes to run.err; `podman healthcheck run` below runs it.)
t=$(now)
cid=$("${PODMAN[@]}" create --name "speechtune-check-$$" --network host --read-only \
    -e HOST=127.0.0.1 -e PORT="$PORT" -e SPEECHTUNE_API_KEY="$KEY" -v "$WORK/export:/model:ro" "$IMAGE" \
    2> "$WORK/run.err") || { cat "$WORK/run.err" >&2; die "podman create"; }
CIDS+=("$cid")
create_s=$(since "$t")
t=$(now)
"${PODMAN[@]}" start "$cid" > /dev/null 2>> "$WORK/run.err" || { cat "$WORK/run.err" >&2; die "podman start"; }
health() { python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$URL"; }
wait_healthy "$cid" health > /dev/null
healthy_s=$(since "$t")
health_json=$(python3 -c "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1] + '/health').read().decode())" "$URL")
"${PODMAN[@]}" healthcheck run "$cid" > /dev/null || die "the image's HEALTHCHECK failed on a ready server"
user=$("${PODMAN[@]}" exec "$cid" id -un)
[ "$user" != root ] || die "the server runs as root"
"${PODMAN[@]}" exec "$cid" sh -c 'touch /model/x' 2> /dev/null && die "/model is writable"

read -r latency_s latency2_s text < <("$VENV/bin/python" - "$URL" "$KEY" "$WORK/clip.wav" <<'EOF'
import sys, time
import openai
url, key, clip = sys.argv[1:]
client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
latency = []
for _ in range(2):  # the first request also warms the model up
    t = time.perf_counter()
    with open(clip, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f).text
    latency.append(f"{time.perf_counter() - t:.2f}")
try:
    with open(clip, "rb") as f:
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).audio.transcriptions.create(
            model="whisper-1", file=f)
    sys.exit("a wrong API key was accepted")
except openai.AuthenticationError:
    pass
print(*latency, text.replace("\n", " "))
EOF
) || die "transcription through the openai client"
[ "$(normalise <<< "$text")" = "$EXPECTED" ] || die "transcribed '$text', expected '$EXPECTED'"
stop_container "$cid"
stop1_s=$stop_s

# --- 6. again with no network at all --------------------------------------------------------------------
say "running $IMAGE with --network none (queried from inside with podman exec)"
cid=$("${PODMAN[@]}" create --name "speechtune-offline-$$" --network none --read-only \
    -v "$WORK/export:/model:ro" "$IMAGE" 2> "$WORK/run.err") || { cat "$WORK/run.err" >&2; die "podman create"; }
CIDS+=("$cid")
t=$(now)
"${PODMAN[@]}" start "$cid" > /dev/null 2>> "$WORK/run.err" || { cat "$WORK/run.err" >&2; die "podman start"; }
wait_healthy "$cid" "${PODMAN[@]}" exec "$cid" python -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)" > /dev/null
offline_healthy_s=$(since "$t")
offline_text=$("${PODMAN[@]}" exec -i "$cid" python -c '
import sys, httpx
r = httpx.post("http://127.0.0.1:8000/v1/audio/transcriptions", files={"file": ("clip.wav", sys.stdin.buffer.read())},
               data={"model": "whisper-1"}, timeout=120)
r.raise_for_status()
print(r.json()["text"])' < "$WORK/clip.wav") || die "transcription with --network none"
[ "$(normalise <<< "$offline_text")" = "$EXPECTED" ] || die "offline: transcribed '$offline_text'"
stop_container "$cid"

mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:.0f} MB')" "$1"; }
cat <<EOF

container_check: OK
  base image          $BASE_IMAGE, $(mb "$base_size"), built in ${base_s}$([ "$base_s" = reused ] || echo ' s')
  image build         ${build_s} s ($torch_line, from $torch_from)
  image size          $IMAGE, $(mb "$image_size")
  export tiny.en ct2  ${export_s} s (host .venv)
  create container    ${create_s} s (vfs copies the image's files)
  start to healthy    ${healthy_s} s (--network host); ${offline_healthy_s} s (--network none, polled by podman exec)
  health              $health_json
  runs as             $user, /model read-only, root filesystem read-only
  transcription       "$text" (openai client, $("$VENV/bin/python" -c "import soundfile, sys; print(f'{soundfile.info(sys.argv[1]).duration:.1f}')" "$WORK/clip.wav") s clip)
  latency             ${latency_s} s first request, ${latency2_s} s second (load average $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores)
  offline             "$offline_text" (--network none, via podman exec)
  stop (SIGTERM)      ${stop1_s} s / ${stop_s} s, exit code 0
EOF
