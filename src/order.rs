//! An order is one collection × tile × period: the unit that becomes one EE export task.
//!
//! This module names an order's objects and knows exactly which objects an export of it
//! produces, so that download can check the set is complete and clean can delete by full name.

use serde::{Deserialize, Serialize};

use crate::grid::Tile;
use crate::naming::{ItemTemplates, ItemValues, NamingError};
use crate::period::Period;

/// The priority of a submission made by hand (`cedar submit`): submissions sharing EE go by
/// priority, higher first, and take turns within one.
pub const DEFAULT_PRIORITY: u32 = 100;
/// The priority `[[ingest]]` entries get unless they set one: above manual backfills, so a
/// daily ingest is not stuck behind a years-long backfill.
pub const INGEST_PRIORITY: u32 = 200;
/// The highest priority, as EE's own task priority (0–9999).
pub const MAX_PRIORITY: u32 = 9999;

/// One collection × tile × period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Order {
    pub collection: String,
    pub row: u32,
    pub col: u32,
    pub period: Period,
}

/// Where an order's objects live in the export bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderNames {
    /// The base name of the image and metadata objects.
    pub name: String,
    /// The folder, without a trailing '/'.
    pub prefix: String,
}

impl OrderNames {
    /// `{prefix}/{name}`: what the order is called, and where versions before recipes put its
    /// objects (see [`crate::recipe::Recipe::export_base`]).
    pub fn object_base(&self) -> String {
        format!("{}/{}", self.prefix, self.name)
    }
}

impl Order {
    /// Renders the order's name and prefix. `now` is the submission time, so that re-running a
    /// job renders the same names.
    pub fn names(
        &self,
        templates: ItemTemplates<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<OrderNames, NamingError> {
        let v = ItemValues {
            collection_id: &self.collection,
            row: self.row,
            col: self.col,
            period: self.period,
            now,
        };
        Ok(OrderNames {
            name: templates.name.render_item(&v)?,
            prefix: templates
                .prefix
                .render_item(&v)?
                .trim_end_matches('/')
                .to_string(),
        })
    }
}

/// One GeoTIFF file of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Piece {
    /// `{name}.tif`: the whole tile in one file.
    Whole,
    /// `{name}-{yoff:010}-{xoff:010}.tif`: pixel row and column offsets of the piece.
    At { y: u64, x: u64 },
}

/// The pieces EE writes for a `width × height` image split into `file_dimensions` squares.
pub fn expected_pieces(width: u32, height: u32, file_dimensions: u32) -> Vec<Piece> {
    if width <= file_dimensions && height <= file_dimensions {
        return vec![Piece::Whole];
    }
    let step = u64::from(file_dimensions);
    let mut out = Vec::new();
    for y in (0..u64::from(height)).step_by(step as usize) {
        for x in (0..u64::from(width)).step_by(step as usize) {
            out.push(Piece::At { y, x });
        }
    }
    out
}

/// The pieces of `tile` as exported with `file_dimensions`.
pub fn tile_pieces(tile: &Tile, file_dimensions: u32) -> Vec<Piece> {
    expected_pieces(tile.width, tile.height, file_dimensions)
}

/// Which piece `object` is, if it is a GeoTIFF of the export whose base is `base`
/// (`{prefix}/{name}`); `None` for anything else, including other orders whose name merely
/// starts with this one's.
pub fn parse_piece(base: &str, object: &str) -> Option<Piece> {
    let rest = object.strip_prefix(base)?.strip_suffix(".tif")?;
    if rest.is_empty() {
        return Some(Piece::Whole);
    }
    let offsets = rest.strip_prefix('-')?;
    let (y, x) = offsets.split_once('-')?;
    let digits = |s: &str| s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit());
    if digits(y) && digits(x) {
        Some(Piece::At {
            y: y.parse().ok()?,
            x: x.parse().ok()?,
        })
    } else {
        None
    }
}

/// The object name of `piece` for the export whose base is `base`.
pub fn piece_object(base: &str, piece: Piece) -> String {
    match piece {
        Piece::Whole => format!("{base}.tif"),
        Piece::At { y, x } => format!("{base}-{y:010}-{x:010}.tif"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_5000_tile_in_1024_files_is_25_pieces() {
        let p = expected_pieces(5000, 5000, 1024);
        assert_eq!(p.len(), 25);
        assert_eq!(p[0], Piece::At { y: 0, x: 0 });
        assert_eq!(p[1], Piece::At { y: 0, x: 1024 });
        assert_eq!(p[24], Piece::At { y: 4096, x: 4096 });
        assert_eq!(expected_pieces(1024, 1024, 1024), vec![Piece::Whole]);
        assert_eq!(expected_pieces(2048, 1000, 1024).len(), 2);
    }

    #[test]
    fn piece_names_round_trip_and_reject_neighbours() {
        let base = "CEDAR/L8_h001v002_2020-01-01_2021-01-01";
        for piece in [Piece::Whole, Piece::At { y: 0, x: 10496 }] {
            assert_eq!(parse_piece(base, &piece_object(base, piece)), Some(piece));
        }
        assert_eq!(
            piece_object(base, Piece::At { y: 1024, x: 0 }),
            format!("{base}-0000001024-0000000000.tif")
        );
        for other in [
            format!("{base}.json"),
            format!("{base}x.tif"),
            format!("{base}-1-2.tif"),
            format!("{base}-0000000000-000000000a.tif"),
            format!("{base}-0000000000-0000000000.tif.tmp"),
            "CEDAR/other.tif".to_string(),
        ] {
            assert_eq!(parse_piece(base, &other), None, "{other}");
        }
    }
}
