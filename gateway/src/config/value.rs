//! Values the file spells as text (`"connect"`, `"GET"`, `"header:x-user"`) and the gateway
//! uses typed: parsed once, when the file is deserialised, so no consumer parses them again
//! (and none can drop one that does not parse).
//!
//! A bad value does not stop deserialisation the way a type error does: `sluice check-config`
//! names every problem of a file in one run, and these are checked beside the cross-table
//! rules. The value keeps its reason; the validation pass reports it with its key path and
//! position, and [`Config::parse`](super::Config::parse) refuses the file. So every `Parsed`
//! in a loaded `Config` holds its value.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// A type that can be written as text in the config file.
pub trait FromText: Sized {
    /// Parses `text`, or says what is wrong with it (quoting it, without the key: the
    /// validation pass puts the key path in front).
    fn from_text(text: &str) -> Result<Self, String>;
}

/// A value of type `T`, parsed from the file's text, with its position.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    span: Range<usize>,
    value: Result<T, String>,
}

impl<T> Parsed<T> {
    /// A value with no position in a file (defaults, configs built in code).
    pub fn new(value: T) -> Self {
        Self {
            span: 0..0,
            value: Ok(value),
        }
    }

    /// The value.
    ///
    /// # Panics
    ///
    /// When the text did not parse. `Config::parse` refuses such a file, so this happens only
    /// to a `Config` deserialised without it: a bug, not a bad file.
    pub fn get(&self) -> &T {
        match &self.value {
            Ok(value) => value,
            Err(why) => panic!("a config value refused at load was used: {why}"),
        }
    }

    /// Where the value is in the file (bytes).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// Why the text did not parse, for the validation pass.
    pub(crate) fn problem(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }
}

/// Values compare equal when they hold the same value (or the same refusal); the position
/// does not count, as with `toml::Spanned` (a reload compares old and new configs).
impl<T: PartialEq> PartialEq for Parsed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<'de, T: FromText> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Anything but a string is still a type error that stops deserialisation, with
        // serde's message (`invalid type: integer `502`, expected a string`).
        let text = Spanned::<String>::deserialize(d)?;
        Ok(Self {
            span: text.span(),
            value: T::from_text(text.get_ref()),
        })
    }
}

/// An HTTP method (`"GET"`, or an extension method such as `"PURGE"`).
impl FromText for http::Method {
    fn from_text(text: &str) -> Result<Self, String> {
        http::Method::from_bytes(text.as_bytes())
            .map_err(|_| format!("`{text}` is not an HTTP method"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        methods: Vec<Parsed<http::Method>>,
    }

    #[test]
    fn a_bad_value_is_kept_with_its_reason_and_position_and_a_good_one_parsed() {
        let doc: Doc = toml::from_str("methods = [\"PURGE\", \"G T\"]").unwrap();
        assert_eq!(doc.methods[0].get().as_str(), "PURGE");
        assert_eq!(doc.methods[0].problem(), None);
        assert_eq!(
            doc.methods[1].problem(),
            Some("`G T` is not an HTTP method")
        );
        assert_eq!(doc.methods[1].span(), 20..25);
    }

    #[test]
    fn a_value_that_is_not_text_is_a_type_error() {
        let e = toml::from_str::<Doc>("methods = [1]").unwrap_err();
        assert!(e.message().contains("expected a string"), "{e}");
    }

    #[test]
    #[should_panic(expected = "refused at load")]
    fn reading_a_refused_value_panics_instead_of_dropping_it() {
        let doc: Doc = toml::from_str("methods = [\"G T\"]").unwrap();
        doc.methods[0].get();
    }

    #[test]
    fn equality_ignores_the_position() {
        let doc: Doc = toml::from_str("methods = [\"GET\"]").unwrap();
        assert_eq!(doc.methods[0], Parsed::new(http::Method::GET));
    }
}
