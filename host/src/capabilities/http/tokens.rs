//! Access tokens the host fetched for a guest's origins, kept until a minute before they
//! expire: in memory for the process, and (when the provider instance lends a
//! [`TokenCacheDir`]) in a 0600 file of its work dir, so the next HostFactory call (a new
//! process, every 30 s or so) does not ask the token endpoint again. A file is keyed by the
//! origin, its auth settings and the credential file's content, so a changed principal or
//! secret never reuses an old token. Several processes may write at once: each writes a
//! file of its own and renames it into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Auth, Origin};

/// Where tokens outlive the process: the provider instance's work dir.
#[derive(Debug, Clone)]
pub struct TokenCacheDir(pub PathBuf);

/// A token is used until this long before it expires.
const MARGIN: Duration = Duration::from_secs(60);

/// The tokens of one guest's origins.
#[derive(Debug, Default)]
pub struct Tokens {
    /// By origin index: (token, valid until).
    memory: Mutex<HashMap<usize, (String, Instant)>>,
    dir: Option<PathBuf>,
    /// Held while a token is fetched, so requests side by side fetch one.
    pub fetching: tokio::sync::Mutex<()>,
}

impl Tokens {
    /// Tokens kept in memory, and in files under `dir` when given.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            memory: Mutex::new(HashMap::new()),
            dir,
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// A token for origin `index` still good for [`MARGIN`], from memory or the file.
    pub fn get(&self, index: usize, origin: &Origin) -> Option<String> {
        let now = Instant::now();
        if let Some(t) = self
            .memory
            .lock()
            .ok()
            .and_then(|m| m.get(&index).filter(|(_, until)| *until > now).map(|(t, _)| t.clone()))
        {
            return Some(t);
        }
        let file = self.file(origin)?;
        let text = crate::limits::read_capped(&file, 64 << 10).ok()?;
        let (expires, token) = text.split_once('\n')?;
        let left = Duration::from_secs(expires.trim().parse::<u64>().ok()?).checked_sub(epoch_now())?;
        let left = left.checked_sub(MARGIN).filter(|l| !l.is_zero())?;
        let token = token.trim().to_string();
        if let Ok(mut m) = self.memory.lock() {
            m.insert(index, (token.clone(), now + left));
        }
        Some(token)
    }

    /// Keeps `token`, valid for `lifetime`, for origin `index`.
    pub fn put(&self, index: usize, origin: &Origin, token: &str, lifetime: Duration) {
        if let Ok(mut m) = self.memory.lock() {
            m.insert(index, (token.to_string(), Instant::now() + lifetime.saturating_sub(MARGIN)));
        }
        let Some(file) = self.file(origin) else { return };
        let expires = (epoch_now() + lifetime).as_secs();
        if let Err(e) = write_private(&file, &format!("{expires}\n{token}\n")) {
            tracing::debug!(file = %file.display(), error = %e, "http token not cached on disk");
        }
    }

    /// Forgets origin `index`'s token if it is still `sent` (memory and file): a request
    /// beside the one that was refused may have renewed it already.
    pub fn forget(&self, index: usize, origin: &Origin, sent: &str) {
        if let Ok(mut m) = self.memory.lock()
            && m.get(&index).is_some_and(|(t, _)| t == sent)
        {
            m.remove(&index);
        }
        if let Some(f) = self.file(origin)
            && crate::limits::read_capped(&f, 64 << 10).is_ok_and(|text| text.lines().nth(1) == Some(sent))
        {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The cache file of `origin`'s credentials (none for no auth or a static bearer file).
    fn file(&self, origin: &Origin) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let secret_file: Option<&Path> = match &origin.auth {
            Auth::None | Auth::Bearer { .. } => return None,
            Auth::Oauth2ClientCredentials { client_secret_file, .. } => Some(client_secret_file),
            Auth::AzureAuthFile { file } => Some(file),
            Auth::ManagedIdentity { .. } => None,
        };
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(origin.url.as_bytes());
        h.update(serde_json::to_vec(&origin.auth).unwrap_or_default());
        if let Some(f) = secret_file {
            h.update(crate::limits::read_capped(f, 64 << 10).unwrap_or_default().as_bytes());
        }
        let tag: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!(".hfwasm-http-token-{tag}")))
    }
}

fn epoch_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Writes `text` to `file` through a 0600 file of this process, renamed into place.
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = file.with_extension(format!("{}.{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(secret_file: &Path) -> Origin {
        Origin {
            url: "https://management.azure.com".into(),
            methods: Vec::new(),
            paths: Vec::new(),
            auth: Auth::AzureAuthFile {
                file: secret_file.to_path_buf(),
            },
        }
    }

    #[test]
    fn a_token_outlives_the_process_in_a_private_file_and_a_changed_credential_never_reuses_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "client=a\nkey=one\ntenant=t\n").expect("creds");
        let o = origin(&creds);
        Tokens::new(Some(dir.path().to_path_buf())).put(0, &o, "tok-1", Duration::from_secs(3600));
        // Another process: nothing in memory, the file answers.
        let next = Tokens::new(Some(dir.path().to_path_buf()));
        assert_eq!(next.get(0, &o).as_deref(), Some("tok-1"));
        let file = next.file(&o).expect("file");
        assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);
        // A new secret in the credential file: the old token is not used.
        std::fs::write(&creds, "client=a\nkey=two\ntenant=t\n").expect("creds");
        assert_eq!(Tokens::new(Some(dir.path().to_path_buf())).get(0, &o), None);
        // A token within a minute of expiry is not used either.
        let soon = Tokens::new(Some(dir.path().to_path_buf()));
        soon.put(0, &o, "tok-2", Duration::from_secs(30));
        assert_eq!(Tokens::new(Some(dir.path().to_path_buf())).get(0, &o), None);
        // Forgotten (the origin refused it): gone from memory and disk; but a token renewed
        // since (by a request beside the refused one) stays.
        let t = Tokens::new(Some(dir.path().to_path_buf()));
        t.put(0, &o, "tok-3", Duration::from_secs(3600));
        t.forget(0, &o, "tok-2");
        assert_eq!(t.get(0, &o).as_deref(), Some("tok-3"), "renewed since: kept");
        t.forget(0, &o, "tok-3");
        assert_eq!(t.get(0, &o), None);
        assert_eq!(Tokens::new(Some(dir.path().to_path_buf())).get(0, &o), None);
    }
}
