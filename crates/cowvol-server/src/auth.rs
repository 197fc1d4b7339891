//! Bearer tokens: who is calling and what they may see.
//!
//! The tokens file has one `TOKEN OWNER [admin]` a line (`#` starts a
//! comment). Each request sees only what its owner created; an admin sees
//! everything.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The owner recorded on what this caller creates.
    pub owner: String,
    /// Sees and acts on every owner's objects.
    pub admin: bool,
}

impl Caller {
    /// May this caller see an object owned by `owner`?
    pub fn owns(&self, owner: &str) -> bool {
        self.admin || self.owner == owner
    }
}

/// The known tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Caller)>,
}

/// Why a tokens file was refused.
#[derive(Debug)]
pub struct TokensError(pub String);

impl std::fmt::Display for TokensError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokensError {}

impl Tokens {
    /// One admin token (used when no tokens file is given).
    pub fn single_admin(token: impl Into<String>, owner: impl Into<String>) -> Self {
        Tokens { entries: vec![(token.into().into_bytes(), Caller { owner: owner.into(), admin: true })] }
    }

    /// Reads a tokens file, refusing one that group or others can read:
    /// the tokens are credentials.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |msg: String| TokensError(format!("tokens file {}: {msg}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(fail(format!("mode {:o} lets group or others read it; run chmod 600 on it", mode & 0o777)));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&text).map_err(fail)
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let admin = match words.as_slice() {
                [_, _] => false,
                [_, _, "admin"] => true,
                _ => return Err(format!("line {}: expected `TOKEN OWNER [admin]`", n + 1)),
            };
            if words[0].len() < 16 {
                return Err(format!("line {}: a token must be at least 16 characters", n + 1));
            }
            entries.push((words[0].as_bytes().to_vec(), Caller { owner: words[1].to_string(), admin }));
        }
        if entries.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Tokens { entries })
    }

    /// The caller a presented token belongs to. Every entry is compared, in
    /// constant time, so timing does not reveal how much of a token matched
    /// or which entry did.
    pub fn lookup(&self, presented: &[u8]) -> Option<Caller> {
        let mut found = None;
        for (token, caller) in &self.entries {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// Middleware: resolves the bearer token into a [`Caller`] request
/// extension, or answers 401.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::to_vec);
    let caller = presented.and_then(|p| tokens.lookup(p.trim_ascii())).ok_or_else(ApiError::unauthorized)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines_parse_and_look_up() {
        let t = Tokens::parse("# comment\naaaaaaaaaaaaaaaa alice\nbbbbbbbbbbbbbbbb root admin\n\n").unwrap();
        assert_eq!(t.lookup(b"aaaaaaaaaaaaaaaa"), Some(Caller { owner: "alice".into(), admin: false }));
        assert_eq!(t.lookup(b"bbbbbbbbbbbbbbbb"), Some(Caller { owner: "root".into(), admin: true }));
        assert_eq!(t.lookup(b"aaaaaaaaaaaaaaa"), None);
        assert_eq!(t.lookup(b""), None);
        assert!(Tokens::parse("short alice").is_err());
        assert!(Tokens::parse("aaaaaaaaaaaaaaaa alice root").is_err());
        assert!(Tokens::parse("").is_err());
    }
}
