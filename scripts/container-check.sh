#!/usr/bin/env bash
# scripts/container-check.sh: build the mae-hub image for real and drive it, before a release.
#
# Not part of CI (two cores and a time budget there): run it by hand on a machine with a
# container engine, from anywhere in the checkout:  sudo scripts/container-check.sh
# From nothing (no dockerd running, no image, no cache) it took 3 min 53 s on a 2-core
# Debian bookworm machine with Debian's docker.io 20.10, on 2026-12-02: 1 min for the base
# image, 2 to 3 min for the build (the CUDA torch), 1 min of checks. docs/deploy.md,
# section 8 ("The image, built and run"), has the figures.
#
# What it does, in order; any failure stops it with a non-zero exit:
#   1. finds a docker CLI whose `docker build` uses BuildKit (the Dockerfile's RUN --mount),
#      and starts dockerd itself when none answers (stopped again at the end);
#   2. the base image (BASE_IMAGE, default mae-base:bookworm) when missing: a minimal
#      Debian bookworm made with debootstrap (Debian's python3.11 with venv and pip),
#      imported with `docker import`, since no registry has to be reachable;
#   3. a wheelhouse: the host's pip downloads every wheel the image installs (the torch
#      pins of scripts/install.sh, the package's dependencies, pip, setuptools, wheel) with
#      the host's own pip settings, then serves it as a PEP 503 index on the docker bridge,
#      handed to the build as --build-arg PIP_INDEX_URL (the build itself needs no network
#      beyond this host);
#   4. builds the Dockerfile's TARGET (default cuda) as IMAGE, and times it;
#   5. one container (-p 127.0.0.1:PORT:8000, the baked-in model, no mount): time to /ready,
#      an embedding of a real photo (its length is the model's width), a reconstruction
#      as a PNG, the HEALTHCHECK turning healthy, the uid, then SIGTERM (docker stop)
#      with large requests in flight: they all finish, the process exits 0;
#   6. two replicas as docker/compose.yaml runs them (its environment, the checkout's
#      models/ read-only, its stop_grace_period) behind docker/nginx/mae.conf in the
#      host's nginx (only the `server` and `listen` lines changed, as
#      tests/service/test_proxy.py does: Debian's nginx predates `resolve`, and no nginx
#      image can be pulled), 4 clients sending embeddings all along: both serve; replica A
#      is killed (docker kill); nothing started after the kill fails; A rejoins after
#      `docker start`; replica B is stopped (docker stop, SIGTERM) and nothing fails;
#   7. prints a summary. Containers, nginx, the wheel server and the work folder go away at
#      the end; the images stay (CLEAN=1 removes them and the build cache too).
#
# Needs: root (debootstrap; dockerd when it is not running), Debian's docker.io (or any
# Docker with buildx), debootstrap (only while the base image is missing), nginx, curl, ip,
# and a Python 3 with pip for the base image's Python version (the checkout's .venv).
#
# Settings (environment):
#   TARGET=cuda|cpu     the Dockerfile target. cpu takes torch from download.pytorch.org
#                       (the venv-cpu stage), so it needs WHEELS=pypi and that host
#   IMAGE               tag to build (default mae-hub:$TARGET)
#   BASE_IMAGE          the Dockerfile's PYTHON_IMAGE (default mae-base:bookworm, made here
#                       when missing; python:3.11-slim-bookworm where a registry is reachable)
#   DEBIAN_MIRROR       for debootstrap (default http://deb.debian.org/debian)
#   WHEELS=local|pypi   local: the wheelhouse of step 3; pypi: the build's own index
#   PIP_PYTHON          the Python whose pip fills the wheelhouse (default .venv/bin/python)
#   DOCKER              the docker CLI to use (default: the first fit among docker, /usr/bin/docker)
#   CLEAN=1             remove IMAGE, BASE_IMAGE (when made here) and the build cache at the end
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${TARGET:-cuda}
IMAGE=${IMAGE:-mae-hub:$TARGET}
BASE_IMAGE=${BASE_IMAGE:-mae-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WHEELS=${WHEELS:-local}
PHOTO=${PHOTO:-$ROOT/service/static/samples/cat.jpg}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
PREFIX=mae-check  # container names
WORK=$(mktemp -d -p "${TMPDIR:-/var/tmp}" mae-container-check.XXXXXX)
SUMMARY=()
STARTED=$(date +%s)

log() { printf '\n== %s\n' "$*"; }
die() { printf 'container-check: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
summary() { SUMMARY+=("$*"); printf '   %s\n' "$*"; }

# -- cleanup: only what this run started ----------------------------------------------------
DOCKERD_PID="" HTTP_PID="" NGINX_PID="" BASE_MADE=""
cleanup() {
  local rc=$?
  set +e
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  [[ -n $HTTP_PID ]] && kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
  if [[ -n ${DOCKER_CMD:-} ]] && "$DOCKER_CMD" info >/dev/null 2>&1; then
    for c in $("$DOCKER_CMD" ps -aq --filter "name=^$PREFIX-"); do
      "$DOCKER_CMD" rm -f "$c" >/dev/null
    done
    if [[ ${CLEAN:-0} == 1 ]]; then
      "$DOCKER_CMD" rmi "$IMAGE" >/dev/null 2>&1
      [[ -n $BASE_MADE ]] && "$DOCKER_CMD" rmi "$BASE_IMAGE" >/dev/null 2>&1
      "$DOCKER_CMD" builder prune -af >/dev/null 2>&1
    fi
  fi
  if [[ -n $DOCKERD_PID ]]; then
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -rf "$WORK"
  if [[ $rc == 0 ]]; then
    printf '\ncontainer-check: all checks passed in %ss\n' "$(( $(date +%s) - STARTED ))"
  else
    printf '\ncontainer-check: FAILED (exit %s) after %ss\n' "$rc" "$(( $(date +%s) - STARTED ))" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -f $PHOTO ]] || die "no photo at $PHOTO"
[[ $TARGET == cuda || $TARGET == cpu ]] || die "TARGET must be cuda or cpu"
[[ $TARGET == cpu && $WHEELS == local ]] &&
  die "TARGET=cpu installs torch from download.pytorch.org (the venv-cpu stage): use WHEELS=pypi on a host that reaches it"
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"

# -- 1. docker ------------------------------------------------------------------------------
log "docker"
pick_docker() {
  local c major
  for c in ${DOCKER:-} docker /usr/bin/docker; do
    command -v "$c" >/dev/null || continue
    if "$c" buildx version >/dev/null 2>&1; then
      DOCKER_CMD=$c BUILD=("$c" build)
      return
    fi
    # Before Docker 23, `docker build` runs BuildKit inside dockerd when asked to.
    major=$("$c" --version | sed -nE 's/^Docker version ([0-9]+)\..*/\1/p')
    if [[ -n $major && $major -lt 23 ]]; then
      DOCKER_CMD=$c BUILD=(env DOCKER_BUILDKIT=1 "$c" build)
      return
    fi
  done
  die "no docker CLI that builds with BuildKit: install docker.io (Debian) or docker-buildx"
}
pick_docker
if ! "$DOCKER_CMD" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || die "no Docker daemon answers and dockerd is missing (apt-get install docker.io)"
  [[ $(id -u) == 0 ]] || die "no Docker daemon answers; start one, or run this as root"
  echo "starting dockerd (storage driver ${DOCKERD_STORAGE_DRIVER:-overlay2}), log $WORK/dockerd.log"
  dockerd --storage-driver="${DOCKERD_STORAGE_DRIVER:-overlay2}" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do "$DOCKER_CMD" info >/dev/null 2>&1 && break; sleep 0.5; done
  "$DOCKER_CMD" info >/dev/null 2>&1 ||
    { tail -20 "$WORK/dockerd.log"; die "dockerd did not start (try DOCKERD_STORAGE_DRIVER=vfs)"; }
fi
docker() { "$DOCKER_CMD" "$@"; }
ENGINE="docker $(docker version -f '{{.Server.Version}}'), storage driver $(docker info -f '{{.Driver}}')"
echo "CLI $DOCKER_CMD ($("$DOCKER_CMD" --version)); engine $ENGINE"
# The bridge's address on this host: what a build step reaches the wheel server at.
GATEWAY=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
if [[ -z $GATEWAY ]]; then  # dockerd chose the subnet itself: ask the bridge interface
  bridge=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
  GATEWAY=$(ip -4 -o addr show dev "${bridge:-docker0}" | awk '{ sub("/.*", "", $4); print $4; exit }')
fi

# -- 2. the base image ----------------------------------------------------------------------
log "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "present"
elif [[ $BASE_IMAGE == mae-base:* ]]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  [[ $(id -u) == 0 ]] || die "debootstrap needs root"
  t0=$(now)
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,netbase \
    bookworm "$WORK/root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  rm -rf "$WORK"/root/var/cache/apt/archives/*.deb "$WORK"/root/var/lib/apt/lists/*
  tar -C "$WORK/root" -c . |
    docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/root"
  BASE_MADE=1
  summary "base image: $BASE_IMAGE made with debootstrap in $(since "$t0") s"
else
  echo "not here: the build pulls it"
fi
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  BASE_PY=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  echo "its python3 is $BASE_PY"
fi

# -- 3. the wheels --------------------------------------------------------------------------
BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$BASE_IMAGE")
if [[ $WHEELS == local ]]; then
  log "wheelhouse"
  PIP_PYTHON=${PIP_PYTHON:-$ROOT/.venv/bin/python}
  [[ -x $PIP_PYTHON ]] || PIP_PYTHON=$(command -v python3.11 || command -v python3)
  host_py=$("$PIP_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ -z ${BASE_PY:-} || $host_py == "$BASE_PY" ]] ||
    die "PIP_PYTHON is Python $host_py, the base image has $BASE_PY: the wheels would not fit"
  read -r -a pins <<<"$(sed -nE 's/^TORCH_PINS=\((.*)\)$/\1/p' "$ROOT/scripts/install.sh")"
  [[ ${#pins[@]} -gt 0 ]] || die "no TORCH_PINS in scripts/install.sh"
  t0=$(now)
  if ! "$PIP_PYTHON" -m pip download --quiet --dest "$WORK/wheels" \
    pip setuptools wheel "${pins[@]}" "$ROOT" >"$WORK/pip.log" 2>&1; then
    grep -v 'is ignored: it is neither' "$WORK/pip.log" | tail -20
    die "pip download failed"
  fi
  "$PIP_PYTHON" - "$WORK/wheels" <<'EOF'
"""A PEP 503 index (simple/<project>/index.html) over a folder of wheels."""
import html
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
projects: dict[str, list[str]] = {}
for f in sorted(root.iterdir()):
    if f.name.endswith(".whl"):
        name = re.sub(r"[-_.]+", "-", f.name.split("-")[0]).lower()
    elif f.name.endswith((".tar.gz", ".zip")):
        name = re.sub(r"[-_.]+", "-", f.name.rsplit("-", 1)[0]).lower()
    else:
        continue
    projects.setdefault(name, []).append(f.name)
for name, files in projects.items():
    (root / "simple" / name).mkdir(parents=True)
    links = "".join(f'<a href="../../{html.escape(f)}">{html.escape(f)}</a><br>\n' for f in files)
    (root / "simple" / name / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
print(f"{sum(map(len, projects.values()))} files, {len(projects)} projects")
EOF
  WHEEL_MB=$(du -sm "$WORK/wheels" | cut -f1)
  summary "wheelhouse: $(find "$WORK/wheels" -maxdepth 1 -name '*.whl' | wc -l) wheels, $WHEEL_MB MB, in $(since "$t0") s (${pins[*]})"
  port=$(free_port)
  (cd "$WORK/wheels" && exec python3 -m http.server "$port" --bind "$GATEWAY") >"$WORK/http.log" 2>&1 &
  HTTP_PID=$!
  for _ in $(seq 20); do curl -fs -o /dev/null "http://$GATEWAY:$port/simple/" && break; sleep 0.25; done
  curl -fsS -o /dev/null "http://$GATEWAY:$port/simple/" ||
    { cat "$WORK/http.log"; die "the wheel server on $GATEWAY:$port did not start"; }
  BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=http://$GATEWAY:$port/simple"
    --build-arg "PIP_TRUSTED_HOST=$GATEWAY")
  echo "served on http://$GATEWAY:$port/simple for the build"
fi

# -- 4. build -------------------------------------------------------------------------------
log "build $IMAGE (target $TARGET)"
t0=$(now)
if ! "${BUILD[@]}" --progress=plain --target "$TARGET" "${BUILD_ARGS[@]}" -t "$IMAGE" "$ROOT" \
  >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log"
  die "docker build failed"
fi
BUILD_S=$(since "$t0")
grep -E 'installed into /opt/mae' "$WORK/build.log" | sed -E 's/^#[0-9]+ [0-9.]+ /   /' || true
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.2f GB", $1 / 1e9 }')
summary "build: $IMAGE, target $TARGET, in ${BUILD_S} s; image $SIZE"
if [[ -n $HTTP_PID ]]; then
  kill "$HTTP_PID"
  wait "$HTTP_PID" 2>/dev/null || true  # 143: the TERM just sent
  HTTP_PID=""
fi
rm -rf "$WORK/wheels"

# -- the checks' client (standard library only) ---------------------------------------------
cat >"$WORK/check.py" <<'EOF'
"""Drives the containers: `single` and `replicas` (see scripts/container-check.sh)."""

import base64
import http.client
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

DOCKER = os.environ["DOCKER_CMD"]
PHOTO = open(os.environ["PHOTO"], "rb").read()
PHOTO_B64 = base64.b64encode(PHOTO).decode()
FIGURES = open(os.environ["FIGURES"], "a")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for 127.0.0.1
failed: list[str] = []


def check(ok: bool, what: str) -> bool:
    print(f"   {'ok  ' if ok else 'FAIL'}  {what}", flush=True)
    if not ok:
        failed.append(what)
    return ok


def figure(line: str) -> None:
    FIGURES.write(line + "\n")
    FIGURES.flush()


def request(method, url, body=None, headers=None, timeout=60):
    """(status, headers, body); status None when the connection failed."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except (OSError, http.client.HTTPException) as e:
        return None, None, repr(e).encode()


def docker(*args: str, check_rc: bool = True) -> str:
    out = subprocess.run([DOCKER, *args], capture_output=True, text=True)
    if check_rc and out.returncode:
        raise SystemExit(f"docker {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def wait_for(cond, timeout: float, step: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def ready(url: str) -> bool:
    return request("GET", f"{url}/ready", timeout=3)[0] == 200


def metric(url: str, name: str, **labels: str) -> float:
    status, _, body = request("GET", f"{url}/metrics", timeout=5)
    if status != 200:
        return math.nan
    total = 0.0
    for line in body.decode().splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def served(url: str) -> float:
    return metric(url, "mae_requests_total", route="/v1/embeddings", status="200")


def embed(url: str, images: int = 1, timeout: float = 60):
    body = json.dumps({"input": [PHOTO_B64] * images}).encode()
    headers = {"Content-Type": "application/json"}
    return request("POST", f"{url}/v1/embeddings", body, headers, timeout)


def multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def exit_code(name: str) -> int:
    return int(docker("inspect", "-f", "{{.State.ExitCode}}", name))


def single(url: str, name: str, t0: float, grace: str) -> None:
    """One container: ready, an embedding, a reconstruction, health, uid, SIGTERM drain."""
    ok = wait_for(lambda: ready(url), 300, 0.2)
    took = time.time() - float(t0)
    check(ok, f"/ready is 200, {took:.1f} s after `docker run`")
    figure(f"time to /ready (docker run to 200): {took:.1f} s")
    if not ok:
        print(docker("logs", "--tail", "30", name, check_rc=False))
        return
    status, _, body = request("GET", f"{url}/v1/models")
    (card,) = json.loads(body)["data"]
    width = card["embed_dim"]
    print(f"   serving {card['id']} on {card['device']}, {card['dtype']}, width {width}")

    status, _, body = embed(url)
    vector = json.loads(body)["data"][0]["embedding"] if status == 200 else []
    norm = math.sqrt(sum(x * x for x in vector))
    check(
        status == 200 and len(vector) == width and abs(norm - 1) < 1e-3,
        f"POST /v1/embeddings ({os.path.basename(os.environ['PHOTO'])}, {len(PHOTO)} bytes): "
        f"{status}, {len(vector)} numbers (model width {width}), norm {norm:.4f}",
    )
    body, ctype = multipart({"seed": "0", "mask_ratio": "0.75"}, "photo.jpg", PHOTO)
    status, headers, png = request(
        "POST", f"{url}/v1/reconstructions", body, {"Content-Type": ctype, "Accept": "image/png"}
    )
    is_png = png.startswith(b"\x89PNG\r\n\x1a\n")
    check(
        status == 200
        and headers["Content-Type"] == "image/png"
        and is_png
        and headers["X-MAE-Seed"] == "0",
        f"POST /v1/reconstructions (Accept: image/png): {status}, "
        f"{headers['Content-Type'] if headers else None}, a PNG of {len(png)} bytes: {is_png}, "
        f"loss {headers['X-MAE-Loss'] if headers else None}",
    )
    health = lambda: docker("inspect", "-f", "{{.State.Health.Status}}", name)  # noqa: E731
    check(wait_for(lambda: health() == "healthy", 60, 1), f"HEALTHCHECK: {health()}")
    uid = docker("exec", name, "id", "-u")
    check(uid == "10001", f"runs as uid {uid}")

    # SIGTERM with large requests inside: each finishes, then the process exits 0.
    results: list[int | None] = []
    big = lambda: results.append(embed(url, images=64, timeout=90)[0])  # noqa: E731
    threads = [threading.Thread(target=big) for _ in range(4)]
    for t in threads:
        t.start()
    inside = wait_for(lambda: metric(url, "mae_queue_images") > 0, 20, 0.05)
    t_stop = time.monotonic()
    docker("stop", "-t", grace, name)
    stop_s = time.monotonic() - t_stop
    for t in threads:
        t.join(90)
    code = exit_code(name)
    check(
        inside and results == [200] * 4 and code == 0,
        f"docker stop (SIGTERM) with 4 requests of 64 images inside: answers {results}, "
        f"exit code {code}, stopped in {stop_s:.1f} s",
    )
    figure(
        f"SIGTERM drain: 4 requests of 64 images in flight, all 200, exit {code}, {stop_s:.1f} s"
    )


class Traffic:
    """Clients posting one embedding request after another through the proxy."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url, self.results = url, []  # (start, end, status)
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            status, _, body = embed(self.url)
            if status == 200 and not json.loads(body)["data"][0]["embedding"]:
                status = "empty"
            self.results.append((t0, time.monotonic(), status))

    def __enter__(self):
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(60)

    def count(self) -> int:
        return len(self.results)

    def failures(self, after: float = 0.0) -> list:
        return [r for r in self.results if r[2] != 200 and r[0] >= after]

    def in_flight_at(self, moment: float) -> int:
        return sum(1 for t0, t1, _ in self.results if t0 <= moment <= t1)

    def more(self, n: int, timeout: float = 90) -> bool:
        target = self.count() + n
        return wait_for(lambda: self.count() >= target, timeout)


def replicas(proxy: str, a_url: str, a: str, b_url: str, b: str, grace: str) -> None:
    check(request("GET", f"{proxy}/metrics")[0] == 404, "the proxy does not publish /metrics")
    with Traffic(proxy) as traffic:
        ok = wait_for(lambda: served(a_url) >= 10 and served(b_url) >= 10, 60)
        check(
            ok and not traffic.failures(),
            f"both replicas serve (A {served(a_url):.0f}, "
            f"B {served(b_url):.0f} requests), {len(traffic.failures())} failures",
        )

        kill = time.monotonic()
        docker("kill", a)
        traffic.more(40)
        after = traffic.failures(kill)
        late = [f for f in after if f[0] > kill + 0.001]
        check(
            not late and len(after) <= traffic.in_flight_at(kill),
            f"docker kill A: {len(after)} failed of {traffic.in_flight_at(kill)} in flight at "
            f"the kill, {len(late)} of those started after it",
        )
        check(not ready(a_url) and ready(proxy), "A is gone, the proxy's /ready is still 200")
        before = served(b_url)
        traffic.more(20)
        check(served(b_url) >= before + 20, f"B alone serves ({served(b_url) - before:.0f} more)")

        t_start = time.monotonic()
        docker("start", a)
        rejoined = wait_for(lambda: ready(a_url), 300, 0.2)
        start_s = time.monotonic() - t_start
        back = wait_for(lambda: served(a_url) >= 10, 60)
        check(
            rejoined and back,
            f"docker start A: ready in {start_s:.1f} s and serving again "
            f"through the proxy ({served(a_url):.0f} requests)",
        )

        stop = time.monotonic()
        stopper = threading.Thread(target=docker, args=("stop", "-t", grace, b))
        stopper.start()
        stopper.join(120)
        stop_s = time.monotonic() - stop
        traffic.more(40)
        drained = traffic.failures(stop)
        code = exit_code(b)
        check(
            not drained and code == 0,
            f"docker stop B (SIGTERM): {len(drained)} failures, exit code {code}, {stop_s:.1f} s",
        )
        before = served(a_url)
        traffic.more(20)
        check(served(a_url) >= before + 20, f"A alone serves ({served(a_url) - before:.0f} more)")
    total, bad = traffic.count(), len(traffic.failures())
    check(bad == len(after), f"{total} requests through the proxy, {bad} failed")
    figure(
        f"two replicas behind nginx, 4 clients: {total} requests, {bad} failed "
        f"({len(after)} at the kill of A, {traffic.in_flight_at(kill)} were in flight then); "
        f"A back in {start_s:.1f} s after docker start; "
        f"B's SIGTERM: {len(drained)} failures, exit {code}"
    )


if __name__ == "__main__":
    {"single": single, "replicas": replicas}[sys.argv[1]](*sys.argv[2:])
    sys.exit(1 if failed else 0)
EOF
export DOCKER_CMD PHOTO FIGURES="$WORK/figures"
: >"$FIGURES"

# compose's settings for the replicas: its environment defaults and its grace period.
COMPOSE="$ROOT/docker/compose.yaml"
mae_service=$(awk '/^  mae:/ { on = 1; next } /^  [a-z]/ { on = 0 } on' "$COMPOSE")
mapfile -t COMPOSE_ENV < <(sed -nE 's/^ +((MAE|HF)_[A-Z_]+): \$\{[A-Z_]+:-(.*)\}$/\1=\3/p' <<<"$mae_service")
GRACE=$(sed -nE 's/^ +stop_grace_period: ([0-9]+)s$/\1/p' <<<"$mae_service")
[[ ${#COMPOSE_ENV[@]} -gt 0 && -n $GRACE ]] || die "could not read the mae service of $COMPOSE"
ENV_ARGS=()
for kv in "${COMPOSE_ENV[@]}"; do ENV_ARGS+=(-e "$kv"); done

# -- 5. one container -----------------------------------------------------------------------
log "one container: docker run -p 127.0.0.1:PORT:8000 $IMAGE"
port=$(free_port)
t0=$(date +%s.%N)
docker run -d --name "$PREFIX-single" -p "127.0.0.1:$port:8000" --stop-timeout "$GRACE" "$IMAGE" >/dev/null
python3 "$WORK/check.py" single "http://127.0.0.1:$port" "$PREFIX-single" "$t0" "$GRACE" ||
  die "the single container's checks"
docker rm -f "$PREFIX-single" >/dev/null

# -- 6. two replicas behind nginx -----------------------------------------------------------
log "two replicas behind nginx (docker/compose.yaml's settings, docker/nginx/mae.conf)"
if docker compose version >/dev/null 2>&1; then
  echo "(docker compose is here, but the proxy runs on the host: compose's nginx:1.28 image"
  echo " may not be pullable, and this keeps the check the same everywhere)"
fi
echo "replica settings from compose.yaml: ${COMPOSE_ENV[*]}; stop_grace_period ${GRACE}s"
[[ -x $NGINX ]] || die "nginx is missing (apt-get install nginx)"
pa=$(free_port) pb=$(free_port) pn=$(free_port)
for r in a:"$pa" b:"$pb"; do
  docker run -d --name "$PREFIX-${r%%:*}" -p "127.0.0.1:${r#*:}:8000" "${ENV_ARGS[@]}" \
    -v "$ROOT/models:/models:ro" --stop-timeout "$GRACE" "$IMAGE" >/dev/null
done
mkdir -p "$WORK/nginx"
conf=$(sed -E \
  -e "s|^(\s*)server mae:8000( [^;]*) resolve;$|\1server 127.0.0.1:$pa\2;\n\1server 127.0.0.1:$pb\2;|" \
  -e "s|^(\s*)listen 8080;$|\1listen 127.0.0.1:$pn;|" "$ROOT/docker/nginx/mae.conf")
[[ $(grep -c "server 127.0.0.1:" <<<"$conf") == 2 && $conf == *"listen 127.0.0.1:$pn;"* ]] ||
  die "docker/nginx/mae.conf lacks the 'server mae:8000 ... resolve;' or 'listen 8080;' line"
printf '%s\n' "$conf" >"$WORK/nginx/mae.conf"
cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 256; }
http {
    access_log $WORK/nginx/access.log;
$(for k in client_body proxy fastcgi uwsgi scgi; do echo "    ${k}_temp_path $WORK/nginx/$k;"; done)
    include $WORK/nginx/mae.conf;
}
EOF
"$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" || die "nginx -t refused the config"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
# compose starts the proxy once the replicas are healthy (depends_on: service_healthy).
for r in a b; do
  for _ in $(seq 150); do
    [[ $(docker inspect -f '{{.State.Health.Status}}' "$PREFIX-$r") == healthy ]] && break
    sleep 1
  done
  [[ $(docker inspect -f '{{.State.Health.Status}}' "$PREFIX-$r") == healthy ]] ||
    die "replica $r is not healthy: $(docker logs --tail 20 "$PREFIX-$r" 2>&1)"
done
echo "   ok    both replicas healthy"
python3 "$WORK/check.py" replicas "http://127.0.0.1:$pn" \
  "http://127.0.0.1:$pa" "$PREFIX-a" "http://127.0.0.1:$pb" "$PREFIX-b" "$GRACE" ||
  { tail -5 "$WORK/nginx/error.log"; die "the replica checks"; }

# -- 7. summary -----------------------------------------------------------------------------
log "summary"
printf '   %s\n' "engine: $ENGINE" "${SUMMARY[@]}"
sed 's/^/   /' "$FIGURES"
