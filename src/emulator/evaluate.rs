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

use super::catalogue::{self, Band, CatalogueError, CollectionSpec, Footprint, ImageRecord};
use super::expression::{self, Expression};
use super::schema::{parse_f64, parse_i64};

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

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Lt,
    Lte,
    Gt,
    Gte,
    Eq,
    Neq,
    DateRangeContains,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Field(String),
    Value(Box<Val>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Compare { op: Op, left: Operand, right: Operand },
    Intersects(Footprint),
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
                return Err(EvalError::Invalid(format!("'{reference}' is not a function.")));
            };
            let mut inner = env.clone();
            for name in &function.names {
                inner.insert(name.clone(), args.remove(name.as_str()).unwrap_or(Val::Json(Value::Null)));
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
                function.drop_nulls = matches!(call.take("dropNulls"), Some(Val::Json(Value::Bool(true))));
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
                        Collection::Query { spec, footprints, start, end, filters, maps }
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
                        .map(|i| i.record.properties.get(&property).cloned().unwrap_or(Value::Null))
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
                Ok(image_val(merge_bands(&images, |b| b.id.clone()), all_bounded(&images), None))
            }
            "ImageCollection.toBands" => {
                let images = self.list(call.collection("collection")?)?;
                let mut record = empty_record();
                for (i, image) in images.iter().enumerate() {
                    let prefix = image.record.properties.get("system:index").and_then(Value::as_str).map_or_else(|| i.to_string(), str::to_owned);
                    record.bands.extend(image.record.bands.iter().map(|b| Band { id: format!("{prefix}_{}", b.id), ..b.clone() }));
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
            "GeometryConstructors.Rectangle" | "GeometryConstructors.Polygon" | "GeometryConstructors.BBox" => {
                let crs = match call.take("crs") {
                    Some(Val::Projection(crs)) | Some(Val::Json(Value::String(crs))) => Some(crs),
                    _ => None,
                };
                let coordinates = match (call.take("coordinates"), name) {
                    (Some(value), _) => self.to_json(value)?,
                    (None, "GeometryConstructors.BBox") => json!([call.number("west")?, call.number("south")?, call.number("east")?, call.number("north")?]),
                    (None, _) => return Err(call.expected("coordinates", "List")),
                };
                let mut points = Vec::new();
                collect_points(&coordinates, &mut points);
                if points.is_empty() {
                    return Err(EvalError::Invalid(format!("{name}: Invalid coordinates.")));
                }
                let bbox = points.iter().fold(
                    [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY],
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
                        other => Err(EvalError::Invalid(format!("{name}: expected Filters, got a {}.", other.kind()))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Val::Filter(if name == "Filter.and" { Filter::And(filters) } else { Filter::Or(filters) }))
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
            "Image.select" => {
                let mut image = call.image("input")?;
                let selectors = call.take("bandSelectors").map(|v| self.to_json(v)).transpose()?.unwrap_or(Value::Null);
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
                let types = call.take("bandTypes").map(|v| self.to_json(v)).transpose()?.unwrap_or(Value::Null);
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
                let width = call.take("width").and_then(|v| match v { Val::Json(n) => n.as_u64(), _ => None });
                let height = call.take("height").and_then(|v| match v { Val::Json(n) => n.as_u64(), _ => None });
                let dimensions = width.zip(height).or(input.dimensions);
                Ok(image_val(input.record, input.bounded || geometry || dimensions.is_some(), dimensions))
            }
            "Image.constant" => {
                let values = match call.take("value") {
                    Some(Val::Json(Value::Array(values))) => values.len(),
                    Some(Val::List(values)) => values.len(),
                    _ => 1,
                };
                let mut record = empty_record();
                for i in 0..values {
                    let id = if values == 1 { "constant".to_owned() } else { format!("constant_{i}") };
                    record.bands.push(Band { id, precision: "float", min: f64::MIN, max: f64::MAX, dimensions: None, crs: "EPSG:4326".into(), crs_transform: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] });
                }
                Ok(image_val(record, false, None))
            }
            "Image.normalizedDifference" => {
                let input = call.image("input")?;
                let mut record = empty_record();
                if let Some(first) = input.record.bands.first() {
                    record.bands.push(Band { id: "nd".into(), precision: "float", min: -1.0, max: 1.0, ..first.clone() });
                }
                Ok(image_val(record, input.bounded, input.dimensions))
            }
            _ if name.starts_with("Image.") && expression::algorithm(name).is_some_and(|a| a.return_type.starts_with("Image")) => {
                // Band-preserving arithmetic and projection changes (Image.add, Image.reproject,
                // …): the result has the bands of the first image argument.
                let algorithm = expression::algorithm(name).expect("checked above");
                for argument in &algorithm.arguments {
                    if let Some(Val::Image(image)) = call.args.remove(argument.name.as_str()) {
                        return Ok(Val::Image(image));
                    }
                }
                Err(EvalError::Unsupported(format!("The emulator cannot evaluate {name} without an image argument.")))
            }
            _ => Err(EvalError::Unsupported(format!("The emulator does not support the algorithm '{name}'."))),
        }
    }

    fn filter(&self, collection: Collection, filter: Filter) -> Result<Collection> {
        match collection {
            Collection::Query { spec, mut footprints, mut start, mut end, mut filters, maps } if maps.is_empty() => {
                let mut pending = vec![filter];
                while let Some(filter) = pending.pop() {
                    match filter {
                        Filter::And(parts) => pending.extend(parts),
                        Filter::Intersects(footprint) => footprints.push(footprint),
                        Filter::Compare { op: Op::DateRangeContains, left: Operand::Value(range), right: Operand::Field(field) }
                            if field == "system:time_start" && matches!(*range, Val::DateRange(..)) =>
                        {
                            if let Val::DateRange(s, e) = *range {
                                start = start.max(s);
                                end = end.min(e);
                            }
                        }
                        other => filters.push(other),
                    }
                }
                Ok(Collection::Query { spec, footprints, start, end, filters, maps })
            }
            other => {
                let images = self.list(other)?;
                Ok(Collection::Images(images.into_iter().filter(|i| matches(&filter, i)).collect()))
            }
        }
    }

    fn list(&self, collection: Collection) -> Result<Vec<Image>> {
        match collection {
            Collection::Images(images) => Ok(images),
            Collection::Query { spec, footprints, start, end, filters, maps } => {
                let records = spec.query(&footprints, start, end, self.seed)?;
                let images: Vec<Image> = records
                    .into_iter()
                    .map(|record| Image { record, bounded: true, dimensions: None })
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
            Val::List(items) => Value::Array(items.into_iter().map(|i| self.to_json(i)).collect::<Result<_>>()?),
            Val::Dict(entries) => Value::Object(entries.into_iter().map(|(k, v)| Ok((k, self.to_json(v)?))).collect::<Result<_>>()?),
            Val::Date(ms) => json!({"type": "Date", "value": ms}),
            Val::Image(image) => image.record.to_json(),
            Val::Collection(collection) => {
                let mut header = match &collection {
                    Collection::Query { spec, .. } => catalogue::collection_header(spec),
                    Collection::Images(_) => json!({"type": "ImageCollection", "bands": []}),
                };
                let images = self.list(collection)?;
                header["features"] = Value::Array(images.iter().map(|i| i.record.to_json()).collect());
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
        EvalError::Invalid(format!("{}, argument '{argument}': Invalid type. Expected type: {kind}.", self.name))
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
            _ => Err(EvalError::Invalid(format!("{}: either '{field}' or '{value}' must be given.", self.name))),
        }
    }
}

fn comparison(name: &str) -> Option<Op> {
    Some(match name {
        "Filter.lessThan" | "Filter.lt" => Op::Lt,
        "Filter.lessThanOrEquals" | "Filter.lte" => Op::Lte,
        "Filter.greaterThan" | "Filter.gt" => Op::Gt,
        "Filter.greaterThanOrEquals" | "Filter.gte" => Op::Gte,
        "Filter.equals" | "Filter.eq" => Op::Eq,
        "Filter.notEquals" | "Filter.neq" => Op::Neq,
        "Filter.dateRangeContains" => Op::DateRangeContains,
        _ => return None,
    })
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
            Value::Number(n) => n.as_u64().and_then(|i| bands.get(i as usize)).into_iter().collect(),
            Value::String(pattern) => bands.iter().filter(|b| pattern_matches(pattern, &b.id)).collect(),
            _ => Vec::new(),
        };
        if matched.is_empty() {
            let shown = selector.as_str().map_or_else(|| selector.to_string(), str::to_owned);
            return Err(EvalError::Invalid(format!("Image.select: Pattern '{shown}' did not match any bands.")));
        }
        out.extend(matched.into_iter().cloned());
    }
    Ok(out)
}

/// EE band selectors are regular expressions matched against the whole name; the emulator
/// understands literal names and `.*` wildcards, which is what pipelines use.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split(".*").collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else { return false };
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
        band.id = name.as_str().map_or_else(|| name.to_string(), str::to_owned);
    }
    Ok(())
}

fn empty_record() -> ImageRecord {
    ImageRecord { id: None, version: None, bands: Vec::new(), properties: Map::new() }
}

/// The bands of a composite: the union of the inputs' bands, in first-seen order.
fn merge_bands(images: &[Image], name: impl Fn(&Band) -> String) -> ImageRecord {
    let mut record = empty_record();
    for band in images.iter().flat_map(|i| &i.record.bands) {
        let id = name(band);
        if !record.bands.iter().any(|b| b.id == id) {
            record.bands.push(Band { id, ..band.clone() });
        }
    }
    record
}

fn all_bounded(images: &[Image]) -> bool {
    images.iter().all(|i| i.bounded)
}

fn image_val(record: ImageRecord, bounded: bool, dimensions: Option<(u64, u64)>) -> Val {
    Val::Image(Box::new(Image { record, bounded, dimensions }))
}

fn collect_points(value: &Value, out: &mut Vec<(f64, f64)>) {
    if let Value::Array(items) = value {
        if items.iter().all(Value::is_number) {
            for pair in items.chunks(2) {
                if let [x, y] = pair {
                    out.push((x.as_f64().unwrap_or_default(), y.as_f64().unwrap_or_default()));
                }
            }
        } else {
            for item in items {
                collect_points(item, out);
            }
        }
    }
}

/// Milliseconds since the epoch from a Date, a number (ms) or an ISO 8601 string.
fn date_of(value: &Val, function: &str) -> Result<i64> {
    let invalid = || EvalError::Invalid(format!("{function}: Invalid date: {value:?}"));
    match value {
        Val::Date(ms) => Ok(*ms),
        Val::Json(Value::Number(n)) => n.as_f64().map(|f| f as i64).ok_or_else(invalid),
        Val::Json(Value::String(s)) => parse_date(s).ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

fn parse_date(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

fn property(image: &Image, operand: &Operand) -> Val {
    match operand {
        Operand::Field(field) => Val::Json(image.record.properties.get(field).cloned().unwrap_or(Value::Null)),
        Operand::Value(value) => (**value).clone(),
    }
}

fn matches(filter: &Filter, image: &Image) -> bool {
    match filter {
        Filter::And(parts) => parts.iter().all(|f| matches(f, image)),
        Filter::Or(parts) => parts.iter().any(|f| matches(f, image)),
        Filter::Not(inner) => !matches(inner, image),
        // Images built outside a query carry no footprint in the query's CRS.
        Filter::Intersects(_) => true,
        Filter::Compare { op, left, right } => {
            let (left, right) = (property(image, left), property(image, right));
            if *op == Op::DateRangeContains {
                return match (left, date_of(&right, "Filter.dateRangeContains")) {
                    (Val::DateRange(s, e), Ok(t)) => s <= t && t < e,
                    _ => false,
                };
            }
            compare(*op, &left, &right)
        }
    }
}

fn compare(op: Op, left: &Val, right: &Val) -> bool {
    let number = |v: &Val| match v {
        Val::Date(ms) => Some(*ms as f64),
        Val::Json(Value::Number(n)) => n.as_f64(),
        _ => None,
    };
    let ordering = match (number(left), number(right), left, right) {
        (Some(a), Some(b), ..) => a.partial_cmp(&b),
        (_, _, Val::Json(Value::String(a)), Val::Json(Value::String(b))) => Some(a.cmp(b)),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match (op, ordering) {
        (Op::Eq, None) => left == right,
        (Op::Neq, None) => left != right,
        (Op::Eq, Some(o)) => o == Equal,
        (Op::Neq, Some(o)) => o != Equal,
        (Op::Lt, Some(o)) => o == Less,
        (Op::Lte, Some(o)) => o != Greater,
        (Op::Gt, Some(o)) => o == Greater,
        (Op::Gte, Some(o)) => o != Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invoke(name: &str, arguments: Value) -> Value {
        json!({"functionInvocationValue": {"functionName": name, "arguments": arguments}})
    }

    fn listing(filters: Vec<Value>) -> Value {
        let mut collection = invoke("ImageCollection.load", json!({"id": {"constantValue": "LANDSAT/LC08/C02/T1_L2"}}));
        for filter in filters {
            collection = invoke("Collection.filter", json!({"collection": collection, "filter": filter}));
        }
        json!({"result": "0", "values": {"0": collection}})
    }

    fn tile() -> Value {
        let projection = invoke("Projection", json!({"crs": {"constantValue": "EPSG:32610"}}));
        let rectangle = invoke("GeometryConstructors.Rectangle", json!({
            "coordinates": {"constantValue": [400000.0, 4100000.0, 550000.0, 4250000.0]},
            "crs": projection, "geodesic": {"constantValue": false}, "evenOdd": {"constantValue": true}}));
        invoke("Filter.intersects", json!({"leftField": {"constantValue": ".all"}, "rightValue": invoke("Feature", json!({"geometry": rectangle}))}))
    }

    fn dates(start: Value, end: Value) -> Value {
        invoke("Filter.dateRangeContains", json!({
            "leftValue": invoke("DateRange", json!({"start": {"constantValue": start}, "end": {"constantValue": end}})),
            "rightField": {"constantValue": "system:time_start"}}))
    }

    fn run(e: &Value) -> Result<Value> {
        compute(expression::parse(e).expect("valid"), 0)
    }

    #[test]
    fn a_filtered_collection_lists_like_get_info() {
        let result = run(&listing(vec![dates(json!("2021-06-01"), json!("2021-09-01")), tile()])).unwrap();
        assert_eq!(result["type"], "ImageCollection");
        assert_eq!(result["id"], "LANDSAT/LC08/C02/T1_L2");
        let features = result["features"].as_array().unwrap();
        assert!(!features.is_empty());
        assert_eq!(features[0]["type"], "Image");
        assert!(features[0]["bands"].as_array().unwrap().iter().any(|b| b["id"] == "QA_PIXEL"));
        // Millisecond numbers give the same range as ISO strings.
        let ms = run(&listing(vec![dates(json!(1_622_505_600_000_i64), json!(1_630_454_400_000_i64)), tile()])).unwrap();
        assert_eq!(ms, result);
    }

    #[test]
    fn property_filters_and_size() {
        let clear = invoke("Filter.lt", json!({"leftField": {"constantValue": "CLOUD_COVER"}, "rightValue": {"constantValue": 20}}));
        let all = run(&listing(vec![tile(), dates(json!("2021-01-01"), json!("2022-01-01"))])).unwrap();
        let filtered = run(&listing(vec![tile(), dates(json!("2021-01-01"), json!("2022-01-01")), clear])).unwrap();
        let n = |v: &Value| v["features"].as_array().unwrap().len();
        assert!(n(&filtered) < n(&all));
        assert!(filtered["features"].as_array().unwrap().iter().all(|f| f["properties"]["CLOUD_COVER"].as_f64().unwrap() < 20.0));
        let size = json!({"result": "s", "values": {"c": listing(vec![tile(), dates(json!("2021-01-01"), json!("2022-01-01"))])["values"]["0"].clone(),
            "s": invoke("Collection.size", json!({"collection": {"valueReference": "c"}}))}});
        assert_eq!(run(&size).unwrap(), json!(n(&all)));
    }

    #[test]
    fn unbounded_listing_and_unknown_collections_fail_like_ee() {
        let error = run(&listing(vec![dates(json!("2021-01-01"), json!("2022-01-01"))])).unwrap_err();
        assert_eq!(error, EvalError::Invalid("Collection query aborted after accumulating over 5000 elements.".into()));
        let missing = json!({"result": "0", "values": {"0": invoke("ImageCollection.load", json!({"id": {"constantValue": "X"}}))}});
        assert_eq!(run(&missing).unwrap_err().to_string(),
            "ImageCollection.load: ImageCollection asset 'X' not found (does not exist or caller does not have access).");
        let unsupported = json!({"result": "0", "values": {"0": invoke("Image.pixelArea", json!({}))}});
        assert!(matches!(run(&unsupported).unwrap_err(), EvalError::Unsupported(m) if m.contains("Image.pixelArea")));
    }

    #[test]
    fn the_pre_ard_image_has_dates_times_bands() {
        let listed = run(&listing(vec![tile(), dates(json!("2021-06-01"), json!("2021-07-01"))])).unwrap();
        let ids: Vec<&str> = listed["features"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
        let mosaics: Vec<Value> = ids.iter().map(|id| {
            let load = invoke("Image.load", json!({"id": {"constantValue": id}}));
            let selected = invoke("Image.select", json!({"input": load,
                "bandSelectors": {"constantValue": ["SR_B2", "SR_B3", "QA_PIXEL"]}, "newNames": {"constantValue": ["blue", "green", "qa"]}}));
            invoke("ImageCollection.mosaic", json!({"collection": invoke("ImageCollection.fromImages", json!({"images": {"arrayValue": {"values": [selected]}}}))}))
        }).collect();
        let stacked = invoke("ImageCollection.toBands", json!({"collection": invoke("ImageCollection.fromImages", json!({"images": {"arrayValue": {"values": mosaics}}}))}));
        let e = json!({"result": "0", "values": {"0": invoke("Image.unmask", json!({"input": invoke("Image.toInt16", json!({"value": stacked})), "value": {"constantValue": -9999}}))}});
        let image = image(expression::parse(&e).unwrap(), 0).unwrap();
        assert_eq!(image.record.bands.len(), 3 * ids.len());
        assert_eq!(image.record.bands[0].id, "0_blue");
        assert_eq!(image.record.bands[0].min, -32768.0);
    }

    #[test]
    fn select_reports_missing_bands_and_the_example_export_evaluates() {
        let e = json!({"result": "0", "values": {"0": invoke("Image.select", json!({
            "input": invoke("Image.constant", json!({"value": {"constantValue": 1}})),
            "bandSelectors": {"constantValue": ["x"]}}))}});
        assert_eq!(image(expression::parse(&e).unwrap(), 0).unwrap_err().to_string(), "Image.select: Pattern 'x' did not match any bands.");
        let body: Value = serde_json::from_str(include_str!("../../reference/examples/image-export-request.python-client-1.7.50.json")).unwrap();
        let exported = image(expression::parse(&body["expression"]).unwrap(), 0).unwrap();
        assert_eq!(exported.record.bands.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["SR_B4_median", "SR_B5_median"]);
        assert!(pattern_matches("SR_.*", "SR_B1") && !pattern_matches("SR_.*", "QA_PIXEL"));
    }
}
