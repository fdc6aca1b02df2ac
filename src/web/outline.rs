//! The outline drawn under a campaign's tiles — Natural Earth's country borders and coasts and
//! the borders between U.S. states (`outline.txt`, made by `scripts/outline.py` from the npm
//! packages world-atlas and us-atlas; public domain) — projected into the grid's own CRS,
//! clipped to the map and simplified to what the map can show.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

use crate::grid::TileGrid;

/// The outline's polylines, WGS 84 degrees, over North America.
const OUTLINE: &str = include_str!("outline.txt");

/// Detail kept: a point is dropped when it is closer than the map's larger side divided by this
/// to the line through its neighbours (the map is drawn some 700 pixels wide).
const DETAIL: f64 = 1500.0;

static LINES: LazyLock<Vec<Vec<(f64, f64)>>> = LazyLock::new(|| parse(OUTLINE));

fn parse(text: &str) -> Vec<Vec<(f64, f64)>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| {
                    let (x, y) = p.split_once(',')?;
                    Some((x.parse().ok()?, y.parse().ok()?))
                })
                .collect()
        })
        .collect()
}

/// An SVG path in the map's coordinates (those of [`crate::web::map::geometry`]): `d` in whole
/// units of `unit` metres from (`x0`, `y0`), to be drawn with
/// `transform="translate(x0 y0) scale(unit)"` — small integers keep the page small.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    pub x0: f64,
    pub y0: f64,
    pub unit: f64,
    pub d: String,
}

/// The outline for `view_box` (`min-x min-y width height`, y pointing south as in SVG) of a map
/// of `grid`; `None` when the grid's CRS is not one cedar can project into, or nothing of the
/// outline falls on the map.
pub fn outline(grid: &TileGrid, view_box: [f64; 4]) -> Option<Outline> {
    let projection = grid.crs.projection()?;
    let [vx, vy, vw, vh] = view_box;
    let unit = vw.max(vh) / DETAIL;
    if !(unit.is_finite() && unit > 0.0) {
        return None;
    }
    // A margin, so that lines leave the map at its edge rather than stop short of it.
    let (mx, my) = (vw * 0.05, vh * 0.05);
    let map = [vx - mx, vy - my, vx + vw + mx, vy + vh + my];
    let mut d = String::new();
    for line in LINES.iter() {
        // Into map coordinates (y negated). A segment straight in degrees (the 49th parallel
        // is one) is an arc on the map: long ones are cut into pieces first.
        let pts: Vec<(f64, f64)> = densify(line)
            .map(|(lon, lat)| {
                let (x, y) = projection.project(lon, lat);
                (x, -y)
            })
            .collect();
        for run in runs_on(&pts, map) {
            let kept = simplify(run, unit);
            let mut last: Option<(i64, i64)> = None;
            for &(x, y) in &kept {
                let p = (
                    ((x - vx) / unit).round() as i64,
                    ((y - vy) / unit).round() as i64,
                );
                match last {
                    None => {
                        let _ = write!(d, "M{} {}", p.0, p.1);
                    }
                    Some(l) if l == p => continue,
                    Some(l) => {
                        let _ = write!(d, "l{} {}", p.0 - l.0, p.1 - l.1);
                    }
                }
                last = Some(p);
            }
        }
    }
    (!d.is_empty()).then_some(Outline {
        x0: vx,
        y0: vy,
        unit,
        d,
    })
}

/// The longest piece, in degrees, of a segment of the outline before it is projected.
const MAX_STEP: f64 = 0.25;

/// The points of `line` with long segments cut into pieces of at most [`MAX_STEP`] degrees.
fn densify(line: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    let first = line.first().copied().into_iter();
    first.chain(line.windows(2).flat_map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) / MAX_STEP)
            .ceil()
            .max(1.0) as usize;
        (1..=n).map(move |i| {
            let t = i as f64 / n as f64;
            (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
        })
    }))
}

/// The runs of `pts` whose segments touch the rectangle `map` (`[min-x, min-y, max-x, max-y]`):
/// each segment whose bounding box overlaps it is kept with both its ends, so that a line
/// crossing the map is drawn across it even when no point of it lies on the map.
fn runs_on(pts: &[(f64, f64)], map: [f64; 4]) -> Vec<&[(f64, f64)]> {
    let touches = |a: (f64, f64), b: (f64, f64)| {
        a.0.min(b.0) <= map[2]
            && a.0.max(b.0) >= map[0]
            && a.1.min(b.1) <= map[3]
            && a.1.max(b.1) >= map[1]
    };
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for i in 0..pts.len().saturating_sub(1) {
        match (touches(pts[i], pts[i + 1]), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(&pts[s..=i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&pts[s..]);
    }
    out
}

/// Douglas–Peucker: the points of `line` that keep it within `tolerance` of itself.
fn simplify(line: &[(f64, f64)], tolerance: f64) -> Vec<(f64, f64)> {
    if line.len() < 3 {
        return line.to_vec();
    }
    let mut keep = vec![false; line.len()];
    keep[0] = true;
    keep[line.len() - 1] = true;
    let mut stack = vec![(0, line.len() - 1)];
    while let Some((a, b)) = stack.pop() {
        let ((ax, ay), (bx, by)) = (line[a], line[b]);
        let (dx, dy) = (bx - ax, by - ay);
        let norm = dx.hypot(dy);
        let mut far = (0.0, None);
        for (i, &(px, py)) in line.iter().enumerate().take(b).skip(a + 1) {
            let dist = if norm == 0.0 {
                (px - ax).hypot(py - ay)
            } else {
                (dy * (px - ax) - dx * (py - ay)).abs() / norm
            };
            if dist > far.0 {
                far = (dist, Some(i));
            }
        }
        if let (dist, Some(i)) = far
            && dist > tolerance
        {
            keep[i] = true;
            stack.push((a, i));
            stack.push((i, b));
        }
    }
    line.iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(*p))
        .collect()
}

/// Outlines already made, by grid and view box: a campaign's map is the same on every request.
#[derive(Clone, Default)]
pub struct Outlines {
    made: Arc<Mutex<HashMap<String, Option<Arc<Outline>>>>>,
}

impl Outlines {
    pub fn get(&self, grid: &TileGrid, view_box: [f64; 4]) -> Option<Arc<Outline>> {
        let key = format!("{}|{:?}", grid.crs.as_str(), view_box);
        if let Some(o) = self.made.lock().expect("outline lock").get(&key) {
            return o.clone();
        }
        let o = outline(grid, view_box).map(Arc::new);
        let mut made = self.made.lock().expect("outline lock");
        // A console serves a handful of grids and campaigns; bounded all the same.
        if made.len() >= 256 {
            made.clear();
        }
        made.insert(key, o.clone());
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::{Crs, TileGrid};
    use crate::web::map::geometry;

    fn conus() -> TileGrid {
        TileGrid::preset("Landsat ARD v1 - CONUS").unwrap()
    }

    #[test]
    fn the_shipped_outline_is_read_whole() {
        let lines = &*LINES;
        assert!(lines.len() > 400, "{}", lines.len());
        let points: usize = lines.iter().map(Vec::len).sum();
        assert!(points > 10_000, "{points}");
        assert!(
            lines
                .iter()
                .flatten()
                .all(|&(lon, lat)| (-181.0..=-49.0).contains(&lon) && (13.0..=76.0).contains(&lat))
        );
    }

    #[test]
    fn a_map_of_conus_tiles_gets_an_outline_in_its_own_units() {
        let grid = conus();
        let g = geometry(&grid, &[(10, 14), (11, 15)]).unwrap();
        let o = outline(&grid, g.view_box).expect("an outline over Kansas");
        assert_eq!((o.x0, o.y0), (g.view_box[0], g.view_box[1]));
        assert!(o.d.starts_with('M'), "{}", &o.d[..40.min(o.d.len())]);
        // Whole numbers only, and the map is about DETAIL units wide.
        assert!(
            o.d.chars()
                .all(|c| c.is_ascii_digit() || "Ml -".contains(c))
        );
        // The whole grid: coasts and borders, in well under 100 KB.
        let all: Vec<(u32, u32)> = grid.limits.indices().collect();
        let g = geometry(&grid, &all).unwrap();
        let o = outline(&grid, g.view_box).unwrap();
        assert!(o.d.len() < 100_000, "{} bytes", o.d.len());
        assert!(o.d.matches('M').count() > 50);
    }

    #[test]
    fn an_unknown_crs_draws_nothing() {
        let mut grid = conus();
        grid.crs = Crs::Code("EPSG:32633".into());
        let g = geometry(&grid, &[(10, 14)]).unwrap();
        assert_eq!(outline(&grid, g.view_box), None);
    }

    #[test]
    fn the_49th_parallel_is_an_arc_and_crosses_a_map_with_no_point_on_it() {
        let grid = conus();
        let projection = grid.crs.projection().unwrap();
        // One straight segment in degrees, as the outline stores the border.
        let line = [(-122.788, 48.992), (-95.162, 48.992)];
        let pts: Vec<(f64, f64)> = densify(&line)
            .map(|(lon, lat)| {
                let (x, y) = projection.project(lon, lat);
                (x, -y)
            })
            .collect();
        assert!(pts.len() > 100, "{}", pts.len());
        // Its middle is where the parallel is, not on the chord between its ends.
        let mid = projection.project(-108.975, 48.992);
        let (a, b) = (pts[0], pts[pts.len() - 1]);
        let chord_y = -(a.1 + b.1) / 2.0;
        assert!(
            chord_y - mid.1 > 50_000.0,
            "the chord is {} m off",
            chord_y - mid.1
        );
        let nearest = pts
            .iter()
            .map(|p| (p.0 - mid.0).hypot(-p.1 - mid.1))
            .fold(f64::MAX, f64::min);
        assert!(nearest < 10_000.0, "{nearest} m");
        // A map of a few tiles in the middle of it, far from both ends, still gets it.
        let (x, y) = (mid.0, -mid.1);
        let map = [x - 100_000.0, y - 100_000.0, x + 100_000.0, y + 100_000.0];
        assert_eq!(runs_on(&[a, b], map).len(), 1, "a segment crossing the map");
        assert!(!runs_on(&pts, map).is_empty());
        assert!(runs_on(&[(0.0, 0.0), (1.0, 1.0)], map).is_empty());
    }

    #[test]
    fn simplify_keeps_the_corners_and_drops_the_straight() {
        let line = [(0.0, 0.0), (1.0, 0.01), (2.0, 0.0), (2.0, 5.0)];
        assert_eq!(
            simplify(&line, 0.1),
            vec![(0.0, 0.0), (2.0, 0.0), (2.0, 5.0)]
        );
    }
}
