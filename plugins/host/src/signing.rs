//! Plug-in signatures: ed25519 over the bytes of the `.wasm` file, kept in
//! `<file>.sig` beside it. Keys and signatures are one-line text files:
//!
//! ```text
//! kite-ed25519-secret-key <64 hex digits>     (NAME.key, mode 0600)
//! kite-ed25519-public-key <64 hex digits>     (NAME.pub)
//! kite-ed25519-signature  <128 hex digits>    (FILE.wasm.sig)
//! ```

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

const SECRET_TAG: &str = "kite-ed25519-secret-key";
const PUBLIC_TAG: &str = "kite-ed25519-public-key";
const SIGNATURE_TAG: &str = "kite-ed25519-signature";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("{0}: {1}")]
    File(PathBuf, String),
    #[error("{0}: not a {1} file")]
    Format(PathBuf, &'static str),
    #[error("unsigned plug-in refused: require_signed is on and {0} does not exist")]
    Unsigned(PathBuf),
    #[error("signature {0} does not match any trusted key: the file was changed after signing, or signed by a key this gateway does not trust")]
    Mismatch(PathBuf),
}

/// Where the signature of `wasm` lives.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn read_tagged<const N: usize>(path: &Path, tag: &'static str) -> Result<[u8; N], SigningError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SigningError::File(path.to_path_buf(), e.to_string()))?;
    text.trim()
        .strip_prefix(tag)
        .and_then(|rest| unhex::<N>(rest.trim()))
        .ok_or(SigningError::Format(path.to_path_buf(), tag))
}

fn write(path: &Path, text: String, secret: bool) -> Result<(), SigningError> {
    let fail = |e: std::io::Error| SigningError::File(path.to_path_buf(), e.to_string());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(fail)
}

/// Creates `<prefix>.key` and `<prefix>.pub`; refuses to overwrite either.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf), SigningError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| SigningError::File(prefix.to_path_buf(), e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for path in [&secret, &public] {
        if path.exists() {
            return Err(SigningError::File(
                path.clone(),
                "exists already; keys are never overwritten".into(),
            ));
        }
    }
    write(
        &public,
        format!("{PUBLIC_TAG} {}\n", hex(key.verifying_key().as_bytes())),
        false,
    )?;
    write(
        &secret,
        format!("{SECRET_TAG} {}\n", hex(&key.to_bytes())),
        true,
    )?;
    Ok((secret, public))
}

/// Signs `wasm` with the secret key at `key`, writing `<wasm>.sig`.
pub fn sign(wasm: &Path, key: &Path) -> Result<PathBuf, SigningError> {
    let key = SigningKey::from_bytes(&read_tagged::<32>(key, SECRET_TAG)?);
    let bytes =
        std::fs::read(wasm).map_err(|e| SigningError::File(wasm.to_path_buf(), e.to_string()))?;
    let signature = key.sign(&bytes);
    let path = signature_path(wasm);
    let _ = std::fs::remove_file(&path);
    write(
        &path,
        format!("{SIGNATURE_TAG} {}\n", hex(&signature.to_bytes())),
        false,
    )?;
    Ok(path)
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SigningError> {
    VerifyingKey::from_bytes(&read_tagged::<32>(path, PUBLIC_TAG)?)
        .map_err(|_| SigningError::Format(path.to_path_buf(), PUBLIC_TAG))
}

/// What loading a plug-in found out about its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Signed by the trusted key at this index.
    By(usize),
    /// No signature (allowed without `require_signed`), or no trusted keys to check one against.
    Unchecked,
}

/// Checks `bytes` (the content of `wasm`) against its signature file.
pub fn verify(
    wasm: &Path,
    bytes: &[u8],
    trusted: &[VerifyingKey],
    require_signed: bool,
) -> Result<Verified, SigningError> {
    let sig_path = signature_path(wasm);
    if !sig_path.exists() {
        return if require_signed {
            Err(SigningError::Unsigned(sig_path))
        } else {
            Ok(Verified::Unchecked)
        };
    }
    let signature = Signature::from_bytes(&read_tagged::<64>(&sig_path, SIGNATURE_TAG)?);
    if trusted.is_empty() && !require_signed {
        return Ok(Verified::Unchecked);
    }
    trusted
        .iter()
        .position(|key| key.verify(bytes, &signature).is_ok())
        .map(Verified::By)
        .ok_or(SigningError::Mismatch(sig_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("p.wasm");
        std::fs::write(&wasm, b"\0asm component bytes").unwrap();
        let (secret, public) = keygen(&dir.path().join("vendor")).unwrap();
        assert!(
            keygen(&dir.path().join("vendor")).is_err(),
            "never overwrites a key"
        );
        let (_, other_public) = keygen(&dir.path().join("other")).unwrap();
        let trusted = [
            read_public_key(&other_public).unwrap(),
            read_public_key(&public).unwrap(),
        ];
        let bytes = std::fs::read(&wasm).unwrap();

        assert_eq!(
            verify(&wasm, &bytes, &trusted, true),
            Err(SigningError::Unsigned(signature_path(&wasm)))
        );
        assert_eq!(
            verify(&wasm, &bytes, &trusted, false),
            Ok(Verified::Unchecked)
        );
        sign(&wasm, &secret).unwrap();
        assert_eq!(verify(&wasm, &bytes, &trusted, true), Ok(Verified::By(1)));
        let mut tampered = bytes.clone();
        tampered[3] ^= 1;
        assert!(matches!(
            verify(&wasm, &tampered, &trusted, false),
            Err(SigningError::Mismatch(_))
        ));
        assert!(matches!(
            verify(&wasm, &bytes, &trusted[..1], true),
            Err(SigningError::Mismatch(_))
        ));
        assert!(
            matches!(sign(&wasm, &public), Err(SigningError::Format(..))),
            "a public key cannot sign"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
