"""Serializes cedar's two computations with the real Earth Engine Python client, offline.

cedar builds its expressions in Rust; tests/it/earthengine.rs runs this script with the same
inputs and compares the two DAGs, so that cedar asks EE for what the reference client would.

Input (JSON on stdin):
  {"collection": "LANDSAT/LC08/C02/T1_L2",
   "bands": [["SR_B2", "blue"], ...],          # native, common name
   "data_type": "uint16", "nodata": 0, "mosaic_per_day": true,
   "images": [["ID1", 1622570400000], ...],   # image ID, system:time_start (ms, UTC)
   "crs": "EPSG:5070" | "<WKT>",
   "bounds": [left, bottom, right, top],       # the tile, in CRS units
   "period": ["2021-01-01", "2022-01-01"],     # end exclusive
   "filters": [["CLOUD_COVER", "<", 80], ...]}
Output (JSON on stdout):
  {"list_images": <Expression>, "preard_image": <Expression>}

Offline initialisation follows ee/apitestcase.py (no network, no credentials); it relies on
the algorithm list bundled with earthengine-api, so pin the version (1.7.50).
"""

import datetime
import itertools
import json
import sys

import ee
from ee import apitestcase

# The original CEDAR shrank the tile by 1e-3 CRS units so that touching scenes don't match.
FOOTPRINT_INSET = 1e-3

FILTERS = {
    "<": ee.Filter.lt,
    "<=": ee.Filter.lte,
    ">": ee.Filter.gt,
    ">=": ee.Filter.gte,
    "==": ee.Filter.eq,
    "!=": ee.Filter.neq,
}

CASTS = {
    "int8": ee.Image.toInt8,
    "uint8": ee.Image.toUint8,
    "int16": ee.Image.toInt16,
    "uint16": ee.Image.toUint16,
    "int32": ee.Image.toInt32,
    "uint32": ee.Image.toUint32,
    "float": ee.Image.toFloat,
    "double": ee.Image.toDouble,
}


def initialize_offline():
    ee.Reset()
    ee.data._install_cloud_api_resource = lambda: None
    ee.data.getAlgorithms = apitestcase.GetAlgorithms
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(None, "", project="cedar-test")


def list_images(req):
    left, bottom, right, top = req["bounds"]
    d = FOOTPRINT_INSET
    footprint = ee.Geometry.Rectangle(
        [left + d, bottom + d, right - d, top - d], ee.Projection(req["crs"]), False, True
    )
    start, end = req["period"]
    collection = ee.ImageCollection(req["collection"]).filterDate(start, end).filterBounds(footprint)
    for prop, op, value in req["filters"]:
        collection = collection.filter(FILTERS[op](prop, value))
    return collection


def slices(req):
    """Image IDs per time slice: per UTC date when mosaicking, else one scene each."""
    images = sorted(req["images"], key=lambda im: (im[1], im[0]))
    if not req["mosaic_per_day"]:
        return [[image_id] for image_id, _ in images]

    def utc_date(image):
        return datetime.datetime.fromtimestamp(image[1] / 1000, tz=datetime.timezone.utc).date()

    return [[image_id for image_id, _ in group] for _, group in itertools.groupby(images, key=utc_date)]


def preard_image(req):
    natives = [b[0] for b in req["bands"]]
    names = [b[1] for b in req["bands"]]
    per_slice = []
    for ids in slices(req):
        if req["mosaic_per_day"]:
            image = ee.ImageCollection.fromImages([ee.Image(i) for i in ids]).mosaic()
        else:
            (only,) = ids
            image = ee.Image(only)
        per_slice.append(image.select(natives, names))
    stacked = ee.ImageCollection.fromImages(per_slice).toBands()
    return CASTS[req["data_type"]](stacked).unmask(req["nodata"])


def main():
    req = json.load(sys.stdin)
    initialize_offline()
    out = {
        "list_images": ee.serializer.encode(list_images(req), for_cloud_api=True),
        "preard_image": ee.serializer.encode(preard_image(req), for_cloud_api=True),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
