//! Request bodies as the agent reads them: the size limits of its routes and the errors a
//! body that does not parse gets. Pure (no server code): the agent's and the Raft routes'
//! extractors both call [`parse_json`], so every route words these errors the same way.
//!
//! No error here echoes the body: a syntax error gives its position, a body that does not
//! fit names the field and what it should be, and any value quoted from the body is
//! shortened to a few dozen characters.

use serde::de::DeserializeOwned;

/// Largest body of a public API request (64 KiB): groups, resources, fence configs and
/// wizard requests are a few hundred bytes of JSON.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest body of a request carrying a VM definition (`POST /api/v1/vms`, `PUT
/// /api/v1/vms/{name}/definition`): a definition file of up to 64 KiB, JSON-escaped.
pub const MAX_DEFINITION_BODY_BYTES: usize = 256 * 1024;

/// Longest request target (path and query) the agent reads (8 KiB); longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Longest excerpt of the request quoted in an error (a field name, a value).
const MAX_QUOTE_CHARS: usize = 64;

/// A body that was refused, before it becomes an [`crate::ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl BodyError {
    pub fn into_body(self) -> crate::ErrorBody {
        crate::ErrorBody {
            error: crate::ErrorDetail { code: self.code.into(), message: self.message, field: self.field },
        }
    }
}

/// The 413 of a body larger than `limit` bytes.
pub fn too_large(limit: usize) -> BodyError {
    BodyError {
        status: 413,
        code: "too_large",
        message: format!("the request body is larger than {limit} bytes, the limit of this route; send a smaller body"),
        field: None,
    }
}

/// The 415 of a body sent without `Content-Type: application/json`.
pub fn not_json() -> BodyError {
    BodyError {
        status: 415,
        code: "bad_request",
        message: "the request body must be JSON; send the header `Content-Type: application/json`".into(),
        field: None,
    }
}

/// Whether a `Content-Type` value says JSON (`application/json`, `…+json`, with parameters).
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as one JSON value of type `T`. A syntax error is a 400 `bad_request`
/// at a line and column; a value that does not fit is a 400 `invalid` naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(&path, &inner),
            _ => syntax_error(&inner),
        }
    })?;
    de.end().map_err(|e| syntax_error(&e))?;
    Ok(value)
}

fn syntax_error(e: &serde_json::Error) -> BodyError {
    // serde_json's syntax messages are fixed texts ("expected value", "trailing comma")
    // followed by the position: nothing of the input.
    BodyError {
        status: 400,
        code: "bad_request",
        message: format!("the request body is not valid JSON: {e}; send one JSON object"),
        field: None,
    }
}

fn data_error(path: &str, e: &serde_json::Error) -> BodyError {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&position).unwrap_or(&full);
    let field = if path.is_empty() || path == "." { None } else { Some(shorten(path, MAX_QUOTE_CHARS)) };
    let at = match &field {
        Some(f) => format!("field `{f}`"),
        None => "the request body".into(),
    };
    BodyError {
        status: 400,
        code: "invalid",
        message: format!(
            "{at} does not fit: {} (line {}, column {}); see the request schema in /api/v1/openapi.json",
            shorten_quotes(reason),
            e.line(),
            e.column()
        ),
        field,
    }
}

/// `text` cut to at most `max` characters, keeping its start and end.
pub fn shorten(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(1) / 2;
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(n - keep).collect();
    format!("{head}…{tail}")
}

/// A serde message with every quoted excerpt of the input ("…" or `…`) shortened, so that
/// a long string in the body is not sent back.
fn shorten_quotes(message: &str) -> String {
    // Quoted parts sit between the first and last quote of each kind; shorten the whole
    // message's middle when it is long instead of guessing where quotes end.
    if message.chars().count() <= 3 * MAX_QUOTE_CHARS {
        return message.to_string();
    }
    let expected = message.rfind(", expected ").map(|i| &message[i..]).unwrap_or("");
    let head = &message[..message.len() - expected.len()];
    format!("{}{}", shorten(head, 2 * MAX_QUOTE_CHARS), shorten(expected, MAX_QUOTE_CHARS * 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Spec {
        name: String,
        count: Option<u32>,
    }

    #[test]
    fn errors_name_the_place_and_never_echo_the_body() {
        let long = "x".repeat(10_000);
        let e = parse_json::<Spec>(format!("{{\"name\": 5, \"pad\": \"{long}\"}}").as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code, e.field.as_deref()), (400, "invalid", Some("name")), "{e:?}");
        assert!(e.message.contains("invalid type: integer `5`, expected a string"), "{e:?}");
        let e = parse_json::<Spec>(format!("{{\"name\": \"a\", \"count\": \"{long}\"}}").as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("count"));
        assert!(e.message.len() < 400, "{}", e.message);
        assert!(e.message.contains("expected u32"), "{}", e.message);
        let e = parse_json::<Spec>(format!("{{\"{long}\": 1}}").as_bytes()).unwrap_err();
        assert!(e.message.len() < 400 && e.message.contains("unknown field"), "{}", e.message);
        let e = parse_json::<Spec>(format!("{{\"name\": \"{long}").as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code), (400, "bad_request"));
        assert!(e.message.len() < 200 && e.message.contains("line 1"), "{}", e.message);
        let e = parse_json::<Spec>(b"{\"name\": \"a\"} trailing").unwrap_err();
        assert_eq!(e.code, "bad_request", "{e:?}");
        assert!(parse_json::<Spec>(b"{\"name\": \"a\"}").is_ok());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type(""));
    }
}
