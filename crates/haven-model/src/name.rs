//! Names of nodes, groups and resources: short, DNS-label-like, safe in paths and URLs.

use crate::InvalidInput;

/// Longest name accepted (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Checks a node, group or resource name: 1–63 characters of `a-z`, `0-9`, `-`, `_`, `.`,
/// starting with a letter or digit.
pub fn validate_name(field: &str, name: &str) -> Result<(), InvalidInput> {
    let fix = "use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit";
    if name.is_empty() {
        return Err(InvalidInput::new(field, format!("the name is empty; {fix}")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidInput::new(field, format!("{name:?} is {} characters long; {fix}", name.len())));
    }
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let bad = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')));
    if let Some(c) = bad {
        return Err(InvalidInput::new(field, format!("{name:?} contains {c:?}; {fix}")));
    }
    if !first_ok {
        return Err(InvalidInput::new(field, format!("{name:?} must start with a letter or digit; {fix}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(validate_name("name", "web-1").is_ok());
        assert!(validate_name("name", "db.primary_2").is_ok());
        let e = validate_name("name", "Web 1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid name: \"Web 1\" contains 'W'; use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        );
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "-x").is_err());
        assert!(validate_name("name", &"a".repeat(64)).is_err());
    }
}
