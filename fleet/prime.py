"""Fill the stack's weights cache by operator command (for PrimeWeights=false, where instances may only read it).

    python fleet/prime.py --bucket <WeightsBucket> --model-id meta-llama/Llama-3.1-8B-Instruct \\
        --revision 0e9e39f249a16976918f6564b8830bc894c89659 [--from-dir DIR]

Without --from-dir it downloads the revision from the Hugging Face Hub first (HF_TOKEN in the environment for gated
models; top-level safetensors, JSON and tokenizer files, which is what TGI loads). It uploads the files under
``weights/<model-id>/<revision>/files/`` and then ``manifest.json`` - the layout and chunked-sha256 manifest that
fleet/bootstrap.sh verifies - and writes the manifest last, so an instance never sees a half-primed copy as whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

CHUNK_BYTES = 256 * 1024 * 1024  # as fleet/bootstrap.sh's primer
REVISION = re.compile(r"^[0-9a-f]{40}$")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$")  # the template's ModelId pattern


def manifest(root: Path, model_id: str, revision: str, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".spotkeeper")):
        hashes = []
        with path.open("rb") as f:
            while True:
                block = f.read(chunk_bytes)
                if block or not hashes:
                    hashes.append(hashlib.sha256(block).hexdigest())
                if len(block) < chunk_bytes:
                    break
        files.append({"path": str(path.relative_to(root)), "size": path.stat().st_size, "sha256": hashes})
    if not files:
        raise SystemExit(f"no files under {root}")
    return {"model_id": model_id, "revision": revision, "chunk_bytes": chunk_bytes, "files": files}


def upload(root: Path, bucket: str, model_id: str, revision: str, s3: Any) -> str:
    from boto3.s3.transfer import TransferConfig

    prefix = f"weights/{model_id}/{revision}"
    listing = manifest(root, model_id, revision)
    config = TransferConfig(max_concurrency=64, multipart_chunksize=16 * 1024 * 1024)
    for entry in listing["files"]:
        s3.upload_file(str(root / entry["path"]), bucket, f"{prefix}/files/{entry['path']}", Config=config)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=json.dumps(listing).encode())
    return f"s3://{bucket}/{prefix}"


def download(model_id: str, revision: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            model_id,
            revision=revision,
            allow_patterns=["*.safetensors", "*.json", "tokenizer.model"],
            ignore_patterns=["*/*"],  # e.g. original/consolidated.00.pth: not what TGI loads
            token=os.environ.get("HF_TOKEN") or None,
        )
    )


def main(argv: list[str] | None = None, s3: Any = None) -> int:
    p = argparse.ArgumentParser(prog="python fleet/prime.py", description=__doc__.splitlines()[0])
    p.add_argument("--bucket", required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--revision", required=True, help="the 40-hex commit, as the stack's ModelRevision")
    p.add_argument("--from-dir", type=Path, help="upload these files instead of downloading from the Hub")
    args = p.parse_args(argv)
    if not REVISION.fullmatch(args.revision) or not MODEL_ID.fullmatch(args.model_id):
        print("error: --revision must be a 40-hex commit and --model-id a Hub id", file=sys.stderr)
        return 2
    root = args.from_dir or download(args.model_id, args.revision)
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    print(f"primed {upload(root, args.bucket, args.model_id, args.revision, s3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
