//! Where a gateway keeps its buffer and answers its local API, read from its
//! config alone: the tools that work on a running or broken gateway (`kite
//! buffer`, `kite status`, `kite log-level`, `kite reload`) need only this,
//! and must work when the rest of the config has mistakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::secrets::{self, Secret, SecretKeys};
use super::{read, ConfigError, Report};

/// What the tools need to reach a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub data_dir: PathBuf,
    /// Where the local API listens; `None` when it is off.
    pub listen: Option<SocketAddr>,
    /// The API's bearer token, from wherever the config says.
    pub token: Option<Secret>,
}

/// Every other key is ignored, whatever it says.
#[derive(Deserialize)]
struct Partial {
    gateway: PartialGateway,
    #[serde(default)]
    http: PartialHttp,
}

#[derive(Deserialize)]
struct PartialGateway {
    data_dir: PathBuf,
}

#[derive(Deserialize)]
struct PartialHttp {
    #[serde(default = "enabled")]
    enabled: bool,
    #[serde(default = "default_listen")]
    listen: String,
    token_file: Option<Spanned<PathBuf>>,
    token_credential: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token: Option<Spanned<toml::Value>>,
}

impl Default for PartialHttp {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            token_file: None,
            token_credential: None,
            token_env: None,
            token: None,
        }
    }
}

fn enabled() -> bool {
    true
}

fn default_listen() -> String {
    super::DEFAULT_HTTP_LISTEN.to_string()
}

/// Reads the location from the config file at `path`.
pub fn locate(path: &Path) -> Result<Location, ConfigError> {
    let text = read(path)?;
    let mut report = Report::new(&text);
    let location = match toml::from_str::<Partial>(&text) {
        Ok(partial) => {
            let base = path.parent().unwrap_or(Path::new("."));
            let listen = partial
                .http
                .enabled
                .then(|| partial.http.listen.parse().ok());
            if let Some(None) = listen {
                report.push(
                    0..0,
                    format!("http.listen {:?}: expected ip:port", partial.http.listen),
                );
            }
            let http = &partial.http;
            let token = SecretKeys {
                key: "http.token",
                inline: &http.token,
                file: &http.token_file,
                credential: &http.token_credential,
                env: &http.token_env,
            }
            .source(&mut report, base)
            .and_then(|source| secrets::read(source, "http.token", &mut report));
            Some(Location {
                data_dir: partial.gateway.data_dir,
                listen: listen.flatten(),
                token,
            })
        }
        Err(e) => {
            report.push(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            None
        }
    };
    report.finish(location, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_is_found_in_a_config_with_mistakes_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let path = dir.path().join("kite.toml");
        std::fs::write(
            &path,
            "[gateway]\nid = \"gw\"\ndata_dir = \"/var/lib/kite\"\n\
             [mqtt]\nurl = \"nonsense\"\n\
             [http]\nlisten = \"0.0.0.0:9999\"\ntoken_file = \"token\"\n\
             [[devices]]\nname = \"x\"\nprotocol = \"bacnet\"\n",
        )
        .unwrap();
        assert!(super::super::load(&path).is_err());
        assert_eq!(
            locate(&path).unwrap(),
            Location {
                data_dir: "/var/lib/kite".into(),
                listen: Some("0.0.0.0:9999".parse().unwrap()),
                token: Some(Secret::for_tests("s3cret")),
            }
        );
        std::fs::write(
            &path,
            "[gateway]\ndata_dir = \"/d\"\n[http]\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(locate(&path).unwrap().listen, None);
        std::fs::write(&path, "[gateway\n").unwrap();
        assert!(locate(&path).is_err());
    }
}
