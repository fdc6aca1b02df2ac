#!/usr/bin/env python3
"""Writes src/web/outline.txt, the outline the web console draws under a campaign's tiles.

Sources, both from npm (`npm pack world-atlas@2.0.2 us-atlas@3.0.1`, then untar each):
- world-atlas 2.0.2, countries-50m.json: Natural Earth 1:50m country borders and coasts
  (Natural Earth is in the public domain; world-atlas is ISC-licensed);
- us-atlas 3.0.1, states-10m.json: the U.S. Census Bureau's cartographic boundaries, of which
  the borders between two states are kept (public domain; us-atlas is ISC-licensed).

Every line of the output is one polyline, "lon,lat lon,lat ...", in degrees (WGS 84) with three
decimals, over North America (the area of the shipped Landsat ARD grids); lines starting with
'#' say where it came from. Usage: scripts/outline.py WORLD_ATLAS_DIR US_ATLAS_DIR > src/web/outline.txt
"""
import json
import sys

# lon_min, lat_min, lon_max, lat_max
BOX = (-180.0, 14.0, -50.0, 75.0)
# Douglas-Peucker tolerance, degrees (about a kilometre): finer than any map the console draws.
TOLERANCE = 0.01


def arcs(topology):
    """Every arc of a quantized TopoJSON topology as a list of (lon, lat)."""
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    out = []
    for arc in topology["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append((x * sx + tx, y * sy + ty))
        out.append(pts)
    return out


def rings(geometry):
    """The arc index lists of a Polygon or MultiPolygon geometry."""
    if geometry["type"] == "Polygon":
        return geometry["arcs"]
    if geometry["type"] == "MultiPolygon":
        return [ring for polygon in geometry["arcs"] for ring in polygon]
    return []


def arc_users(geometries):
    """How many geometries use each arc index."""
    users = {}
    for g in geometries:
        seen = set()
        for ring in rings(g):
            for i in ring:
                seen.add(i if i >= 0 else ~i)
        for i in seen:
            users[i] = users.get(i, 0) + 1
    return users


def inside(p):
    return BOX[0] <= p[0] <= BOX[2] and BOX[1] <= p[1] <= BOX[3]


def unwrap(line):
    """`line` with no jump across the antimeridian: each longitude within 180 of the last."""
    out = []
    for x, y in line:
        if out:
            while x - out[-1][0] > 180:
                x -= 360
            while out[-1][0] - x > 180:
                x += 360
        out.append((x, y))
    return out


def clip(line):
    """The runs of `line` inside BOX (a point just outside is kept at each end)."""
    line = unwrap(line)
    runs, run = [], []
    for i, p in enumerate(line):
        if inside(p) or (i + 1 < len(line) and inside(line[i + 1])) or (run and inside(run[-1])):
            run.append(p)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return [r for r in runs if len(r) >= 2]


def simplify(line, tol):
    """Douglas-Peucker, iterative."""
    if len(line) < 3:
        return line
    keep = [False] * len(line)
    keep[0] = keep[-1] = True
    stack = [(0, len(line) - 1)]
    while stack:
        a, b = stack.pop()
        (ax, ay), (bx, by) = line[a], line[b]
        dx, dy = bx - ax, by - ay
        norm = (dx * dx + dy * dy) ** 0.5
        far, index = 0.0, None
        for i in range(a + 1, b):
            px, py = line[i]
            if norm == 0:
                d = ((px - ax) ** 2 + (py - ay) ** 2) ** 0.5
            else:
                d = abs(dy * (px - ax) - dx * (py - ay)) / norm
            if d > far:
                far, index = d, i
        if index is not None and far > tol:
            keep[index] = True
            stack += [(a, index), (index, b)]
    return [p for p, k in zip(line, keep) if k]


def main():
    world_dir, us_dir = sys.argv[1], sys.argv[2]
    world = json.load(open(f"{world_dir}/countries-50m.json"))
    states = json.load(open(f"{us_dir}/states-10m.json"))
    lines = list(arcs(world))
    state_arcs = arcs(states)
    users = arc_users(states["objects"]["states"]["geometries"])
    lines += [state_arcs[i] for i, n in sorted(users.items()) if n >= 2]
    print("# The outline under the web console's tile map (scripts/outline.py): Natural Earth 1:50m")
    print("# country borders and coasts (public domain) from npm world-atlas 2.0.2, and the borders")
    print("# between U.S. states from the Census Bureau's cartographic boundaries (public domain) from")
    print("# npm us-atlas 3.0.1. One polyline per line, \"lon,lat ...\", WGS 84 degrees.")
    for line in lines:
        for run in clip(line):
            run = simplify(run, TOLERANCE)
            if len(run) >= 2:
                print(" ".join(f"{x:.3f},{y:.3f}" for x, y in run))


if __name__ == "__main__":
    main()
