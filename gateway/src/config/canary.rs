//! Validation of canary entries (`NAME@VERSION:PERCENT%`) against the configuration: the
//! parsing, the draw and the counters are the runtime's (`sluice_plugin_host::canary`). Here,
//! beside the configuration it checks, so that `config` does not depend on the gateway's
//! `plugin` module (which converts the configuration into the runtime's settings).

use sluice_plugin_host::canary::parse;

use super::{Config, FailurePolicy};

/// Whether plugin `name` is declared where the configuration can see it: a digest source,
/// a file in the plugin directory, or a file in `SLUICE_PLUGINS`.
fn declared(config: &Config, name: &str) -> bool {
    let file = format!("{name}.wasm");
    config.plugins.sources.contains_key(name)
        || config
            .plugins
            .dir
            .as_ref()
            .is_some_and(|dir| dir.join(&file).is_file())
        || config
            .plugins
            .files
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n == file.as_str()))
}

/// What is wrong with the canary entries of the routes and the resolver: malformed entries,
/// versions that are not declared, and an auth version that would fail open. Each message
/// names the key, the route and the entry.
pub(crate) fn problems(config: &Config) -> Vec<(Option<std::ops::Range<usize>>, String)> {
    let mut problems = Vec::new();
    let routes = config.routes.iter().enumerate().flat_map(|(i, route)| {
        let label = route
            .name
            .clone()
            .unwrap_or_else(|| route.path.get_ref().clone());
        route.plugins.iter().map(move |entry| {
            (
                format!("routes[{i}].plugins"),
                format!(" (route `{label}`)"),
                Some(entry.span()),
                entry.get_ref().as_str(),
            )
        })
    });
    let resolver = config.resolver.plugins.iter().map(|entry| {
        (
            "resolver.plugins".to_owned(),
            String::new(),
            None,
            entry.as_str(),
        )
    });
    for (key, route, span, entry) in routes.chain(resolver) {
        let canary = match parse(entry) {
            Ok(Some(canary)) => canary,
            Ok(None) => continue,
            Err(why) => {
                problems.push((span, format!("{key}: `{entry}`{route}: {why}")));
                continue;
            }
        };
        if !declared(config, canary.version) {
            problems.push((
                span.clone(),
                format!(
                    "{key}: `{entry}`{route}: plugin `{}` has no version `{}`: declare \
                     [plugins.sources.\"{}\"] or put {}.wasm in the plugin directory",
                    canary.base,
                    &canary.version[canary.base.len() + 1..],
                    canary.version,
                    canary.version
                ),
            ));
        }
        if canary.base == "auth"
            && config.plugins.settings_for(canary.version).on_failure == FailurePolicy::FailOpen
        {
            problems.push((
                span,
                format!(
                    "plugins.override.\"{}\".on_failure: a version of the auth plugin must be \
                     fail-closed like auth (a fail-open auth would let a request through \
                     unauthenticated)",
                    canary.version
                ),
            ));
        }
    }
    problems
}
