//! Secrets (the MQTT password, the API token): never written in the
//! config, read from a file, a systemd credential (`LoadCredential=`, found
//! in `$CREDENTIALS_DIRECTORY` by name) or an environment variable the
//! config names, and kept out of every log, report and `Debug` output. The
//! TLS client key can be a credential too (`mqtt.key_credential`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::file_ref::FileRef;
use super::Report;

/// A secret's value; its `Debug` output hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(super) fn for_tests(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone)]
pub(super) enum SecretRef {
    File(FileRef),
    Credential { name: String, span: Range<usize> },
    Env { name: String, span: Range<usize> },
}

/// The config keys of one secret: `{key}_file`, `{key}_credential`,
/// `{key}_env`, and `{key}` written inline, which is refused.
pub(super) struct SecretKeys<'a> {
    /// Like `mqtt.password`.
    pub key: &'a str,
    pub inline: &'a Option<Spanned<toml::Value>>,
    pub file: &'a Option<Spanned<PathBuf>>,
    pub credential: &'a Option<Spanned<String>>,
    pub env: &'a Option<Spanned<String>>,
}

impl SecretKeys<'_> {
    /// Where the secret comes from, if anywhere; a secret written in the
    /// config, or given twice, is a problem.
    pub fn source(&self, report: &mut Report<'_>, base: &Path) -> Option<SecretRef> {
        let key = self.key;
        if let Some(inline) = self.inline {
            report.push(
                inline.span(),
                format!("{key} written in the config is refused: give {key}_file, {key}_credential (a systemd credential) or {key}_env (an environment variable)"),
            );
        }
        let mut sources = Vec::new();
        if let Some(file) = self.file {
            sources.push(SecretRef::File(FileRef::at(base, file)));
        }
        if let Some(name) = self.credential {
            if name.get_ref().is_empty() || name.get_ref().contains('/') {
                report.push(
                    name.span(),
                    format!("{key}_credential {:?}: expected a credential's name, like \"mqtt-password\"", name.get_ref()),
                );
            }
            sources.push(SecretRef::Credential {
                name: name.get_ref().clone(),
                span: name.span(),
            });
        }
        if let Some(name) = self.env {
            sources.push(SecretRef::Env {
                name: name.get_ref().clone(),
                span: name.span(),
            });
        }
        if sources.len() > 1 {
            let span = self
                .credential
                .as_ref()
                .map(Spanned::span)
                .or(self.env.as_ref().map(Spanned::span))
                .unwrap_or(0..0);
            report.push(
                span,
                format!("give one of {key}_file, {key}_credential and {key}_env"),
            );
        }
        sources.into_iter().next()
    }
}

/// Where systemd put the credential `name` of `key` (`mqtt.password`);
/// without `$CREDENTIALS_DIRECTORY`, a problem at its place.
pub(super) fn credential_path(
    name: &str,
    key: &str,
    span: Range<usize>,
    report: &mut Report<'_>,
) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        report.push(
            span,
            format!("{key}_credential {name:?}: no systemd credentials here ($CREDENTIALS_DIRECTORY is not set; give LoadCredential={name}:... in the unit)"),
        );
        return None;
    };
    Some(Path::new(&dir).join(name))
}

/// Reads the secret; what cannot be read is a problem at its place. The
/// value never appears in the problem.
pub(super) fn read(source: SecretRef, key: &str, report: &mut Report<'_>) -> Option<Secret> {
    let (text, span, from) = match source {
        SecretRef::File(file) if !file.path.is_file() => {
            report.push(
                file.span,
                format!("{key}_file: no such file {}", file.path.display()),
            );
            return None;
        }
        SecretRef::File(file) => match std::fs::read_to_string(&file.path) {
            Ok(text) => (
                text,
                file.span,
                format!("{key}_file {}", file.path.display()),
            ),
            Err(e) => {
                report.push(
                    file.span,
                    format!("{key}_file {}: {e}", file.path.display()),
                );
                return None;
            }
        },
        SecretRef::Credential { name, span } => {
            let path = credential_path(&name, key, span.clone(), report)?;
            match std::fs::read_to_string(&path) {
                Ok(text) => (text, span, format!("{key}_credential {name:?}")),
                Err(e) => {
                    report.push(
                        span,
                        format!("{key}_credential {name:?} ({}): {e}", path.display()),
                    );
                    return None;
                }
            }
        }
        SecretRef::Env { name, span } => match std::env::var(&name) {
            Ok(text) => (text, span, format!("{key}_env {name}")),
            Err(_) => {
                report.push(
                    span,
                    format!("{key}_env: the environment variable {name} is not set"),
                );
                return None;
            }
        },
    };
    let value = text.trim_end_matches(['\r', '\n']);
    if value.trim().is_empty() {
        report.push(span, format!("{from} is empty"));
        return None;
    }
    Some(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret("hunter2".into());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(..))");
        assert_eq!(secret.expose(), "hunter2");
    }
}
