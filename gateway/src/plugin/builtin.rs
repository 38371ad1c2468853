//! The built-in plugins (`plugins/*` in the repository), compiled to components at build
//! time and embedded in the binary. A file of the same name in the plugin directory
//! overrides one; removing that file brings the built-in back.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The embedded component of a built-in plugin.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The names of every built-in plugin.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(name, _)| *name)
}
