//! SQL identifiers checked once, quoted always.

use std::fmt;

use crate::Error;

/// A table or column name: letters, digits and `_`, not starting with a digit, at most 63
/// bytes (PostgreSQL's limit), optionally `schema.name`; written double-quoted, so a name is
/// never read as SQL and keeps its case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    parts: Vec<String>,
}

impl Ident {
    /// Checks `name` (`table` or `schema.table`).
    pub fn new(name: &str) -> Result<Ident, Error> {
        let parts: Vec<String> = name.split('.').map(str::to_string).collect();
        if parts.len() > 2 {
            return Err(Error::invalid(
                "identifier",
                format!("{name:?}: at most one '.' (schema.name)"),
            ));
        }
        for p in &parts {
            let first_ok = p
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            let rest_ok = p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !first_ok || !rest_ok || p.len() > 63 {
                return Err(Error::invalid(
                    "identifier",
                    format!(
                        "{name:?}: each part is 1–63 of [A-Za-z0-9_], not starting with a digit"
                    ),
                ));
            }
        }
        Ok(Ident { parts })
    }

    /// The name as given (`schema.table`), for messages.
    pub fn name(&self) -> String {
        self.parts.join(".")
    }
}

impl fmt::Display for Ident {
    /// The quoted form, `"schema"."table"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "\"{p}\"")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert_eq!(
            Ident::new("inventory").unwrap().to_string(),
            "\"inventory\""
        );
        assert_eq!(
            Ident::new("shop.Inventory").unwrap().to_string(),
            "\"shop\".\"Inventory\""
        );
        for bad in ["", "1x", "a;drop", "a\"b", "a.b.c", "a.", &"x".repeat(64)] {
            assert!(
                matches!(Ident::new(bad), Err(Error::InvalidInput { .. })),
                "{bad:?}"
            );
        }
        assert!(Ident::new(&"x".repeat(63)).is_ok());
    }
}
