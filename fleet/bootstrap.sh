#!/bin/bash
# spotkeeper TGI instance: `boot` (once, from user data), `start` (the unit's ExecStart), `prime` (after a Hub start).
# Settings come from $CONF (written by user data, no secrets). The HF token is read from Secrets Manager at every
# start and handed to docker by variable name only. Paths are variables so tests can run this without root.
set -euo pipefail
CONF="${SPOTKEEPER_CONF:-/etc/spotkeeper/tgi.conf}"
DATA_DIR="${SPOTKEEPER_DATA_DIR:-/data}"
UNIT_DIR="${SPOTKEEPER_UNIT_DIR:-/etc/systemd/system}"
DOCKER_DAEMON_JSON="${SPOTKEEPER_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
FSTAB="${SPOTKEEPER_FSTAB:-/etc/fstab}"
SELF="${SPOTKEEPER_SELF:-/usr/local/bin/spotkeeper-tgi}"
# shellcheck source=/dev/null
source "$CONF"

log() { echo "spotkeeper: $*" >&2; }

# ---- boot: /data on local NVMe when the type has one, Docker's layers there too, the unit enabled ----------
data_on_nvme() {
  local dev mnt
  dev="$(lsblk -dpno NAME,MODEL | awk '/Amazon EC2 NVMe Instance Storage/ {print $1; exit}')"
  if [ -z "$dev" ]; then
    log "no instance store: /data on the root volume"
    return 1
  fi
  mnt="$(findmnt -nro TARGET -S "$dev" || true)"
  if [ -n "$mnt" ]; then  # the Deep Learning AMI may have mounted it already (/opt/dlami/nvme)
    if ! mount --bind "$mnt" "$DATA_DIR"; then
      log "could not bind $mnt: /data on the root volume"
      return 1
    fi
    echo "$mnt $DATA_DIR none bind,nofail 0 0" >>"$FSTAB"
  else
    local fs=xfs force=-f
    command -v mkfs.xfs >/dev/null || { fs=ext4; force=-F; }
    if ! { "mkfs.$fs" "$force" "$dev" >/dev/null && mount -o noatime "$dev" "$DATA_DIR"; }; then
      log "could not format or mount $dev: /data on the root volume"
      return 1
    fi
    # A reboot keeps the instance store's data (a stop does not): mount it again, and boot without it if absent.
    echo "$dev $DATA_DIR $fs noatime,nofail 0 2" >>"$FSTAB"
  fi
  log "/data on instance store $dev"
}

docker_root_on_data() {
  python3 - "$DOCKER_DAEMON_JSON" "$DATA_DIR/docker" <<'PY'
import json, os, sys
path, root = sys.argv[1], sys.argv[2]
conf = json.load(open(path)) if os.path.exists(path) else {}
conf["data-root"] = root  # keep the AMI's nvidia runtime settings, move only the layers
os.makedirs(os.path.dirname(path), exist_ok=True)
json.dump(conf, open(path, "w"), indent=2)
PY
  systemctl restart docker
}

boot() {
  mkdir -p "$DATA_DIR"
  if data_on_nvme; then
    if docker image inspect "$TGI_IMAGE" >/dev/null 2>&1; then
      log "TGI image baked into the AMI: Docker keeps its data root"
    else
      docker_root_on_data
    fi
  fi
  cat >"$UNIT_DIR/spotkeeper-tgi.service" <<UNIT
[Unit]
Description=Hugging Face TGI served for spotkeeper
After=docker.service network-online.target
Requires=docker.service
Wants=network-online.target

[Service]
Restart=always
RestartSec=10
TimeoutStartSec=0
ExecStartPre=-/usr/bin/docker rm -f tgi
ExecStart=$SELF start
ExecStop=/usr/bin/docker stop -t 30 tgi

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now spotkeeper-tgi.service
}

# ---- weights: the stack's S3 copy at the pinned revision, verified, in the Hub cache layout TGI reads -------
snapshot_dir() { echo "$DATA_DIR/models--${MODEL_ID//\//--}/snapshots/$MODEL_REVISION"; }
weights_url() { echo "s3://$WEIGHTS_BUCKET/weights/$MODEL_ID/$MODEL_REVISION"; }

# The AWS CLI with parallel S3 transfers (its s3 settings live only in a config file; a unit may have no $HOME).
s3() {
  local config
  config="$(mktemp)"
  printf '[default]\ns3 =\n  max_concurrent_requests = 64\n  multipart_chunksize = 16MB\n' >"$config"
  AWS_CONFIG_FILE="$config" aws s3 "$@" --region "$REGION" --only-show-errors
  local status=$?
  rm -f "$config"
  return $status
}

# Exit 0 when every file the manifest lists is in $1 with its size and the sha256 of each of its chunks (and no
# path leaves $1). Chunks let every core hash at once: a 5 GB shard is not one core's 10 s.
verify_manifest() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, os, sys
from concurrent.futures import ThreadPoolExecutor
root, manifest = os.path.realpath(sys.argv[1]), json.load(open(sys.argv[2]))
files, chunk = manifest["files"], manifest["chunk_bytes"]
if not files or not isinstance(chunk, int) or chunk <= 0:
    sys.exit("manifest lists no files or no chunk size")
bad, jobs = [], []
for entry in files:
    path = os.path.realpath(os.path.join(root, entry["path"]))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        bad.append(f"missing {entry['path']}")
    elif os.path.getsize(path) != entry["size"]:
        bad.append(f"size of {entry['path']}")
    elif len(entry["sha256"]) != max(1, -(-entry["size"] // chunk)):
        bad.append(f"chunk count of {entry['path']}")
    else:
        jobs += [(entry["path"], path, i, expected) for i, expected in enumerate(entry["sha256"])]

def check(job):
    name, path, index, expected = job
    digest, left = hashlib.sha256(), chunk
    with open(path, "rb") as f:
        f.seek(index * chunk)
        while left and (block := f.read(min(left, 1 << 24))):
            digest.update(block)
            left -= len(block)
    return None if digest.hexdigest() == expected else f"sha256 of {name}"

with ThreadPoolExecutor(os.cpu_count() or 8) as pool:
    bad += sorted({b for b in pool.map(check, jobs) if b})
if bad:
    sys.exit("; ".join(bad[:5]))
PY
}

fetch_weights() {
  [ -n "${WEIGHTS_BUCKET:-}" ] && [ -n "${MODEL_REVISION:-}" ] || return 1
  local snap staging url
  snap="$(snapshot_dir)"
  url="$(weights_url)"
  if [ -f "$snap/.spotkeeper-verified" ]; then
    log "weights already verified in $snap"
    return 0
  fi
  staging="$snap.partial"
  rm -rf "$staging"
  mkdir -p "$staging"
  if ! s3 cp "$url/manifest.json" "$staging/.spotkeeper-manifest.json"; then
    log "no complete copy at $url (manifest missing or bucket unreachable): weights from the Hub"
  elif ! s3 cp --recursive "$url/files/" "$staging/"; then
    log "download from $url failed: weights from the Hub"
  elif ! verify_manifest "$staging" "$staging/.spotkeeper-manifest.json"; then
    log "copy at $url is corrupt or partial: weights from the Hub"
  else
    rm -rf "$snap"
    mv "$staging" "$snap"
    touch "$snap/.spotkeeper-verified"
    log "weights from $url verified in $snap"
    return 0
  fi
  rm -rf "$staging"
  return 1
}

# ---- start: TGI with the knobs of the template, from the local copy when there is one ------------------------
hf_token() {
  local secret
  secret="$(aws secretsmanager get-secret-value --region "$REGION" --secret-id "$HF_TOKEN_SECRET_ARN" \
    --query SecretString --output text)"
  printf '%s' "$secret" | python3 -c 'import json,sys; s=sys.stdin.read().strip(); print(json.loads(s)["HF_TOKEN"] if s.startswith("{") else s)'
}

start() {
  local docker_env=() tgi_args
  if [ -n "${ECR_REGISTRY:-}" ]; then
    aws ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "$ECR_REGISTRY"
  fi
  docker image inspect "$TGI_IMAGE" >/dev/null 2>&1 || docker pull "$TGI_IMAGE"
  if [ -n "$HF_TOKEN_SECRET_ARN" ]; then
    HF_TOKEN="$(hf_token)"
    export HF_TOKEN
    docker_env+=(-e HF_TOKEN)
  fi
  tgi_args=(--model-id "$MODEL_ID" --num-shard "$NUM_SHARD"
    --max-input-tokens "$MAX_INPUT_TOKENS" --max-total-tokens "$MAX_TOTAL_TOKENS"
    --max-batch-prefill-tokens "$MAX_BATCH_PREFILL_TOKENS"
    --max-concurrent-requests "$MAX_CONCURRENT_REQUESTS")
  if [ -n "${MODEL_REVISION:-}" ]; then
    tgi_args+=(--revision "$MODEL_REVISION")
  fi
  if [ "$QUANTIZE" != "none" ]; then
    tgi_args+=(--quantize "$QUANTIZE")
  fi
  if fetch_weights; then
    # With HF_HUB_OFFLINE TGI resolves the model id and revision to /data/models--*/snapshots/<revision>
    # (text_generation_server/utils/hub.py) and never asks the Hub; /info still names the model id.
    docker_env+=(-e HF_HUB_OFFLINE=1)
  elif [ -n "${WEIGHTS_BUCKET:-}" ] && [ "${PRIME_WEIGHTS:-false}" = "true" ]; then
    systemd-run --no-block --unit spotkeeper-prime --collect "$SELF" prime || log "could not schedule the primer"
  fi
  exec docker run --rm --name tgi --gpus all --shm-size 1g -p "$TGI_PORT:80" -v "$DATA_DIR:/data" \
    "${docker_env[@]}" "$TGI_IMAGE" "${tgi_args[@]}"
}

# ---- prime: once TGI serves from a Hub download, put the files in S3, the manifest last --------------------
prime() {
  local snap url manifest waited=0
  snap="$(snapshot_dir)"
  url="$(weights_url)"
  until curl -fsS -o /dev/null "http://127.0.0.1:$TGI_PORT/health"; do
    waited=$((waited + 10))
    if [ "$waited" -gt "${PRIME_WAIT_SECONDS:-3600}" ]; then
      log "TGI never became healthy: nothing primed"
      return 1
    fi
    sleep "${PRIME_POLL_SECONDS:-10}"
  done
  [ -d "$snap" ] || { log "no Hub snapshot at $snap: nothing primed"; return 1; }
  manifest="$(mktemp)"
  python3 - "$snap" "$MODEL_ID" "$MODEL_REVISION" "${SPOTKEEPER_CHUNK_BYTES:-268435456}" >"$manifest" <<'PY'
import hashlib, json, os, sys
root, model_id, revision, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
files = []
for dirpath, _, names in os.walk(root, followlinks=True):
    for name in sorted(names):
        if name.startswith(".spotkeeper"):
            continue
        path, hashes = os.path.join(dirpath, name), []
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if block or not hashes:
                    hashes.append(hashlib.sha256(block).hexdigest())
                if len(block) < chunk:
                    break
        files.append({"path": os.path.relpath(path, root), "size": os.path.getsize(path), "sha256": hashes})
json.dump({"model_id": model_id, "revision": revision, "chunk_bytes": chunk, "files": files}, sys.stdout)
PY
  s3 cp --recursive --exclude ".spotkeeper*" "$snap/" "$url/files/"
  s3 cp "$manifest" "$url/manifest.json"
  rm -f "$manifest"
  log "weights primed to $url"
}

case "${1:-boot}" in
  boot) boot ;;
  start) start ;;
  prime) prime ;;
  *) log "usage: $0 boot|start|prime"; exit 64 ;;
esac
