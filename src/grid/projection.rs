//! From longitude and latitude (WGS 84 degrees) into a grid's CRS, for what is drawn under a
//! grid's tiles (the web console's outline). Only the CRSs the shipped grids and common custom
//! ones use are known: Albers equal-area conic (WKT 1 `Albers_Conic_Equal_Area`, as the Landsat
//! ARD grids write it, or EPSG:5070), geographic degrees (EPSG:4326) and Web Mercator
//! (EPSG:3857). Others give `None`: nothing is drawn rather than something misplaced.
//!
//! The Albers formulas are Snyder's on the ellipsoid ("Map Projections — A Working Manual",
//! USGS Professional Paper 1395, 1987, equations 14-1 to 14-6 with 3-12). A datum shift (NAD83
//! against WGS 84) is below a metre and ignored.

use super::Crs;

/// A projection from (lon, lat) in degrees to the CRS's (x, y).
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// Degrees as they are.
    Geographic,
    /// Spherical Web Mercator, metres.
    WebMercator,
    Albers(Albers),
}

/// Albers equal-area conic on an ellipsoid, metres.
#[derive(Debug, Clone, PartialEq)]
pub struct Albers {
    /// Semi-major axis.
    a: f64,
    /// Eccentricity.
    e: f64,
    n: f64,
    c: f64,
    rho0: f64,
    lon0: f64,
    false_easting: f64,
    false_northing: f64,
}

const WGS84: (f64, f64) = (6_378_137.0, 298.257_223_563);
const GRS80: (f64, f64) = (6_378_137.0, 298.257_222_101);

impl Albers {
    /// Standard parallels `lat1`, `lat2`, origin (`lat0`, `lon0`) in degrees, on the ellipsoid
    /// of semi-major axis `a` and inverse flattening `rf`.
    pub fn new(
        (a, rf): (f64, f64),
        (lat1, lat2): (f64, f64),
        (lat0, lon0): (f64, f64),
        (false_easting, false_northing): (f64, f64),
    ) -> Option<Albers> {
        let f = 1.0 / rf;
        let e = (2.0 * f - f * f).sqrt();
        let m = |lat: f64| {
            let s = lat.to_radians().sin();
            lat.to_radians().cos() / (1.0 - e * e * s * s).sqrt()
        };
        let (m1, m2) = (m(lat1), m(lat2));
        let (q1, q2, q0) = (q(e, lat1), q(e, lat2), q(e, lat0));
        let n = if (lat1 - lat2).abs() < 1e-10 {
            lat1.to_radians().sin()
        } else {
            (m1 * m1 - m2 * m2) / (q2 - q1)
        };
        if !n.is_finite() || n.abs() < 1e-12 {
            return None;
        }
        let c = m1 * m1 + n * q1;
        let rho0 = a * (c - n * q0).max(0.0).sqrt() / n;
        Some(Albers {
            a,
            e,
            n,
            c,
            rho0,
            lon0,
            false_easting,
            false_northing,
        })
    }

    fn project(&self, lon: f64, lat: f64) -> (f64, f64) {
        let rho = self.a * (self.c - self.n * q(self.e, lat)).max(0.0).sqrt() / self.n;
        let mut dlon = lon - self.lon0;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        let theta = self.n * dlon.to_radians();
        (
            self.false_easting + rho * theta.sin(),
            self.false_northing + self.rho0 - rho * theta.cos(),
        )
    }
}

/// Snyder's q (3-12) for latitude `lat` in degrees.
fn q(e: f64, lat: f64) -> f64 {
    let s = lat.to_radians().sin();
    let es = e * s;
    (1.0 - e * e) * (s / (1.0 - es * es) - (1.0 / (2.0 * e)) * ((1.0 - es) / (1.0 + es)).ln())
}

impl Projection {
    /// (x, y) of (`lon`, `lat`) in degrees.
    pub fn project(&self, lon: f64, lat: f64) -> (f64, f64) {
        match self {
            Projection::Geographic => (lon, lat),
            Projection::WebMercator => {
                let r = WGS84.0;
                let lat = lat.clamp(-85.06, 85.06).to_radians();
                (
                    r * lon.to_radians(),
                    r * (std::f64::consts::FRAC_PI_4 + lat / 2.0).tan().ln(),
                )
            }
            Projection::Albers(p) => p.project(lon, lat),
        }
    }
}

impl Crs {
    /// The projection from WGS 84 degrees into this CRS, when it is one cedar knows.
    pub fn projection(&self) -> Option<Projection> {
        match self {
            Crs::Code(code) => match code.as_str() {
                "EPSG:4326" => Some(Projection::Geographic),
                "EPSG:3857" => Some(Projection::WebMercator),
                // NAD83 / Conus Albers.
                "EPSG:5070" => Albers::new(GRS80, (29.5, 45.5), (23.0, -96.0), (0.0, 0.0))
                    .map(Projection::Albers),
                _ => None,
            },
            Crs::Wkt(wkt) => albers_of_wkt(wkt).map(Projection::Albers),
        }
    }
}

/// The Albers projection a WKT 1 `PROJCS[…PROJECTION["Albers_Conic_Equal_Area"]…]` defines.
fn albers_of_wkt(wkt: &str) -> Option<Albers> {
    let flat: String = wkt.chars().filter(|c| !c.is_whitespace()).collect();
    let upper = flat.to_ascii_uppercase();
    if !upper.starts_with("PROJCS[") || !upper.contains("PROJECTION[\"ALBERS_CONIC_EQUAL_AREA\"]") {
        return None;
    }
    // Degrees and metres only: another unit would need converting, and is refused instead.
    let degrees = upper.contains("UNIT[\"DEGREE\",0.0174532925199");
    let metres = ["METRE", "METER"].iter().any(|m| {
        [']', ',']
            .iter()
            .any(|end| upper.contains(&format!("UNIT[\"{m}\",1{end}")))
    });
    if !degrees || !metres {
        return None;
    }
    // Longitudes from Greenwich only: another prime meridian would shift the whole outline.
    if let Some(at) = upper.find("PRIMEM[") {
        let value = flat[at..].split(',').nth(1)?;
        let value: f64 = value.split([']', ',']).next()?.parse().ok()?;
        if value != 0.0 {
            return None;
        }
    }
    // A parameter: `None` when absent, `Some(None)` when present but not a number.
    let param = |name: &str| -> Option<Option<f64>> {
        let key = format!("PARAMETER[\"{}\",", name.to_ascii_uppercase());
        let at = upper.find(&key)? + key.len();
        let rest = &flat[at..];
        Some(rest[..rest.find(']')?].parse().ok())
    };
    let required = |name: &str| param(name).flatten();
    let either = |a: &str, b: &str| param(a).or_else(|| param(b)).flatten();
    // False easting and northing may be left out (0), never unreadable.
    let offset = |name: &str| match param(name) {
        None => Some(0.0),
        Some(v) => v,
    };
    let spheroid = {
        let at = upper.find("SPHEROID[")?;
        let fields: Vec<&str> = flat[at..].split(',').skip(1).take(2).collect();
        let a: f64 = fields.first()?.parse().ok()?;
        let rf: f64 = fields.get(1)?.trim_end_matches(']').parse().ok()?;
        (a, rf)
    };
    Albers::new(
        spheroid,
        (
            required("standard_parallel_1")?,
            required("standard_parallel_2")?,
        ),
        (
            either("latitude_of_center", "latitude_of_origin")?,
            either("longitude_of_center", "central_meridian")?,
        ),
        (offset("false_easting")?, offset("false_northing")?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::CONUS_ALBERS_WKT;

    fn close(got: (f64, f64), want: (f64, f64), tol: f64) {
        assert!(
            (got.0 - want.0).abs() < tol && (got.1 - want.1).abs() < tol,
            "{got:?} != {want:?}"
        );
    }

    #[test]
    fn the_ard_albers_puts_its_origin_at_zero_and_is_symmetric() {
        let p = Crs::Wkt(CONUS_ALBERS_WKT.into())
            .projection()
            .expect("Albers");
        close(p.project(-96.0, 23.0), (0.0, 0.0), 1e-6);
        let (xw, yw) = p.project(-100.0, 40.0);
        let (xe, ye) = p.project(-92.0, 40.0);
        close((xw, yw), (-xe, ye), 1e-6);
        assert!(xw < 0.0 && yw > 0.0);
    }

    #[test]
    fn snyders_worked_example() {
        // Snyder 1987, p. 292: Clarke 1866, parallels 29.5 and 45.5, origin (23, -96);
        // (35 N, 75 W) gives x = 1,885,472.7 m, y = 1,535,925.0 m.
        let clarke = (6_378_206.4, 294.978_698_2);
        let p = Albers::new(clarke, (29.5, 45.5), (23.0, -96.0), (0.0, 0.0)).unwrap();
        close(p.project(-75.0, 35.0), (1_885_472.7, 1_535_925.0), 0.5);
    }

    #[test]
    fn known_codes_and_unknown_ones() {
        assert_eq!(
            Crs::Code("EPSG:4326".into()).projection(),
            Some(Projection::Geographic)
        );
        let m = Crs::Code("EPSG:3857".into()).projection().unwrap();
        close(m.project(180.0, 0.0), (20_037_508.342_789_244, 0.0), 1e-6);
        assert!(Crs::Code("EPSG:5070".into()).projection().is_some());
        assert_eq!(Crs::Code("EPSG:54008".into()).projection(), None);
        let utm = r#"PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["central_meridian",15],UNIT["metre",1]]"#;
        assert_eq!(Crs::Wkt(utm.into()).projection(), None);
        // The ARD WKT with Paris as prime meridian, or an unreadable false easting: refused.
        let paris =
            CONUS_ALBERS_WKT.replace(r#"PRIMEM["Greenwich",0]"#, r#"PRIMEM["Paris",2.33722917]"#);
        assert_ne!(paris, CONUS_ALBERS_WKT);
        assert_eq!(Crs::Wkt(paris).projection(), None);
        let garbled = CONUS_ALBERS_WKT.replace(r#""false_easting",0"#, r#""false_easting",zero"#);
        assert_ne!(garbled, CONUS_ALBERS_WKT);
        assert_eq!(Crs::Wkt(garbled).projection(), None);
        let without = CONUS_ALBERS_WKT.replace(r#"PARAMETER["false_easting",0],"#, "");
        assert_ne!(without, CONUS_ALBERS_WKT);
        assert!(Crs::Wkt(without).projection().is_some());
    }
}
