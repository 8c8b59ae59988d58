"""Peer of `tl-ingest upload` in the throughput benchmark: the official
TwelveLabs Python SDK uploading files with `client.assets.create(method="direct",
file=...)` from a pool of threads, as a user of the SDK would write it.

Run by scripts/bench with the venv's python:
    sdk_upload.py BASE_URL API_KEY THREADS FILE...
A FILE of the form @LIST reads the paths from LIST, one a line (more
files than a command line holds).
BASE_URL includes the API version (the SDK's default environment is
"https://api.twelvelabs.io/v1.3"; requests go to BASE_URL + "/assets").
Prints one JSON object: import and upload times (s) and the asset ids.
"""

import json
import sys
import time

t0 = time.perf_counter()
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from twelvelabs import TwelveLabs  # noqa: E402

t_import = time.perf_counter() - t0


def main() -> int:
    base_url, api_key, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    files = []
    for arg in sys.argv[4:]:
        if arg.startswith("@"):
            with open(arg[1:]) as f:
                files += [line.rstrip("\n") for line in f if line.strip()]
        else:
            files.append(arg)
    client = TwelveLabs(api_key=api_key, base_url=base_url)

    def one(path: str) -> str:
        with open(path, "rb") as f:
            asset = client.assets.create(method="direct", file=f)
        return asset.id

    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ids = list(pool.map(one, files))
    t_upload = time.perf_counter() - t1
    print(json.dumps({"import_s": t_import, "upload_s": t_upload, "ids": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
