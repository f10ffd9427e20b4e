//! Bearer tokens for the authentication tests: a token file written into the harness's data
//! directory, a server started with `--auth-tokens`, and clients that send a token.

use std::path::{Path, PathBuf};

use super::{Client, Harness, Server, origin::Origin, sha256};

/// A token the test hands out: the entry written to the file and the secret clients send.
#[derive(Clone, Copy, Debug)]
pub struct Token {
    /// The entry's `name`.
    pub name: &'static str,
    /// Its `tenant`.
    pub tenant: &'static str,
    /// Its `role`: `reader`, `user` or `admin`.
    pub role: &'static str,
    /// The token itself; the file holds only its SHA-256.
    pub secret: &'static str,
}

/// A user of tenant `media`, the tenant most multi-tenant tests create in.
pub const MEDIA: Token = Token {
    name: "ingest-worker",
    tenant: "media",
    role: "user",
    secret: "media-secret-1",
};

/// A user of tenant `ml`: the other tenant, which must never see `media`'s downloads.
pub const ML: Token = Token {
    name: "trainer",
    tenant: "ml",
    role: "user",
    secret: "ml-secret-2",
};

/// The file name the token file gets inside the data directory.
pub const TOKEN_FILE: &str = "tokens.toml";

/// The token file's text for `tokens`.
pub fn token_file(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| {
            format!(
                "[[tokens]]\nname = \"{}\"\ntenant = \"{}\"\nrole = \"{}\"\ntoken_sha256 = \"{}\"\n\n",
                t.name,
                t.tenant,
                t.role,
                sha256(t.secret.as_bytes())
            )
        })
        .collect()
}

/// Writes the token file for `tokens` into `data_dir` (replacing any) and returns its path.
pub fn write_token_file(data_dir: &Path, tokens: &[Token]) -> PathBuf {
    std::fs::create_dir_all(data_dir).unwrap();
    let path = data_dir.join(TOKEN_FILE);
    std::fs::write(&path, token_file(tokens)).unwrap();
    path
}

impl Harness {
    /// Starts `transferd --auth-tokens FILE FLAGS...` with a token file of `tokens` in a fresh
    /// data directory. [`Harness::client`], and so every harness helper, sends `client`'s token;
    /// [`Server::client_as`] makes clients for the others.
    pub async fn start_with_tokens(tokens: &[Token], client: &Token, flags: &[&str]) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let file = write_token_file(dir.path(), tokens);
        let mut all = vec!["--auth-tokens", file.to_str().unwrap()];
        all.extend_from_slice(flags);
        let server = Server::start(dir.path(), &all).await;
        let mut h = Harness::assemble(server, Origin::start().await, Some(dir)).await;
        h.client = h.server.client_as(client).await;
        h
    }

    /// Rewrites the server's token file with `tokens` (it takes effect on SIGHUP).
    pub fn rewrite_tokens(&self, tokens: &[Token]) {
        write_token_file(&self.server.data_dir, tokens);
    }
}

impl Server {
    /// A client on a connection of its own that sends `token` on every call.
    pub async fn client_as(&self, token: &Token) -> Client {
        self.client_with_token(token.secret).await
    }

    /// A client that sends `secret` as its bearer token on every call.
    pub async fn client_with_token(&self, secret: &str) -> Client {
        Client::from_channel_with_token(self.channel().await, secret).expect("the token is ASCII")
    }
}
