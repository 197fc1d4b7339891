//! An S3-compatible bucket as a target, through the `object_store` crate.
//!
//! A `PUT` of a whole object is atomic and durable when S3 answers, which
//! is all the format needs; no conditional request is used (Garage ignores
//! them). The client is asynchronous: the target owns a small runtime and
//! each call blocks the calling thread on it, so the backup code stays
//! synchronous like the engine, and its upload threads make requests
//! concurrent.

use super::{check_folder, check_key, Target};
use crate::error::{Error, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::fmt;

/// Credentials for an S3 target. They come from the environment or a file,
/// never from the command line or a URL, and are never printed: `Debug`
/// shows the key id only.
#[derive(Clone)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .finish()
    }
}

/// Environment variable naming a credentials file.
pub const CREDENTIALS_FILE_VAR: &str = "COWVOL_S3_CREDENTIALS_FILE";

impl S3Credentials {
    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, else from the
    /// file that `COWVOL_S3_CREDENTIALS_FILE` names: lines `key = value`
    /// with keys `access_key_id` and `secret_access_key` (`#` starts a
    /// comment).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when neither is set or the file lacks a
    /// key; [`Error::Target`] when the file cannot be read.
    pub fn from_env() -> Result<S3Credentials> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(S3Credentials { access_key_id: id, secret_access_key: secret });
        }
        let Some(path) = var(CREDENTIALS_FILE_VAR) else {
            return Err(Error::invalid(format!(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or {CREDENTIALS_FILE_VAR} to a file"
            )));
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Target {
            target: path.clone(),
            op: "read",
            key: "credentials".into(),
            detail: e.to_string(),
        })?;
        S3Credentials::parse(&text).map_err(|what| Error::invalid(format!("credentials file {path}: {what}")))
    }

    /// Reads the `key = value` form of a credentials file.
    fn parse(text: &str) -> std::result::Result<S3Credentials, String> {
        let mut id = None;
        let mut secret = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=').ok_or_else(|| "a line is not `key = value`".to_string())?;
            match k.trim() {
                "access_key_id" => id = Some(v.trim().to_string()),
                "secret_access_key" => secret = Some(v.trim().to_string()),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials { access_key_id, secret_access_key }),
            _ => Err("access_key_id and secret_access_key are both needed".into()),
        }
    }
}

/// A bucket (and optional key prefix) on an S3-compatible server.
pub struct S3Target {
    client: AmazonS3,
    prefix: String,
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl fmt::Debug for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Target").field("url", &self.url).finish_non_exhaustive()
    }
}

impl S3Target {
    /// Opens `BUCKET[/PREFIX][?endpoint=URL&region=NAME]` (an `s3://` URL
    /// without its scheme). Without `endpoint`, `AWS_ENDPOINT_URL` is used
    /// if set, else AWS itself; the region defaults to `AWS_REGION`, else
    /// `us-east-1`. No request is made here.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed location or one that
    /// carries credentials.
    pub fn open(location: &str, creds: S3Credentials) -> Result<S3Target> {
        let (path, query) = location.split_once('?').unwrap_or((location, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() || bucket.contains('@') || bucket.contains(':') {
            return Err(Error::invalid(format!(
                "s3://{location} does not name a bucket (s3://BUCKET[/PREFIX]); credentials never go in the URL"
            )));
        }
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty());
        let mut region = std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.to_string()),
                Some(("region", v)) => region = Some(v.to_string()),
                _ => return Err(Error::invalid(format!("s3://{location}: unknown parameter {pair:?}"))),
            }
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region.unwrap_or_else(|| "us-east-1".into()))
            .with_access_key_id(creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key);
        if let Some(e) = &endpoint {
            // A self-hosted server (Garage, radosgw) answers on one host
            // name: buckets go in the path, not in the host.
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://")).with_virtual_hosted_style_request(false);
        }
        let url = format!("s3://{location}");
        let client = b.build().map_err(|e| Error::invalid(format!("{url}: {e}")))?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
                Error::Target { target: url.clone(), op: "start", key: "runtime".into(), detail: e.to_string() }
            })?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(S3Target { client, prefix, url, runtime })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn fail(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::not_found(format!("{key} on {}", self.url)),
            e => Error::Target { target: self.url.clone(), op, key: key.to_string(), detail: e.to_string() },
        }
    }
}

impl Target for S3Target {
    fn url(&self) -> &str {
        &self.url
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_key(key)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.runtime.block_on(self.client.put(&self.path(key), payload)).map_err(|e| self.fail("put", key, e))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        let got = self.runtime.block_on(async { self.client.get(&self.path(key)).await?.bytes().await });
        got.map(|b| b.to_vec()).map_err(|e| self.fail("get", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_key(key)?;
        let got = self.runtime.block_on(self.client.get_range(&self.path(key), offset..offset + len));
        let bytes = got.map_err(|e| self.fail("get", key, e))?;
        if bytes.len() as u64 != len {
            return Err(Error::Damaged {
                target: self.url.clone(),
                key: key.to_string(),
                detail: format!("shorter than {} bytes", offset + len),
            });
        }
        Ok(bytes.to_vec())
    }

    fn list(&self, folder: &str) -> Result<Vec<String>> {
        check_folder(folder)?;
        let prefix = self.path(folder);
        let metas = self.runtime.block_on(self.client.list(Some(&prefix)).try_collect::<Vec<_>>());
        let metas = metas.map_err(|e| self.fail("list", folder, e))?;
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        Ok(metas
            .into_iter()
            .map(|m| m.location.as_ref()[strip..].to_string())
            .filter(|k| check_key(k).is_ok())
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self.runtime.block_on(self.client.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_form() {
        let c = S3Credentials::parse("# garage key\naccess_key_id = GK12\nsecret_access_key = s3cr3t\n").unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("GK12", "s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(S3Credentials::parse("access_key_id = GK12\n").is_err());
        assert!(S3Credentials::parse("password = x\n").is_err());
    }

    #[test]
    fn urls_name_a_bucket_and_never_credentials() {
        let creds = S3Credentials { access_key_id: "a".into(), secret_access_key: "b".into() };
        let t = S3Target::open("backups/team-a?endpoint=http://127.0.0.1:3900&region=garage", creds.clone()).unwrap();
        assert_eq!(t.path("packs/x").as_ref(), "team-a/packs/x");
        assert!(S3Target::open("key:secret@backups", creds.clone()).is_err());
        assert!(S3Target::open("backups?password=x", creds).is_err());
    }
}
