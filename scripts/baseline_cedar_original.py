#!/usr/bin/env python3
"""The baseline of `cedar bench e2e`: what the original CEDAR (ceholden/cedar-datacube) does for
each tile-period, one after the other, with the real Python `earthengine-api` client.

Per item, in sequence, as `cedar submit` + `cedar status update` + `cedar download` did:

1. `getInfo` of the item's image collection (one `value:compute`): the scenes of the collection
   in the period whose footprint intersects the tile.
2. Build the pre-ARD image (per-day mosaics, selected and renamed, stacked with `toBands`, cast,
   unmasked) and `Export.image.toCloudStorage(...).start()` (one `image:export`). Items with no
   scene are skipped, as the original skips empty items.
3. `task.status()` (one `operations.get` each) until the task is no longer active.
4. List the bucket by the item's name prefix and download every object (google-cloud-storage:
   one `objects.list`, then one media GET per object) to `<dest>/<tracking>/<file>` through a
   temporary name, then rename, as the original's stores do.

The client is the real one, pointed at the cedar emulator:

- `ee.Initialize` would fetch the discovery document from `{url}/$discovery/rest`, which the
  emulator does not serve, so the Cloud API resource is built with
  `googleapiclient.discovery.build_from_document` from the discovery stub shipped in the
  `earthengine-api` wheel's tests (reference/earthengine.v1alpha.discovery-stub-20200203.json),
  with its root URL replaced by the emulator's and its `v1alpha/` paths by `v1/` (the paths of
  the v1 API the client uses; the methods are otherwise identical). The algorithm list comes
  from the wheel's test data (`apitestcase.GetAlgorithms`), as in reference/earthengine-rest.md
  §7.6. Every request then goes through the client's own request builder, headers and retries.
- The original exports with `crs`, `crsTransform` and `dimensions="WxH"` only, for which the
  client builds `clipToBoundsAndScale(geometry=Rectangle(..., crs=Image.projection(...)))`;
  the emulator does not implement `Image.projection`, so `region` (the tile's exact bounds in
  its CRS) is passed as well. The output pixel grid is the same.
- google-cloud-storage downloads from an object's `mediaLink`, or, when the listing has none,
  from `{endpoint}/download/storage/v1/b/...`; the emulator serves neither (its listing has no
  `mediaLink`, and it serves media only as `/storage/v1/b/{bucket}/o/{object}?alt=media`, which
  Google serves too), so the listed blobs get that URL as their `mediaLink`. The download is
  still the client's own: one media GET per object, checksum validated.

Reads the items (one JSON object per tile-period, written by `cedar bench e2e`) and prints one
JSON line with the timings and request counts on stdout.
"""

import argparse
import json
import os
import socket
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import httplib2
import ee
from ee import _cloud_api_utils, apitestcase
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

HERE = Path(__file__).resolve().parent
DISCOVERY_STUB = (
    HERE.parent / "reference" / "earthengine.v1alpha.discovery-stub-20200203.json"
)

# Python client filter helpers per cedar comparison symbol.
FILTERS = {
    "<": ee.Filter.lt,
    "<=": ee.Filter.lte,
    ">": ee.Filter.gt,
    ">=": ee.Filter.gte,
    "==": ee.Filter.eq,
    "!=": ee.Filter.neq,
}

# The client's task states that mean "not finished yet" (`Task.State.active()`).
ACTIVE = {"UNSUBMITTED", "READY", "RUNNING", "CANCEL_REQUESTED"}


def initialize(url: str, project: str) -> None:
    """`ee.Initialize` without network access to Google, every API call going to `url`."""
    doc = json.loads(DISCOVERY_STUB.read_text())
    doc["rootUrl"] = url.rstrip("/") + "/"
    doc["baseUrl"] = doc["rootUrl"]
    doc = json.loads(json.dumps(doc).replace('"v1alpha/{', '"v1/{'))

    def install() -> None:
        state = ee.data._get_state()
        for raw in (False, True):
            resource = _cloud_api_utils.build_cloud_resource_from_document(
                doc,
                http_transport=httplib2.Http(),
                headers_supplier=ee.data._make_request_headers,
                response_inspector=ee.data._handle_response_headers,
                raw=raw,
            )
            if raw:
                state.cloud_api_resource_raw = resource
            else:
                state.cloud_api_resource = resource

    ee.Reset()
    ee.data._install_cloud_api_resource = install
    ee.data.getAlgorithms = apitestcase.GetAlgorithms
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(None, "", project=project)


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def run_item(item, bucket, gcs_bucket, media_root, dest, poll_interval, calls):
    """One tile-period through list, export, poll and download; returns (objects, bytes)."""
    projection = ee.Projection(item["footprint"]["crs"])
    footprint = ee.Geometry.Rectangle(
        item["footprint"]["coordinates"], projection, False, True
    )
    collection = (
        ee.ImageCollection(item["collection"])
        .filterDate(item["start"], item["end"])
        .filterBounds(footprint)
    )
    for f in item["filters"]:
        collection = collection.filter(FILTERS[f["op"]](f["property"], f["value"]))
    info = collection.getInfo()
    calls["value.compute"] += 1
    features = sorted(
        info.get("features") or [],
        key=lambda f: (f["properties"]["system:time_start"], f["id"]),
    )
    if not features:
        return 0, 0

    days = {}
    for f in features:
        key = day_of(f["properties"]["system:time_start"]) if item["mosaic_per_day"] else f["id"]
        days.setdefault(key, []).append(f["id"])
    slices = [
        ee.ImageCollection.fromImages([ee.Image(i) for i in ids])
        .mosaic()
        .select(item["bands"], item["names"])
        for ids in days.values()
    ]
    image = getattr(ee.ImageCollection.fromImages(slices).toBands(), item["cast"])()
    image = image.unmask(item["nodata"])
    tile_crs = item["crs"]
    task = ee.batch.Export.image.toCloudStorage(
        image,
        description=item["description"],
        bucket=bucket,
        fileNamePrefix=item["file_name_prefix"],
        crs=tile_crs,
        crsTransform=item["crs_transform"],
        dimensions=item["dimensions"],
        region=ee.Geometry.Rectangle(
            item["region"], ee.Projection(tile_crs), False, True
        ),
        fileDimensions=item["file_dimensions"],
        maxPixels=item["max_pixels"],
        formatOptions={"cloudOptimized": item["cloud_optimized"]},
    )
    task.start()
    calls["image.export"] += 1

    while True:
        status = task.status()
        calls["operations.get"] += 1
        if status["state"] not in ACTIVE:
            break
        time.sleep(poll_interval)
    if status["state"] != "COMPLETED":
        raise RuntimeError(f"{item['description']}: task ended {status}")

    # The original lists the prefix and keeps the objects whose names start with the item's.
    blobs = list(gcs_bucket.list_blobs(prefix=item["file_name_prefix"]))
    calls["objects.list"] += 1
    folder = dest / item["tracking"]
    folder.mkdir(parents=True, exist_ok=True)
    n = size = 0
    for blob in blobs:
        if not blob.name.endswith((".tif", ".json")):
            continue
        if not blob.media_link:
            blob._properties["mediaLink"] = (
                f"{media_root}/{quote(blob.name, safe='')}?alt=media"
            )
        target = folder / blob.name.rsplit("/", 1)[-1]
        tmp = target.with_name(f"{target.name}.tmp.{socket.gethostname()}{os.getpid()}")
        blob.download_to_filename(str(tmp))
        calls["objects.get.media"] += 1
        tmp.rename(target)
        n += 1
        size += blob.size or 0
    return n, size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emulator", required=True, help="base URL of the EE emulator")
    p.add_argument("--project", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--items", required=True, help="JSON list of items from cedar bench e2e")
    p.add_argument("--dest", required=True, help="download folder")
    p.add_argument("--limit", type=int, default=None, help="run only the first N items")
    p.add_argument(
        "--poll-interval-secs",
        type=float,
        default=0.01,
        help="sleep between two task.status() calls (default 0.01)",
    )
    a = p.parse_args()

    items = json.loads(Path(a.items).read_text())[: a.limit]
    started = time.monotonic()
    initialize(a.emulator, a.project)
    gcs = storage.Client(
        project=a.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": a.emulator},
    )
    gcs_bucket = gcs.bucket(a.bucket)
    media_root = f"{a.emulator.rstrip('/')}/storage/v1/b/{a.bucket}/o"
    ready = time.monotonic()
    calls = Counter()
    objects = size = empty = 0
    for item in items:
        n, b = run_item(
            item, a.bucket, gcs_bucket, media_root, Path(a.dest), a.poll_interval_secs, calls
        )
        objects += n
        size += b
        empty += n == 0
    done = time.monotonic()
    print(
        json.dumps(
            {
                "client": f"earthengine-api {ee.__version__}, google-cloud-storage {storage.__version__}",
                "items": len(items),
                "empty": empty,
                "objects": objects,
                "bytes": size,
                "init_seconds": ready - started,
                "seconds": done - ready,
                "items_per_second": len(items) / max(done - ready, 1e-9),
                "requests": dict(sorted(calls.items())),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
