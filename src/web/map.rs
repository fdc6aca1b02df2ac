//! The tile map and the tiles × periods matrix of a campaign, as plain values: where each
//! submitted tile is drawn (the grid's own coordinates, y flipped for SVG), one letter per
//! order state, and the matrix rolled up by year when a campaign has too many periods to draw.

use std::fmt::Write as _;

use serde::Serialize;

use crate::grid::{GridError, TileGrid};
use crate::period::Period;
use crate::queue::tracking::OrderState;

/// A matrix with more periods than this gets one column per year instead: 726 tiles × 480
/// monthly periods would be 348,480 cells, far more than anyone reads and than a page carries.
pub const MAX_PERIOD_COLUMNS: usize = 60;

/// Tiles of the grid drawn around the submitted ones, faintly, so that a campaign is seen
/// where it lies on the grid.
const GRID_MARGIN: u32 = 2;

/// The letter that stands for `state` in the compact strings the console sends (one letter per
/// order; `console.js` has the same table).
pub fn code(state: OrderState) -> char {
    match state {
        OrderState::Queued => 'q',
        OrderState::Pending => 'p',
        OrderState::Running => 'r',
        OrderState::Cancelling => 'x',
        OrderState::Succeeded => 's',
        OrderState::Downloaded => 'd',
        OrderState::Cleaned => 'c',
        OrderState::Empty => 'e',
        OrderState::Failed => 'f',
        OrderState::Cancelled => 'n',
        OrderState::Lost => 'l',
    }
}

/// The state a letter of [`code`] stands for.
pub fn state_of(code: char) -> Option<OrderState> {
    OrderState::ALL.into_iter().find(|s| self::code(*s) == code)
}

/// One submitted tile on the map: its rectangle in the grid's coordinates, y negated so that
/// north is up in SVG (whose y grows downwards).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileRect {
    pub row: u32,
    pub col: u32,
    pub label: String,
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// The map of a campaign's tiles.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Geometry {
    /// `min-x min-y width height` of the SVG viewBox.
    pub view_box: [f64; 4],
    /// The submitted tiles, in the submission's order.
    pub tiles: Vec<TileRect>,
    /// An SVG path of the grid's tile edges around the submitted tiles.
    pub grid_lines: String,
}

/// Where `tiles` of `grid` are drawn.
pub fn geometry(grid: &TileGrid, tiles: &[(u32, u32)]) -> Result<Geometry, GridError> {
    let rects = tiles
        .iter()
        .map(|(row, col)| {
            let t = grid.tile(*row, *col)?;
            let b = t.bounds;
            Ok(TileRect {
                row: *row,
                col: *col,
                label: t.label(),
                x: b.left,
                y: -b.top,
                width: b.right - b.left,
                height: b.top - b.bottom,
            })
        })
        .collect::<Result<Vec<_>, GridError>>()?;
    let (Some(rows), Some(cols)) = (
        span(tiles.iter().map(|t| t.0), grid.limits.rows),
        span(tiles.iter().map(|t| t.1), grid.limits.cols),
    ) else {
        return Ok(Geometry {
            view_box: [0.0, 0.0, 1.0, 1.0],
            tiles: rects,
            grid_lines: String::new(),
        });
    };
    // The corners of the area drawn: the top-left tile's top-left, the bottom-right's
    // bottom-right (rows grow southwards, columns eastwards).
    let top_left = grid.tile(rows.0, cols.0)?.bounds;
    let bottom_right = grid.tile(rows.1, cols.1)?.bounds;
    let (left, top) = (top_left.left, top_left.top);
    let (right, bottom) = (bottom_right.right, bottom_right.bottom);
    let mut lines = String::new();
    for r in rows.0..=rows.1 {
        let y = -grid.tile(r, cols.0)?.bounds.top;
        let _ = write!(lines, "M{left} {y}H{right}");
    }
    let _ = write!(lines, "M{left} {}H{right}", -bottom);
    for c in cols.0..=cols.1 {
        let x = grid.tile(rows.0, c)?.bounds.left;
        let _ = write!(lines, "M{x} {}V{}", -top, -bottom);
    }
    let _ = write!(lines, "M{right} {}V{}", -top, -bottom);
    Ok(Geometry {
        view_box: [left, -top, right - left, top - bottom],
        tiles: rects,
        grid_lines: lines,
    })
}

/// The indices from the lowest to the highest of `values`, widened by [`GRID_MARGIN`] within
/// `limits`; `None` without values.
fn span(values: impl Iterator<Item = u32>, limits: (u32, u32)) -> Option<(u32, u32)> {
    let (mut lo, mut hi) = (u32::MAX, 0);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo <= hi).then(|| {
        (
            lo.saturating_sub(GRID_MARGIN).max(limits.0),
            hi.saturating_add(GRID_MARGIN).min(limits.1),
        )
    })
}

/// The tiles × periods matrix of one collection: one row per tile, one column per period, or
/// per year when there are more than [`MAX_PERIOD_COLUMNS`] periods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    /// Whether a column is a year of periods rather than one period.
    pub by_year: bool,
    pub columns: Vec<Column>,
    /// One letter per cell ([`code`]), row after row; a year's cell is its periods rolled up
    /// ([`rollup`]).
    pub cells: String,
}

/// A column of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Column {
    pub label: String,
    /// The first period of the column (the one a click selects on the map).
    pub first: Period,
    /// The periods it holds: `periods[from..to]` of the submission.
    pub from: usize,
    pub to: usize,
}

/// The matrix of the collection whose orders' letters are `codes` (tile-major, then period:
/// the order of `Submission::orders` within one collection).
pub fn matrix(codes: &[u8], tiles: usize, periods: &[Period]) -> Matrix {
    let by_year = periods.len() > MAX_PERIOD_COLUMNS;
    let mut columns: Vec<Column> = Vec::new();
    for (i, p) in periods.iter().enumerate() {
        let label = if by_year {
            p.start.format("%Y").to_string()
        } else {
            p.start.to_string()
        };
        match columns.last_mut() {
            Some(c) if by_year && c.label == label => c.to = i + 1,
            _ => columns.push(Column {
                label,
                first: *p,
                from: i,
                to: i + 1,
            }),
        }
    }
    let mut cells = String::with_capacity(tiles * columns.len());
    for t in 0..tiles {
        let row = &codes[t * periods.len()..(t + 1) * periods.len()];
        for c in &columns {
            cells.push(rollup(&row[c.from..c.to]));
        }
    }
    Matrix {
        by_year,
        columns,
        cells,
    }
}

/// One letter for a group of orders, saying what an operator most needs to know about it:
/// failed if any order failed, else in progress if any has left the queue without finishing,
/// else queued if any is waiting, else complete (EMPTY only when every order is).
pub fn rollup(codes: &[u8]) -> char {
    let states = || codes.iter().filter_map(|c| state_of(*c as char));
    if let Some(s) = states().find(|s| s.is_failed()) {
        return code(s);
    }
    if let Some(s) = states().find(|s| !s.is_complete() && *s != OrderState::Queued) {
        return code(s);
    }
    if states().any(|s| s == OrderState::Queued) {
        return code(OrderState::Queued);
    }
    if states().all(|s| s == OrderState::Empty) && !codes.is_empty() {
        return code(OrderState::Empty);
    }
    code(OrderState::Cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn months(n: usize) -> Vec<Period> {
        let mut out = Vec::new();
        let mut d = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        for _ in 0..n {
            let next = d.checked_add_months(chrono::Months::new(1)).unwrap();
            out.push(Period {
                start: d,
                end: next,
            });
            d = next;
        }
        out
    }

    #[test]
    fn every_state_has_its_own_letter() {
        let letters: std::collections::BTreeSet<char> =
            OrderState::ALL.into_iter().map(code).collect();
        assert_eq!(letters.len(), OrderState::ALL.len());
        for s in OrderState::ALL {
            assert_eq!(state_of(code(s)), Some(s));
        }
        assert_eq!(state_of('?'), None);
    }

    #[test]
    fn tiles_are_drawn_in_grid_coordinates_north_up() {
        let grid = TileGrid::preset("Landsat ARD v1 - CONUS").unwrap();
        let g = geometry(&grid, &[(10, 14), (11, 14)]).unwrap();
        let (a, b) = (&g.tiles[0], &g.tiles[1]);
        let ta = grid.tile(10, 14).unwrap();
        assert_eq!((a.x, a.y), (ta.bounds.left, -ta.bounds.top));
        assert_eq!(a.width, ta.bounds.right - ta.bounds.left);
        // Row 11 lies south of row 10: further down in SVG.
        assert!(b.y > a.y);
        assert_eq!(a.label, "h014v010");
        // The view holds both tiles and a margin of grid around them.
        let [x, y, w, h] = g.view_box;
        assert!(x < a.x && y < a.y && x + w > a.x + a.width && y + h > b.y + b.height);
        assert!(g.grid_lines.starts_with('M'));
        assert!(geometry(&grid, &[(999, 0)]).is_err());
    }

    #[test]
    fn the_margin_stays_within_the_grid() {
        assert_eq!(span([0, 3].into_iter(), (0, 21)), Some((0, 5)));
        assert_eq!(span([21].into_iter(), (0, 21)), Some((19, 21)));
        assert_eq!(span(std::iter::empty(), (0, 21)), None);
    }

    #[test]
    fn a_few_periods_get_a_column_each() {
        let p = months(3);
        let m = matrix(b"qcfrce", 2, &p);
        assert!(!m.by_year);
        assert_eq!(m.columns.len(), 3);
        assert_eq!(m.columns[1].label, "2000-02-01");
        assert_eq!(m.cells, "qcfrce");
    }

    #[test]
    fn many_periods_roll_up_by_year() {
        let p = months(480);
        let mut codes = vec![b'c'; 2 * 480];
        codes[5] = b'f'; // tile 0, 2000
        codes[480 + 13] = b'r'; // tile 1, 2001
        codes[480 + 30] = b'q'; // tile 1, 2002
        codes[480 + 36..480 + 48].fill(b'e'); // tile 1, 2003: all empty
        let m = matrix(&codes, 2, &p);
        assert!(m.by_year);
        assert_eq!(m.columns.len(), 40);
        assert_eq!((m.columns[1].from, m.columns[1].to), (12, 24));
        assert_eq!(m.columns[39].label, "2039");
        assert_eq!(m.cells.len(), 80);
        assert_eq!(&m.cells[..2], "fc");
        assert_eq!(&m.cells[40..44], "crqe");
    }

    #[test]
    fn a_rollup_shows_failures_then_progress_then_waiting() {
        assert_eq!(rollup(b"ccfr"), 'f');
        assert_eq!(rollup(b"cqrc"), 'r');
        assert_eq!(rollup(b"cqec"), 'q');
        assert_eq!(rollup(b"ceec"), 'c');
        assert_eq!(rollup(b"ee"), 'e');
    }
}
