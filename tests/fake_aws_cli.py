"""Stands in for the AWS CLI on the GPU instance, for tests/test_bootstrap.py: the subset fleet/bootstrap.sh uses,
done with boto3 against the moto server at $AWS_ENDPOINT_URL (the AWS CLI is not a dependency of this project).

It follows the real CLI where the script depends on it: `s3 cp` of a missing key or bucket exits 1;
`s3 cp --recursive` from a prefix copies every object under it (none is not an error) and follows local
symlinks when uploading; `--exclude` patterns match the path relative to the source directory. Every call is
appended to $FAKE_AWS_LOG, one line of arguments.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

import boto3
from botocore.exceptions import ClientError


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def _s3_cp(args: list[str]) -> int:
    recursive = "--recursive" in args
    excludes = [args[i + 1] for i, a in enumerate(args) if a == "--exclude"]
    valued = {"--exclude", "--region"}
    paths = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] not in valued)]
    source, destination = paths
    s3 = boto3.client("s3")
    try:
        if source.startswith("s3://") and not recursive:
            bucket, key = _split(source)
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            Path(destination).write_bytes(body)
        elif source.startswith("s3://"):
            bucket, prefix = _split(source)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    target = Path(destination) / item["Key"][len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        elif not recursive:
            bucket, key = _split(destination)
            s3.put_object(Bucket=bucket, Key=key, Body=Path(source).read_bytes())
        else:
            bucket, prefix = _split(destination)
            for dirpath, _, names in os.walk(source, followlinks=True):
                for name in names:
                    path = Path(dirpath) / name
                    relative = str(path.relative_to(source))
                    if any(fnmatch.fnmatch(relative, pattern) for pattern in excludes):
                        continue
                    s3.put_object(Bucket=bucket, Key=prefix + relative, Body=path.read_bytes())
    except ClientError as error:
        print(f"fatal error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_AWS_LOG"], "a") as log:
        log.write(" ".join(argv) + "\n")
    config = os.environ.get("AWS_CONFIG_FILE")
    if config:
        with open(os.environ["FAKE_AWS_LOG"], "a") as log:
            log.write("config: " + Path(config).read_text().replace("\n", "|") + "\n")
    if argv[:2] == ["s3", "cp"]:
        return _s3_cp(argv[2:])
    if argv[:2] == ["secretsmanager", "get-secret-value"]:
        secret_id = argv[argv.index("--secret-id") + 1]
        print(boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"])
        return 0
    if argv[:2] == ["ecr", "get-login-password"]:
        print("ecr-password-from-the-stub")
        return 0
    print(f"fake aws: not implemented: {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
