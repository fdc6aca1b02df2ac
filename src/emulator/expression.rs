//! The `Expression` DAG of EE requests (reference §5.1), checked structurally: every node sets
//! exactly one kind, references resolve, the graph is acyclic, and every invoked algorithm and
//! argument exists in the published algorithm list.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::{Map, Value};

/// One algorithm signature of `reference/ee-algorithms…json`.
#[derive(Debug)]
pub(crate) struct Algorithm {
    pub return_type: String,
    pub arguments: Vec<Argument>,
}

#[derive(Debug)]
pub(crate) struct Argument {
    pub name: String,
    pub optional: bool,
}

static ALGORITHMS: LazyLock<HashMap<String, Algorithm>> = LazyLock::new(|| {
    let list: Value = serde_json::from_str(include_str!(
        "../../reference/ee-algorithms.earthengine-api-1.7.50.json"
    ))
    .expect("the bundled algorithm list is valid JSON");
    let mut algorithms = HashMap::new();
    for algorithm in list["algorithms"].as_array().into_iter().flatten() {
        let Some(name) = algorithm["name"].as_str() else {
            continue;
        };
        let arguments = algorithm["arguments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some(Argument {
                    name: a["argumentName"].as_str()?.to_owned(),
                    optional: a["optional"].as_bool().unwrap_or(false),
                })
            })
            .collect();
        // Requests name algorithms without the `algorithms/` resource prefix.
        let short = name.strip_prefix("algorithms/").unwrap_or(name);
        algorithms.insert(
            short.to_owned(),
            Algorithm {
                return_type: algorithm["returnType"].as_str().unwrap_or("").to_owned(),
                arguments,
            },
        );
    }
    algorithms
});

/// Looks up an algorithm by its request name, e.g. `Image.clip`.
pub(crate) fn algorithm(name: &str) -> Option<&'static Algorithm> {
    ALGORITHMS.get(name)
}

/// Why an expression is structurally invalid; every case is a 400 INVALID_ARGUMENT.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum ExpressionError {
    #[error("Invalid expression: {0}")]
    Shape(String),
    #[error(
        "Invalid expression: value '{0}' sets no kind; one of the ValueNode fields must be set."
    )]
    EmptyNode(String),
    #[error("Invalid expression: reference to undefined value '{0}'.")]
    UndefinedReference(String),
    #[error(
        "Invalid expression: argument reference '{0}' is not an argument of an enclosing function."
    )]
    UndefinedArgument(String),
    #[error("Invalid expression: value '{0}' depends on itself.")]
    Cycle(String),
    #[error("Unknown algorithm: '{0}'.")]
    UnknownFunction(String),
    #[error("{function}: Unrecognized argument '{argument}'. Valid arguments: {valid}.")]
    UnknownArgument {
        function: String,
        argument: String,
        valid: String,
    },
    #[error("{function}: Parameter '{argument}' is required.")]
    MissingArgument { function: String, argument: String },
}

/// A structurally valid expression, borrowed from the request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expression<'a> {
    pub values: &'a Map<String, Value>,
    pub result: &'a str,
}

static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// The members of `ValueNode`'s `kind` oneof: a node sets exactly one.
pub(super) static NODE_KINDS: &[&str] = &[
    "constantValue",
    "integerValue",
    "bytesValue",
    "arrayValue",
    "dictionaryValue",
    "functionDefinitionValue",
    "functionInvocationValue",
    "argumentReference",
    "valueReference",
];

/// Validates an `Expression` JSON object.
pub(crate) fn parse(expression: &Value) -> Result<Expression<'_>, ExpressionError> {
    let values = match expression.get("values") {
        Some(Value::Object(values)) => values,
        None | Some(Value::Null) => &EMPTY,
        Some(_) => return Err(ExpressionError::Shape("'values' must be a map".into())),
    };
    let result = expression
        .get("result")
        .and_then(Value::as_str)
        .ok_or_else(|| ExpressionError::Shape("'result' is required".into()))?;
    if !values.contains_key(result) {
        return Err(ExpressionError::UndefinedReference(result.to_owned()));
    }
    let argument_names: HashSet<&str> = values
        .values()
        .flat_map(|node| collect_argument_names(node))
        .collect();
    let checker = Checker {
        values,
        argument_names,
    };
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for (key, node) in values {
        let mut referenced = Vec::new();
        checker.check(key, node, &mut referenced)?;
        edges.insert(key.as_str(), referenced);
    }
    check_acyclic(&edges)?;
    Ok(Expression { values, result })
}

/// The kind a node sets, and its payload.
pub(crate) fn node_kind(node: &Value) -> Option<(&'static str, &Value)> {
    let object = node.as_object()?;
    NODE_KINDS.iter().find_map(|kind| {
        object
            .get(*kind)
            .filter(|v| !v.is_null())
            .map(|v| (*kind, v))
    })
}

fn collect_argument_names(node: &Value) -> Vec<&str> {
    let mut names = Vec::new();
    if let Some(definition) = node.get("functionDefinitionValue") {
        for name in definition["argumentNames"].as_array().into_iter().flatten() {
            if let Some(name) = name.as_str() {
                names.push(name);
            }
        }
    }
    // Definitions can also appear nested as arguments of an invocation.
    for child in children(node) {
        names.extend(collect_argument_names(child));
    }
    names
}

fn children(node: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    if let Some(items) = node.pointer("/arrayValue/values").and_then(Value::as_array) {
        out.extend(items);
    }
    if let Some(entries) = node
        .pointer("/dictionaryValue/values")
        .and_then(Value::as_object)
    {
        out.extend(entries.values());
    }
    if let Some(arguments) = node
        .pointer("/functionInvocationValue/arguments")
        .and_then(Value::as_object)
    {
        out.extend(arguments.values());
    }
    out
}

struct Checker<'a> {
    values: &'a Map<String, Value>,
    argument_names: HashSet<&'a str>,
}

impl<'a> Checker<'a> {
    fn check(
        &self,
        key: &str,
        node: &'a Value,
        referenced: &mut Vec<&'a str>,
    ) -> Result<(), ExpressionError> {
        let set: Vec<&str> = NODE_KINDS
            .iter()
            .copied()
            .filter(|kind| node.get(*kind).is_some_and(|v| !v.is_null()))
            .collect();
        let kind = match set.as_slice() {
            [] => return Err(ExpressionError::EmptyNode(key.to_owned())),
            [kind] => *kind,
            _ => {
                return Err(ExpressionError::Shape(format!(
                    "value '{key}' sets more than one kind: {}",
                    set.join(", ")
                )));
            }
        };
        let payload = &node[kind];
        match kind {
            "valueReference" => {
                let target = self.reference(payload)?;
                referenced.push(target);
            }
            "argumentReference" => {
                let name = payload.as_str().unwrap_or_default();
                if !self.argument_names.contains(name) {
                    return Err(ExpressionError::UndefinedArgument(name.to_owned()));
                }
            }
            "functionDefinitionValue" => {
                let body = self.reference(&payload["body"])?;
                referenced.push(body);
            }
            "functionInvocationValue" => self.check_invocation(key, payload, referenced)?,
            "arrayValue" | "dictionaryValue" => {
                for child in children(node) {
                    self.check(key, child, referenced)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn reference(&self, payload: &'a Value) -> Result<&'a str, ExpressionError> {
        let target = payload.as_str().unwrap_or_default();
        match self.values.get_key_value(target) {
            Some((key, _)) => Ok(key.as_str()),
            None => Err(ExpressionError::UndefinedReference(target.to_owned())),
        }
    }

    fn check_invocation(
        &self,
        key: &str,
        invocation: &'a Value,
        referenced: &mut Vec<&'a str>,
    ) -> Result<(), ExpressionError> {
        let arguments = invocation["arguments"].as_object().unwrap_or(&EMPTY);
        if let Some(name) = invocation["functionName"].as_str() {
            let algorithm =
                algorithm(name).ok_or_else(|| ExpressionError::UnknownFunction(name.to_owned()))?;
            for argument in arguments.keys() {
                if !algorithm.arguments.iter().any(|a| &a.name == argument) {
                    let valid: Vec<&str> = algorithm
                        .arguments
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect();
                    return Err(ExpressionError::UnknownArgument {
                        function: name.to_owned(),
                        argument: argument.clone(),
                        valid: valid.join(", "),
                    });
                }
            }
            if let Some(missing) = algorithm
                .arguments
                .iter()
                .find(|a| !a.optional && !arguments.contains_key(&a.name))
            {
                return Err(ExpressionError::MissingArgument {
                    function: name.to_owned(),
                    argument: missing.name.clone(),
                });
            }
        } else if let Some(reference) = invocation.get("functionReference") {
            let target = self.reference(reference)?;
            let definition = self.values[target]
                .get("functionDefinitionValue")
                .ok_or_else(|| {
                    ExpressionError::Shape(format!(
                        "functionReference '{target}' does not name a function definition"
                    ))
                })?;
            let names: Vec<&str> = definition["argumentNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if let Some(argument) = arguments.keys().find(|a| !names.contains(&a.as_str())) {
                return Err(ExpressionError::UnknownArgument {
                    function: target.to_owned(),
                    argument: argument.clone(),
                    valid: names.join(", "),
                });
            }
            referenced.push(target);
        } else {
            return Err(ExpressionError::Shape(format!(
                "value '{key}' invokes a function without functionName or functionReference"
            )));
        }
        for argument in arguments.values() {
            self.check(key, argument, referenced)?;
        }
        Ok(())
    }
}

fn check_acyclic(edges: &HashMap<&str, Vec<&str>>) -> Result<(), ExpressionError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    // Iterative DFS: expressions nest up to ~100 deep, but a hostile body should not overflow
    // the stack of a test server.
    for start in edges.keys() {
        if marks.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Visiting);
        while let Some((node, next)) = stack.pop() {
            let targets = edges.get(node).map(Vec::as_slice).unwrap_or_default();
            if let Some(target) = targets.get(next) {
                stack.push((node, next + 1));
                match marks.get(target) {
                    Some(Mark::Visiting) => {
                        return Err(ExpressionError::Cycle((*target).to_owned()));
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(target, Mark::Visiting);
                        stack.push((target, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invoke(name: &str, arguments: Value) -> Value {
        json!({"functionInvocationValue": {"functionName": name, "arguments": arguments}})
    }

    #[test]
    fn the_worked_example_is_valid() {
        let expression: Value = serde_json::from_str(include_str!(
            "../../reference/examples/expression.landsat-ndvi-toBands-clip.json"
        ))
        .unwrap();
        let parsed = parse(&expression).unwrap();
        assert_eq!(parsed.result, "0");
    }

    #[test]
    fn algorithm_names_come_from_the_list() {
        assert!(algorithm("ImageCollection.toBands").is_some());
        assert!(algorithm("Collection.toBands").is_none());
        let e = json!({"result": "0", "values": {"0": invoke("Collection.toBands", json!({}))}});
        assert_eq!(
            parse(&e).unwrap_err(),
            ExpressionError::UnknownFunction("Collection.toBands".into())
        );
    }

    #[test]
    fn arguments_are_checked() {
        let unknown = json!({"result": "0", "values": {"0": invoke("Image.load",
            json!({"id": {"constantValue": "x"}, "path": {"constantValue": "y"}}))}});
        assert!(matches!(
            parse(&unknown).unwrap_err(),
            ExpressionError::UnknownArgument { .. }
        ));
        let missing = json!({"result": "0", "values": {"0": invoke("Image.load", json!({}))}});
        assert_eq!(
            parse(&missing).unwrap_err().to_string(),
            "Image.load: Parameter 'id' is required."
        );
    }

    #[test]
    fn references_must_resolve_and_not_cycle() {
        let dangling = json!({"result": "0", "values": {"0": {"valueReference": "9"}}});
        assert_eq!(
            parse(&dangling).unwrap_err(),
            ExpressionError::UndefinedReference("9".into())
        );
        let cycle = json!({"result": "0", "values": {
            "0": invoke("Image.rename", json!({"input": {"valueReference": "1"}, "names": {"constantValue": ["a"]}})),
            "1": invoke("Image.rename", json!({"input": {"valueReference": "0"}, "names": {"constantValue": ["b"]}})),
        }});
        assert!(matches!(
            parse(&cycle).unwrap_err(),
            ExpressionError::Cycle(_)
        ));
        let missing_result = json!({"result": "3", "values": {"0": {"constantValue": 1}}});
        assert!(parse(&missing_result).is_err());
    }

    #[test]
    fn nodes_set_exactly_one_kind() {
        let empty = json!({"result": "0", "values": {"0": {}}});
        assert_eq!(
            parse(&empty).unwrap_err(),
            ExpressionError::EmptyNode("0".into())
        );
        let two =
            json!({"result": "0", "values": {"0": {"constantValue": 1, "valueReference": "0"}}});
        assert!(parse(&two).is_err());
        let stray =
            json!({"result": "0", "values": {"0": {"argumentReference": "_MAPPING_VAR_0_0"}}});
        assert!(matches!(
            parse(&stray).unwrap_err(),
            ExpressionError::UndefinedArgument(_)
        ));
    }
}
