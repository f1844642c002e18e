//! Small formatting helpers shared by the explanations. No decisions here.

/// Milliseconds as seconds with one decimal, the way operators read timeouts: `4.2s`.
pub fn seconds(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_decimal() {
        assert_eq!(super::seconds(4250), "4.2s");
        assert_eq!(super::seconds(0), "0.0s");
        assert_eq!(super::seconds(60_000), "60.0s");
    }
}
