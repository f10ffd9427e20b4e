//! The token file (`--auth-tokens`): which bearer tokens exist and the `Caller` each one
//! becomes. The file holds only SHA-256 digests of the tokens, so reading it reveals no secret.
//! It is validated strictly when loaded (unknown keys, bad digests, duplicate names or digests,
//! tenant names that could not be directory names), and [`TokenFile::reload`] swaps in a new set
//! atomically, keeping the old one when the new file is bad.
//!
//! A presented token is hashed and its digest compared with every entry in constant time, so
//! neither the answer's timing nor its content tells a caller how close a guess was.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::{Caller, Role, Tenant};

/// Bytes of randomness in a token made by [`generate_token`]: 256 bits, beyond any guessing.
pub const GENERATED_TOKEN_BYTES: usize = 32;

/// Longest token name: it appears in audit lines and error messages, where a name is a label,
/// not a paragraph.
const MAX_NAME_CHARS: usize = 64;

/// Longest tenant name: a tenant becomes a directory name under the download directory, and
/// 63 keeps it well inside every filesystem's limit and a DNS label's, should it ever be one.
const MAX_TENANT_CHARS: usize = 63;

/// A token file that is wrong, and where.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TokenFileError {
    /// The file.
    pub path: PathBuf,
    /// The line the problem is on, when it is on one.
    pub line: Option<usize>,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// The token file, loaded, and re-readable while the server runs.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// Replaced whole on reload: a call sees either the old set or the new one, never a mix.
    /// A std lock, held only to clone the `Arc`, never across an await.
    current: RwLock<Arc<Tokens>>,
}

impl TokenFile {
    /// Reads and validates the token file at `path`.
    pub fn load(path: &Path) -> Result<TokenFile, TokenFileError> {
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(Tokens::read(path)?)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.snapshot().entries.len()
    }

    /// Always false: a token file without tokens is refused when loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again and, if it is valid, makes its tokens the ones in force: a token
    /// removed from the file fails on its next call. A bad file changes nothing; the error says
    /// why. Returns how many tokens are now in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let tokens = Arc::new(Tokens::read(&self.path)?);
        let count = tokens.entries.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        Ok(count)
    }

    /// The caller `token` authenticates as, if it is in force.
    pub(crate) fn caller_for(&self, token: &str) -> Option<Caller> {
        self.snapshot().caller_for(token)
    }

    fn snapshot(&self) -> Arc<Tokens> {
        // The only writer swaps a whole `Arc`, so a poisoned lock still holds a complete set.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The hex SHA-256 of `token`, as `token_sha256` in the token file spells it.
pub fn token_sha256(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A new random token: [`GENERATED_TOKEN_BYTES`] bytes from the operating system's random
/// source, as hex.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    // The kernel's CSPRNG, read directly: no crate needed for 32 bytes.
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Whether `token` can be sent as `authorization: Bearer <token>` metadata: at least one
/// character, printable ASCII, no spaces. A token that could never be sent is refused before
/// anyone pastes its hash into a file.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token must be printable ASCII without spaces");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One set of tokens, as read from the file.
#[derive(Debug)]
struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

impl Tokens {
    fn read(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read the token file: {e}"),
        })?;
        Tokens::parse(&text).map_err(|(line, message)| TokenFileError {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses and validates a token file's text; an error carries its line, if it has one.
    fn parse(text: &str) -> Result<Tokens, (Option<usize>, String)> {
        let line_of = |offset: usize| Some(1 + text[..offset].matches('\n').count());
        let file: FileFormat = toml::from_str(text).map_err(|e| {
            let line = e.span().and_then(|s| line_of(s.start));
            (line, e.message().trim_end().to_owned())
        })?;
        if file.tokens.is_empty() {
            return Err((
                None,
                "the file has no [[tokens]]; add at least one (`transferd hash-token` makes one)"
                    .into(),
            ));
        }
        let mut names = HashMap::new();
        let mut digests = HashMap::new();
        let mut limits: BTreeMap<&str, (Option<u64>, &str)> = BTreeMap::new();
        for entry in &file.tokens {
            let line = line_of(entry.name.span().start);
            let name = entry.name.get_ref().0.as_str();
            if let Some(first) = names.insert(name, line) {
                let first = first.unwrap_or_default();
                return Err((
                    line,
                    format!(
                        "token name `{name}` is already used on line {first}; give every token its own name"
                    ),
                ));
            }
            let digest = entry.token_sha256.get_ref();
            if let Some(other) = digests.insert(digest.0, name) {
                return Err((
                    line,
                    format!(
                        "token `{name}` has the same token_sha256 as `{other}`; each token must be different"
                    ),
                ));
            }
            let tenant = entry.tenant.0.as_str();
            let limit = entry.max_live_downloads;
            let earlier = limits.insert(tenant, (limit, name));
            if let Some((other_limit, other)) = earlier.filter(|(l, _)| *l != limit) {
                return Err((
                    line,
                    format!(
                        "tenant `{tenant}` has max_live_downloads {} on `{other}` but {} on `{name}`; give every token of a tenant the same limit",
                        show_limit(other_limit),
                        show_limit(limit)
                    ),
                ));
            }
        }
        let entries = file.tokens.into_iter().map(Entry::from).collect();
        Ok(Tokens { entries })
    }

    fn caller_for(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, and each comparison takes the same time whatever the bytes,
        // so timing says nothing about which digest came close. Digests are unique, so at most
        // one matches.
        let mut found = None;
        for entry in &self.entries {
            if digests_equal(&entry.digest, &presented) {
                found = Some(&entry.caller);
            }
        }
        found.cloned()
    }
}

fn show_limit(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unset".to_owned(), |n| n.to_string())
}

/// Compares two digests without stopping at the first difference.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The file as written; every check that needs no other entry happens while deserializing, so
/// toml reports it with its line and column.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    tokens: Vec<EntryFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFormat {
    name: Spanned<TokenName>,
    tenant: TenantName,
    role: RoleName,
    token_sha256: Spanned<Sha256Hex>,
    #[serde(default, deserialize_with = "positive")]
    max_live_downloads: Option<u64>,
}

impl From<EntryFormat> for Entry {
    fn from(entry: EntryFormat) -> Entry {
        let EntryFormat {
            name,
            tenant,
            role,
            token_sha256,
            max_live_downloads,
        } = entry;
        Entry {
            digest: token_sha256.into_inner().0,
            caller: Caller {
                name: Arc::from(name.into_inner().0.as_str()),
                tenant: Tenant::new(&tenant.0),
                role: role.into(),
                max_live_downloads,
            },
        }
    }
}

/// A token's name: a label for audit lines.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct TokenName(String);

impl TryFrom<String> for TokenName {
    type Error = String;
    fn try_from(name: String) -> Result<TokenName, String> {
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("a token name has 1 to {MAX_NAME_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("a token name cannot hold control characters".into());
        }
        Ok(TokenName(name))
    }
}

/// A tenant name, safe as a directory name.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct TenantName(String);

impl TryFrom<String> for TenantName {
    type Error = String;
    fn try_from(name: String) -> Result<TenantName, String> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
        if !first_ok || !rest_ok || name.len() > MAX_TENANT_CHARS {
            return Err(format!(
                "tenant `{}` is not a valid tenant name: use 1 to {MAX_TENANT_CHARS} of a-z, 0-9, `_` and `-`, starting with a letter or digit (it becomes a directory name)",
                name.escape_debug()
            ));
        }
        Ok(TenantName(name))
    }
}

/// A role as the file spells it.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Reader,
    User,
    Admin,
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Role {
        match role {
            RoleName::Reader => Role::Reader,
            RoleName::User => Role::User,
            RoleName::Admin => Role::Admin,
        }
    }
}

/// A SHA-256 digest written as 64 hex digits.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Sha256Hex([u8; 32]);

impl TryFrom<String> for Sha256Hex {
    type Error = String;
    fn try_from(hex: String) -> Result<Sha256Hex, String> {
        let wrong = || {
            "token_sha256 must be 64 hex digits, the SHA-256 of the token \
             (`transferd hash-token TOKEN` prints it)"
                .to_owned()
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(wrong());
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| wrong())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| wrong())?;
        }
        Ok(Sha256Hex(digest))
    }
}

fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "max_live_downloads must be at least 1; leave it out for no limit",
        )),
        n => Ok(Some(n)),
    }
}

#[cfg(test)]
mod tests;
