//! An Azure SDK authentication file, as IBM's Azure plugin reads `AZURE_CREDENTIAL_FILE`:
//! the Java SDK's properties format (`client=`, `key=`, `tenant=`, `subscription=`,
//! `authURL=`, `baseURL=`, `managementURI=`, with `\:` escapes) or the JSON of
//! `az ad sp create-for-rbac --sdk-auth` (`clientId`, `clientSecret`, `tenantId`,
//! `subscriptionId`, `activeDirectoryEndpointUrl`, `resourceManagerEndpointUrl`). The host
//! reads it; the secret never leaves the host.

use std::path::Path;

/// What the file says.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureAuthFile {
    /// The service principal's application (client) id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The directory (tenant) id.
    pub tenant: String,
    /// The subscription, when the file names one.
    pub subscription: Option<String>,
    /// The Entra ID authority (`https://login.microsoftonline.com/`).
    pub authority: String,
    /// The Resource Manager endpoint (`https://management.azure.com/`).
    pub arm_endpoint: String,
}

impl std::fmt::Debug for AzureAuthFile {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureAuthFile")
            .field("client_id", &self.client_id)
            .field("tenant", &self.tenant)
            .field("subscription", &self.subscription)
            .field("authority", &self.authority)
            .field("arm_endpoint", &self.arm_endpoint)
            .finish_non_exhaustive()
    }
}

/// Azure's public cloud authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// Azure's public cloud Resource Manager endpoint.
pub const DEFAULT_ARM: &str = "https://management.azure.com/";

impl AzureAuthFile {
    /// Reads `file` (either format). The error names the file and what is missing, never a value.
    pub fn read(file: &Path) -> Result<Self, String> {
        let text = crate::limits::read_capped(file, 64 << 10).map_err(|e| format!("{}: {e}", file.display()))?;
        Self::parse(&text).map_err(|m| format!("{}: {m}", file.display()))
    }

    /// [`AzureAuthFile::read`] on the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Both formats as (key, value) pairs.
        let pairs: Vec<(String, String)> = if text.trim_start().starts_with('{') {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
            v.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_string()))).collect()
        } else {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
                .filter_map(|l| {
                    let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
                    // Java properties escape ':' and '=' with a backslash.
                    Some((k.trim().to_string(), v.trim().replace("\\:", ":").replace("\\=", "=")))
                })
                .collect()
        };
        let get = |keys: &[&str]| keys.iter().find_map(|k| pairs.iter().find(|(p, _)| p == k).map(|(_, v)| v.clone()));
        let need = |keys: &[&str]| {
            get(keys)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("has no `{}`", keys.join("` or `")))
        };
        let slash = |s: String| if s.ends_with('/') { s } else { format!("{s}/") };
        Ok(Self {
            client_id: need(&["client", "clientId"])?,
            client_secret: need(&["key", "clientSecret"])?,
            tenant: need(&["tenant", "tenantId"])?,
            subscription: get(&["subscription", "subscriptionId"]).filter(|s| !s.is_empty()),
            authority: slash(get(&["authURL", "activeDirectoryEndpointUrl"]).unwrap_or_else(|| DEFAULT_AUTHORITY.into())),
            arm_endpoint: slash(get(&["baseURL", "resourceManagerEndpointUrl"]).unwrap_or_else(|| DEFAULT_ARM.into())),
        })
    }

    /// The v2.0 token endpoint of the tenant.
    pub fn token_url(&self) -> String {
        format!("{}{}/oauth2/v2.0/token", self.authority, self.tenant)
    }

    /// The scope of a Resource Manager token (`https://management.azure.com/.default`).
    pub fn scope(&self) -> String {
        format!("{}.default", self.arm_endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_java_sdk_properties_format_reads_with_its_escapes() {
        let f = AzureAuthFile::parse(
            "# IBM's AZURE_CREDENTIAL_FILE\nsubscription=sub-1\nclient=app-1\nkey=s3cr=t\ntenant=ten-1\n\
             managementURI=https\\://management.core.windows.net/\nbaseURL=https\\://management.azure.com/\n\
             authURL=https\\://login.windows.net/\ngraphURL=https\\://graph.windows.net/\n",
        )
        .expect("properties");
        assert_eq!(
            (f.client_id.as_str(), f.client_secret.as_str(), f.tenant.as_str()),
            ("app-1", "s3cr=t", "ten-1")
        );
        assert_eq!(f.subscription.as_deref(), Some("sub-1"));
        assert_eq!(f.token_url(), "https://login.windows.net/ten-1/oauth2/v2.0/token");
        assert_eq!(f.scope(), "https://management.azure.com/.default");
        assert!(!format!("{f:?}").contains("s3cr"), "Debug never shows the secret");
    }

    #[test]
    fn the_sdk_auth_json_reads_and_a_missing_key_is_named() {
        let f = AzureAuthFile::parse(r#"{"clientId": "a", "clientSecret": "b", "tenantId": "t", "subscriptionId": "s"}"#).expect("json");
        assert_eq!((f.authority.as_str(), f.arm_endpoint.as_str()), (DEFAULT_AUTHORITY, DEFAULT_ARM));
        let e = AzureAuthFile::parse("client=a\ntenant=t\n").expect_err("no key");
        assert!(e.contains("`key` or `clientSecret`"), "{e}");
    }
}
