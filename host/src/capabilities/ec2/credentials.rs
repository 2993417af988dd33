//! Where the EC2 client's credentials and TLS trust come from: IBM's `AWS_CREDENTIAL_FILE`,
//! a credential script (cached per script, renewed before expiry), the CA bundle.

use std::time::Duration;

use super::client::Ec2Settings;

/// Static credentials from IBM's `AWS_CREDENTIAL_FILE` (the shared-credentials format:
/// `[default]` with `aws_access_key_id`, `aws_secret_access_key`, optional
/// `aws_session_token`). Read here rather than by the SDK's profile provider, which would
/// also set up instance-metadata lookups the file does not ask for.
pub(super) fn credentials_file(file: &std::path::Path, profile: Option<&str>) -> Result<aws_credential_types::Credentials, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "AWS_CREDENTIAL_FILE {}: {e}{}",
            file.display(),
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(" (hfwasm runs as {}; make the file readable by that user)", whoami())
            } else {
                String::new()
            }
        )
    })?;
    credentials_text(&text, profile, &format!("AWS_CREDENTIAL_FILE {}", file.display()))
}

/// The user this process runs as, for messages about files it cannot read or write.
pub(super) fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "this process's user".into())
}

/// Credentials from `text` in the shared-credentials format (`[profile]` sections), or as
/// JSON the way `credential_process` programs and `aws sts` print them
/// (`{"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}`, optionally under
/// `"Credentials"`). `source` names where the text came from in errors.
pub(super) fn credentials_text(text: &str, profile: Option<&str>, source: &str) -> Result<aws_credential_types::Credentials, String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) {
        let c = v.get("Credentials").unwrap_or(&v);
        let field = |k: &str| c.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
        return match (field("AccessKeyId"), field("SecretAccessKey")) {
            (Some(id), Some(secret)) => {
                let expiry = field("Expiration").and_then(|e| {
                    aws_smithy_types::DateTime::from_str(&e, aws_smithy_types::date_time::Format::DateTime)
                        .ok()
                        .and_then(|d| std::time::SystemTime::try_from(d).ok())
                });
                Ok(aws_credential_types::Credentials::new(
                    id,
                    secret,
                    field("SessionToken"),
                    expiry,
                    "hfwasm",
                ))
            }
            _ => Err(format!("{source}: JSON without AccessKeyId and SecretAccessKey")),
        };
    }
    let profile = profile
        .map(str::to_string)
        .unwrap_or_else(|| std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into()));
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(aws_credential_types::Credentials::new(id, secret, token, None, "hfwasm")),
        _ => Err(format!(
            "{source}: profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        )),
    }
}

/// Credentials from IBM's `AWS_CREDENTIAL_SCRIPT`: the script's last output, cached in a
/// 0600 file of the work dir, or the script run again once that output is
/// `renew_margin` old or its credentials expire within five minutes. Several processes
/// may renew at once; each writes a file of its own and renames it into place, so a reader
/// never sees half a file. The script runs with no input, under
/// [`limits::CREDENTIAL_SCRIPT_TIMEOUT`](crate::limits::CREDENTIAL_SCRIPT_TIMEOUT).
pub(super) fn credentials_script(s: &Ec2Settings, script: &std::path::Path) -> Result<aws_credential_types::Credentials, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = s.credential_cache_dir.clone().unwrap_or_else(std::env::temp_dir);
    // One cache per script, so two providers with their own scripts never share one.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(script.as_os_str().as_encoded_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let cache = dir.join(format!(".hfwasm-aws-credentials-{tag}"));
    let source = format!("AWS_CREDENTIAL_SCRIPT {}", script.display());
    let fresh = |text: &str| -> Option<aws_credential_types::Credentials> {
        let creds = credentials_text(text, Some("default"), &source).ok()?;
        let soon = std::time::SystemTime::now() + Duration::from_secs(300);
        creds.expiry().is_none_or(|e| e > soon).then_some(creds)
    };
    if let Ok(meta) = std::fs::metadata(&cache)
        && meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age < s.credential_renew_margin)
        && let Ok(text) = std::fs::read_to_string(&cache)
        && let Some(c) = fresh(&text)
    {
        return Ok(c);
    }
    tracing::info!(script = %script.display(), "renewing AWS credentials from AWS_CREDENTIAL_SCRIPT");
    let mut child = std::process::Command::new(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "{source}: cannot run it: {e} (it must be an executable file, runnable by {})",
                whoami()
            )
        })?;
    let deadline = std::time::Instant::now() + crate::limits::CREDENTIAL_SCRIPT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{source}: no answer within {} s; it was stopped",
                    crate::limits::CREDENTIAL_SCRIPT_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("{source}: {e}")),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    if !status.success() {
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        tracing::debug!(script = %script.display(), stderr = %err, "credential script failed");
        return Err(format!(
            "{source}: exited with {status}{}",
            if first.is_empty() { String::new() } else { format!(": {first}") }
        ));
    }
    let creds = credentials_text(&out, Some("default"), &source)?;
    let tmp = dir.join(format!(
        ".hfwasm-aws-credentials-{digest:016x}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &cache));
    if let Err(e) = written {
        // The credentials are good; only the cache failed (the next call runs the script again).
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(cache = %cache.display(), error = %e, "cannot cache the credential script's output");
    }
    Ok(creds)
}
