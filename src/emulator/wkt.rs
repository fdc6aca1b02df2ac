//! A CRS as GeoTIFF GeoKeys: an EPSG code, or the subset of WKT 1 the emulator can write
//! (a `PROJCS` with an EPSG code, or an Albers or transverse Mercator projection on a
//! `GEOGCS` with an EPSG code, which covers the Landsat ARD CONUS grid).
//!
//! GDAL writes such a user-defined projection with the same keys; anything else fails the
//! export task with a message that names the emulator's limit.

use super::geotiff::GeoKeyValue;

const MODEL_TYPE: u16 = 1024;
const RASTER_TYPE: u16 = 1025;
const CITATION: u16 = 1026;
const GEOGRAPHIC_TYPE: u16 = 2048;
const PROJECTED_TYPE: u16 = 3072;
const PROJECTION: u16 = 3074;
const COORD_TRANS: u16 = 3075;
const LINEAR_UNITS: u16 = 3076;
/// Model types: projected, geographic; raster type: pixel is area (EE's convention).
const PROJECTED: u16 = 1;
const GEOGRAPHIC: u16 = 2;
const PIXEL_IS_AREA: u16 = 1;
const USER_DEFINED: u16 = 32767;
const METRE: u16 = 9001;

/// GeoKeys of an authority code such as `EPSG:32610`. Codes 4000–4999 are taken as
/// geographic CRSs (EPSG's geographic 2D range), the rest as projected.
pub(crate) fn code_geokeys(code: &str) -> Result<Vec<(u16, GeoKeyValue)>, String> {
    let number = code
        .strip_prefix("EPSG:")
        .and_then(|n| n.parse::<u16>().ok())
        .ok_or_else(|| {
            format!("The emulator writes GeoTIFFs only for EPSG codes and WKT, not crs '{code}'.")
        })?;
    Ok(if (4000..5000).contains(&number) {
        vec![
            (MODEL_TYPE, GeoKeyValue::Short(GEOGRAPHIC)),
            (RASTER_TYPE, GeoKeyValue::Short(PIXEL_IS_AREA)),
            (GEOGRAPHIC_TYPE, GeoKeyValue::Short(number)),
        ]
    } else {
        vec![
            (MODEL_TYPE, GeoKeyValue::Short(PROJECTED)),
            (RASTER_TYPE, GeoKeyValue::Short(PIXEL_IS_AREA)),
            (PROJECTED_TYPE, GeoKeyValue::Short(number)),
        ]
    })
}

/// GeoKeys of a WKT 1 CRS (see the module documentation for what is supported).
pub(crate) fn wkt_geokeys(text: &str) -> Result<Vec<(u16, GeoKeyValue)>, String> {
    let unsupported =
        |why: &str| format!("The emulator cannot write this crsWkt to a GeoTIFF: {why}.");
    let root = parse(text).ok_or_else(|| unsupported("it is not WKT 1"))?;
    if let Some(code) = root.epsg() {
        return match root.keyword.as_str() {
            "PROJCS" | "GEOGCS" => code_geokeys(&format!("EPSG:{code}")),
            _ => Err(unsupported("only PROJCS and GEOGCS are supported")),
        };
    }
    if root.keyword != "PROJCS" {
        return Err(unsupported("a CRS without an EPSG code must be a PROJCS"));
    }
    let geographic = root
        .child("GEOGCS")
        .and_then(Node::epsg)
        .ok_or_else(|| unsupported("its GEOGCS has no EPSG code"))?;
    let projection = root
        .child("PROJECTION")
        .and_then(|p| p.text(0))
        .ok_or_else(|| unsupported("it has no PROJECTION"))?;
    // (WKT parameter, GeoKey) per projection, and the GeoTIFF coordinate transformation code.
    let (transform, parameters): (u16, &[(&str, u16)]) = match projection {
        "Albers_Conic_Equal_Area" => (
            11,
            &[
                ("standard_parallel_1", 3078),
                ("standard_parallel_2", 3079),
                ("longitude_of_center", 3080),
                ("latitude_of_center", 3081),
                ("false_easting", 3082),
                ("false_northing", 3083),
            ],
        ),
        "Transverse_Mercator" => (
            1,
            &[
                ("central_meridian", 3080),
                ("latitude_of_origin", 3081),
                ("false_easting", 3082),
                ("false_northing", 3083),
                ("scale_factor", 3092),
            ],
        ),
        other => return Err(unsupported(&format!("projection {other} is not supported"))),
    };
    let unit = root.child("UNIT");
    let metres =
        unit.is_some_and(|u| u.epsg() == Some(u32::from(METRE)) || u.number(1) == Some(1.0));
    if !metres {
        return Err(unsupported("its linear unit is not the metre"));
    }
    let mut keys = vec![
        (MODEL_TYPE, GeoKeyValue::Short(PROJECTED)),
        (RASTER_TYPE, GeoKeyValue::Short(PIXEL_IS_AREA)),
        (
            CITATION,
            GeoKeyValue::Ascii(root.text(0).unwrap_or_default().to_owned()),
        ),
        (GEOGRAPHIC_TYPE, GeoKeyValue::Short(geographic as u16)),
        (PROJECTED_TYPE, GeoKeyValue::Short(USER_DEFINED)),
        (PROJECTION, GeoKeyValue::Short(USER_DEFINED)),
        (COORD_TRANS, GeoKeyValue::Short(transform)),
        (LINEAR_UNITS, GeoKeyValue::Short(METRE)),
    ];
    for (name, key) in parameters {
        let value = root
            .children("PARAMETER")
            .find(|p| p.text(0).is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|p| p.number(1))
            .ok_or_else(|| unsupported(&format!("PARAMETER {name} is missing")))?;
        keys.push((*key, GeoKeyValue::Double(value)));
    }
    keys.sort_by_key(|(id, _)| *id);
    Ok(keys)
}

/// A WKT 1 node: `KEYWORD[item, …]`.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    keyword: String,
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Text(String),
    Number(f64),
    Node(Node),
}

impl Node {
    fn text(&self, i: usize) -> Option<&str> {
        match self.items.get(i)? {
            Item::Text(t) => Some(t),
            _ => None,
        }
    }

    fn number(&self, i: usize) -> Option<f64> {
        match self.items.get(i)? {
            Item::Number(n) => Some(*n),
            _ => None,
        }
    }

    fn children<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.items.iter().filter_map(move |item| match item {
            Item::Node(n) if n.keyword.eq_ignore_ascii_case(keyword) => Some(n),
            _ => None,
        })
    }

    fn child<'a>(&'a self, keyword: &'a str) -> Option<&'a Node> {
        self.children(keyword).next()
    }

    /// The code of this node's own `AUTHORITY["EPSG", "n"]`.
    fn epsg(&self) -> Option<u32> {
        let authority = self.child("AUTHORITY")?;
        if !authority.text(0)?.eq_ignore_ascii_case("EPSG") {
            return None;
        }
        match authority.items.get(1)? {
            Item::Text(t) => t.parse().ok(),
            Item::Number(n) => Some(*n as u32),
            Item::Node(_) => None,
        }
    }
}

fn parse(text: &str) -> Option<Node> {
    let mut rest = text.trim();
    let node = parse_node(&mut rest)?;
    rest.trim().is_empty().then_some(node)
}

fn parse_node(rest: &mut &str) -> Option<Node> {
    *rest = rest.trim_start();
    let end = rest.find(['[', '('])?;
    let keyword = rest[..end].trim().to_ascii_uppercase();
    if keyword.is_empty()
        || !keyword
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return None;
    }
    *rest = &rest[end + 1..];
    let mut items = Vec::new();
    loop {
        *rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('"') {
            let close = after.find('"')?;
            items.push(Item::Text(after[..close].to_owned()));
            *rest = &after[close + 1..];
        } else if rest.starts_with(|c: char| c == '-' || c == '+' || c == '.' || c.is_ascii_digit())
        {
            let end = rest
                .find(|c: char| c == ',' || c == ']' || c == ')' || c.is_whitespace())
                .unwrap_or(rest.len());
            items.push(Item::Number(rest[..end].parse().ok()?));
            *rest = &rest[end..];
        } else {
            items.push(Item::Node(parse_node(rest)?));
        }
        *rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            *rest = after;
        } else if let Some(after) = rest.strip_prefix([']', ')']) {
            *rest = after;
            return Some(Node { keyword, items });
        } else {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONUS: &str = concat!(
        r#"PROJCS["Albers_Conic_Equal_Area",GEOGCS["WGS 84",DATUM["WGS_1984","#,
        r#"SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],"#,
        r#"PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]],"#,
        r#"PROJECTION["Albers_Conic_Equal_Area"],PARAMETER["standard_parallel_1",29.5],"#,
        r#"PARAMETER["standard_parallel_2",45.5],PARAMETER["latitude_of_center",23],"#,
        r#"PARAMETER["longitude_of_center",-96],PARAMETER["false_easting",0],"#,
        r#"PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]]]"#
    );

    #[test]
    fn the_conus_albers_wkt_becomes_the_keys_gdal_writes() {
        let keys = wkt_geokeys(CONUS).unwrap();
        let get = |id: u16| keys.iter().find(|(k, _)| *k == id).map(|(_, v)| v.clone());
        assert_eq!(get(GEOGRAPHIC_TYPE), Some(GeoKeyValue::Short(4326)));
        assert_eq!(get(COORD_TRANS), Some(GeoKeyValue::Short(11)));
        assert_eq!(get(3078), Some(GeoKeyValue::Double(29.5)));
        assert_eq!(get(3080), Some(GeoKeyValue::Double(-96.0)));
        assert_eq!(get(3081), Some(GeoKeyValue::Double(23.0)));
        assert!(keys.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn codes_and_rooted_wkt_become_epsg_keys_and_the_rest_is_refused() {
        assert_eq!(
            code_geokeys("EPSG:4326").unwrap()[2],
            (GEOGRAPHIC_TYPE, GeoKeyValue::Short(4326))
        );
        assert_eq!(
            code_geokeys("EPSG:32610").unwrap()[2],
            (PROJECTED_TYPE, GeoKeyValue::Short(32610))
        );
        assert!(code_geokeys("SR-ORG:6974").is_err());
        let rooted = r#"PROJCS["x",GEOGCS["y",AUTHORITY["EPSG","4326"]],AUTHORITY["EPSG","5070"]]"#;
        assert_eq!(
            wkt_geokeys(rooted).unwrap()[2],
            (PROJECTED_TYPE, GeoKeyValue::Short(5070))
        );
        let sinusoidal = CONUS.replace(
            r#"PROJECTION["Albers_Conic_Equal_Area"]"#,
            r#"PROJECTION["Sinusoidal"]"#,
        );
        assert!(wkt_geokeys(&sinusoidal).unwrap_err().contains("Sinusoidal"));
        assert!(wkt_geokeys("PROJCS[").is_err());
    }
}
