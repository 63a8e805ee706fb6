use super::*;

#[test]
fn objects_keep_the_order_written_and_the_last_value_of_a_repeated_key() {
    let v = Json::parse(r#"{"z": 1, "a": {"y": [true, null, 2.5], "b": "x"}, "z": -3}"#).unwrap();
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        r#"{"z":-3,"a":{"y":[true,null,2.5],"b":"x"}}"#
    );
    let mut o = Json::object([("b", Json::Null), ("a", Json::Bool(false))]);
    o.insert("b", Json::from("again"));
    o.insert("c", Json::Array(vec![]));
    assert_eq!(
        serde_json::to_string(&o).unwrap(),
        r#"{"b":"again","a":false,"c":[]}"#
    );
}

#[test]
fn bad_text_and_deep_nesting_are_errors() {
    assert!(Json::parse("{\"a\": ").is_err());
    assert!(Json::parse("[1] x").is_err());
    // serde_json's recursion limit holds for this type too.
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    assert!(Json::parse(&deep).is_err());
}

#[test]
fn many_keys_parse_in_linear_time() {
    let text = format!(
        "{{{}}}",
        (0..200_000)
            .map(|i| format!("\"k{i}\": {i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let start = std::time::Instant::now();
    let Json::Object(pairs) = Json::parse(&text).unwrap() else {
        panic!("not an object")
    };
    assert_eq!(pairs.len(), 200_000);
    assert_eq!(pairs[0].0, "k0");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
