//! The files a config names, read: the MQTT password, the API token, the TLS
//! certificates and key, the trusted plug-in keys; and the plug-ins and
//! codecs it names checked to exist. `kite check` resolves exactly what
//! `kite run` and a reload do, so a config that passes the check starts.

use std::ops::Range;

use super::file_ref::FileRef;
use super::secrets::{self, SecretRef};
use super::tls::{self, TlsFile, TlsFiles};
use super::{Config, Report};

/// The TLS files of `mqtts://`.
#[derive(Debug, Clone)]
pub(super) struct TlsRefs {
    /// Where a problem of no particular file is reported.
    pub url: Range<usize>,
    pub ca: Option<FileRef>,
    pub client: Option<(FileRef, KeyRef)>,
}

/// Where the client key is: `mqtt.key_file`, or `mqtt.key_credential`, a
/// systemd credential found by name in `$CREDENTIALS_DIRECTORY`.
#[derive(Debug, Clone)]
pub(super) enum KeyRef {
    File(FileRef),
    Credential { name: String, span: Range<usize> },
}

impl KeyRef {
    pub fn span(&self) -> Range<usize> {
        match self {
            KeyRef::File(file) => file.span.clone(),
            KeyRef::Credential { span, .. } => span.clone(),
        }
    }

    /// The key's file and its config key, if it can be found.
    fn locate(&self, report: &mut Report<'_>) -> Option<(FileRef, &'static str)> {
        match self {
            KeyRef::File(file) => Some((file.clone(), "mqtt.key_file")),
            KeyRef::Credential { name, span } => {
                let path = secrets::credential_path(name, "mqtt.key", span.clone(), report)?;
                Some((
                    FileRef {
                        path,
                        span: span.clone(),
                    },
                    "mqtt.key_credential",
                ))
            }
        }
    }
}

/// Every file a config names.
#[derive(Debug, Default)]
pub(super) struct Files {
    pub password: Option<SecretRef>,
    pub token: Option<SecretRef>,
    pub tls: Option<TlsRefs>,
    pub trusted_keys: Vec<FileRef>,
    /// Plug-ins and codecs, with what each is: they must exist.
    pub components: Vec<(FileRef, &'static str)>,
    /// BTHome bind keys, with the device each is for.
    pub bind_keys: Vec<(FileRef, String)>,
    /// The Zigbee network key: checked when it exists (it is created at
    /// the first start otherwise).
    pub zigbee_key: Option<FileRef>,
}

/// Reads what `files` names into `config`; what cannot be read is a problem at its place.
pub(super) fn resolve(config: &mut Config, files: Files, report: &mut Report<'_>) {
    if let Some(source) = files.password {
        config.mqtt.password = secrets::read(source, "mqtt.password", report);
    }
    if let Some(source) = files.token {
        config.http.token = secrets::read(source, "http.token", report);
    }
    let keys: Vec<_> = files
        .trusted_keys
        .into_iter()
        .filter_map(
            |file| match kite_plugins::signing::read_public_key(&file.path) {
                Ok(key) => Some(key),
                Err(e) => {
                    report.push(file.span, format!("plugin_trust.trusted_keys: {e}"));
                    None
                }
            },
        )
        .collect();
    config.plugin_trust.keys = keys.into();
    if let Some(refs) = files.tls {
        config.mqtt.tls = resolve_tls(refs, report);
        let expiring: Vec<String> = config
            .mqtt
            .certificate_warnings(kite_core::now_ms())
            .collect();
        config.warnings.extend(expiring);
    }
    for (file, device) in files.bind_keys {
        let key = std::fs::read_to_string(&file.path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_key(&text));
        match key {
            Ok(key) => {
                let ble = config.ble.iter_mut().flat_map(|ble| &mut ble.devices);
                for found in ble.filter(|d| *d.spec.name == *device) {
                    if let Some(super::BleDecoder::Format { bind_key, .. }) = &mut found.decoder {
                        *bind_key = Some(key);
                    }
                }
            }
            Err(e) => report.push(
                file.span,
                format!("bind_key_file {}: {e}", file.path.display()),
            ),
        }
    }
    if let Some(file) = files.zigbee_key.filter(|f| f.path.exists()) {
        let key = std::fs::read_to_string(&file.path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_key(&text));
        if let Err(e) = key {
            report.push(
                file.span,
                format!("zigbee.network_key_file {}: {e}", file.path.display()),
            );
        }
    }
    for (file, what) in files.components {
        if !file.path.is_file() {
            report.push(
                file.span,
                format!("no such {what} file {}", file.path.display()),
            );
        }
    }
}

fn resolve_tls(refs: TlsRefs, report: &mut Report<'_>) -> Option<tls::Tls> {
    // Only files that are all there are parsed; missing ones are reported.
    let mut all_there = true;
    if let Some(ca) = &refs.ca {
        all_there &= ca.exists(report, "mqtt.ca_file");
    }
    let mut client = None;
    if let Some((cert, key)) = &refs.client {
        all_there &= cert.exists(report, "mqtt.cert_file");
        match key.locate(report) {
            Some((key, what)) => {
                all_there &= key.exists(report, what);
                client = Some((cert.clone(), key));
            }
            None => all_there = false,
        }
    }
    if !all_there {
        return None;
    }
    let files = TlsFiles {
        ca_file: refs.ca.as_ref().map(|ca| ca.path.clone()),
        client_auth: client
            .as_ref()
            .map(|(cert, key): &(FileRef, FileRef)| (cert.path.clone(), key.path.clone())),
    };
    match tls::load(files) {
        Ok(settings) => Some(settings),
        Err(problem) => {
            let span = match problem.file {
                Some(TlsFile::Ca) => refs.ca.map(|ca| ca.span),
                Some(TlsFile::Cert) => refs.client.map(|(cert, _)| cert.span),
                Some(TlsFile::Key) => refs.client.map(|(_, key)| key.span()),
                None => None,
            };
            report.push(span.unwrap_or(refs.url), problem.message);
            None
        }
    }
}

/// A 128-bit key (a BTHome bind key, a Zigbee network key): 32 hex characters.
pub(crate) fn parse_key(text: &str) -> Result<[u8; 16], String> {
    let text = text.trim();
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected 32 hex characters (a 128-bit key)".into());
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(key)
}
