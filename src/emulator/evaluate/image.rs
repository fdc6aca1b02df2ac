//! Image algorithms: band selection, renaming, casts, clipping and constants, evaluated on
//! band lists rather than pixels.

use serde_json::{Map, Value};

use super::{Call, EvalError, Evaluator, Image, Result, Val};
use crate::emulator::catalogue::{Band, ImageRecord};
use crate::emulator::expression;

impl Evaluator<'_> {
    /// Evaluates an `Image.*` algorithm.
    pub(super) fn call_image(&self, mut call: Call<'_>) -> Result<Val> {
        let name = call.name;
        match name {
            "Image.select" => {
                let mut image = call.image("input")?;
                let selectors = call
                    .take("bandSelectors")
                    .map(|v| self.to_json(v))
                    .transpose()?
                    .unwrap_or(Value::Null);
                let names = call.take("newNames").map(|v| self.to_json(v)).transpose()?;
                image.record.bands = select_bands(&image.record.bands, &selectors)?;
                if let Some(Value::Array(names)) = names {
                    rename(&mut image, &names, "Image.select")?;
                }
                Ok(Val::Image(Box::new(image)))
            }
            "Image.rename" => {
                let mut image = call.image("input")?;
                let names = call.take("names").map(|v| self.to_json(v)).transpose()?;
                let names = match names {
                    Some(Value::Array(names)) => names,
                    Some(single @ Value::String(_)) => vec![single],
                    _ => return Err(call.expected("names", "List<String>")),
                };
                rename(&mut image, &names, name)?;
                Ok(Val::Image(Box::new(image)))
            }
            "Image.cast" => {
                let mut image = call.image("image")?;
                let types = call
                    .take("bandTypes")
                    .map(|v| self.to_json(v))
                    .transpose()?
                    .unwrap_or(Value::Null);
                for band in &mut image.record.bands {
                    if let Some(pixel_type) = types.get(&band.id).and_then(Value::as_str) {
                        set_precision(band, pixel_type);
                    }
                }
                Ok(Val::Image(Box::new(image)))
            }
            _ if cast(name).is_some() => {
                let mut image = call.image("value")?;
                for band in &mut image.record.bands {
                    set_precision(band, cast(name).unwrap_or("float"));
                }
                Ok(Val::Image(Box::new(image)))
            }
            "Image.clip" | "Image.clipToBoundsAndScale" => {
                let input = call.image("input")?;
                let geometry = matches!(call.take("geometry"), Some(Val::Geometry(_)));
                let width = call.take("width").and_then(|v| match v {
                    Val::Json(n) => n.as_u64(),
                    _ => None,
                });
                let height = call.take("height").and_then(|v| match v {
                    Val::Json(n) => n.as_u64(),
                    _ => None,
                });
                let dimensions = width.zip(height).or(input.dimensions);
                Ok(image_val(
                    input.record,
                    input.bounded || geometry || dimensions.is_some(),
                    dimensions,
                ))
            }
            "Image.constant" => {
                let values = match call.take("value") {
                    Some(Val::Json(Value::Array(values))) => values.len(),
                    Some(Val::List(values)) => values.len(),
                    _ => 1,
                };
                let mut record = empty_record();
                for i in 0..values {
                    let id = if values == 1 {
                        "constant".to_owned()
                    } else {
                        format!("constant_{i}")
                    };
                    record.bands.push(Band {
                        id,
                        precision: "float",
                        min: f64::MIN,
                        max: f64::MAX,
                        dimensions: None,
                        crs: "EPSG:4326".into(),
                        crs_transform: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                    });
                }
                Ok(image_val(record, false, None))
            }
            "Image.normalizedDifference" => {
                let input = call.image("input")?;
                let mut record = empty_record();
                if let Some(first) = input.record.bands.first() {
                    record.bands.push(Band {
                        id: "nd".into(),
                        precision: "float",
                        min: -1.0,
                        max: 1.0,
                        ..first.clone()
                    });
                }
                Ok(image_val(record, input.bounded, input.dimensions))
            }
            _ if name.starts_with("Image.")
                && expression::algorithm(name)
                    .is_some_and(|a| a.return_type.starts_with("Image")) =>
            {
                // Band-preserving arithmetic and projection changes (Image.add, Image.reproject,
                // …): the result has the bands of the first image argument.
                let algorithm = expression::algorithm(name).expect("checked above");
                for argument in &algorithm.arguments {
                    if let Some(Val::Image(image)) = call.args.remove(argument.name.as_str()) {
                        return Ok(Val::Image(image));
                    }
                }
                Err(EvalError::Unsupported(format!(
                    "The emulator cannot evaluate {name} without an image argument."
                )))
            }
            _ => Err(EvalError::Unsupported(format!(
                "The emulator does not support the algorithm '{name}'."
            ))),
        }
    }
}

/// The `getInfo` precision a cast function produces, and its range.
fn cast(name: &str) -> Option<&'static str> {
    Some(match name {
        "Image.toInt8" | "Image.int8" => "int8",
        "Image.toUint8" | "Image.uint8" | "Image.toByte" | "Image.byte" => "uint8",
        "Image.toInt16" | "Image.int16" | "Image.toShort" | "Image.short" => "int16",
        "Image.toUint16" | "Image.uint16" => "uint16",
        "Image.toInt32" | "Image.int32" | "Image.toInt" | "Image.int" => "int32",
        "Image.toUint32" | "Image.uint32" => "uint32",
        "Image.toInt64" | "Image.int64" | "Image.toLong" | "Image.long" => "int64",
        "Image.toFloat" | "Image.float" => "float",
        "Image.toDouble" | "Image.double" => "double",
        _ => return None,
    })
}

fn set_precision(band: &mut Band, pixel_type: &str) {
    let (precision, min, max) = match pixel_type {
        "int8" => ("int", -128.0, 127.0),
        "uint8" => ("int", 0.0, 255.0),
        "int16" => ("int", -32768.0, 32767.0),
        "uint16" => ("int", 0.0, 65535.0),
        "int32" => ("int", -2_147_483_648.0, 2_147_483_647.0),
        "uint32" => ("int", 0.0, 4_294_967_295.0),
        "int64" => ("int", -9.2e18, 9.2e18),
        "double" => ("double", f64::MIN, f64::MAX),
        _ => ("float", f64::MIN, f64::MAX),
    };
    band.precision = precision;
    band.min = min;
    band.max = max;
}

fn select_bands(bands: &[Band], selectors: &Value) -> Result<Vec<Band>> {
    let selectors = match selectors {
        Value::Array(items) => items.clone(),
        single => vec![single.clone()],
    };
    let mut out = Vec::new();
    for selector in &selectors {
        let matched: Vec<&Band> = match selector {
            Value::Number(n) => n
                .as_u64()
                .and_then(|i| bands.get(i as usize))
                .into_iter()
                .collect(),
            Value::String(pattern) => bands
                .iter()
                .filter(|b| pattern_matches(pattern, &b.id))
                .collect(),
            _ => Vec::new(),
        };
        if matched.is_empty() {
            let shown = selector
                .as_str()
                .map_or_else(|| selector.to_string(), str::to_owned);
            return Err(EvalError::Invalid(format!(
                "Image.select: Pattern '{shown}' did not match any bands."
            )));
        }
        out.extend(matched.into_iter().cloned());
    }
    Ok(out)
}

/// EE band selectors are regular expressions matched against the whole name; the emulator
/// understands literal names and `.*` wildcards, which is what pipelines use.
pub(super) fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split(".*").collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else {
                return false;
            };
            rest = after;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(at) = rest.find(part) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    true
}

fn rename(image: &mut Image, names: &[Value], function: &str) -> Result<()> {
    if names.len() != image.record.bands.len() {
        return Err(EvalError::Invalid(format!(
            "{function}: The number of names ({}) must match the number of bands ({}).",
            names.len(),
            image.record.bands.len()
        )));
    }
    for (band, name) in image.record.bands.iter_mut().zip(names) {
        band.id = name
            .as_str()
            .map_or_else(|| name.to_string(), str::to_owned);
    }
    Ok(())
}

pub(super) fn empty_record() -> ImageRecord {
    ImageRecord {
        id: None,
        version: None,
        bands: Vec::new(),
        properties: Map::new(),
    }
}

/// The bands of a composite: the union of the inputs' bands, in first-seen order.
pub(super) fn merge_bands(images: &[Image], name: impl Fn(&Band) -> String) -> ImageRecord {
    let mut record = empty_record();
    for band in images.iter().flat_map(|i| &i.record.bands) {
        let id = name(band);
        if !record.bands.iter().any(|b| b.id == id) {
            record.bands.push(Band { id, ..band.clone() });
        }
    }
    record
}

pub(super) fn all_bounded(images: &[Image]) -> bool {
    images.iter().all(|i| i.bounded)
}

pub(super) fn image_val(record: ImageRecord, bounded: bool, dimensions: Option<(u64, u64)>) -> Val {
    Val::Image(Box::new(Image {
        record,
        bounded,
        dimensions,
    }))
}
