//! Why this process cannot use a file or directory, told as an admin can act on it: who
//! owns the nearest existing part of the path, its mode, who this process runs as, and the
//! command that fixes it. Used wherever hfwasm writes its own files (state store, compiled
//! guests, credential cache) and the answer is "permission denied" or "read-only".

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The user name of `uid` from `/etc/passwd`, else the number.
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The user this process runs as (effective uid), by name.
pub fn running_user() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    user_name(unsafe { libc::geteuid() })
}

/// `" (owned by X, mode 0755; hfwasm runs as Y: run `chown -R Y DIR` or run hfwasm as X)"`
/// for `path` (the nearest part of it that exists), when this process does not own it;
/// an explanation of the mode when it does. Empty when nothing can be said.
pub fn hint(path: &Path) -> String {
    let Some((existing, meta)) = path.ancestors().find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m))) else {
        return String::new();
    };
    // SAFETY: as in `running_user`.
    let me = unsafe { libc::geteuid() };
    let owner = user_name(meta.uid());
    let mode = meta.mode() & 0o7777;
    let runner = user_name(me);
    let dir = if meta.is_dir() {
        existing
    } else {
        existing.parent().unwrap_or(existing)
    };
    if meta.uid() != me {
        format!(
            " ({} is owned by {owner}, mode {mode:04o}; hfwasm runs as {runner}: run `chown -R {runner} {}` or run hfwasm as {owner})",
            existing.display(),
            dir.display()
        )
    } else if mode & 0o200 == 0 {
        format!(
            " ({} is read-only (mode {mode:04o}) for its owner {runner}: run `chmod u+w {}`)",
            existing.display(),
            existing.display()
        )
    } else {
        String::new()
    }
}

/// [`hint`] when `e` says access was refused or the file system is read-only, else empty.
pub fn hint_for(e: &std::io::Error, path: &Path) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => hint(path),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_directory_is_explained() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("dir");
        let sub = d.path().join("ro");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let h = hint(&sub.join("state/hfwasm.sqlite"));
        assert!(h.contains("read-only") && h.contains("chmod u+w") && h.contains("0555"), "{h}");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
        assert_eq!(hint(&sub.join("x")), "");
    }

    #[test]
    fn another_users_directory_names_both_users() {
        // `/` belongs to root; as root there is nothing to say, as anyone else the hint names root.
        let h = hint(Path::new("/hfwasm-test-nonexistent/x"));
        if running_user() == "root" {
            assert_eq!(h, "");
        } else {
            assert!(h.contains("owned by root") && h.contains("chown -R"), "{h}");
        }
    }
}
