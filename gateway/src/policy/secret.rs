//! Secrets a policy refers to (`listeners.admin_token`, and pools' `headers:` values). The file names them as
//! `${NAME}` (or `${NAME:-default}`), expanded from the environment when the policy loads, so
//! the secret itself lives in the deployment (a Kubernetes Secret, a compose variable), not
//! in the file, the policy version hash or version control.
//!
//! [`Secret`] holds the value and has no `Display`; its `Debug` is redacted, so it cannot end
//! up in a log line, an error message or an admin response by accident. [`Secret::matches`]
//! compares in constant time (SHA-256 of both sides, then an OR of XORs), so neither the
//! content nor the length of the token leaks through response timing.

use sha2::{Digest, Sha256};
use std::fmt;

/// A secret value from the policy. Never printed.
#[derive(Clone)]
pub struct Secret {
    digest: [u8; 32],
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn new(value: &str) -> Secret {
        Secret {
            digest: Sha256::digest(value.as_bytes()).into(),
        }
    }

    /// Whether `offered` is the secret, in time that does not depend on either value.
    pub fn matches(&self, offered: &[u8]) -> bool {
        let other: [u8; 32] = Sha256::digest(offered).into();
        self.digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Where a secret's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `${NAME}` with `NAME` set.
    Environment,
    /// `${NAME:-default}` with `NAME` unset: the default written in the file.
    Default,
    /// A literal written in the file.
    Literal,
}

/// Expand a secret as written: `${NAME}` (the variable must be set and not empty),
/// `${NAME:-default}`, or a literal. `env` looks variables up (the process environment in
/// the gateway, a map in tests). Errors name the variable, never a value.
pub fn expand(
    written: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Secret, Source), String> {
    let trimmed = written.trim();
    let Some(inner) = trimmed
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        if trimmed.contains("${") {
            return Err("`${NAME}` must be the whole value".into());
        }
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        return Ok((Secret::new(trimmed), Source::Literal));
    };
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{}` is not an environment variable name (letters, digits, `_`)",
            name.chars().take(64).collect::<String>()
        ));
    }
    match (env(name), default) {
        (Some(v), _) if !v.is_empty() => Ok((Secret::new(&v), Source::Environment)),
        (Some(_), None) => Err(format!("environment variable `{name}` is empty")),
        (None, None) => Err(format!("environment variable `{name}` is not set")),
        (_, Some("")) => Err(format!(
            "environment variable `{name}` is not set and the default is empty"
        )),
        (_, Some(d)) => Ok((Secret::new(d), Source::Default)),
    }
}

/// Expand every `${NAME}` / `${NAME:-default}` inside `written` (a pool's `headers:` value,
/// e.g. `Bearer ${OPENAI_API_KEY}`), keeping the text around them. Unlike [`expand`], the
/// value is returned (the gateway sends it upstream): keep it in a [`Redacted`]. Errors name
/// the variable, never a value.
pub fn expand_template(
    written: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Redacted, String> {
    let mut out = String::new();
    let mut rest = written;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            return Err("`${` without a closing `}`".into());
        };
        match expand(&after[..=end], &env) {
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        out.push_str(&lookup_value(&after[2..end], &env));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Redacted(out))
}

/// The value of `NAME` or `NAME:-default` (already checked by [`expand`]).
fn lookup_value(inner: &str, env: &impl Fn(&str) -> Option<String>) -> String {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    match env(name) {
        Some(v) if !v.is_empty() => v,
        _ => default.unwrap_or("").to_string(),
    }
}

/// A secret the gateway must keep (to send it upstream) but never show: `Debug` and
/// `Display` print `***`; the value is reached only through [`Redacted::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_literals() {
        let (s, src) = expand("${TOKEN}", env).unwrap();
        assert_eq!(src, Source::Environment);
        assert!(s.matches(b"s3cret"));
        assert!(!s.matches(b"s3cre"));
        assert!(!s.matches(b"s3cret "));
        let (s, src) = expand("${MISSING:-demo}", env).unwrap();
        assert_eq!(src, Source::Default);
        assert!(s.matches(b"demo"));
        let (s, src) = expand("${TOKEN:-demo}", env).unwrap();
        assert_eq!(src, Source::Environment);
        assert!(s.matches(b"s3cret"));
        let (s, src) = expand("plain", env).unwrap();
        assert_eq!(src, Source::Literal);
        assert!(s.matches(b"plain"));
    }

    #[test]
    fn templates_expand_inside_text_and_never_print() {
        let v = expand_template("Bearer ${TOKEN}", env).unwrap();
        assert_eq!(v.expose(), "Bearer s3cret");
        assert_eq!(format!("{v:?} {v}"), "*** ***");
        let v = expand_template("${MISSING:-k}-${TOKEN}", env).unwrap();
        assert_eq!(v.expose(), "k-s3cret");
        assert_eq!(expand_template("plain", env).unwrap().expose(), "plain");
        let e = expand_template("Bearer ${MISSING}", env).unwrap_err();
        assert!(e.contains("`MISSING` is not set"), "{e}");
        assert!(expand_template("Bearer ${TOKEN", env).is_err());
    }

    #[test]
    fn errors_name_the_variable_and_never_a_value() {
        let e = expand("${MISSING}", env).unwrap_err();
        assert!(e.contains("`MISSING` is not set"), "{e}");
        let e = expand("${EMPTY}", env).unwrap_err();
        assert!(e.contains("`EMPTY` is empty"), "{e}");
        assert!(expand("x${TOKEN}", env).is_err());
        assert!(expand("${1BAD}", env).is_err());
        assert!(expand("", env).is_err());
        assert_eq!(
            format!("{:?}", expand("${TOKEN}", env).unwrap().0),
            "Secret(<redacted>)"
        );
    }
}
