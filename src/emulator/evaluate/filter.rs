//! Filters: construction from `Filter.*` algorithms and matching against image properties.

use serde_json::Value;

use super::{EvalError, Image, Result, Val};
use crate::emulator::catalogue::Footprint;

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
    Compare {
        op: Op,
        left: Operand,
        right: Operand,
    },
    Intersects(Footprint),
}

pub(super) fn comparison(name: &str) -> Option<Op> {
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

/// Milliseconds since the epoch from a Date, a number (ms) or an ISO 8601 string.
pub(super) fn date_of(value: &Val, function: &str) -> Result<i64> {
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
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

fn property(image: &Image, operand: &Operand) -> Val {
    match operand {
        Operand::Field(field) => Val::Json(
            image
                .record
                .properties
                .get(field)
                .cloned()
                .unwrap_or(Value::Null),
        ),
        Operand::Value(value) => (**value).clone(),
    }
}

pub(super) fn matches(filter: &Filter, image: &Image) -> bool {
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
