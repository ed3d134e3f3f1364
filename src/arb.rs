//! Strategies for hostile input, shared by the property tests next to private parsers
//! (`*_props.rs`): any JSON value, JSON nested past serde_json's recursion limit, numbers no
//! integer type holds.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// serde_json refuses input nested deeper than this (its `remaining_depth`), so no parser
/// here recurses deeper; the strategies go well past it.
pub const SERDE_JSON_DEPTH_LIMIT: usize = 128;

/// Keys the decoders look at, mixed with arbitrary ones, so generated objects often carry a
/// field a decoder reads (with a value of any type).
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "type", "code", "object", "status", "detail", "req_id", "qrcode", "intent_id",
            "checkpoint", "url", "id",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Any JSON scalar, with numbers at the edges of `u64`, `i64` and `f64`.
pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![0, 1, 200, 429, 504, 65_535, 65_536, u64::MAX])
            .prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            Number::from_f64(f).map(Value::Number)
        }),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec![
            "cancel",
            "code",
            "Error",
            "Account",
            "AuthenticationQrCode"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

/// Any JSON value up to a few levels deep.
pub fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            object_of(inner).prop_map(Value::Object),
        ]
    })
}

/// A JSON object whose values come from `values`.
pub fn object_of(
    values: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), values, 0..6).prop_map(|m| m.into_iter().collect())
}

/// `depth` levels of arrays and objects (chosen by `shape`'s bits) around `inner`, as text.
pub fn nested(depth: usize, shape: u64, inner: &str) -> String {
    let mut open = String::with_capacity(depth * 6 + inner.len());
    let mut close = String::with_capacity(depth);
    for level in 0..depth {
        if shape >> (level % 64) & 1 == 0 {
            open.push('[');
            close.push(']');
        } else {
            open.push_str(r#"{"a":"#);
            close.push('}');
        }
    }
    open.push_str(inner);
    open.extend(close.chars().rev());
    open
}

/// Numbers as JSON text that no Rust integer holds, or that overflow `f64`.
pub fn huge_number() -> impl Strategy<Value = String> {
    prop_oneof![
        "[1-9][0-9]{20,400}",
        "-[1-9][0-9]{20,400}",
        "[1-9]e[3-9][0-9]{2,6}",
        "-?0\\.[0-9]{1,20}e-[0-9]{3,6}",
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
    ]
}
