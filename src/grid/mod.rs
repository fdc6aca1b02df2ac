//! The tile grid: a fixed lattice of equally sized tiles in one CRS, addressed by (row, col).
//!
//! Row is the vertical index (`v` in names), col the horizontal one (`h`). Row 0 is the top.
//! A tile's pixel grid is exact — `crs` + affine transform + dimensions — so that exports of
//! neighbouring tiles line up pixel for pixel.

use serde::{Deserialize, Serialize};

mod projection;

pub use projection::{Albers, Projection};

/// The WKT of the USGS Landsat ARD CONUS Albers projection (WGS 84 datum).
pub const CONUS_ALBERS_WKT: &str = concat!(
    r#"PROJCS["Albers_Conic_Equal_Area",GEOGCS["WGS 84",DATUM["WGS_1984","#,
    r#"SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],"#,
    r#"PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]],"#,
    r#"PROJECTION["Albers_Conic_Equal_Area"],PARAMETER["standard_parallel_1",29.5],"#,
    r#"PARAMETER["standard_parallel_2",45.5],PARAMETER["latitude_of_center",23],"#,
    r#"PARAMETER["longitude_of_center",-96],PARAMETER["false_easting",0],"#,
    r#"PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]]]"#
);

/// Errors of grid definitions and tile lookups.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GridError {
    #[error(
        "tile (row {row}, col {col}) is outside the grid {grid:?}: rows {row_min}-{row_max}, cols {col_min}-{col_max}"
    )]
    OutsideLimits {
        grid: String,
        row: u32,
        col: u32,
        row_min: u32,
        row_max: u32,
        col_min: u32,
        col_max: u32,
    },
    #[error("unknown grid preset {0:?}; known presets: {known}", known = PRESETS.join(", "))]
    UnknownPreset(String),
    #[error("grid.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A coordinate reference system, as EE's `PixelGrid` takes it: an authority code or WKT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Crs {
    /// An authority code such as `EPSG:5070`.
    Code(String),
    /// A full WKT definition.
    Wkt(String),
}

impl Crs {
    /// The text as written in the config: the code or the WKT.
    pub fn as_str(&self) -> &str {
        match self {
            Crs::Code(s) | Crs::Wkt(s) => s,
        }
    }
}

impl TryFrom<String> for Crs {
    type Error = GridError;

    fn try_from(s: String) -> Result<Self, GridError> {
        let t = s.trim();
        let invalid = |reason: &str| GridError::Invalid {
            field: "crs",
            reason: format!("{reason} (got {t:?}); use \"EPSG:<number>\" or a WKT definition"),
        };
        if t.is_empty() {
            return Err(invalid("is empty"));
        }
        if let Some((auth, code)) = t.split_once(':')
            && !auth.contains('[')
        {
            let ok = !auth.is_empty()
                && auth.chars().all(|c| c.is_ascii_alphabetic())
                && !code.is_empty()
                && code.chars().all(|c| c.is_ascii_digit());
            return if ok {
                Ok(Crs::Code(format!("{}:{code}", auth.to_ascii_uppercase())))
            } else {
                Err(invalid("is not an authority code"))
            };
        }
        let wkt_roots = [
            "PROJCS[",
            "GEOGCS[",
            "PROJCRS[",
            "GEOGCRS[",
            "GEODCRS[",
            "COMPD_CS[",
        ];
        if wkt_roots
            .iter()
            .any(|r| t.to_ascii_uppercase().starts_with(r))
            && t.ends_with(']')
        {
            Ok(Crs::Wkt(t.to_string()))
        } else {
            Err(invalid("is neither an authority code nor WKT"))
        }
    }
}

impl From<Crs> for String {
    fn from(c: Crs) -> String {
        match c {
            Crs::Code(s) | Crs::Wkt(s) => s,
        }
    }
}

/// An affine transform in EE's `AffineTransform` field order.
///
/// Maps pixel (col, row) to CRS coordinates: `x = scale_x·col + shear_x·row + translate_x`,
/// `y = shear_y·col + scale_y·row + translate_y`, with (0, 0) the top-left corner of the
/// top-left pixel. It serializes as EE's `AffineTransform` message, so an export's pixel grid
/// carries the tile's transform as it is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affine {
    pub scale_x: f64,
    pub shear_x: f64,
    pub translate_x: f64,
    pub shear_y: f64,
    pub scale_y: f64,
    pub translate_y: f64,
}

impl Affine {
    /// The six coefficients in the EE client's `crsTransform` order.
    pub fn to_array(&self) -> [f64; 6] {
        [
            self.scale_x,
            self.shear_x,
            self.translate_x,
            self.shear_y,
            self.scale_y,
            self.translate_y,
        ]
    }
}

/// Tile bounds in CRS units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    pub left: f64,
    pub bottom: f64,
    pub right: f64,
    pub top: f64,
}

impl Bounds {
    /// The bounds shrunk by `d` on every side.
    ///
    /// The footprint filter uses a box buffered inward so that neighbouring tiles that only
    /// touch this one are not matched (as the original CEDAR did, with `d = 1e-3`).
    pub fn inset(&self, d: f64) -> Bounds {
        Bounds {
            left: self.left + d,
            bottom: self.bottom + d,
            right: self.right - d,
            top: self.top - d,
        }
    }

    /// `[left, bottom, right, top]`, the order the tracking documents use.
    pub fn to_array(&self) -> [f64; 4] {
        [self.left, self.bottom, self.right, self.top]
    }
}

/// Inclusive index ranges of the tiles that exist in a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub rows: (u32, u32),
    pub cols: (u32, u32),
}

impl Limits {
    pub fn contains(&self, row: u32, col: u32) -> bool {
        (self.rows.0..=self.rows.1).contains(&row) && (self.cols.0..=self.cols.1).contains(&col)
    }

    /// Every (row, col) inside the limits, row-major.
    pub fn indices(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (self.rows.0..=self.rows.1)
            .flat_map(move |r| (self.cols.0..=self.cols.1).map(move |c| (r, c)))
    }
}

/// A tile grid: upper-left corner, pixel size, tile size in pixels, and the valid indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TileGrid {
    pub name: String,
    pub crs: Crs,
    /// Upper-left corner (x, y) of tile (0, 0), in CRS units.
    pub ul: [f64; 2],
    /// Pixel size (x, y), both positive, in CRS units.
    pub res: [f64; 2],
    /// Tile size (width, height) in pixels.
    pub size: [u32; 2],
    pub limits: Limits,
}

/// One tile of a grid, with everything an export needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tile {
    pub row: u32,
    pub col: u32,
    pub crs: Crs,
    pub bounds: Bounds,
    pub transform: Affine,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Tile {
    /// `"WIDTHxHEIGHT"`, the EE client's `dimensions` string.
    pub fn dimensions(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }

    /// The `hHHHvVVV` label: h is the column, v the row, both three digits.
    pub fn label(&self) -> String {
        format!("h{:03}v{:03}", self.col, self.row)
    }
}

/// Names of the shipped grid presets.
pub const PRESETS: &[&str] = &["Landsat ARD v1 - CONUS"];

impl TileGrid {
    /// A shipped grid, by name.
    pub fn preset(name: &str) -> Result<TileGrid, GridError> {
        match name {
            // The grid of the original CEDAR config template (USGS Landsat ARD, CONUS).
            "Landsat ARD v1 - CONUS" => Ok(TileGrid {
                name: name.to_string(),
                crs: Crs::Wkt(CONUS_ALBERS_WKT.to_string()),
                ul: [-2_565_585.0, 3_314_805.0],
                res: [30.0, 30.0],
                size: [5000, 5000],
                limits: Limits {
                    rows: (0, 21),
                    cols: (0, 32),
                },
            }),
            other => Err(GridError::UnknownPreset(other.to_string())),
        }
    }

    /// Checks the numbers that make a grid usable; one error per problem.
    pub fn validate(&self) -> Vec<GridError> {
        let mut problems = Vec::new();
        let invalid = |field, reason: &str| GridError::Invalid {
            field,
            reason: reason.to_string(),
        };
        if self.ul.iter().any(|v| !v.is_finite()) {
            problems.push(invalid("ul", "must be two finite numbers [x, y]"));
        }
        if self.res.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            problems.push(invalid(
                "res",
                "must be two positive pixel sizes [x, y] (the y size is positive; rows go down)",
            ));
        }
        if self.size.contains(&0) {
            problems.push(invalid(
                "size",
                "must be two positive pixel counts [width, height]",
            ));
        }
        if self.limits.rows.0 > self.limits.rows.1 || self.limits.cols.0 > self.limits.cols.1 {
            problems.push(invalid(
                "limits",
                "each range must be [min, max] with min <= max: [[row_min, row_max], [col_min, col_max]]",
            ));
        }
        problems
    }

    /// The tile at (row, col), or an error naming the grid's limits.
    pub fn tile(&self, row: u32, col: u32) -> Result<Tile, GridError> {
        if !self.limits.contains(row, col) {
            return Err(GridError::OutsideLimits {
                grid: self.name.clone(),
                row,
                col,
                row_min: self.limits.rows.0,
                row_max: self.limits.rows.1,
                col_min: self.limits.cols.0,
                col_max: self.limits.cols.1,
            });
        }
        let [res_x, res_y] = self.res;
        // The original took both the width and the height from size[0]; each axis uses its own.
        let [width, height] = self.size;
        let tile_w = f64::from(width) * res_x;
        let tile_h = f64::from(height) * res_y;
        let left = self.ul[0] + f64::from(col) * tile_w;
        let top = self.ul[1] - f64::from(row) * tile_h;
        Ok(Tile {
            row,
            col,
            crs: self.crs.clone(),
            bounds: Bounds {
                left,
                bottom: top - tile_h,
                right: left + tile_w,
                top,
            },
            transform: Affine {
                scale_x: res_x,
                shear_x: 0.0,
                translate_x: left,
                shear_y: 0.0,
                scale_y: -res_y,
                translate_y: top,
            },
            width,
            height,
        })
    }
}

/// Parses a tile written `ROW,COL` (the CLI, tile files and `[[ingest]] tiles`).
pub fn parse_tile(s: &str) -> Result<(u32, u32), String> {
    let (r, c) = s
        .split_once(',')
        .ok_or_else(|| format!("tile {s:?} must be ROW,COL, e.g. 3,10"))?;
    let n = |v: &str, what: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("tile {s:?}: {what} {v:?} is not a non-negative integer"))
    };
    Ok((n(r, "row")?, n(c, "col")?))
}

/// Parses a range of rows or columns: `A-B` (inclusive) or a single number.
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let n = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} must be N or A-B with non-negative integers"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (n(a)?, n(b)?);
            if a > b {
                return Err(format!(
                    "range {s:?} goes backwards; write the smaller bound first"
                ));
            }
            Ok((a, b))
        }
        None => {
            let v = n(s)?;
            Ok((v, v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conus() -> TileGrid {
        TileGrid::preset("Landsat ARD v1 - CONUS").unwrap()
    }

    #[test]
    fn conus_tile_3_10_matches_the_reference() {
        let t = conus().tile(3, 10).unwrap();
        assert_eq!(
            t.bounds,
            Bounds {
                left: -1_065_585.0,
                bottom: 2_714_805.0,
                right: -915_585.0,
                top: 2_864_805.0
            }
        );
        assert_eq!(
            t.transform.to_array(),
            [30.0, 0.0, -1_065_585.0, 0.0, -30.0, 2_864_805.0]
        );
        assert_eq!(t.dimensions(), "5000x5000");
        assert_eq!(t.label(), "h010v003");
    }

    #[test]
    fn glance_tile_52_71_matches_the_example_metadata() {
        let g = TileGrid {
            name: "GLANCE".into(),
            crs: Crs::Code("EPSG:54008".into()),
            ul: [-7_633_670.0, 5_076_465.0],
            res: [30.0, 30.0],
            size: [5000, 5000],
            limits: Limits {
                rows: (0, 100),
                cols: (0, 100),
            },
        };
        let t = g.tile(52, 71).unwrap();
        assert_eq!(
            t.bounds.to_array(),
            [3_016_330.0, -2_873_535.0, 3_166_330.0, -2_723_535.0]
        );
    }

    #[test]
    fn non_square_tiles_use_their_own_height() {
        let mut g = conus();
        g.size = [4000, 2000];
        g.res = [30.0, 60.0];
        let t = g.tile(1, 1).unwrap();
        assert_eq!((t.width, t.height), (4000, 2000));
        assert_eq!(t.dimensions(), "4000x2000");
        assert_eq!(t.bounds.right - t.bounds.left, 120_000.0);
        assert_eq!(t.bounds.top - t.bounds.bottom, 120_000.0);
        assert_eq!(t.bounds.top, 3_314_805.0 - 120_000.0);
        assert_eq!(t.transform.scale_y, -60.0);
    }

    #[test]
    fn outside_limits_is_a_clear_error() {
        let e = conus().tile(22, 0).unwrap_err();
        assert!(matches!(e, GridError::OutsideLimits { row: 22, .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("rows 0-21") && msg.contains("cols 0-32"),
            "{msg}"
        );
        assert!(conus().tile(21, 32).is_ok());
        assert!(conus().tile(0, 33).is_err());
    }

    #[test]
    fn crs_parsing() {
        assert_eq!(
            Crs::try_from("epsg:5070".to_string()).unwrap(),
            Crs::Code("EPSG:5070".into())
        );
        assert!(matches!(
            Crs::try_from(CONUS_ALBERS_WKT.to_string()).unwrap(),
            Crs::Wkt(_)
        ));
        for bad in ["", "EPSG:", "EPSG:12a", "albers", "PROJCS[\"x\""] {
            assert!(Crs::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_iterate_row_major_inclusive() {
        let l = Limits {
            rows: (1, 2),
            cols: (5, 6),
        };
        let v: Vec<_> = l.indices().collect();
        assert_eq!(v, vec![(1, 5), (1, 6), (2, 5), (2, 6)]);
    }

    #[test]
    fn validation_names_each_field() {
        let mut g = conus();
        g.res = [0.0, 30.0];
        g.size = [0, 10];
        g.limits.rows = (5, 1);
        let fields: Vec<_> = g
            .validate()
            .into_iter()
            .map(|e| match e {
                GridError::Invalid { field, .. } => field,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(fields, vec!["res", "size", "limits"]);
        assert!(conus().validate().is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("3-5").unwrap(), (3, 5));
        assert_eq!(parse_range("7").unwrap(), (7, 7));
        assert!(parse_range("5-3").is_err());
        assert!(parse_range("a-3").is_err());
    }
}
