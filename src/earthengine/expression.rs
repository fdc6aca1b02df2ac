//! Expressions are the computations cedar asks EE for: the scene listing of one tile-period,
//! and the pre-ARD image that is exported.
//!
//! The forms follow what the Python client (`earthengine-api` 1.7.50) serializes for the same
//! calls, so that EE evaluates them the same way; `tests/it/earthengine.rs` compares both with
//! the real client. Every algorithm and argument name exists in
//! `reference/ee-algorithms.earthengine-api-1.7.50.json` (checked by the unit tests).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::EeError;
use super::types::{Expression, FunctionInvocation, ValueNode};
use crate::collection::{CollectionSpec, CompareOp, DataType, FilterValue, PropertyFilter};
use crate::grid::{Crs, Tile};
use crate::period::Period;

/// How far the footprint is shrunk on every side, in CRS units, so that scenes that only touch
/// the tile's edge (e.g. the neighbouring tiles' scenes) are not matched. As the original.
pub const FOOTPRINT_INSET: f64 = 1e-3;

/// The property every EE image carries its acquisition time in (ms since the epoch, UTC).
const TIME_START: &str = "system:time_start";

/// A constant node. Constants are always inlined, never shared.
pub fn constant(v: impl Into<Value>) -> ValueNode {
    ValueNode::ConstantValue(v.into())
}

/// A JSON number, integral when exactly an integer (as the Python client sends `80`, not
/// `80.0`).
fn number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// An invocation of the algorithm `name` with named arguments.
pub fn call<'a>(name: &str, args: impl IntoIterator<Item = (&'a str, ValueNode)>) -> ValueNode {
    ValueNode::FunctionInvocationValue(FunctionInvocation {
        function_name: Some(name.to_string()),
        function_reference: None,
        arguments: args.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    })
}

fn array(items: Vec<ValueNode>) -> ValueNode {
    ValueNode::ArrayValue(super::types::ArrayValue { values: items })
}

/// Turns a tree into an [`Expression`]: the root becomes `"0"`, and every function invocation
/// that occurs more than once is stored once under its own key and referenced by
/// `valueReference` (EE then computes it once, and the request stays small).
pub fn finish(root: ValueNode) -> Expression {
    let mut counts = HashMap::new();
    count_invocations(&root, &mut counts);
    let mut sharing = Sharing {
        counts,
        keys: HashMap::new(),
        values: BTreeMap::new(),
    };
    let root = sharing.rewrite(root, true);
    sharing.values.insert("0".to_string(), root);
    Expression {
        values: sharing.values,
        result: "0".to_string(),
    }
}

fn canonical(node: &ValueNode) -> String {
    serde_json::to_string(node).expect("value nodes serialize")
}

fn children_mut(node: &mut ValueNode) -> Vec<&mut ValueNode> {
    match node {
        ValueNode::ArrayValue(a) => a.values.iter_mut().collect(),
        ValueNode::DictionaryValue(d) => d.values.values_mut().collect(),
        ValueNode::FunctionInvocationValue(f) => f.arguments.values_mut().collect(),
        _ => Vec::new(),
    }
}

fn count_invocations(node: &ValueNode, counts: &mut HashMap<String, usize>) {
    let children: Vec<&ValueNode> = match node {
        ValueNode::ArrayValue(a) => a.values.iter().collect(),
        ValueNode::DictionaryValue(d) => d.values.values().collect(),
        ValueNode::FunctionInvocationValue(f) => {
            *counts.entry(canonical(node)).or_default() += 1;
            f.arguments.values().collect()
        }
        _ => Vec::new(),
    };
    for c in children {
        count_invocations(c, counts);
    }
}

struct Sharing {
    counts: HashMap<String, usize>,
    /// Canonical JSON of a shared subtree (as built) → its key.
    keys: HashMap<String, String>,
    values: BTreeMap<String, ValueNode>,
}

impl Sharing {
    fn rewrite(&mut self, mut node: ValueNode, is_root: bool) -> ValueNode {
        let shared = matches!(node, ValueNode::FunctionInvocationValue(_)) && !is_root && {
            let key = canonical(&node);
            self.counts.get(&key).copied().unwrap_or(0) > 1
        };
        let original = shared.then(|| canonical(&node));
        if let Some(key) = original.as_ref().and_then(|c| self.keys.get(c)) {
            return ValueNode::ValueReference(key.clone());
        }
        for child in children_mut(&mut node) {
            let taken = std::mem::replace(child, ValueNode::ConstantValue(Value::Null));
            *child = self.rewrite(taken, false);
        }
        match original {
            Some(c) => {
                // "0" is the root's; shared nodes are numbered from 1 in order of first use.
                let key = (self.values.len() + 1).to_string();
                self.keys.insert(c, key.clone());
                self.values.insert(key.clone(), node);
                ValueNode::ValueReference(key)
            }
            None => node,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Listing the scenes of a tile-period
// ------------------------------------------------------------------------------------------

/// `Collection.filter(collection, filter)`.
fn filter(collection: ValueNode, filter: ValueNode) -> ValueNode {
    call(
        "Collection.filter",
        [("collection", collection), ("filter", filter)],
    )
}

/// The tile's footprint in the tile's own CRS, shrunk by [`FOOTPRINT_INSET`]: a planar
/// rectangle, as `ee.Geometry.Rectangle(coords, ee.Projection(crs), False, True)` builds it.
pub fn footprint(tile: &Tile) -> ValueNode {
    let b = tile.bounds.inset(FOOTPRINT_INSET);
    let crs = match &tile.crs {
        Crs::Code(s) | Crs::Wkt(s) => s.as_str(),
    };
    call(
        "GeometryConstructors.Rectangle",
        [
            (
                "coordinates",
                constant(vec![
                    number(b.left),
                    number(b.bottom),
                    number(b.right),
                    number(b.top),
                ]),
            ),
            ("crs", call("Projection", [("crs", constant(crs))])),
            ("geodesic", constant(false)),
            ("evenOdd", constant(true)),
        ],
    )
}

/// One property filter, in the form `ee.Filter.lt/lte/gt/gte/eq/neq` produce.
///
/// The Python client writes `<=`, `>=` and `!=` as the negation of `>`, `<` and `==`; so does
/// cedar, which keeps the same scenes as the reference client (a scene without the property
/// passes a negated comparison and fails a plain one).
pub fn property_filter(f: &PropertyFilter) -> ValueNode {
    let value = match &f.value {
        FilterValue::Number(n) => constant(number(*n)),
        FilterValue::Text(s) => constant(s.as_str()),
    };
    let compare = |name: &str| {
        call(
            name,
            [
                ("leftField", constant(f.property.as_str())),
                ("rightValue", value.clone()),
            ],
        )
    };
    let not = |inner: ValueNode| call("Filter.not", [("filter", inner)]);
    match f.op {
        CompareOp::Lt => compare("Filter.lessThan"),
        CompareOp::Gt => compare("Filter.greaterThan"),
        CompareOp::Eq => compare("Filter.equals"),
        CompareOp::Lte => not(compare("Filter.greaterThan")),
        CompareOp::Gte => not(compare("Filter.lessThan")),
        CompareOp::Neq => not(compare("Filter.equals")),
    }
}

/// The scenes of `spec`'s collection acquired in `period` (end exclusive) whose footprint
/// intersects the tile, filtered by `spec.filters`. `value:compute` returns what `getInfo`
/// returns for an ImageCollection; read it with [`parse_image_list`].
pub fn list_images(spec: &CollectionSpec, tile: &Tile, period: &Period) -> Expression {
    let day = |d: NaiveDate| constant(d.format("%Y-%m-%d").to_string());
    let mut collection = call("ImageCollection.load", [("id", constant(spec.id.as_str()))]);
    collection = filter(
        collection,
        call(
            "Filter.dateRangeContains",
            [
                (
                    "leftValue",
                    call(
                        "DateRange",
                        [("start", day(period.start)), ("end", day(period.end))],
                    ),
                ),
                ("rightField", constant(TIME_START)),
            ],
        ),
    );
    collection = filter(
        collection,
        call(
            "Filter.intersects",
            [
                ("leftField", constant(".all")),
                (
                    "rightValue",
                    call("Feature", [("geometry", footprint(tile))]),
                ),
            ],
        ),
    );
    for f in &spec.filters {
        collection = filter(collection, property_filter(f));
    }
    finish(collection)
}

/// One scene found by [`list_images`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The full asset ID, e.g. `LANDSAT/LC08/C02/T1_L2/LC08_044034_20210606`.
    pub id: String,
    /// `system:time_start`, ms since the epoch (UTC).
    pub time_start_ms: i64,
    /// The properties named in `spec.properties` that the scene has.
    pub properties: Map<String, Value>,
}

impl ImageInfo {
    /// The UTC acquisition date.
    pub fn date(&self) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(self.time_start_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }
}

/// Reads the `value:compute` result of [`list_images`]: scenes sorted by time (then ID).
pub fn parse_image_list(spec: &CollectionSpec, result: &Value) -> Result<Vec<ImageInfo>, EeError> {
    let bad = |reason: String| EeError::Malformed {
        call: "value:compute",
        status: 200,
        reason,
    };
    if result.get("type").and_then(Value::as_str) != Some("ImageCollection") {
        return Err(bad(format!(
            "expected an ImageCollection, got type {}",
            result.get("type").unwrap_or(&Value::Null)
        )));
    }
    let features = match result.get("features") {
        Some(Value::Array(f)) => f.as_slice(),
        // An empty collection may come without `features`.
        None | Some(Value::Null) => &[],
        Some(other) => return Err(bad(format!("features is not a list: {other}"))),
    };
    let mut images = Vec::with_capacity(features.len());
    for (i, feature) in features.iter().enumerate() {
        let id = feature
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("image {i} has no id")))?;
        let props = feature.get("properties").and_then(Value::as_object);
        let time_start_ms = props
            .and_then(|p| p.get(TIME_START))
            .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))
            .ok_or_else(|| bad(format!("image {id} has no numeric {TIME_START}")))?;
        let properties = spec
            .properties
            .iter()
            .filter_map(|k| Some((k.clone(), props?.get(k)?.clone())))
            .collect();
        images.push(ImageInfo {
            id: id.to_string(),
            time_start_ms,
            properties,
        });
    }
    images.sort_by(|a, b| (a.time_start_ms, &a.id).cmp(&(b.time_start_ms, &b.id)));
    Ok(images)
}

// ------------------------------------------------------------------------------------------
// The pre-ARD image
// ------------------------------------------------------------------------------------------

/// One time slice of the export: a UTC date and the scenes that make it (mosaicked when the
/// spec says so, else exactly one scene).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub date: NaiveDate,
    pub image_ids: Vec<String>,
}

/// The band order of an exported pre-ARD image: slice-major, then `bands` in order.
///
/// Band `i` of the GeoTIFF is band `bands[i % bands.len()]` of slice `i / bands.len()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandLayout {
    /// Band names of one slice, in export order.
    pub bands: Vec<String>,
    /// The slices in time order.
    pub slices: Vec<Slice>,
}

impl BandLayout {
    pub fn band_count(&self) -> usize {
        self.bands.len() * self.slices.len()
    }

    /// (slice index, band name) of every band of the image, in order.
    pub fn band_order(&self) -> Vec<(usize, &str)> {
        (0..self.slices.len())
            .flat_map(|s| self.bands.iter().map(move |b| (s, b.as_str())))
            .collect()
    }
}

/// The `Image.to<Type>` cast algorithm for a data type.
fn cast_algorithm(t: DataType) -> &'static str {
    match t {
        DataType::Int8 => "Image.toInt8",
        DataType::Uint8 => "Image.toUint8",
        DataType::Int16 => "Image.toInt16",
        DataType::Uint16 => "Image.toUint16",
        DataType::Int32 => "Image.toInt32",
        DataType::Uint32 => "Image.toUint32",
        DataType::Float => "Image.toFloat",
        DataType::Double => "Image.toDouble",
    }
}

/// The image exported for one tile-period, made of exactly the listed scenes (the filters are
/// not re-run, so the export matches the listing recorded in the metadata).
///
/// Per UTC date (per scene unless `mosaic_per_day`): `ImageCollection.mosaic` of the day's
/// scenes, `Image.select` of the native bands renamed to common names; then `fromImages` →
/// `toBands` (date-major) → cast to `spec.data_type` → `unmask(nodata)`. The footprint is not
/// clipped: the export's pixel grid sets the extent.
///
/// With no images the expression has no bands and EE rejects the export; callers record such
/// an item as empty instead of exporting it.
pub fn preard_image(spec: &CollectionSpec, images: &[ImageInfo]) -> (Expression, BandLayout) {
    let mut sorted: Vec<&ImageInfo> = images.iter().collect();
    sorted.sort_by(|a, b| (a.time_start_ms, &a.id).cmp(&(b.time_start_ms, &b.id)));
    let mut slices: Vec<Slice> = Vec::new();
    for image in sorted {
        let date = image.date();
        match slices.last_mut() {
            Some(last) if spec.mosaic_per_day && last.date == date => {
                last.image_ids.push(image.id.clone())
            }
            _ => slices.push(Slice {
                date,
                image_ids: vec![image.id.clone()],
            }),
        }
    }

    let natives: Vec<&str> = spec.bands.iter().map(|b| b.native.as_str()).collect();
    let names: Vec<&str> = spec.bands.iter().map(|b| b.name.as_str()).collect();
    let load = |id: &str| call("Image.load", [("id", constant(id))]);
    let per_slice = slices
        .iter()
        .map(|slice| {
            let image = if spec.mosaic_per_day {
                let scenes = slice.image_ids.iter().map(|id| load(id)).collect();
                call(
                    "ImageCollection.mosaic",
                    [(
                        "collection",
                        call("ImageCollection.fromImages", [("images", array(scenes))]),
                    )],
                )
            } else {
                load(&slice.image_ids[0])
            };
            call(
                "Image.select",
                [
                    ("input", image),
                    ("bandSelectors", constant(natives.clone())),
                    ("newNames", constant(names.clone())),
                ],
            )
        })
        .collect();
    let stack = call(
        "ImageCollection.toBands",
        [(
            "collection",
            call("ImageCollection.fromImages", [("images", array(per_slice))]),
        )],
    );
    let cast = call(cast_algorithm(spec.data_type), [("value", stack)]);
    // `image.unmask(x)` in the Python client passes the value as a constant image.
    let fill = call("Image.constant", [("value", constant(number(spec.nodata)))]);
    let image = call("Image.unmask", [("input", cast), ("value", fill)]);
    let layout = BandLayout {
        bands: names.iter().map(|s| s.to_string()).collect(),
        slices,
    };
    (finish(image), layout)
}

#[cfg(test)]
#[path = "expression_tests.rs"]
mod tests;
