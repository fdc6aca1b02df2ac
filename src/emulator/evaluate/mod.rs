//! Evaluation of a validated expression over the synthetic catalogue: the subset of EE
//! algorithms that listing images and building an export image use.
//!
//! Images are evaluated symbolically: bands, types and properties, never pixels. Errors come in
//! two kinds, because EE reports them at different times: what the emulator cannot do is
//! refused at request time, while what EE itself would reject at run time (a missing asset, a
//! band that does not exist) fails a `value:compute` with 400 but an export only when its task
//! runs.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value, json};

mod filter;
mod image;
#[cfg(test)]
mod tests;

use super::catalogue::{self, Band, CatalogueError, CollectionSpec, Footprint, ImageRecord};
use super::expression::{self, Expression};
use super::schema::{parse_f64, parse_i64};
use filter::{Filter, Op, Operand, comparison, date_of, matches};
use image::{all_bounded, empty_record, image_val, merge_bands};

/// Why evaluation stopped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum EvalError {
    /// The emulator does not implement this; always a 400 at request time.
    #[error("{0}")]
    Unsupported(String),
    /// EE would reject this while computing: 400 for `value:compute`, a FAILED export task.
    #[error("{0}")]
    Invalid(String),
}

impl From<CatalogueError> for EvalError {
    fn from(error: CatalogueError) -> Self {
        EvalError::Invalid(error.to_string())
    }
}

type Result<T> = std::result::Result<T, EvalError>;

/// A symbolic image: its `getInfo` record, plus what an export needs to size it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Image {
    pub record: ImageRecord,
    /// Constant images cover the whole world and cannot be exported without a region.
    pub bounded: bool,
    /// Pixel dimensions fixed by `Image.clipToBoundsAndScale`, if any.
    pub dimensions: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Collection {
    /// A catalogue collection narrowed by footprints, a date range and property filters, with
    /// mapped functions applied when it is listed.
    Query {
        spec: &'static CollectionSpec,
        footprints: Vec<Footprint>,
        start: i64,
        end: i64,
        filters: Vec<Filter>,
        maps: Vec<Function>,
    },
    Images(Vec<Image>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Function {
    names: Vec<String>,
    body: String,
    drop_nulls: bool,
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Json(Value),
    List(Vec<Val>),
    Dict(Vec<(String, Val)>),
    Date(i64),
    DateRange(i64, i64),
    Projection(String),
    Geometry(Footprint),
    Feature(Option<Footprint>),
    Filter(Filter),
    Collection(Collection),
    Image(Box<Image>),
    Function(Function),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Json(_) | Val::List(_) | Val::Dict(_) => "value",
            Val::Date(_) => "Date",
            Val::DateRange(..) => "DateRange",
            Val::Projection(_) => "Projection",
            Val::Geometry(_) => "Geometry",
            Val::Feature(_) => "Feature",
            Val::Filter(_) => "Filter",
            Val::Collection(_) => "ImageCollection",
            Val::Image(_) => "Image",
            Val::Function(_) => "Function",
        }
    }
}

/// Evaluates `expression` and renders the result as `getInfo` would (`value:compute`).
pub(crate) fn compute(expression: Expression<'_>, seed: u64) -> Result<Value> {
    let evaluator = Evaluator::new(expression, seed);
    let value = evaluator.node_key(expression.result, &HashMap::new())?;
    evaluator.to_json(value)
}

/// Evaluates `expression`, which must produce an image (`image:export`).
pub(crate) fn image(expression: Expression<'_>, seed: u64) -> Result<Image> {
    let evaluator = Evaluator::new(expression, seed);
    match evaluator.node_key(expression.result, &HashMap::new())? {
        Val::Image(image) => Ok(*image),
        other => Err(EvalError::Invalid(format!(
            "Expected an Image to export, got a {}.",
            other.kind()
        ))),
    }
}

type Env = HashMap<String, Val>;

struct Evaluator<'a> {
    expression: Expression<'a>,
    seed: u64,
    memo: RefCell<HashMap<String, Val>>,
    depth: RefCell<usize>,
}

const MAX_DEPTH: usize = 200;

impl<'a> Evaluator<'a> {
    fn new(expression: Expression<'a>, seed: u64) -> Self {
        Self {
            expression,
            seed,
            memo: RefCell::new(HashMap::new()),
            depth: RefCell::new(0),
        }
    }

    fn node_key(&self, key: &str, env: &Env) -> Result<Val> {
        // Only closed values are cached: a function body evaluates differently per argument.
        if env.is_empty()
            && let Some(value) = self.memo.borrow().get(key)
        {
            return Ok(value.clone());
        }
        let node = &self.expression.values[key];
        let value = self.node(node, env)?;
        if env.is_empty() {
            self.memo.borrow_mut().insert(key.to_owned(), value.clone());
        }
        Ok(value)
    }

    fn node(&self, node: &Value, env: &Env) -> Result<Val> {
        *self.depth.borrow_mut() += 1;
        let result = if *self.depth.borrow() > MAX_DEPTH {
            Err(EvalError::Invalid("Expression nesting is too deep.".into()))
        } else {
            self.node_inner(node, env)
        };
        *self.depth.borrow_mut() -= 1;
        result
    }

    fn node_inner(&self, node: &Value, env: &Env) -> Result<Val> {
        let Some((kind, payload)) = expression::node_kind(node) else {
            return Err(EvalError::Invalid("A ValueNode sets no kind.".into()));
        };
        match kind {
            "constantValue" => Ok(Val::Json(payload.clone())),
            "integerValue" => Ok(Val::Json(json!(parse_i64(payload).unwrap_or_default()))),
            "bytesValue" => Err(EvalError::Unsupported(
                "The emulator does not support bytesValue nodes.".into(),
            )),
            "arrayValue" => payload["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| self.node(item, env))
                .collect::<Result<Vec<_>>>()
                .map(Val::List),
            "dictionaryValue" => payload["values"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| Ok((k.clone(), self.node(v, env)?)))
                .collect::<Result<Vec<_>>>()
                .map(Val::Dict),
            "functionDefinitionValue" => Ok(Val::Function(Function {
                names: payload["argumentNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                body: payload["body"].as_str().unwrap_or_default().to_owned(),
                drop_nulls: false,
            })),
            "argumentReference" => {
                let name = payload.as_str().unwrap_or_default();
                env.get(name).cloned().ok_or_else(|| {
                    EvalError::Invalid(format!("Argument '{name}' is not bound here."))
                })
            }
            "valueReference" => self.node_key(payload.as_str().unwrap_or_default(), env),
            _ => self.invoke(payload, env),
        }
    }

    fn invoke(&self, invocation: &Value, env: &Env) -> Result<Val> {
        let empty = Map::new();
        let arguments = invocation["arguments"].as_object().unwrap_or(&empty);
        let mut args: HashMap<&str, Val> = HashMap::new();
        for (name, node) in arguments {
            args.insert(name.as_str(), self.node(node, env)?);
        }
        if let Some(reference) = invocation["functionReference"].as_str() {
            let Val::Function(function) = self.node_key(reference, env)? else {
                return Err(EvalError::Invalid(format!(
                    "'{reference}' is not a function."
                )));
            };
            let mut inner = env.clone();
            for name in &function.names {
                inner.insert(
                    name.clone(),
                    args.remove(name.as_str()).unwrap_or(Val::Json(Value::Null)),
                );
            }
            return self.node_key(&function.body, &inner);
        }
        let name = invocation["functionName"].as_str().unwrap_or_default();
        let call = Call { name, args };
        self.call(call, env)
    }

    fn call(&self, mut call: Call<'_>, env: &Env) -> Result<Val> {
        let name = call.name;
        match name {
            "ImageCollection.load" => {
                let spec = catalogue::collection(&call.string("id")?)?;
                Ok(Val::Collection(Collection::Query {
                    spec,
                    footprints: Vec::new(),
                    start: i64::MIN,
                    end: i64::MAX,
                    filters: Vec::new(),
                    maps: Vec::new(),
                }))
            }
            "Image.load" => {
                let id = call.string("id")?;
                let spec = catalogue::collection(id.rsplit_once('/').map_or("", |(c, _)| c))
                    .map_err(|_| CatalogueError::UnknownImage(id.clone()))?;
                Ok(image_val(spec.load(&id)?, true, None))
            }
            "Collection.filter" => {
                let collection = call.collection("collection")?;
                let Some(Val::Filter(filter)) = call.take("filter") else {
                    return Err(call.expected("filter", "Filter"));
                };
                Ok(Val::Collection(self.filter(collection, filter)?))
            }
            "Collection.map" => {
                let collection = call.collection("collection")?;
                let Some(Val::Function(mut function)) = call.take("baseAlgorithm") else {
                    return Err(call.expected("baseAlgorithm", "Function"));
                };
                function.drop_nulls =
                    matches!(call.take("dropNulls"), Some(Val::Json(Value::Bool(true))));
                Ok(Val::Collection(match collection {
                    Collection::Query {
                        spec,
                        footprints,
                        start,
                        end,
                        filters,
                        mut maps,
                    } => {
                        maps.push(function);
                        Collection::Query {
                            spec,
                            footprints,
                            start,
                            end,
                            filters,
                            maps,
                        }
                    }
                    Collection::Images(images) => {
                        Collection::Images(self.map_images(images, &[function], env)?)
                    }
                }))
            }
            "Collection.size" => {
                let images = self.list(call.collection("collection")?)?;
                Ok(Val::Json(json!(images.len())))
            }
            "AggregateFeatureCollection.array" => {
                let images = self.list(call.collection("collection")?)?;
                let property = call.string("property")?;
                Ok(Val::Json(Value::Array(
                    images
                        .iter()
                        .map(|i| {
                            i.record
                                .properties
                                .get(&property)
                                .cloned()
                                .unwrap_or(Value::Null)
                        })
                        .collect(),
                )))
            }
            "ImageCollection.fromImages" => {
                let Some(Val::List(items)) = call.take("images") else {
                    return Err(call.expected("images", "List<Image>"));
                };
                let images = items
                    .into_iter()
                    .map(|item| match item {
                        Val::Image(image) => Ok(*image),
                        other => Err(EvalError::Invalid(format!(
                            "ImageCollection.fromImages: expected Images, got a {}.",
                            other.kind()
                        ))),
                    })
                    .collect::<Result<_>>()?;
                Ok(Val::Collection(Collection::Images(images)))
            }
            "ImageCollection.mosaic" => {
                let images = self.list(call.collection("collection")?)?;
                Ok(image_val(
                    merge_bands(&images, |b| b.id.clone()),
                    all_bounded(&images),
                    None,
                ))
            }
            "ImageCollection.toBands" => {
                let images = self.list(call.collection("collection")?)?;
                let mut record = empty_record();
                for (i, image) in images.iter().enumerate() {
                    let prefix = image
                        .record
                        .properties
                        .get("system:index")
                        .and_then(Value::as_str)
                        .map_or_else(|| i.to_string(), str::to_owned);
                    record.bands.extend(image.record.bands.iter().map(|b| Band {
                        id: format!("{prefix}_{}", b.id),
                        ..b.clone()
                    }));
                }
                Ok(image_val(record, all_bounded(&images), None))
            }
            _ if name.starts_with("reduce.") => {
                let reducer = name.trim_start_matches("reduce.");
                let images = self.list(call.collection("collection")?)?;
                let record = merge_bands(&images, |b| format!("{}_{reducer}", b.id));
                Ok(image_val(record, all_bounded(&images), None))
            }
            "DateRange" => {
                let start = call.date("start")?;
                // EE: without an end, the range is the one millisecond at `start`.
                let end = match call.take("end") {
                    None | Some(Val::Json(Value::Null)) => start + 1,
                    Some(value) => date_of(&value, name)?,
                };
                Ok(Val::DateRange(start, end))
            }
            "Date" => Ok(Val::Date(call.date("value")?)),
            "Projection" => match call.take("crs") {
                Some(Val::Json(Value::String(crs))) => Ok(Val::Projection(crs)),
                Some(Val::Projection(crs)) => Ok(Val::Projection(crs)),
                _ => Err(call.expected("crs", "String")),
            },
            "GeometryConstructors.Rectangle"
            | "GeometryConstructors.Polygon"
            | "GeometryConstructors.BBox" => {
                let crs = match call.take("crs") {
                    Some(Val::Projection(crs)) | Some(Val::Json(Value::String(crs))) => Some(crs),
                    _ => None,
                };
                let coordinates = match (call.take("coordinates"), name) {
                    (Some(value), _) => self.to_json(value)?,
                    (None, "GeometryConstructors.BBox") => json!([
                        call.number("west")?,
                        call.number("south")?,
                        call.number("east")?,
                        call.number("north")?
                    ]),
                    (None, _) => return Err(call.expected("coordinates", "List")),
                };
                let mut points = Vec::new();
                collect_points(&coordinates, &mut points);
                if points.is_empty() {
                    return Err(EvalError::Invalid(format!("{name}: Invalid coordinates.")));
                }
                let bbox = points.iter().fold(
                    [
                        f64::INFINITY,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                        f64::NEG_INFINITY,
                    ],
                    |b, (x, y)| [b[0].min(*x), b[1].min(*y), b[2].max(*x), b[3].max(*y)],
                );
                Ok(Val::Geometry(Footprint { crs, bbox }))
            }
            "Feature" => match call.take("geometry") {
                Some(Val::Geometry(g)) => Ok(Val::Feature(Some(g))),
                None | Some(Val::Json(Value::Null)) => Ok(Val::Feature(None)),
                _ => Err(call.expected("geometry", "Geometry")),
            },
            "Filter.and" | "Filter.or" => {
                let Some(Val::List(items)) = call.take("filters") else {
                    return Err(call.expected("filters", "List<Filter>"));
                };
                let filters = items
                    .into_iter()
                    .map(|f| match f {
                        Val::Filter(f) => Ok(f),
                        other => Err(EvalError::Invalid(format!(
                            "{name}: expected Filters, got a {}.",
                            other.kind()
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Val::Filter(if name == "Filter.and" {
                    Filter::And(filters)
                } else {
                    Filter::Or(filters)
                }))
            }
            "Filter.not" => match call.take("filter") {
                Some(Val::Filter(f)) => Ok(Val::Filter(Filter::Not(Box::new(f)))),
                _ => Err(call.expected("filter", "Filter")),
            },
            "Filter.intersects" => {
                let left = call.take("leftField");
                let is_all = matches!(&left, None | Some(Val::Json(Value::Null)))
                    || left == Some(Val::Json(json!(".all")));
                match call.take("rightValue") {
                    Some(Val::Feature(Some(g)) | Val::Geometry(g)) if is_all => Ok(Val::Filter(Filter::Intersects(g))),
                    _ => Err(EvalError::Unsupported(
                        "The emulator supports Filter.intersects only with leftField '.all' and a geometry or Feature rightValue.".into(),
                    )),
                }
            }
            _ if comparison(name).is_some() => {
                let op = comparison(name).unwrap_or(Op::Eq);
                let left = call.operand("leftField", "leftValue")?;
                let right = call.operand("rightField", "rightValue")?;
                Ok(Val::Filter(Filter::Compare { op, left, right }))
            }
            _ => self.call_image(call),
        }
    }

    fn filter(&self, collection: Collection, filter: Filter) -> Result<Collection> {
        match collection {
            Collection::Query {
                spec,
                mut footprints,
                mut start,
                mut end,
                mut filters,
                maps,
            } if maps.is_empty() => {
                let mut pending = vec![filter];
                while let Some(filter) = pending.pop() {
                    match filter {
                        Filter::And(parts) => pending.extend(parts),
                        Filter::Intersects(footprint) => footprints.push(footprint),
                        Filter::Compare {
                            op: Op::DateRangeContains,
                            left: Operand::Value(range),
                            right: Operand::Field(field),
                        } if field == "system:time_start"
                            && matches!(*range, Val::DateRange(..)) =>
                        {
                            if let Val::DateRange(s, e) = *range {
                                start = start.max(s);
                                end = end.min(e);
                            }
                        }
                        other => filters.push(other),
                    }
                }
                Ok(Collection::Query {
                    spec,
                    footprints,
                    start,
                    end,
                    filters,
                    maps,
                })
            }
            other => {
                let images = self.list(other)?;
                Ok(Collection::Images(
                    images.into_iter().filter(|i| matches(&filter, i)).collect(),
                ))
            }
        }
    }

    fn list(&self, collection: Collection) -> Result<Vec<Image>> {
        match collection {
            Collection::Images(images) => Ok(images),
            Collection::Query {
                spec,
                footprints,
                start,
                end,
                filters,
                maps,
            } => {
                let records = spec.query(&footprints, start, end, self.seed)?;
                let images: Vec<Image> = records
                    .into_iter()
                    .map(|record| Image {
                        record,
                        bounded: true,
                        dimensions: None,
                    })
                    .filter(|image| filters.iter().all(|f| matches(f, image)))
                    .collect();
                self.map_images(images, &maps, &HashMap::new())
            }
        }
    }

    fn map_images(&self, images: Vec<Image>, maps: &[Function], env: &Env) -> Result<Vec<Image>> {
        let mut out = images;
        for function in maps {
            let mut mapped = Vec::with_capacity(out.len());
            for image in out {
                let mut inner = env.clone();
                if let Some(name) = function.names.first() {
                    inner.insert(name.clone(), Val::Image(Box::new(image)));
                }
                match self.node_key(&function.body, &inner)? {
                    Val::Image(image) => mapped.push(*image),
                    Val::Json(Value::Null) if function.drop_nulls => {}
                    other => {
                        return Err(EvalError::Unsupported(format!(
                            "The emulator supports Collection.map only over functions returning images, got a {}.",
                            other.kind()
                        )));
                    }
                }
            }
            out = mapped;
        }
        Ok(out)
    }

    fn to_json(&self, value: Val) -> Result<Value> {
        Ok(match value {
            Val::Json(value) => value,
            Val::List(items) => Value::Array(
                items
                    .into_iter()
                    .map(|i| self.to_json(i))
                    .collect::<Result<_>>()?,
            ),
            Val::Dict(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((k, self.to_json(v)?)))
                    .collect::<Result<_>>()?,
            ),
            Val::Date(ms) => json!({"type": "Date", "value": ms}),
            Val::Image(image) => image.record.to_json(),
            Val::Collection(collection) => {
                let mut header = match &collection {
                    Collection::Query { spec, .. } => catalogue::collection_header(spec),
                    Collection::Images(_) => json!({"type": "ImageCollection", "bands": []}),
                };
                let images = self.list(collection)?;
                header["features"] =
                    Value::Array(images.iter().map(|i| i.record.to_json()).collect());
                header
            }
            other => {
                return Err(EvalError::Unsupported(format!(
                    "The emulator cannot return a {} from value:compute.",
                    other.kind()
                )));
            }
        })
    }
}

/// The arguments of one invocation, taken by name.
struct Call<'a> {
    name: &'a str,
    args: HashMap<&'a str, Val>,
}

impl Call<'_> {
    fn take(&mut self, argument: &str) -> Option<Val> {
        self.args.remove(argument)
    }

    fn expected(&self, argument: &str, kind: &str) -> EvalError {
        EvalError::Invalid(format!(
            "{}, argument '{argument}': Invalid type. Expected type: {kind}.",
            self.name
        ))
    }

    fn string(&mut self, argument: &str) -> Result<String> {
        match self.take(argument) {
            Some(Val::Json(Value::String(s))) => Ok(s),
            _ => Err(self.expected(argument, "String")),
        }
    }

    fn number(&mut self, argument: &str) -> Result<f64> {
        match self.take(argument) {
            Some(Val::Json(n)) if parse_f64(&n).is_some() => Ok(parse_f64(&n).unwrap_or_default()),
            _ => Err(self.expected(argument, "Float")),
        }
    }

    fn date(&mut self, argument: &str) -> Result<i64> {
        let name = self.name;
        match self.take(argument) {
            Some(value) => date_of(&value, name),
            None => Err(self.expected(argument, "Date")),
        }
    }

    fn collection(&mut self, argument: &str) -> Result<Collection> {
        match self.take(argument) {
            Some(Val::Collection(c)) => Ok(c),
            _ => Err(self.expected(argument, "ImageCollection")),
        }
    }

    fn image(&mut self, argument: &str) -> Result<Image> {
        match self.take(argument) {
            Some(Val::Image(image)) => Ok(*image),
            _ => Err(self.expected(argument, "Image")),
        }
    }

    fn operand(&mut self, field: &str, value: &str) -> Result<Operand> {
        match (self.take(field), self.take(value)) {
            (Some(Val::Json(Value::String(f))), _) => Ok(Operand::Field(f)),
            (_, Some(v)) => Ok(Operand::Value(Box::new(v))),
            _ => Err(EvalError::Invalid(format!(
                "{}: either '{field}' or '{value}' must be given.",
                self.name
            ))),
        }
    }
}

fn collect_points(value: &Value, out: &mut Vec<(f64, f64)>) {
    if let Value::Array(items) = value {
        if items.iter().all(Value::is_number) {
            for pair in items.chunks(2) {
                if let [x, y] = pair {
                    out.push((
                        x.as_f64().unwrap_or_default(),
                        y.as_f64().unwrap_or_default(),
                    ));
                }
            }
        } else {
            for item in items {
                collect_points(item, out);
            }
        }
    }
}
