//! Wire types of the Earth Engine REST API v1, named exactly as on the wire (camelCase).
//!
//! Field names follow `reference/earthengine-v1.schema-from-js-client.json` (plus the v1
//! `ProjectConfig` export limits that schema lacks). Responses are proto3 JSON, which omits
//! default values, so every response field is an `Option` with `#[serde(default)]` and unknown
//! fields are ignored. Requests leave out what is `None`, and use the documented plain forms:
//! `maxPixels` is an int64 string, `priority` a number.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::grid::Affine;

// ------------------------------------------------------------------------------------------
// Expressions
// ------------------------------------------------------------------------------------------

/// A computation: a DAG of value nodes keyed by decimal strings, and the key of the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expression {
    pub values: BTreeMap<String, ValueNode>,
    pub result: String,
}

/// One node of an [`Expression`]; exactly one of these forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueNode {
    /// Any JSON value, nested lists and objects included.
    ConstantValue(Value),
    /// An int64 as a decimal string (for integers a double cannot hold exactly).
    IntegerValue(String),
    /// Base64 bytes.
    BytesValue(String),
    ArrayValue(ArrayValue),
    DictionaryValue(DictionaryValue),
    FunctionDefinitionValue(FunctionDefinition),
    FunctionInvocationValue(FunctionInvocation),
    /// The name of an argument of an enclosing function definition.
    ArgumentReference(String),
    /// A key of the enclosing [`Expression::values`].
    ValueReference(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayValue {
    pub values: Vec<ValueNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictionaryValue {
    pub values: BTreeMap<String, ValueNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDefinition {
    pub argument_names: Vec<String>,
    /// A key of [`Expression::values`], never an inline node.
    pub body: String,
}

/// A call of an algorithm by name (`Image.select`) or of a function definition by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionInvocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_reference: Option<String>,
    #[serde(default)]
    pub arguments: BTreeMap<String, ValueNode>,
}

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

/// The body of `POST /v1/projects/{p}/value:compute`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputeValueRequest {
    pub expression: Expression,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_tag: Option<String>,
}

/// The body of `POST /v1/projects/{p}/image:export`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImageRequest {
    pub expression: Expression,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Server default: 1e8 pixels. Sent as an int64 string.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "int64_string::serialize"
    )]
    pub max_pixels: Option<i64>,
    /// The exact output pixel grid; without it EE exports in the image's native projection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<PixelGrid>,
    /// Idempotency key, `[A-Za-z0-9-]{1,60}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_tag: Option<String>,
    /// 0–9999; server default 100. Only paid projects may change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_export_options: Option<ImageFileExportOptions>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFileExportOptions {
    pub file_format: ImageFileFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_storage_destination: Option<CloudStorageDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_tiff_options: Option<GeoTiffImageExportOptions>,
}

/// The batch export file formats (enum `ImageFileExportOptionsFileFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImageFileFormat {
    GeoTiff,
    TfRecordImage,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudStorageDestination {
    pub bucket: String,
    /// A trailing `/` makes it a folder; EE appends `.tif` or `-YYYYYYYYYY-XXXXXXXXXX.tif`.
    pub filename_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GeoTiffImageExportOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_optimized: Option<bool>,
    /// Split size of the output files; a multiple of `tileSize` (default 256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_dimensions: Option<GridDimensions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_empty_files: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_size: Option<u32>,
    /// The value GDAL reads as nodata; pairs with the expression's `unmask(fill)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_data: Option<Number>,
}

/// EE's `Number` message: a oneof of `floatValue` and `integerValue`. `noData` takes only
/// `floatValue` ("Only `noData.float_value` is currently supported").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Number {
    pub float_value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridDimensions {
    pub width: u32,
    pub height: u32,
}

/// An exact pixel grid: dimensions, affine transform and a CRS (`crsCode` or `crsWkt`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PixelGrid {
    pub dimensions: GridDimensions,
    pub affine_transform: Affine,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crs_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crs_wkt: Option<String>,
}

// ------------------------------------------------------------------------------------------
// Responses
// ------------------------------------------------------------------------------------------

/// The response of `value:compute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ComputeValueResponse {
    #[serde(default)]
    pub result: Option<Value>,
}

/// A long-running operation (an export task).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Operation {
    /// `projects/{project}/operations/{ID}`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub metadata: Option<OperationMetadata>,
    /// Absent means false.
    #[serde(default)]
    pub done: Option<bool>,
    #[serde(default)]
    pub error: Option<Status>,
    #[serde(default)]
    pub response: Option<Value>,
}

impl Operation {
    pub fn is_done(&self) -> bool {
        self.done.unwrap_or(false)
    }

    /// The task ID: the last path segment of `name`.
    pub fn id(&self) -> Option<&str> {
        self.name.as_deref().and_then(|n| n.rsplit('/').next())
    }

    /// The metadata state; `StateUnspecified` when EE left it out (fresh tasks often do).
    pub fn state(&self) -> OperationState {
        self.metadata
            .as_ref()
            .and_then(|m| m.state)
            .unwrap_or(OperationState::StateUnspecified)
    }
}

/// `OperationMetadata.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    StateUnspecified,
    /// Queued: ready but not yet running.
    Pending,
    Running,
    /// Cancellation requested.
    Cancelling,
    Succeeded,
    Cancelled,
    Failed,
    /// A state this client does not know.
    #[serde(other)]
    Unknown,
}

impl OperationState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Cancelled | Self::Failed)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationMetadata {
    #[serde(default)]
    pub state: Option<OperationState>,
    #[serde(default)]
    pub description: Option<String>,
    /// `EXPORT_IMAGE`, `EXPORT_FEATURES`, …
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient::i64")]
    pub priority: Option<i64>,
    #[serde(default)]
    pub create_time: Option<String>,
    #[serde(default)]
    pub update_time: Option<String>,
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
    /// Between 0 and 1.
    #[serde(default, deserialize_with = "lenient::f64")]
    pub progress: Option<f64>,
    #[serde(default)]
    pub stages: Option<Vec<OperationStage>>,
    /// Attempt number, starting at 1; EE retries a failing task up to five times.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub attempt: Option<i64>,
    #[serde(default)]
    pub script_uri: Option<String>,
    /// Browse URLs of the outputs, not `gs://` URIs; treat as opaque.
    #[serde(default)]
    pub destination_uris: Option<Vec<String>>,
    #[serde(default)]
    pub notifications: Option<Vec<OperationNotification>>,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub batch_eecu_usage_seconds: Option<f64>,
}

impl OperationMetadata {
    pub fn create_time(&self) -> Option<DateTime<Utc>> {
        self.create_time.as_deref().and_then(parse_timestamp)
    }
    pub fn update_time(&self) -> Option<DateTime<Utc>> {
        self.update_time.as_deref().and_then(parse_timestamp)
    }
    pub fn start_time(&self) -> Option<DateTime<Utc>> {
        self.start_time.as_deref().and_then(parse_timestamp)
    }
    pub fn end_time(&self) -> Option<DateTime<Utc>> {
        self.end_time.as_deref().and_then(parse_timestamp)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStage {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "lenient::i64")]
    pub complete_work_units: Option<i64>,
    /// An int64, so a string on the wire.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub total_work_units: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationNotification {
    /// `SEVERITY_UNSPECIFIED`, `WARNING` or `SEVERE`.
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// A `google.rpc.Status`: the error of a failed or cancelled operation (code 1 = CANCELLED).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Status {
    #[serde(default, deserialize_with = "lenient::i64")]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub details: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListOperationsResponse {
    #[serde(default)]
    pub operations: Option<Vec<Operation>>,
    /// Absent or empty on the last page.
    #[serde(default)]
    pub next_page_token: Option<String>,
    #[serde(default)]
    pub unreachable: Option<Vec<String>>,
}

/// `GET /v1/projects/{p}/config`.
///
/// `maxConcurrentExports` and `planMaxConcurrentExports` are v1 fields that the JS-derived
/// schema does not list.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectConfig {
    /// `projects/{project}/config`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub registration_state: Option<String>,
    #[serde(default)]
    pub noncommercial_quota_enforced: Option<bool>,
    /// How many export tasks of this project may run at once.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub max_concurrent_exports: Option<i64>,
    /// The ceiling of `maxConcurrentExports` under the project's plan.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub plan_max_concurrent_exports: Option<i64>,
}

/// Parses an RFC 3339 timestamp with 0–9 fractional digits and any offset, as UTC.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// int64 fields are JSON strings in proto3 JSON.
mod int64_string {
    use super::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }
}

/// Proto3 JSON parsers accept numbers as numbers or strings (int64 is always a string), so
/// this client does too: a sloppy field should not make a whole operation unreadable.
mod lenient {
    use super::{Deserialize, Deserializer, Value};

    fn number(v: Option<Value>) -> Option<f64> {
        match v? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(number(Option::<Value>::deserialize(d)?))
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        if let Some(Value::String(s)) = &v
            && let Ok(n) = s.trim().parse::<i64>()
        {
            return Ok(Some(n));
        }
        if let Some(Value::Number(n)) = &v
            && let Some(i) = n.as_i64()
        {
            return Ok(Some(i));
        }
        Ok(number(v).filter(|f| f.fract() == 0.0).map(|f| f as i64))
    }
}

/// What cedar keeps of an operation between sweeps (the snapshot's entries): its state, error,
/// attempt, times and the EECU it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpView {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// EECU-seconds the task used (`batchEecuUsageSeconds`); EE reports it once the task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eecu_seconds: Option<f64>,
}

impl OpView {
    /// The view of `op` as `operations.list` or `operations.get` returned it.
    pub fn from_operation(op: &Operation) -> OpView {
        let md = op.metadata.as_ref();
        OpView {
            state: op_state_name(op.state()).to_string(),
            error: op.error.as_ref().and_then(|e| e.message.clone()),
            attempt: md.and_then(|m| m.attempt).map(|a| a as u32),
            start: md.and_then(|m| m.start_time()),
            end: md.and_then(|m| m.end_time()),
            eecu_seconds: md.and_then(|m| m.batch_eecu_usage_seconds),
        }
    }
}

fn op_state_name(s: OperationState) -> &'static str {
    match s {
        OperationState::Pending => "PENDING",
        OperationState::Running => "RUNNING",
        OperationState::Cancelling => "CANCELLING",
        OperationState::Succeeded => "SUCCEEDED",
        OperationState::Failed => "FAILED",
        OperationState::Cancelled => "CANCELLED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_accept_0_to_9_fraction_digits_and_offsets() {
        let base = parse_timestamp("2024-05-06T07:08:09Z").unwrap();
        assert_eq!(base.timestamp(), 1_714_979_289);
        for (text, nanos) in [
            ("2024-05-06T07:08:09.1Z", 100_000_000),
            ("2024-05-06T07:08:09.123Z", 123_000_000),
            ("2024-05-06T07:08:09.749999Z", 749_999_000),
            ("2024-05-06T07:08:09.123456789Z", 123_456_789),
        ] {
            let t = parse_timestamp(text).unwrap();
            assert_eq!(
                (t.timestamp(), t.timestamp_subsec_nanos()),
                (base.timestamp(), nanos),
                "{text}"
            );
        }
        assert_eq!(parse_timestamp("2024-05-06T09:08:09+02:00"), Some(base));
        assert_eq!(parse_timestamp("2024-05-06T02:08:09.000-05:00"), Some(base));
        assert_eq!(parse_timestamp("2024-05-06 07:08"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    #[test]
    fn operations_tolerate_missing_unknown_and_string_numbers() {
        let op: Operation = serde_json::from_value(json!({
            "name": "projects/p/operations/3DNU363IM57LNU4SDTMB6I33",
            "metadata": {
                "@type": "type.googleapis.com/google.earthengine.v1.OperationMetadata",
                "state": "SOMETHING_NEW", "type": "EXPORT_IMAGE", "attempt": "2",
                "stages": [{"displayName": "Write Files", "totalWorkUnits": "4", "completeWorkUnits": 1}],
                "createTime": "2024-05-06T07:08:09.123456789Z", "futureField": {"x": 1}
            },
            "extra": true
        }))
        .unwrap();
        assert_eq!(op.id(), Some("3DNU363IM57LNU4SDTMB6I33"));
        assert_eq!(op.state(), OperationState::Unknown);
        assert!(!op.is_done());
        let m = op.metadata.unwrap();
        assert_eq!(m.attempt, Some(2));
        assert_eq!(m.stages.unwrap()[0].total_work_units, Some(4));
        assert_eq!(
            m.create_time.as_deref(),
            Some("2024-05-06T07:08:09.123456789Z")
        );

        let fresh: Operation =
            serde_json::from_value(json!({"name": "projects/p/operations/X"})).unwrap();
        assert_eq!(fresh.state(), OperationState::StateUnspecified);

        let failed: Operation = serde_json::from_value(json!({
            "done": true, "metadata": {"state": "FAILED"}, "error": {"code": 3, "message": "boom"}
        }))
        .unwrap();
        assert!(failed.is_done() && failed.state().is_terminal());
        assert_eq!(failed.error.unwrap().code, Some(3));
    }

    #[test]
    fn export_request_uses_plain_forms_and_omits_none() {
        let req = ExportImageRequest {
            expression: Expression {
                values: BTreeMap::from([("0".into(), ValueNode::ConstantValue(json!(1)))]),
                result: "0".into(),
            },
            description: None,
            max_pixels: Some(10_000_000_000),
            grid: None,
            request_id: Some("r".into()),
            workload_tag: None,
            priority: Some(200),
            file_export_options: Some(ImageFileExportOptions {
                file_format: ImageFileFormat::GeoTiff,
                cloud_storage_destination: None,
                geo_tiff_options: None,
            }),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "expression": {"values": {"0": {"constantValue": 1}}, "result": "0"},
                "maxPixels": "10000000000", "requestId": "r", "priority": 200,
                "fileExportOptions": {"fileFormat": "GEO_TIFF"}
            })
        );
    }

    #[test]
    fn project_config_reads_export_limits() {
        let c: ProjectConfig = serde_json::from_value(json!({
            "name": "projects/p/config", "maxConcurrentExports": 4, "planMaxConcurrentExports": "20",
            "registrationState": "REGISTERED_COMMERCIALLY"
        }))
        .unwrap();
        assert_eq!(
            (c.max_concurrent_exports, c.plan_max_concurrent_exports),
            (Some(4), Some(20))
        );
    }
}
