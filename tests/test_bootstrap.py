"""The instance user data (fleet/bootstrap.sh as the template embeds it), run under bash without AWS or a GPU.

docker, systemctl, systemd-run, lsblk, findmnt, mount, mkfs.xfs and curl are small scripts on PATH that record
their calls; `aws` is tests/fake_aws_cli.py (boto3) against a moto server, so S3 and Secrets Manager behave
like services, not like canned answers. Each test is one instance: the user data runs (boot), then the unit's
ExecStart (start), and what TGI would be started with is read from the docker stub's record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.cfn import ACCOUNT_ID, REGION, Stack, load_template

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "fleet" / "bootstrap.sh"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
REVISION = "0e9e39f249a16976918f6564b8830bc894c89659"
BUCKET = "spotkeeper-weights-test"
PREFIX = f"weights/{MODEL}/{REVISION}"
TOKEN = "hf_" + "T" * 34
SECRET_NAME = "spotkeeper/hf-token"
WEIGHTS = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "model-00001-of-00002.safetensors": os.urandom(300_000),
    "model-00002-of-00002.safetensors": os.urandom(200_000),
    "tokenizer.json": b'{"version": "1.0"}',
}
INSTANCE_STORE = "/dev/nvme1n1 Amazon EC2 NVMe Instance Storage\n/dev/nvme0n1 Amazon Elastic Block Store\n"
EBS_ONLY = "/dev/nvme0n1 Amazon Elastic Block Store\n"

STUBS = {
    # docker: `image inspect` says the image is absent, `run` records argv and the two variables TGI reads.
    "docker": """
echo "docker $*" >> "$STUB_LOG"
case "$1" in
  image) [ -n "${STUB_IMAGE_BAKED-}" ] ;;
  login) echo "login-password=$(cat)" > "$STUB_OUT/docker-login" ;;
  run) printf '%s\\n' "$@" > "$STUB_OUT/docker-run"
       printf '%s' "${HF_TOKEN-unset}" > "$STUB_OUT/docker-hf-token" ;;
esac
""",
    "systemctl": 'echo "systemctl $*" >> "$STUB_LOG"',
    "systemd-run": 'echo "systemd-run $*" >> "$STUB_LOG"',
    "lsblk": 'printf "%b" "$STUB_LSBLK"',
    "findmnt": 'echo "findmnt $*" >> "$STUB_LOG"; [ -n "${STUB_MOUNTED-}" ] && echo "$STUB_MOUNTED"; true',
    "mount": 'echo "mount $*" >> "$STUB_LOG"',
    "mkfs.xfs": 'echo "mkfs.xfs $*" >> "$STUB_LOG"; [ -z "${STUB_MKFS_FAILS-}" ]',
    "curl": 'echo "curl $*" >> "$STUB_LOG"',
}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # A fresh server state per test: delete what the previous test left.
    s3 = boto3.resource("s3")
    for bucket in s3.buckets.all():
        bucket.objects.all().delete()
        bucket.delete()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    secrets = boto3.client("secretsmanager")
    for secret in secrets.list_secrets()["SecretList"]:
        secrets.delete_secret(SecretId=secret["ARN"], ForceDeleteWithoutRecovery=True)
    env["SECRET_ARN"] = secrets.create_secret(Name=SECRET_NAME, SecretString=TOKEN)["ARN"]
    return env


@dataclass
class Instance:
    root: Path
    env: dict[str, str]
    user_data: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def snapshot(self) -> Path:
        return self.data / f"models--{MODEL.replace('/', '--')}" / "snapshots" / REVISION

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(  # noqa: S603 - the instance's own script, run by bash as cloud-init would
            ["bash", *args],  # noqa: S607
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        (self.root / "out" / "console").open("a").write(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr
        return done

    def boot(self) -> None:
        script = self.root / "user-data.sh"
        script.write_text(self.user_data)
        self.run(str(script))

    def start(self) -> None:
        self.run(str(self.root / "usr/local/bin/spotkeeper-tgi"), "start")

    def prime(self) -> None:
        self.run(str(self.root / "usr/local/bin/spotkeeper-tgi"), "prime")

    def docker_run(self) -> list[str]:
        return (self.root / "out" / "docker-run").read_text().splitlines()

    def calls(self) -> str:
        log = self.root / "out" / "calls"
        return log.read_text() if log.exists() else ""

    def console(self) -> str:
        return (self.root / "out" / "console").read_text()

    def arg(self, flag: str) -> str | None:
        argv = self.docker_run()
        return argv[argv.index(flag) + 1] if flag in argv else None

    def hub_download(self) -> None:
        """What TGI leaves in /data after downloading from the Hub: blobs, and the snapshot as symlinks."""
        blobs = self.snapshot.parent.parent / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        self.snapshot.mkdir(parents=True, exist_ok=True)
        for name, body in WEIGHTS.items():
            blob = blobs / hashlib.sha256(body).hexdigest()
            blob.write_bytes(body)
            (self.snapshot / name).symlink_to(os.path.relpath(blob, self.snapshot))


def _new_instance(tmp_path: Path, aws: dict[str, str], name: str, lsblk: str = EBS_ONLY, **parameters: str) -> Instance:
    # A gated model with its token secret: what these tests exercise (the template's default model is ungated).
    defaults = {"ModelId": MODEL, "ModelRevision": REVISION, "HfTokenSecretArn": aws["SECRET_ARN"]}
    cfn = load_template()
    stack = Stack(cfn, parameters={**defaults, **parameters}, ref_values={"WeightsBucket": BUCKET})
    user_data = stack.resolve(cfn["Resources"]["FleetLaunchTemplate"]["Properties"])["LaunchTemplateData"]["UserData"]
    root = tmp_path / name
    for d in ["bin", "out", "etc/systemd/system", "etc/docker"]:
        (root / d).mkdir(parents=True)
    for stub, body in STUBS.items():
        (root / "bin" / stub).write_text(f"#!/bin/bash\n{body}\n")
        (root / "bin" / stub).chmod(0o755)
    (root / "bin" / "aws").write_text(f'#!/bin/bash\nexec {sys.executable} {ROOT / "tests" / "fake_aws_cli.py"} "$@"\n')
    (root / "bin" / "aws").chmod(0o755)
    (root / "etc/docker/daemon.json").write_text(
        json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}})
    )
    env = {
        **{k: v for k, v in aws.items() if k != "SECRET_ARN"},
        "PATH": f"{root / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(root),
        "SPOTKEEPER_DATA_DIR": str(root / "data"),
        "SPOTKEEPER_UNIT_DIR": str(root / "etc/systemd/system"),
        "SPOTKEEPER_DOCKER_DAEMON_JSON": str(root / "etc/docker/daemon.json"),
        "SPOTKEEPER_FSTAB": str(root / "etc/fstab"),
        "PRIME_POLL_SECONDS": "0",
        "STUB_LOG": str(root / "out" / "calls"),
        "STUB_OUT": str(root / "out"),
        "STUB_LSBLK": lsblk,
        "FAKE_AWS_LOG": str(root / "out" / "calls"),
    }
    user_data = user_data.replace("/etc/spotkeeper", f"{root}/etc/spotkeeper").replace(
        "/usr/local/bin", f"{root}/usr/local/bin"
    )
    return Instance(root, env, user_data)


def _prime_bucket(tmp_path: Path, aws: dict[str, str], chunk_bytes: int | None = None) -> None:
    """The first instance: downloads from the Hub, then its primer puts the weights in S3."""
    first = _new_instance(tmp_path, aws, "first")
    if chunk_bytes:
        first.env["SPOTKEEPER_CHUNK_BYTES"] = str(chunk_bytes)
    first.boot()
    first.start()
    first.hub_download()
    first.prime()


def _objects() -> dict[str, bytes]:
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


# --------------------------------------------------------------------------------------------------------------
# The Hub path and the primer
# --------------------------------------------------------------------------------------------------------------
def test_an_empty_bucket_falls_back_to_the_hub_and_schedules_the_primer(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i")
    instance.boot()
    instance.start()
    # TGI is started with the model id at the pinned revision, downloading from the Hub
    assert instance.arg("--model-id") == MODEL
    assert instance.arg("--revision") == REVISION
    assert "HF_HUB_OFFLINE=1" not in instance.docker_run()
    assert "manifest missing" in instance.console()
    # and the primer runs as its own unit once TGI serves
    assert re.search(r"systemd-run .*spotkeeper-prime .*spotkeeper-tgi prime", instance.calls())
    assert not list(instance.data.glob("**/*.partial"))


def test_the_primer_uploads_the_files_then_the_manifest(tmp_path: Path, aws: dict[str, str]) -> None:
    _prime_bucket(tmp_path, aws)
    objects = _objects()
    assert set(objects) == {f"{PREFIX}/files/{n}" for n in WEIGHTS} | {f"{PREFIX}/manifest.json"}
    manifest = json.loads(objects[f"{PREFIX}/manifest.json"])
    assert (manifest["model_id"], manifest["revision"]) == (MODEL, REVISION)
    assert manifest["chunk_bytes"] == 256 * 1024 * 1024
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        n: (len(b), [hashlib.sha256(b).hexdigest()]) for n, b in WEIGHTS.items()
    }
    # the manifest is written after every file it lists
    uploads = [line for line in (tmp_path / "first/out/calls").read_text().splitlines() if line.startswith("s3 cp")]
    assert "manifest.json" in uploads[-1]


def test_the_primer_does_nothing_while_tgi_is_not_healthy(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i")
    instance.boot()
    instance.hub_download()
    (instance.root / "bin" / "curl").write_text("#!/bin/bash\nexit 7\n")
    instance.env["PRIME_WAIT_SECONDS"] = "20"
    done = subprocess.run(  # noqa: S603
        ["bash", str(instance.root / "usr/local/bin/spotkeeper-tgi"), "prime"],  # noqa: S607
        env=instance.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "never became healthy" in done.stderr
    assert _objects() == {}


# --------------------------------------------------------------------------------------------------------------
# The S3 copy: good, corrupt, partial, missing bucket, cache off
# --------------------------------------------------------------------------------------------------------------
def test_a_good_copy_is_fetched_verified_and_served_offline(tmp_path: Path, aws: dict[str, str]) -> None:
    _prime_bucket(tmp_path, aws)
    instance = _new_instance(tmp_path, aws, "second")
    instance.boot()
    instance.start()
    # The files are in TGI's cache layout under /data, byte for byte
    assert {p.name: p.read_bytes() for p in instance.snapshot.iterdir() if not p.name.startswith(".")} == WEIGHTS
    # TGI starts with the same model id (so /info names it) and never asks the Hub
    assert instance.arg("--model-id") == MODEL
    assert instance.arg("--revision") == REVISION
    assert "HF_HUB_OFFLINE=1" in instance.docker_run()
    assert "-v" in instance.docker_run() and f"{instance.data}:/data" in instance.docker_run()
    assert "spotkeeper-prime" not in instance.calls()
    # with parallel requests configured for the CLI's S3 transfers
    assert "config: [default]|s3 =|  max_concurrent_requests = 64|" in instance.calls()
    assert f"--region {REGION} --only-show-errors" in instance.calls()
    # A restart of the unit reuses the verified copy without downloading again
    before = instance.calls().count("s3 cp")
    instance.start()
    assert instance.calls().count("s3 cp") == before


def test_a_corrupt_copy_falls_back_to_the_hub_and_is_primed_again(tmp_path: Path, aws: dict[str, str]) -> None:
    _prime_bucket(tmp_path, aws)
    key = f"{PREFIX}/files/model-00002-of-00002.safetensors"
    good = _objects()[key]
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=bytes(reversed(good)))  # same size, other bytes
    instance = _new_instance(tmp_path, aws, "second")
    instance.boot()
    instance.start()
    assert "corrupt or partial" in instance.console()
    assert "sha256 of model-00002-of-00002.safetensors" in instance.console()
    assert "HF_HUB_OFFLINE=1" not in instance.docker_run()
    assert instance.arg("--model-id") == MODEL
    assert not instance.snapshot.exists()  # nothing half-verified is left where TGI looks
    assert "spotkeeper-prime" in instance.calls()


def test_one_bad_byte_in_one_chunk_is_found(tmp_path: Path, aws: dict[str, str]) -> None:
    # Given a copy hashed in 100 kB chunks (the 300 kB shard has three)
    _prime_bucket(tmp_path, aws, chunk_bytes=100_000)
    manifest = json.loads(_objects()[f"{PREFIX}/manifest.json"])
    shard = next(f for f in manifest["files"] if f["path"] == "model-00001-of-00002.safetensors")
    body = WEIGHTS["model-00001-of-00002.safetensors"]
    assert shard["sha256"] == [hashlib.sha256(body[i : i + 100_000]).hexdigest() for i in range(0, len(body), 100_000)]
    # When one byte of the middle chunk changes in S3
    damaged = bytearray(body)
    damaged[150_000] ^= 0xFF
    key = f"{PREFIX}/files/model-00001-of-00002.safetensors"
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=bytes(damaged))
    instance = _new_instance(tmp_path, aws, "second")
    instance.boot()
    instance.start()
    # Then the copy is refused and TGI downloads from the Hub
    assert "sha256 of model-00001-of-00002.safetensors" in instance.console()
    assert "HF_HUB_OFFLINE=1" not in instance.docker_run()


def test_an_intact_multi_chunk_copy_is_accepted(tmp_path: Path, aws: dict[str, str]) -> None:
    _prime_bucket(tmp_path, aws, chunk_bytes=100_000)  # 300 kB: exactly three chunks, 200 kB: two
    instance = _new_instance(tmp_path, aws, "second")
    instance.boot()
    instance.start()
    assert "HF_HUB_OFFLINE=1" in instance.docker_run()


def test_a_partial_copy_without_its_manifest_is_not_used(tmp_path: Path, aws: dict[str, str]) -> None:
    _prime_bucket(tmp_path, aws)
    boto3.client("s3").delete_object(Bucket=BUCKET, Key=f"{PREFIX}/manifest.json")
    instance = _new_instance(tmp_path, aws, "second")
    instance.boot()
    instance.start()
    assert "manifest missing" in instance.console()
    assert "HF_HUB_OFFLINE=1" not in instance.docker_run()
    assert not instance.snapshot.exists()


def test_a_copy_missing_a_file_the_manifest_lists_is_not_used(tmp_path: Path, aws: dict[str, str]) -> None:
    _prime_bucket(tmp_path, aws)
    boto3.client("s3").delete_object(Bucket=BUCKET, Key=f"{PREFIX}/files/model-00001-of-00002.safetensors")
    instance = _new_instance(tmp_path, aws, "second")
    instance.boot()
    instance.start()
    assert "missing model-00001-of-00002.safetensors" in instance.console()
    assert "HF_HUB_OFFLINE=1" not in instance.docker_run()


def test_a_missing_bucket_falls_back_to_the_hub(tmp_path: Path, aws: dict[str, str]) -> None:
    boto3.client("s3").delete_bucket(Bucket=BUCKET)
    instance = _new_instance(tmp_path, aws, "i")
    instance.boot()
    instance.start()
    assert "bucket unreachable" in instance.console()
    assert instance.arg("--model-id") == MODEL
    assert "HF_HUB_OFFLINE=1" not in instance.docker_run()


def test_without_a_revision_there_is_no_cache_and_no_s3_call(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i", ModelRevision="", ModelId="Qwen/Qwen2.5-7B-Instruct", NumShard="4")
    instance.boot()
    instance.start()
    assert "s3 " not in instance.calls()
    assert "systemd-run" not in instance.calls()
    assert instance.arg("--model-id") == "Qwen/Qwen2.5-7B-Instruct"
    assert instance.arg("--revision") is None
    assert instance.arg("--num-shard") == "4"


def test_prime_weights_false_never_uploads(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i", PrimeWeights="false")
    instance.boot()
    instance.start()
    assert "systemd-run" not in instance.calls()


# --------------------------------------------------------------------------------------------------------------
# The token, the knobs, the unit
# --------------------------------------------------------------------------------------------------------------
def test_tgi_gets_hf_token_from_secrets_manager_by_name_only(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i", Quantize="awq")
    instance.boot()
    instance.start()
    argv = instance.docker_run()
    assert argv[: argv.index(instance.arg("--model-id")) - 1] == [
        "run", "--rm", "--name", "tgi", "--gpus", "all", "--shm-size", "1g", "-p", "8080:80",
        "-v", f"{instance.data}:/data", "-e", "HF_TOKEN",
        "ghcr.io/huggingface/text-generation-inference:3.3.6",
    ]  # fmt: skip
    assert instance.arg("--quantize") == "awq"
    assert instance.arg("--max-batch-prefill-tokens") == "4096"
    # The container's environment has the token read at start with the instance role
    assert (instance.root / "out" / "docker-hf-token").read_text() == TOKEN
    assert f"secretsmanager get-secret-value --region {REGION} --secret-id {aws['SECRET_ARN']}" in instance.calls()
    # and it is written nowhere: user data, config, unit, command lines, console
    unit = (instance.root / "etc/systemd/system/spotkeeper-tgi.service").read_text()
    conf = (instance.root / "etc/spotkeeper/tgi.conf").read_text()
    for text in [instance.user_data, conf, unit, "\n".join(argv), instance.console()]:
        assert TOKEN not in text
        assert "HUGGING_FACE_HUB_TOKEN" not in text
    assert "Restart=always" in unit
    assert f"ExecStart={instance.root}/usr/local/bin/spotkeeper-tgi start" in unit
    assert "systemctl enable --now spotkeeper-tgi.service" in instance.calls()


def test_a_json_secret_and_no_secret(tmp_path: Path, aws: dict[str, str]) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=aws["SECRET_ARN"], SecretString=json.dumps({"HF_TOKEN": TOKEN})
    )
    with_json = _new_instance(tmp_path, aws, "json")
    with_json.boot()
    with_json.start()
    assert (with_json.root / "out" / "docker-hf-token").read_text() == TOKEN
    without = _new_instance(tmp_path, aws, "none", HfTokenSecretArn="")
    without.boot()
    without.start()
    assert "secretsmanager" not in without.calls()
    assert "HF_TOKEN" not in without.docker_run()
    assert (without.root / "out" / "docker-hf-token").read_text() == "unset"


# --------------------------------------------------------------------------------------------------------------
# Local NVMe and the image
# --------------------------------------------------------------------------------------------------------------
def test_instance_store_is_formatted_and_holds_data_and_docker_layers(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i", lsblk=INSTANCE_STORE)
    instance.boot()
    calls = instance.calls()
    assert "mkfs.xfs -f /dev/nvme1n1" in calls
    assert f"mount -o noatime /dev/nvme1n1 {instance.data}" in calls
    assert (instance.root / "etc/fstab").read_text() == f"/dev/nvme1n1 {instance.data} xfs noatime,nofail 0 2\n"
    daemon = json.loads((instance.root / "etc/docker/daemon.json").read_text())
    assert daemon["data-root"] == f"{instance.data}/docker"
    assert daemon["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime"}}  # the AMI's runtime is kept
    assert calls.index("systemctl restart docker") < calls.index("systemctl enable --now spotkeeper-tgi.service")
    assert "/dev/nvme0n1" not in calls  # never the EBS root


def test_an_instance_store_the_ami_mounted_is_bound_not_formatted(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i", lsblk=INSTANCE_STORE)
    instance.env["STUB_MOUNTED"] = "/opt/dlami/nvme"
    instance.boot()
    assert f"mount --bind /opt/dlami/nvme {instance.data}" in instance.calls()
    assert (instance.root / "etc/fstab").read_text() == f"/opt/dlami/nvme {instance.data} none bind,nofail 0 0\n"
    assert "mkfs.xfs" not in instance.calls()


def test_an_instance_store_that_cannot_be_formatted_leaves_data_on_the_root_volume(
    tmp_path: Path, aws: dict[str, str]
) -> None:
    instance = _new_instance(tmp_path, aws, "i", lsblk=INSTANCE_STORE)
    instance.env["STUB_MKFS_FAILS"] = "1"
    instance.boot()
    instance.start()
    assert "could not format or mount /dev/nvme1n1" in instance.console()
    assert "mount -o" not in instance.calls()
    assert not (instance.root / "etc/fstab").exists()
    assert "data-root" not in (instance.root / "etc/docker/daemon.json").read_text()
    assert instance.arg("--model-id") == MODEL  # and TGI still starts


def test_a_baked_image_keeps_dockers_data_root_and_is_not_pulled(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i", lsblk=INSTANCE_STORE)
    instance.env["STUB_IMAGE_BAKED"] = "1"
    instance.boot()
    instance.start()
    # /data (the weights) still goes to the instance store, but the AMI's image stays where Docker has it
    assert f"mount -o noatime /dev/nvme1n1 {instance.data}" in instance.calls()
    assert "data-root" not in (instance.root / "etc/docker/daemon.json").read_text()
    assert "docker pull" not in instance.calls()
    assert "ghcr.io/huggingface/text-generation-inference:3.3.6" in instance.docker_run()


def test_without_instance_store_data_stays_on_the_root_volume(tmp_path: Path, aws: dict[str, str]) -> None:
    instance = _new_instance(tmp_path, aws, "i")
    instance.boot()
    assert "mkfs" not in instance.calls() and "mount" not in instance.calls()
    assert not (instance.root / "etc/fstab").exists()
    assert "data-root" not in (instance.root / "etc/docker/daemon.json").read_text()
    assert "systemctl restart docker" not in instance.calls()


def test_with_a_ghcr_credential_the_image_comes_from_the_ecr_cache(tmp_path: Path, aws: dict[str, str]) -> None:
    credential = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:ecr-pullthroughcache/ghcr-AbCdEf"
    instance = _new_instance(tmp_path, aws, "i", GhcrCredentialSecretArn=credential)
    instance.boot()
    instance.start()
    registry = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com"
    image = f"{registry}/spotkeeper-ghcr/huggingface/text-generation-inference:3.3.6"
    assert image in instance.docker_run()
    assert f"docker login --username AWS --password-stdin {registry}" in instance.calls()
    assert (instance.root / "out" / "docker-login").read_text().strip() == "login-password=ecr-password-from-the-stub"
    assert f"docker pull {image}" in instance.calls()


# --------------------------------------------------------------------------------------------------------------
# The template's side: embedded copy, size limit, resources and grants
# --------------------------------------------------------------------------------------------------------------
def test_the_template_embeds_fleet_bootstrap_sh_verbatim() -> None:
    sys.path.insert(0, str(ROOT / "fleet"))
    try:
        import embed
    finally:
        sys.path.pop(0)
    template = (ROOT / "template.yaml").read_text()
    assert embed.embedded(template, SCRIPT.read_text()) == template, "run: python fleet/embed.py"
    cfn = load_template()
    user_data = Stack(cfn).resolve(cfn["Resources"]["FleetLaunchTemplate"]["Properties"])["LaunchTemplateData"][
        "UserData"
    ]
    assert SCRIPT.read_text() in user_data


def test_user_data_fits_ec2s_16_kb_limit() -> None:
    # "User data is limited to 16 KB, in raw form, before it is base64-encoded."
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html
    cfn = load_template()
    arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:" + "x" * 200 + "-AbCdEf"
    stack = Stack(
        cfn, parameters={"ModelId": "a" * 90 + "/" + "b" * 100, "ModelRevision": "f" * 40, "HfTokenSecretArn": arn}
    )
    user_data = stack.resolve(cfn["Resources"]["FleetLaunchTemplate"]["Properties"])["LaunchTemplateData"]["UserData"]
    assert len(user_data.encode()) <= 16 * 1024


def test_bash_parses_the_script_and_shellcheck_style_basics() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)  # noqa: S603, S607
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], check=True, timeout=60)  # noqa: S603, S607


def _resources(parameters: dict[str, str]) -> tuple[Stack, dict[str, Any]]:
    cfn = load_template()
    return Stack(cfn, parameters=parameters, ref_values={"WeightsBucket": BUCKET}), cfn["Resources"]


def test_the_weights_cache_exists_only_with_a_pinned_revision() -> None:
    stack, resources = _resources({})
    assert not stack.resource_exists("WeightsBucket") and not stack.resource_exists("FleetWeightsPolicy")
    stack, resources = _resources({"ModelRevision": REVISION})
    assert stack.resource_exists("WeightsBucket")
    bucket = stack.resolve(resources["WeightsBucket"]["Properties"])
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    attach = {"Mode": "attach", "ExistingGroupName": "g", "ExistingEipAllocationId": "eipalloc-0123456789abcdef0"}
    stack, _ = _resources({"ModelRevision": REVISION, **attach})
    assert not stack.resource_exists("WeightsBucket")


@pytest.mark.parametrize(
    ("prime", "actions"),
    [("true", {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}), ("false", {"s3:GetObject"})],
)
def test_the_instance_role_reads_and_primes_only_the_revisions_prefix(prime: str, actions: set[str]) -> None:
    stack, resources = _resources({"ModelId": MODEL, "ModelRevision": REVISION, "PrimeWeights": prime})
    policy = stack.resolve(resources["FleetWeightsPolicy"]["Properties"])
    assert policy["RoleName"] == "<FleetInstanceRole>"
    listing, objects = policy["PolicyDocument"]["Statement"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": f"{PREFIX}/*"}}
    got = objects["Action"] if isinstance(objects["Action"], list) else [objects["Action"]]
    assert set(got) == actions
    assert objects["Resource"] == f"<WeightsBucket.Arn>/{PREFIX}/*"


def test_the_ecr_cache_rule_needs_a_credential_named_as_ecr_requires() -> None:
    # ECR: a pull through cache secret's name must begin with ecr-pullthroughcache/
    # https://docs.aws.amazon.com/AmazonECR/latest/userguide/pull-through-cache-creating-rule.html
    pattern = re.compile(load_template()["Parameters"]["GhcrCredentialSecretArn"]["AllowedPattern"])
    assert pattern.fullmatch(f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:ecr-pullthroughcache/ghcr-AbCdEf")
    assert not pattern.fullmatch(f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:ghcr-AbCdEf")
    stack, resources = _resources({})
    assert not stack.resource_exists("TgiImageCacheRule")
    credential = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:ecr-pullthroughcache/ghcr-AbCdEf"
    stack, resources = _resources({"GhcrCredentialSecretArn": credential})
    rule = stack.resolve(resources["TgiImageCacheRule"]["Properties"])
    assert rule == {
        "EcrRepositoryPrefix": "spotkeeper-ghcr",
        "UpstreamRegistry": "github-container-registry",
        "UpstreamRegistryUrl": "ghcr.io",
        "CredentialArn": credential,
    }
    statements = stack.resolve(resources["FleetImageCachePolicy"]["Properties"])["PolicyDocument"]["Statement"]
    star = [s for s in statements if s["Resource"] == "*"]
    assert star == [{"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}]
    (pull,) = [s for s in statements if s["Resource"] != "*"]
    assert pull["Resource"].endswith(":repository/spotkeeper-ghcr/huggingface/text-generation-inference")


# --------------------------------------------------------------------------------------------------------------
# The operator's primer (fleet/prime.py) writes what the instances accept
# --------------------------------------------------------------------------------------------------------------
def _prime_module() -> Any:
    sys.path.insert(0, str(ROOT / "fleet"))
    try:
        import prime  # fleet/ is not a package
    finally:
        sys.path.pop(0)
    return prime


def test_an_operator_primed_copy_is_what_instances_accept(tmp_path: Path, aws: dict[str, str]) -> None:
    # Given the weights in a local directory, uploaded by the operator command
    files = tmp_path / "weights"
    files.mkdir()
    for name, body in WEIGHTS.items():
        (files / name).write_bytes(body)
    argv = ["--bucket", BUCKET, "--model-id", MODEL, "--revision", REVISION, "--from-dir", str(files)]
    assert _prime_module().main(argv, s3=boto3.client("s3")) == 0
    assert f"{PREFIX}/manifest.json" in _objects()
    # When an instance that may not prime starts
    instance = _new_instance(tmp_path, aws, "i", PrimeWeights="false")
    instance.boot()
    instance.start()
    # Then it serves from that copy
    assert "HF_HUB_OFFLINE=1" in instance.docker_run()
    assert {p.name: p.read_bytes() for p in instance.snapshot.iterdir() if not p.name.startswith(".")} == WEIGHTS


def test_the_operator_primer_refuses_what_the_template_would(tmp_path: Path) -> None:
    prime = _prime_module()
    assert prime.main(["--bucket", BUCKET, "--model-id", MODEL, "--revision", "main"]) == 2
    assert prime.main(["--bucket", BUCKET, "--model-id", "a/b c", "--revision", REVISION]) == 2
