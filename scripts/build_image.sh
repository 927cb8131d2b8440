#!/usr/bin/env bash
# Build the bids_affect image without a Docker daemon, check it, and compare its demo
# outputs with a native run.
#
#   1. a Debian bookworm base made with debootstrap, imported with podman
#      (localhost/debian-bookworm-base; reused when it exists);
#   2. a build context: the package source (the working tree, or --source-ref REF), the
#      container files of the working tree, constraints.txt (the exact versions of the
#      native environment), wheelhouse/ (their wheels, the CPU torch wheel included) and
#      pip.conf (this machine's pip certificate, for proxies that re-sign TLS);
#   3. `buildah bud --isolation chroot` of the real Dockerfile on that base;
#   4. inside the image (`buildah run --isolation chroot`, as an arbitrary UID):
#      `bids_affect --version` through the image's entrypoint, the demo at participant
#      and group level, and a run with a read-only bids_dir and no network that may
#      write nothing outside output_dir, the work dir and /tmp;
#   5. the demo natively at the same path, and a file-by-file comparison: TSV, JSON and
#      every other output must be byte-identical, except the run logs (run id, time).
#
# Needs root, and: apt-get install podman buildah debootstrap. `podman run` is not used
# (it needs setrlimit, which some sandboxes refuse). Figures go to WORK/report.json.
#
# Usage: scripts/build_image.sh [--work DIR] [--source-ref REF] [--python PYTHON]
#                               [--tag NAME] [--rebuild-base] [--reuse-image]
#                               [--skip-demo]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="/tmp/bids_affect_image"
source_ref=""
python="${PYTHON:-python3}"
tag=""
rebuild_base=0
reuse_image=0
skip_demo=0
base_image="localhost/debian-bookworm-base"

while [ $# -gt 0 ]; do
    case "$1" in
        --work) work="$2"; shift 2 ;;
        --source-ref) source_ref="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --rebuild-base) rebuild_base=1; shift ;;
        --reuse-image) reuse_image=1; shift ;;
        --skip-demo) skip_demo=1; shift ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build_image.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

for tool in podman buildah debootstrap unshare git "${python}"; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "build_image.sh: ${tool} is missing; fix: apt-get install podman buildah" \
             "debootstrap (and a Python with bids_affect installed)" >&2
        exit 69
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "build_image.sh: run as root (debootstrap and buildah's chroot isolation)" >&2
    exit 77
fi

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "${repo}/bids_affect/__about__.py")"
tag="${tag:-localhost/bids_affect:${version}}"
mkdir -p "${work}"
report="${work}/report.json"
log() { printf '%s build_image: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
seconds() { date +%s; }

# ------------------------------------------------------------------ 1. Debian base
make_base() {
    if [ "${rebuild_base}" -eq 1 ] || ! podman image exists "${base_image}"; then
        # The first Debian mirror of apt's sources (deb822 or one-line format).
        mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources \
                   2>/dev/null | grep -v security | head -n 1 || true)"
        if [ -z "${mirror}" ]; then
            mirror="$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' \
                       /etc/apt/sources.list 2>/dev/null || true)"
        fi
        mirror="${mirror:-http://deb.debian.org/debian}"
        log "debootstrap bookworm from ${mirror}"
        start=$(seconds)
        rm -rf "${work}/rootfs"
        debootstrap --variant=minbase bookworm "${work}/rootfs" "${mirror}" >"${work}/debootstrap.log"
        tar -C "${work}/rootfs" -c . | podman import - "${base_image}" >/dev/null
        rm -rf "${work}/rootfs"
        base_seconds=$(( $(seconds) - start ))
    fi
}

# ------------------------------------------------------------------ 2. build context
make_context() {
    rm -rf "${context}"
    mkdir -p "${context}"
    if [ -n "${source_ref}" ]; then
        log "package source from git ${source_ref}"
        git -C "${repo}" archive "${source_ref}" | tar -x -C "${context}"
    else
        log "package source from the working tree"
        git -C "${repo}" ls-files -z --cached --others --exclude-standard \
            | (cd "${repo}" && xargs -0 cp --parents -t "${context}" 2>/dev/null || true)
    fi
    # The container recipe and the resource script always come from the working tree.
    for file in Dockerfile .dockerignore Singularity.def scripts/prefetch_resources.py; do
        install -D -m 0644 "${repo}/${file}" "${context}/${file}"
    done
    for folder in weights templateflow; do
        if [ -d "${repo}/${folder}" ]; then cp -R "${repo}/${folder}" "${context}/"; fi
    done
    # Exact versions of the native environment, and their wheels (torch's CPU build among
    # them), so that the image computes what the native run computes.
    "${python}" -m pip freeze --exclude-editable | grep -v '^bids[-_]affect' \
        >"${context}/constraints.txt"
    "${python}" -c 'import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))' \
        "${context}/pyproject.toml" >"${context}/requirements.txt"
    # A proxy that re-signs TLS (its CA trusted by this machine's pip) must be trusted inside
    # the build too: pip.conf in the build context (builder stage only) names its certificate.
    cert="${PIP_CERT:-$("${python}" -m pip config get global.cert 2>/dev/null || true)}"
    if [ -n "${cert}" ] && [ -f "${cert}" ]; then
        cp "${cert}" "${context}/pip-ca.crt"
        printf '[global]\ncert = /usr/src/bids_affect/pip-ca.crt\n' >"${context}/pip.conf"
    fi
    log "downloading wheels into the build context"
    "${python}" -m pip download --quiet --dest "${work}/wheelhouse" \
        --constraint "${context}/constraints.txt" --requirement "${context}/requirements.txt"
    rm "${context}/requirements.txt"
    cp -R "${work}/wheelhouse" "${context}/wheelhouse"
    # Fixed times: buildah's layer cache then reuses every step whose inputs did not change.
    find "${context}" -exec touch -h -d @0 {} +
}

# ------------------------------------------------------------------ 3. build
build() {
    log "buildah bud ${tag} (base ${base_image})"
    start=$(seconds)
    buildah bud --isolation chroot --layers \
        --build-arg BASE="${base_image}" \
        --build-arg TORCH_INDEX_URL= \
        --build-arg VERSION="${version}" \
        --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --build-arg VCS_REF="$(git -C "${repo}" rev-parse --short HEAD)" \
        -t "${tag}" "${context}" >"${work}/buildah.log" 2>&1 \
        || { tail -n 40 "${work}/buildah.log" >&2; exit 1; }
    build_seconds=$(( $(seconds) - start ))
}

base_seconds=0
build_seconds=0
context="${work}/context"
if [ "${reuse_image}" -eq 1 ] && podman image exists "${tag}" && [ -d "${context}" ]; then
    log "reusing ${tag} (--reuse-image) and its build context ${context}"
else
    make_base
    make_context
    build
fi
image_bytes="$(podman image inspect --format '{{.Size}}' "${tag}")"
log "image ${tag}: built in ${build_seconds} s, ${image_bytes} bytes"

# ------------------------------------------------------------------ 4. checks inside
container="$(buildah from --pull=never "${tag}")"
trap 'buildah rm "${container}" >/dev/null 2>&1 || true' EXIT
entrypoint="$(buildah inspect --type image "${tag}" | "${python}" -c \
    'import json, sys; print(*json.load(sys.stdin)["OCIv1"]["config"]["Entrypoint"])')"
in_image() { buildah run --isolation chroot --user 4242:4242 "$@"; }
version_line="$(in_image "${container}" -- "${entrypoint}" --version)"
log "entrypoint ${entrypoint}: ${version_line}"
resources_check="$(in_image "${container}" -- prefetch_resources --check | tail -n 1)"

demo_seconds=0
native_seconds=0
compare_status="skipped"
if [ "${skip_demo}" -eq 0 ]; then
    # The demo at one path, twice: natively, then in the image (the path inside the
    # image is the same), so the outputs may be compared byte for byte.
    demo="${work}/demo"
    rm -rf "${demo}" "${work}/native" "${work}/container"
    log "native demo (source of the build context)"
    start=$(seconds)
    # From ${work}: `python -m` puts the current folder first on sys.path, and a checkout's
    # bids_affect/ there would shadow the build context's.
    (cd "${work}" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="${context}" \
        "${python}" -m bids_affect.datasets.demo "${demo}" >"${work}/native.log" 2>&1) \
        || { tail -n 20 "${work}/native.log" >&2; exit 1; }
    grep -q "^${context}/bids_affect/" <(cd "${work}" && PYTHONPATH="${context}" \
        "${python}" -c 'import bids_affect; print(bids_affect.__file__)') \
        || { echo "build_image.sh: the native run did not use ${context}" >&2; exit 1; }
    native_seconds=$(( $(seconds) - start ))
    mv "${demo}" "${work}/native"

    log "demo inside the image (uid 4242, participant and group)"
    mkdir -m 0777 "${work}/container"
    start=$(seconds)
    in_image --volume "${work}/container:${demo}" "${container}" -- \
        bids_affect-demo "${demo}" >"${work}/container.log" 2>&1 \
        || { tail -n 20 "${work}/container.log" >&2; exit 1; }
    demo_seconds=$(( $(seconds) - start ))

    log "read-only bids_dir, no network, writes confined"
    rm -rf "${work}/ro"
    mkdir -p "${work}/ro/out" "${work}/ro/work"
    chmod 0777 "${work}/ro/out" "${work}/ro/work"
    # buildah's chroot isolation keeps the host's network: an empty network namespace
    # around it takes the network away.
    unshare --net buildah run --isolation chroot --user 4242:4242 \
        --volume "${work}/native/bids:/data:ro" \
        --volume "${work}/ro/out:/out" --volume "${work}/ro/work:/work" "${container}" -- \
        sh -c 'touch /tmp/.start && bids_affect /data /out participant --analyses decoding \
               --models ridge --labels studyforrest-5 --n-permutations 20 \
               --participant-label 01 -w /work --random-seed 1 \
               && find / -xdev -newer /tmp/.start -not -path "/tmp/*" -not -path "/out/*" \
                    -not -path "/work/*" -not -path "/proc/*" -not -path "/sys/*" \
                    -not -path "/dev/*" -not -path /tmp -not -path /out -not -path /work \
                    -not -path /dev -not -path /run -not -path "/run/*" 2>/dev/null \
               | sed "s/^/written outside output_dir and work dir: /"' \
        >"${work}/ro.log" 2>&1 || { tail -n 20 "${work}/ro.log" >&2; exit 1; }
    if grep -q "written outside" "${work}/ro.log"; then
        grep "written outside" "${work}/ro.log" >&2
        exit 1
    fi

    log "comparing native and image outputs"
    if "${python}" - "${work}/native/derivatives" "${work}/container/derivatives" \
        "${work}/compare.json" <<'EOF'
import json, sys
from pathlib import Path

native, image, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
def files(root):
    # Run logs hold the run id and the time of the run: they must differ.
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and "log" not in p.relative_to(root).parts}
a, b = files(native), files(image)
same = sorted(f for f in a & b if (native / f).read_bytes() == (image / f).read_bytes())
differ = sorted(f for f in a & b if f not in same)
details = {}
for name in differ:
    if name.endswith(".json"):
        x, y = json.loads((native / name).read_text()), json.loads((image / name).read_text())
        details[name] = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
result = {"identical": len(same), "differ": differ, "json_keys_differ": details,
          "only_native": sorted(a - b), "only_image": sorted(b - a),
          "tsv_json_identical": sum(f.endswith((".tsv", ".json")) for f in same)}
out.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
sys.exit(1 if differ or a != b else 0)
EOF
    then compare_status="identical"; else compare_status="different"; fi
fi

cat >"${report}" <<EOF
{
  "image": "${tag}",
  "version_line": "${version_line}",
  "entrypoint": "${entrypoint}",
  "resources_check": "${resources_check}",
  "base_seconds": ${base_seconds},
  "build_seconds": ${build_seconds},
  "image_bytes": ${image_bytes},
  "native_demo_seconds": ${native_seconds},
  "image_demo_seconds": ${demo_seconds},
  "demo_outputs": "${compare_status}"
}
EOF
cat "${report}"
[ "${compare_status}" != "different" ]
