//! One scenario line: words, and `key=value` options after the first word.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::Error;

/// One line split into words, where `key=value` tokens after the first word are options.
/// A `"` starts or ends a quoted stretch in which white space does not split the token
/// (`reason="lost power"`); the quotes themselves are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `file:line`, the prefix of every error about the line.
    pub at: String,
    pub words: Vec<String>,
    pub options: BTreeMap<String, String>,
}

impl Line {
    /// Splits `text`; `at` is where it stands (`file:line`). Fails only on an unterminated
    /// quote.
    pub fn parse(at: String, text: &str) -> Result<Line, Error> {
        let mut words = Vec::new();
        let mut options = BTreeMap::new();
        let mut chars = text.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut token = String::new();
            let mut quoted = false;
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() && !quoted {
                    break;
                }
                chars.next();
                if c == '"' {
                    quoted = !quoted;
                } else {
                    token.push(c);
                }
            }
            if quoted {
                return Err(format!("{at}: unterminated quote"));
            }
            match token.split_once('=') {
                Some((k, v)) if !words.is_empty() => {
                    options.insert(k.to_string(), v.to_string());
                }
                _ => words.push(token),
            }
        }
        Ok(Line { at, words, options })
    }

    /// `msg` prefixed with the line's `file:line: `.
    pub fn err(&self, msg: impl std::fmt::Display) -> Error {
        format!("{}: {msg}", self.at)
    }

    /// Word `i` (0 is the directive), or an error saying `what` is missing.
    pub fn word(&self, i: usize, what: &str) -> Result<&str, Error> {
        self.words.get(i).map(String::as_str).ok_or_else(|| self.err(format!("missing {what}")))
    }

    /// The same line without its first `n` words (`at T apply …` → `apply …`).
    pub fn shifted(&self, n: usize) -> Line {
        Line { at: self.at.clone(), words: self.words.iter().skip(n).cloned().collect(), options: self.options.clone() }
    }

    /// Whether a word after the directive is `name`.
    pub fn flag(&self, name: &str) -> bool {
        self.words.iter().skip(1).any(|w| w == name)
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// Option `key` parsed as a number, `None` when absent.
    pub fn num<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error> {
        self.opt(key).map(|v| v.parse::<T>().map_err(|_| self.err(format!("{key}={v:?} is not a number")))).transpose()
    }

    /// Option `key` as a comma-separated list, empty when absent.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.opt(key).map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default()
    }

    /// Options the directive does not know are mistakes, not silently ignored.
    pub fn only_options(&self, known: &[&str]) -> Result<(), Error> {
        match self.options.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => {
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                Err(self.err(format!("unknown option {k:?} for {:?}; known: {known}", self.directive())))
            }
            None => Ok(()),
        }
    }

    /// Options and words the directive does not know are mistakes, not silently ignored:
    /// `positional` words after the directive's own, then only the `flags`.
    pub fn only(&self, positional: usize, flags: &[&str], options: &[&str]) -> Result<(), Error> {
        self.only_options(options)?;
        if let Some(w) = self.words.iter().skip(1 + positional).find(|w| !flags.contains(&w.as_str())) {
            let known = if flags.is_empty() { "none".to_string() } else { flags.join(", ") };
            return Err(self.err(format!("unexpected word {w:?} for {:?}; flags it knows: {known}", self.directive())));
        }
        Ok(())
    }

    fn directive(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line::parse("t.scn:1".into(), text).expect("parses")
    }

    #[test]
    fn words_options_and_quotes() {
        let l = line(r#"  group web  owner=a reason="lost power" down preferred=a,,b "two words""#);
        assert_eq!(l.words, ["group", "web", "down", "two words"]);
        assert_eq!(l.opt("owner"), Some("a"));
        assert_eq!(l.opt("reason"), Some("lost power"));
        assert_eq!(l.list("preferred"), ["a", "b"]);
        assert!(l.flag("down") && !l.flag("group"));
        assert_eq!(l.word(3, "x"), Ok("two words"));
        assert_eq!(l.word(4, "node name"), Err("t.scn:1: missing node name".to_string()));
    }

    #[test]
    fn the_first_word_is_never_an_option() {
        let l = line("a=b c=d");
        assert_eq!(l.words, ["a=b"]);
        assert_eq!(l.opt("c"), Some("d"));
        assert_eq!(l.shifted(1).words, Vec::<String>::new());
        assert_eq!(l.shifted(1).opt("c"), Some("d"));
    }

    #[test]
    fn an_unterminated_quote_is_an_error() {
        assert_eq!(
            Line::parse("t.scn:4".into(), r#"fail web reason="oops"#),
            Err("t.scn:4: unterminated quote".into())
        );
    }

    #[test]
    fn numbers_name_the_option() {
        let l = line("node a cpus=4 mem=lots");
        assert_eq!(l.num::<u32>("cpus"), Ok(Some(4)));
        assert_eq!(l.num::<u32>("since"), Ok(None));
        assert_eq!(l.num::<u64>("mem"), Err("t.scn:1: mem=\"lots\" is not a number".to_string()));
    }

    #[test]
    fn only_refuses_unknown_options_and_words() {
        let l = line("report db online@a failure reason=x");
        assert_eq!(l.only(2, &["failure"], &["reason"]), Ok(()));
        assert_eq!(
            l.only(2, &["failure"], &[]),
            Err("t.scn:1: unknown option \"reason\" for \"report\"; known: none".to_string())
        );
        assert_eq!(
            l.only(1, &[], &["reason"]),
            Err("t.scn:1: unexpected word \"online@a\" for \"report\"; flags it knows: none".to_string())
        );
        assert_eq!(l.only_options(&["reason", "at"]), Ok(()));
        assert!(l.only_options(&["at"]).is_err_and(|e| e.contains("known: at")));
    }
}
