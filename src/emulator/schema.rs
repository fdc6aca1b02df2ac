//! Validation of request bodies against the published EE v1 schema, the way Google's JSON
//! front end rejects them.
//!
//! The schema file (`reference/earthengine-v1.schema-from-js-client.json`) is derived from the
//! generated JS client: per message, each field's kind (`object`, `enum`, `arrayOf`, `mapOf`,
//! or a primitive hint). Proto details the file cannot carry (int64 encoded as strings, wrapper
//! types, oneofs) are listed here, from the REST reference.

use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::expression::NODE_KINDS;

static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!(
        "../../reference/earthengine-v1.schema-from-js-client.json"
    ))
    .expect("the bundled EE schema is valid JSON")
});

/// One rejected field: the snake_case path Google reports, and the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Violation {
    pub field: String,
    pub description: String,
}

/// Fields whose proto type is a wrapper (`Int64Value`, …): the Python client sends
/// `{"value": …}`, the JS client the plain value, and Google accepts both (reference §2.5).
const WRAPPERS: &[(&str, &str, Scalar)] = &[
    ("ExportImageRequest", "maxPixels", Scalar::Int64),
    ("ExportImageRequest", "priority", Scalar::Int32),
    ("ExportImageRequest", "maxWorkers", Scalar::Int32),
    ("GeoTiffImageExportOptions", "tileSize", Scalar::Int32),
    ("ImageAssetExportOptions", "tileSize", Scalar::Int32),
    ("TfRecordImageExportOptions", "maxSizeBytes", Scalar::Int64),
    (
        "TfRecordImageExportOptions",
        "maxMaskedRatio",
        Scalar::Double,
    ),
];

/// Primitive fields whose JSON type the schema file does not pin down precisely.
const SCALARS: &[(&str, &str, Scalar)] = &[
    ("ValueNode", "integerValue", Scalar::Int64),
    ("Number", "integerValue", Scalar::Int64),
    ("Number", "floatValue", Scalar::Double),
    ("GridDimensions", "width", Scalar::Int32),
    ("GridDimensions", "height", Scalar::Int32),
    ("ExportImageRequest", "workloadTag", Scalar::String),
    ("ComputeValueRequest", "workloadTag", Scalar::String),
    (
        "GeoTiffImageExportOptions",
        "metadataKeys",
        Scalar::StringArray,
    ),
];

/// Proto oneofs: at most one member may be set.
const ONEOFS: &[(&str, &str, &[&str])] = &[
    (
        "ExportImageRequest",
        "export_options",
        &["fileExportOptions", "assetExportOptions"],
    ),
    (
        "ImageFileExportOptions",
        "destination",
        &["driveDestination", "cloudStorageDestination"],
    ),
    (
        "ImageFileExportOptions",
        "format_options",
        &["geoTiffOptions", "tfRecordOptions"],
    ),
    ("PixelGrid", "crs", &["crsCode", "crsWkt"]),
    ("Number", "value", &["floatValue", "integerValue"]),
    (
        "FunctionInvocation",
        "function",
        &["functionName", "functionReference"],
    ),
    ("ValueNode", "kind", NODE_KINDS),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    String,
    Int64,
    Int32,
    Double,
    Bool,
    StringArray,
    NumberArray,
    Any,
}

/// Checks `body` against message `message` (e.g. `"ExportImageRequest"`); returns every
/// violation found.
pub(crate) fn validate(body: &Value, message: &str) -> Result<(), Vec<Violation>> {
    let mut violations = Vec::new();
    match body {
        Value::Object(fields) => check_message(fields, message, "", &mut violations),
        other => violations.push(Violation {
            field: String::new(),
            description: format!(
                "Invalid JSON payload received. Expected an object, got {}.",
                kind_name(other)
            ),
        }),
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// The values of an enum of the schema file, e.g. `ImageFileExportOptionsFileFormat`.
pub(crate) fn enum_values(name: &str) -> Vec<String> {
    SCHEMA["enums"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn check_message(fields: &Map<String, Value>, message: &str, path: &str, out: &mut Vec<Violation>) {
    let schema = &SCHEMA["schemas"][message];
    let mut set_oneofs: Vec<(&str, String)> = Vec::new();
    for (key, value) in fields {
        // Google's JSON parser accepts both the lowerCamelCase JSON name and the proto name.
        let name = if schema.get(key).is_some() {
            key.clone()
        } else {
            camel_case(key)
        };
        let Some(descriptor) = schema.get(&name) else {
            let at = if path.is_empty() {
                String::new()
            } else {
                format!(" at '{path}'")
            };
            out.push(Violation {
                field: path.to_owned(),
                description: format!(
                    "Invalid JSON payload received. Unknown name \"{key}\"{at}: Cannot find field."
                ),
            });
            continue;
        };
        if value.is_null() {
            // Proto3 JSON reads null as "field not set".
            continue;
        }
        for (oneof_message, group, members) in ONEOFS {
            if *oneof_message == message && members.contains(&name.as_str()) {
                if let Some((_, first)) = set_oneofs.iter().find(|(g, _)| g == group) {
                    out.push(Violation {
                        field: join(path, &snake_case(&name)),
                        description: format!(
                            "Invalid JSON payload received. Oneof field '{group}' is already set. \
                             Cannot set '{name}' (already set: '{first}')."
                        ),
                    });
                } else {
                    set_oneofs.push((group, name.clone()));
                }
            }
        }
        let field_path = join(path, &snake_case(&name));
        check_field(message, &name, descriptor, value, &field_path, out);
    }
}

fn check_field(
    message: &str,
    name: &str,
    descriptor: &Value,
    value: &Value,
    path: &str,
    out: &mut Vec<Violation>,
) {
    if let Some((_, _, scalar)) = WRAPPERS
        .iter()
        .find(|(m, f, _)| *m == message && *f == name)
    {
        let inner = match value {
            Value::Object(wrapper) if wrapper.len() == 1 && wrapper.contains_key("value") => {
                &wrapper["value"]
            }
            Value::Object(wrapper) => {
                let unknown = wrapper.keys().find(|k| *k != "value").cloned();
                out.push(Violation {
                    field: path.to_owned(),
                    description: format!(
                        "Invalid JSON payload received. Unknown name \"{}\" at '{path}': Cannot find field.",
                        unknown.unwrap_or_default()
                    ),
                });
                return;
            }
            plain => plain,
        };
        check_scalar(*scalar, inner, path, out);
        return;
    }
    if let Some((_, _, scalar)) = SCALARS.iter().find(|(m, f, _)| *m == message && *f == name) {
        check_scalar(*scalar, value, path, out);
        return;
    }
    check_descriptor(descriptor, value, path, out);
}

fn check_descriptor(descriptor: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if let Some(object) = descriptor.get("object").and_then(Value::as_str) {
        match value {
            Value::Object(fields) => check_message(fields, object, path, out),
            other => out.push(invalid(
                path,
                &format!("type.googleapis.com/google.earthengine.v1.{object}"),
                other,
            )),
        }
    } else if let Some(enumeration) = descriptor.get("enum").and_then(Value::as_str) {
        match value {
            // Map fields of enums (e.g. `pyramidingPolicyOverrides`) carry the enum binding too.
            Value::Object(entries) => {
                for (key, entry) in entries {
                    check_enum(enumeration, entry, &format!("{path}[{key}]"), out);
                }
            }
            other => check_enum(enumeration, other, path, out),
        }
    } else if let Some(element) = descriptor.get("arrayOf").and_then(Value::as_str) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_element(element, item, &format!("{path}[{i}]"), out);
                }
            }
            other => out.push(invalid(path, "TYPE_MESSAGE", other)),
        }
    } else if let Some(element) = descriptor.get("mapOf").and_then(Value::as_str) {
        match value {
            Value::Object(entries) => {
                for (key, entry) in entries {
                    check_element(element, entry, &format!("{path}[{key}]"), out);
                }
            }
            other => out.push(invalid(path, "TYPE_MESSAGE", other)),
        }
    } else if let Some(hint) = descriptor.get("ts2020").and_then(Value::as_str) {
        let scalar = match hint {
            "string" => Scalar::String,
            "number" => Scalar::Double,
            "boolean" => Scalar::Bool,
            "Array<string>" => Scalar::StringArray,
            "Array<number>" => Scalar::NumberArray,
            _ => Scalar::Any,
        };
        check_scalar(scalar, value, path, out);
    } else if value.is_object() {
        // "primitive": the type is unknown, but it is not a message.
        out.push(invalid(path, "TYPE_PRIMITIVE", value));
    }
}

fn check_element(element: &str, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if element == "primitive" {
        if value.is_object() {
            out.push(invalid(path, "TYPE_PRIMITIVE", value));
        }
    } else if let Value::Object(fields) = value {
        check_message(fields, element, path, out);
    } else {
        out.push(invalid(
            path,
            &format!("type.googleapis.com/google.earthengine.v1.{element}"),
            value,
        ));
    }
}

fn check_enum(enumeration: &str, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let ok = value
        .as_str()
        .is_some_and(|v| enum_values(enumeration).iter().any(|e| e == v));
    if !ok {
        out.push(invalid(path, "TYPE_ENUM", value));
    }
}

fn check_scalar(scalar: Scalar, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let (ok, type_name) = match scalar {
        Scalar::String => (value.is_string(), "TYPE_STRING"),
        Scalar::Bool => (value.is_boolean(), "TYPE_BOOL"),
        Scalar::Int64 => (parse_i64(value).is_some(), "TYPE_INT64"),
        Scalar::Int32 => (
            parse_i64(value).is_some_and(|v| i32::try_from(v).is_ok()),
            "TYPE_INT32",
        ),
        Scalar::Double => (parse_f64(value).is_some(), "TYPE_DOUBLE"),
        Scalar::StringArray => (
            value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            "TYPE_STRING",
        ),
        Scalar::NumberArray => (
            value
                .as_array()
                .is_some_and(|items| items.iter().all(|i| parse_f64(i).is_some())),
            "TYPE_DOUBLE",
        ),
        Scalar::Any => (true, ""),
    };
    if !ok {
        out.push(invalid(path, type_name, value));
    }
}

/// An int64 as proto3 JSON allows it: a JSON integer or a decimal string.
pub(crate) fn parse_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A double as proto3 JSON allows it: a number, a numeric string, "NaN" or "±Infinity".
pub(crate) fn parse_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.trim().parse().ok(),
        },
        _ => None,
    }
}

/// Reads a wrapper-or-plain field: `{"value": x}` or `x`.
pub(crate) fn unwrap_value(value: &Value) -> &Value {
    match value {
        Value::Object(wrapper) if wrapper.len() == 1 => wrapper.get("value").unwrap_or(value),
        plain => plain,
    }
}

fn invalid(path: &str, type_name: &str, value: &Value) -> Violation {
    Violation {
        field: path.to_owned(),
        description: format!("Invalid value at '{path}' ({type_name}), {value}"),
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(body: Value, message: &str) -> Vec<String> {
        validate(&body, message)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.description)
            .collect()
    }

    #[test]
    fn the_python_client_request_is_valid() {
        let body: Value = serde_json::from_str(include_str!(
            "../../reference/examples/image-export-request.python-client-1.7.50.json"
        ))
        .unwrap();
        assert_eq!(validate(&body, "ExportImageRequest"), Ok(()));
    }

    #[test]
    fn unknown_nested_field_is_reported_with_its_snake_case_path() {
        let body = json!({"fileExportOptions": {"gcsDestination": {"bucket": "b"}}});
        assert_eq!(
            messages(body, "ExportImageRequest"),
            vec![
                "Invalid JSON payload received. Unknown name \"gcsDestination\" at 'file_export_options': Cannot find field."
            ]
        );
    }

    #[test]
    fn unknown_top_level_field_has_no_path() {
        assert_eq!(
            messages(json!({"maxPixel": "1"}), "ExportImageRequest"),
            vec!["Invalid JSON payload received. Unknown name \"maxPixel\": Cannot find field."]
        );
    }

    #[test]
    fn wrappers_accept_plain_and_wrapped_forms() {
        for body in [
            json!({"maxPixels": "100", "priority": 5}),
            json!({"maxPixels": {"value": "100"}, "priority": {"value": 5}}),
            json!({"maxPixels": 100}),
        ] {
            assert_eq!(validate(&body, "ExportImageRequest"), Ok(()), "{body}");
        }
        assert_eq!(
            messages(json!({"maxPixels": "lots"}), "ExportImageRequest").len(),
            1
        );
        assert_eq!(
            messages(json!({"priority": {"val": 1}}), "ExportImageRequest").len(),
            1
        );
    }

    #[test]
    fn enums_are_checked() {
        let body = json!({"fileExportOptions": {"fileFormat": "GEOTIFF"}});
        assert_eq!(
            messages(body, "ExportImageRequest"),
            vec!["Invalid value at 'file_export_options.file_format' (TYPE_ENUM), \"GEOTIFF\""]
        );
    }

    #[test]
    fn oneofs_reject_two_members() {
        let body = json!({"grid": {"crsCode": "EPSG:4326", "crsWkt": "GEOGCS[]"}});
        assert_eq!(messages(body, "ExportImageRequest").len(), 1);
    }

    #[test]
    fn snake_case_names_are_accepted_and_types_checked_inside_maps() {
        let body = json!({"expression": {"result": "0", "values": {"0": {"constant_value": 1}}}});
        assert_eq!(validate(&body, "ComputeValueRequest"), Ok(()));
        let body = json!({"expression": {"values": {"0": {"valueReference": 3}}}});
        assert_eq!(
            messages(body, "ComputeValueRequest"),
            vec!["Invalid value at 'expression.values[0].value_reference' (TYPE_STRING), 3"]
        );
    }

    #[test]
    fn integers_must_be_integral() {
        let body = json!({"grid": {"dimensions": {"width": 1.5, "height": 2}}});
        assert_eq!(messages(body, "ExportImageRequest").len(), 1);
    }
}
