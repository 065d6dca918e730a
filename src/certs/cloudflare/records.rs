//! Zones and DNS records as the API returns them, and TXT content quoting.

use super::*;

/// A Cloudflare zone (a domain managed in the account).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Zone {
    pub id: String,
    /// The zone's apex name, lowercase ASCII (e.g. `example.com`).
    pub name: String,
}

/// The id of a DNS record inside its zone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordId(pub String);

impl RecordId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS record as listed by Cloudflare (only the fields we use).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DnsRecord {
    pub id: RecordId,
    #[serde(rename = "type", default)]
    pub record_type: String,
    #[serde(default)]
    pub name: String,
    /// The content as Cloudflare stores it; for TXT records usually quoted (see [`DnsRecord::txt_value`]).
    #[serde(default)]
    pub content: String,
    #[serde(default, deserialize_with = "null_as_false")]
    pub proxied: bool,
}

impl DnsRecord {
    /// The value of a TXT record with its RFC 1035 quoting removed (`"a" "b"` → `ab`); content
    /// that is not quoted is returned as it is.
    pub fn txt_value(&self) -> String {
        unquote_txt(&self.content)
    }
}

pub(super) fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// A TXT value in the quoted form Cloudflare documents for TXT content (`"value"`), escaping `"`
/// and `\`. A value that is already quoted is kept.
pub fn quote_txt(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The inverse of [`quote_txt`], also joining several quoted strings (`"a" "b"` → `ab`) and
/// decoding `\DDD` escapes. Content that does not start with a quote is returned unchanged.
pub fn unquote_txt(content: &str) -> String {
    let trimmed = content.trim();
    if !trimmed.starts_with('"') {
        return content.to_string();
    }
    let mut out: Vec<u8> = Vec::with_capacity(trimmed.len());
    let bytes = trimmed.as_bytes();
    let mut i = 0;
    let mut inside = false;
    while i < bytes.len() {
        let b = bytes[i];
        if !inside {
            if b == b'"' {
                inside = true;
            } else if !b.is_ascii_whitespace() {
                out.push(b);
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                inside = false;
                i += 1;
            }
            b'\\' if i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit) => {
                let n = (bytes[i + 1] - b'0') as u16 * 100
                    + (bytes[i + 2] - b'0') as u16 * 10
                    + (bytes[i + 3] - b'0') as u16;
                out.push(n.min(255) as u8);
                i += 4;
            }
            b'\\' if i + 1 < bytes.len() => {
                out.push(bytes[i + 1]);
                i += 2;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
