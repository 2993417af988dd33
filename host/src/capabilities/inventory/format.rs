//! The on-prem inventory file: one host per line, validated with errors that name the file
//! and line.
//!
//! ```text
//! # NAME IP [key=value ...]          (or NAME:IP, as in the seed's servers.txt)
//! defaults ncpus=4 nram=16384 power_on="ssh {ip} systemctl start lsf"
//! compute-01 10.0.0.11 template=small
//! compute-02:10.0.0.12 ncpus=8 nram=32768 type=X86_64 power_off="ssh {ip} poweroff"
//! ```
//! `defaults` lines set keys for every host after them. `template`, `power_on` and
//! `power_off` are settings; every other key is a HostFactory attribute; `ncpus` and
//! `nram` (MB) are required. `{name}` and `{ip}` in commands are replaced per host.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One host of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryHost {
    /// Host name.
    pub name: String,
    /// Address.
    pub ip: String,
    /// Assigned template.
    pub template: Option<String>,
    /// Attributes in file order (`ncpus`, `nram` always present).
    pub attributes: Vec<(String, String)>,
    /// Command that brings the host into service, placeholders expanded.
    pub power_on: Option<String>,
    /// Command that takes the host out of service, placeholders expanded.
    pub power_off: Option<String>,
    /// Line number in the file (1-based).
    pub line: usize,
}

/// A parsed inventory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The file it came from.
    pub file: PathBuf,
    /// Hosts in file order.
    pub hosts: Vec<InventoryHost>,
}

/// A broken inventory: the file, the line (0 = the file as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), if *line > 0 { format!(" line {line}") } else { String::new() })]
pub struct InventoryError {
    /// The inventory file.
    pub file: PathBuf,
    /// 1-based line, 0 for the whole file.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Inventory {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, InventoryError> {
        let text = crate::limits::read_capped(file, crate::limits::MAX_CONFIG_BYTES).map_err(|e| InventoryError {
            file: file.to_path_buf(),
            line: 0,
            message: format!("cannot read the inventory ({e}); create it with one host per line: NAME IP ncpus=N nram=MB"),
        })?;
        Self::parse(file, &text)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&InventoryHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Parses inventory text; `file` is only used in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Self, InventoryError> {
        // Until one line has read as an inventory line, an error quotes nothing of the file:
        // a setting pointed at another file (`/etc/passwd`) must not echo its content into
        // HostFactory's answer or the log.
        let parsed_any = std::cell::Cell::new(false);
        // This line's name and address read as a host's: its other errors may quote it.
        let line_recognized = std::cell::Cell::new(false);
        let err = |line: usize, message: String| InventoryError {
            file: file.to_path_buf(),
            line,
            message: if line == 0 || parsed_any.get() || line_recognized.get() {
                message
            } else {
                "is not an inventory line, and none before it was either: is this the inventory file? Expected `NAME IP [key=value ...]`, `NAME:IP [key=value ...]` or `defaults key=value ...`, one host per line".into()
            },
        };
        let mut names: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut ips: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut defaults: BTreeMap<String, String> = BTreeMap::new();
        let mut hosts: Vec<InventoryHost> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            line_recognized.set(false);
            let tokens = tokenize(raw).map_err(|m| err(line, m))?;
            let Some(first) = tokens.first() else { continue };
            if first == "defaults" {
                for t in &tokens[1..] {
                    let (k, v) = key_value(t).ok_or_else(|| err(line, format!("`defaults` takes key=value pairs, found `{t}`")))?;
                    check_key(k).map_err(|m| err(line, m))?;
                    defaults.insert(k.to_string(), v.to_string());
                }
                parsed_any.set(true);
                continue;
            }
            let (name, ip, rest) = match first.split_once(':') {
                Some((n, i)) if !first.contains('=') => (n.to_string(), i.to_string(), &tokens[1..]),
                _ => {
                    let ip = tokens.get(1).filter(|t| !t.contains('=')).ok_or_else(|| {
                        err(
                            line,
                            format!(
                                "expected `NAME IP [key=value ...]` or `NAME:IP [key=value ...]`, found `{}`",
                                raw.trim()
                            ),
                        )
                    })?;
                    (first.clone(), ip.clone(), &tokens[2..])
                }
            };
            if name.is_empty() || name.len() > 253 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
                return Err(err(
                    line,
                    format!("host name `{name}` is not a valid host name (letters, digits, '.', '-', '_')"),
                ));
            }
            if ip.parse::<IpAddr>().is_err() {
                return Err(err(line, format!("`{ip}` is not an IP address (host `{name}`)")));
            }
            line_recognized.set(true);
            if let Some(&prev) = names.get(&name) {
                return Err(err(
                    line,
                    format!("host `{name}` is listed twice (first on line {})", hosts[prev].line),
                ));
            }
            if let Some(&prev) = ips.get(&ip) {
                return Err(err(
                    line,
                    format!(
                        "address {ip} of `{name}` is already used by `{}` on line {}",
                        hosts[prev].name, hosts[prev].line
                    ),
                ));
            }
            let mut keys = defaults.clone();
            let mut order: Vec<String> = Vec::new();
            for t in rest {
                let (k, v) = key_value(t).ok_or_else(|| err(line, format!("expected key=value after the address, found `{t}`")))?;
                check_key(k).map_err(|m| err(line, m))?;
                keys.insert(k.to_string(), v.to_string());
                order.push(k.to_string());
            }
            let expand = |cmd: &str| cmd.replace("{name}", &name).replace("{ip}", &ip);
            let template = keys.remove("template");
            let power_on = keys.remove("power_on").map(|c| expand(&c));
            let power_off = keys.remove("power_off").map(|c| expand(&c));
            for required in ["ncpus", "nram"] {
                match keys.get(required) {
                    None => {
                        return Err(err(
                            line,
                            format!("host `{name}` has no {required}= (add it to the line or to a `defaults` line)"),
                        ));
                    }
                    Some(v) if v.parse::<u64>().map_or(true, |n| n == 0) => {
                        return Err(err(line, format!("host `{name}`: {required}={v} must be a positive whole number")));
                    }
                    Some(_) => {}
                }
            }
            // File order: defaults first, then the host's own keys as written.
            let mut attributes: Vec<(String, String)> = Vec::new();
            for (k, v) in &keys {
                if !order.contains(k) {
                    attributes.push((k.clone(), v.clone()));
                }
            }
            for k in &order {
                if let Some(v) = keys.get(k)
                    && !attributes.iter().any(|(a, _)| a == k)
                {
                    attributes.push((k.clone(), v.clone()));
                }
            }
            names.insert(name.clone(), hosts.len());
            ips.insert(ip.clone(), hosts.len());
            parsed_any.set(true);
            hosts.push(InventoryHost {
                name,
                ip,
                template,
                attributes,
                power_on,
                power_off,
                line,
            });
        }
        if hosts.is_empty() {
            return Err(err(
                0,
                "the inventory lists no hosts; add lines like `compute-01 10.0.0.11 ncpus=4 nram=16384`".into(),
            ));
        }
        Ok(Self {
            file: file.to_path_buf(),
            hosts,
        })
    }
}

fn key_value(t: &str) -> Option<(&str, &str)> {
    t.split_once('=').filter(|(k, _)| !k.is_empty())
}

fn check_key(k: &str) -> Result<(), String> {
    let ok =
        k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{k}` is not a valid key (letters, digits, '_')"))
    }
}

/// Splits a line into tokens: whitespace-separated, `"..."`/`'...'` quoting, `#` comments.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None => match c {
                '"' | '\'' => {
                    quote = Some(c);
                    in_token = true;
                }
                '#' if !in_token => break,
                c if c.is_whitespace() => {
                    if in_token {
                        tokens.push(std::mem::take(&mut cur));
                        in_token = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_token = true;
                }
            },
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} quote"));
    }
    if in_token {
        tokens.push(cur);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(Path::new("inv.txt"), text)
    }

    #[test]
    fn parses_both_styles_defaults_and_commands() {
        let inv = parse(
            "# pool\ndefaults ncpus=4 nram=8192 power_on=\"ssh {ip} systemctl start lsf\"\n\
             a 10.0.0.1 template=small\nb:10.0.0.2 ncpus=8 gpu=1 # big one\n",
        )
        .expect("valid");
        assert_eq!(inv.hosts.len(), 2);
        let a = &inv.hosts[0];
        assert_eq!(
            (a.name.as_str(), a.ip.as_str(), a.template.as_deref()),
            ("a", "10.0.0.1", Some("small"))
        );
        assert_eq!(a.power_on.as_deref(), Some("ssh 10.0.0.1 systemctl start lsf"));
        let b = &inv.hosts[1];
        assert_eq!(
            b.attributes,
            vec![
                ("nram".into(), "8192".into()),
                ("ncpus".into(), "8".into()),
                ("gpu".into(), "1".into())
            ]
        );
        assert_eq!(b.line, 4);
    }

    #[test]
    fn broken_lines_name_file_and_line() {
        for (text, line, needle) in [
            ("a 10.0.0.1 ncpus=1 nram=1\nb notanip ncpus=1 nram=1\n", 2, "not an IP"),
            ("a 10.0.0.1 ncpus=1\n", 1, "no nram="),
            ("a 10.0.0.1 ncpus=x nram=1\n", 1, "positive whole number"),
            ("a 10.0.0.1 ncpus=1 nram=1\na 10.0.0.2 ncpus=1 nram=1\n", 2, "listed twice"),
            (
                "a 10.0.0.1 ncpus=1 nram=1\nb 10.0.0.2 ncpus=1 nram=1 power_on=\"ssh\n",
                2,
                "unclosed",
            ),
            ("a 10.0.0.1 ncpus=1 nram=1\njustaname\n", 2, "expected `NAME IP"),
            // Another file named as the inventory: nothing of it is quoted.
            ("root:x:0:0:root:/root:/bin/bash\n", 1, "is this the inventory file?"),
            ("secret-token-1234\n", 1, "is this the inventory file?"),
            ("# nothing\n", 0, "no hosts"),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(!e.to_string().contains("root:x") && !e.to_string().contains("secret-token"), "{e}");
            assert!(e.to_string().contains(needle) && e.to_string().starts_with("inv.txt"), "{e}");
        }
    }
}
