//! `import-389`: turns a 389 DS "PAM Pass Through Auth" plugin configuration (LDIF) into
//! `[[route]]` tables and the `[bind]` keys they need (DESIGN §2 and §5), in three steps:
//! `ldif` reads the records, `plugin` applies 389's semantics (which entries count,
//! their evaluation order, what each means) and `render` writes the TOML.

mod ldif;
mod plugin;
mod render;

/// The plugin entry of 389's PAM Pass Through Auth plugin.
pub const PLUGIN_DN: &str = "cn=PAM Pass Through Auth,cn=plugins,cn=config";

/// Name of the route made from the plugin entry's own settings.
pub const DEFAULT_ROUTE: &str = "default";

/// The input could not be read as LDIF, or holds no PAM Pass Through Auth configuration.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{origin}:{line}: {message}")]
    Ldif {
        origin: String,
        line: usize,
        message: String,
    },
    #[error(
        "{origin}: no PAM Pass Through Auth configuration: no entry {PLUGIN_DN} and none below it"
    )]
    NoConfig { origin: String },
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `[bind]` and `[[route]]` tables, to append to a configuration's `[listen]` and
    /// `[backend]`.
    pub toml: String,
    /// Everything the TOML does not say as 389 did, one message each (for stderr).
    pub warnings: Vec<String>,
    /// The route names, in evaluation order.
    pub routes: Vec<String>,
}

/// Converts a 389 PAM Pass Through Auth configuration. `origin` names the input in
/// messages.
pub fn import_389(text: &str, origin: &str) -> Result<Imported, ImportError> {
    let (entries, mut warnings) = ldif::parse(text, origin)?;
    let pam_entries = plugin::entries_in_389_order(&entries, origin, &mut warnings)?;
    Ok(render::render(&pam_entries, origin, warnings))
}
