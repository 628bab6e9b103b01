//! Secured servers for the TLS and authentication suites, everything made at test time and
//! nothing committed:
//!
//! - [`Pki`]: a certificate authority of its own in a temporary directory (removed when the
//!   `Pki` is dropped), issuing server and client certificates ([`Issued`]).
//! - [`start_postgres_tls`]: PostgreSQL serving TLS with that server certificate, a CA for client
//!   certificates and a `pg_hba.conf` of the test's choosing.
//! - [`start_nats_with_config`]: NATS with a configuration file of the test's choosing (a `tls`
//!   block, users and permissions) and the files it names.
//! - [`NatsUser`]: a NATS user key pair (nkey); [`NatsOperator`]: an operator and an account
//!   signing user JWTs into credentials files (decentralised authentication).
//!
//! The images stay as they are: files are copied into the container when it is created, and
//! PostgreSQL's entrypoint is wrapped by a shell line that gives the server a private copy of
//! its key (the server refuses a key file that other users can read, and copied files belong to
//! root).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use testcontainers::ImageExt as _;

use crate::nats::{NatsContainer, start_nats_from};
use crate::postgres::{PgContainer, start_postgres_from};

/// A certificate authority of a test, and the directory its files are written to.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

/// A certificate and its key, as PEM text and as files of the [`Pki`]'s directory.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate's file.
    pub cert_file: PathBuf,
    /// The key's file.
    pub key_file: PathBuf,
}

/// Whom a certificate is for: its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server (TLS server authentication).
    Server,
    /// A client (TLS client authentication).
    Client,
}

impl Pki {
    /// A new certificate authority named `name` (its common name), its certificate written to
    /// [`Pki::ca_file`].
    ///
    /// # Panics
    ///
    /// When a key cannot be generated or the directory cannot be written.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name(&format!("edupulse-pki-{name}")));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names: valid");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate the CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        let ca_file = dir.join("ca.crt");
        write(&ca_file, &ca.pem());
        Self { dir, ca, ca_file }
    }

    /// The CA certificate's file (what a client trusts: `sslrootcert`, NATS `root_ca`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Issues a certificate with common name `common_name`, valid for the DNS names and IP
    /// addresses `names` (IP addresses are recognised as such), for `role`; writes it and its
    /// key as `<stem>.crt` and `<stem>.key`.
    ///
    /// # Panics
    ///
    /// When a key cannot be generated or a name is invalid.
    pub fn issue(&self, stem: &str, common_name: &str, names: &[&str], role: Role) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("valid subject names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("sign a certificate");
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_file: self.dir.join(format!("{stem}.crt")),
            key_file: self.dir.join(format!("{stem}.key")),
        };
        write(&issued.cert_file, &issued.cert_pem);
        write(&issued.key_file, &issued.key_pem);
        issued
    }

    /// Writes `text` to `name` in this `Pki`'s directory (a credentials file, a seed), removed
    /// with it; returns the path.
    ///
    /// # Panics
    ///
    /// When the file cannot be written.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        write(&path, text);
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Where the TLS files are copied in the PostgreSQL container.
const PG_TLS_DIR: &str = "/etc/edupulse-tls";

/// Starts PostgreSQL serving TLS with `server`'s certificate and key, trusting `client_ca_pem`
/// for client certificates, with `hba` as its whole `pg_hba.conf` (e.g. `local all all trust`
/// and `hostssl all all all scram-sha-256` lines: the harness's own connections are TCP, as
/// the superuser). Server arguments are [`crate::postgres::DEFAULT_PG_ARGS`] plus the TLS ones.
///
/// # Panics
///
/// When the container does not become ready.
pub async fn start_postgres_tls(server: &Issued, client_ca_pem: &str, hba: &str) -> PgContainer {
    // The server wants its key private to its own user: copied files belong to root, so the
    // key is copied once more, as the server's user, before the image's entrypoint runs.
    let script = format!(
        "set -eu; mkdir -p /tmp/edupulse-tls; \
         cp {PG_TLS_DIR}/server.key /tmp/edupulse-tls/server.key; \
         chmod 600 /tmp/edupulse-tls/server.key; \
         exec docker-entrypoint.sh postgres -c fsync=off -c ssl=on \
         -c ssl_cert_file={PG_TLS_DIR}/server.crt -c ssl_key_file=/tmp/edupulse-tls/server.key \
         -c ssl_ca_file={PG_TLS_DIR}/ca.crt -c hba_file={PG_TLS_DIR}/pg_hba.conf"
    );
    let files = [
        ("server.crt", server.cert_pem.clone()),
        ("server.key", server.key_pem.clone()),
        ("ca.crt", client_ca_pem.to_owned()),
        ("pg_hba.conf", hba.to_owned()),
    ];
    start_postgres_from(|image| {
        let mut request = image
            .with_entrypoint("sh")
            .with_cmd(["-c", script.as_str()]);
        for (name, text) in &files {
            request =
                request.with_copy_to(format!("{PG_TLS_DIR}/{name}"), text.clone().into_bytes());
        }
        request
    })
    .await
}

/// Where [`start_nats_with_config`] copies the configuration and its files.
pub const NATS_CONFIG_DIR: &str = "/etc/nats/edupulse";

/// Starts NATS (JetStream on, as [`crate::start_nats`]) with `config` as its configuration file
/// and `files` (name, content) beside it in [`NATS_CONFIG_DIR`], where the configuration names
/// them (`cert_file: "/etc/nats/edupulse/server.crt"`).
///
/// # Panics
///
/// When the container does not become ready (a configuration the server refuses).
pub async fn start_nats_with_config(config: &str, files: &[(&str, String)]) -> NatsContainer {
    let config_file = format!("{NATS_CONFIG_DIR}/nats.conf");
    start_nats_from(|image| {
        let mut request = image
            .with_cmd([
                "-c",
                config_file.as_str(),
                "-js",
                "-sd",
                "/data",
                "-p",
                "4222",
                "-m",
                "8222",
            ])
            .with_copy_to(config_file.clone(), config.as_bytes().to_vec());
        for (name, text) in files {
            request = request.with_copy_to(
                format!("{NATS_CONFIG_DIR}/{name}"),
                text.clone().into_bytes(),
            );
        }
        request
    })
    .await
}

/// A NATS user key pair (nkey): the server's configuration names its public key, the client
/// signs the server's nonce with its seed.
pub struct NatsUser {
    key: nkeys::KeyPair,
}

impl std::fmt::Debug for NatsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsUser")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl NatsUser {
    /// A new random user key.
    pub fn new() -> Self {
        Self {
            key: nkeys::KeyPair::new_user(),
        }
    }

    /// The public key (`U…`), for the server's `authorization { users = [ { nkey: … } ] }`.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The seed (`SU…`): the client's secret.
    pub fn seed(&self) -> String {
        self.key.seed().expect("a generated key has its seed")
    }
}

impl Default for NatsUser {
    fn default() -> Self {
        Self::new()
    }
}

/// A NATS operator with one account, for decentralised authentication: the server trusts the
/// operator's JWT and has the account's JWT preloaded ([`NatsOperator::server_config`]); users
/// get credentials files (a user JWT signed by the account, and the user's seed) from
/// [`NatsOperator::credentials`]. JetStream is enabled for the account, without limits.
pub struct NatsOperator {
    operator: nkeys::KeyPair,
    account: nkeys::KeyPair,
    /// The server's own account (JetStream needs one in operator mode).
    system: nkeys::KeyPair,
}

impl std::fmt::Debug for NatsOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOperator")
            .field("operator", &self.operator.public_key())
            .field("account", &self.account.public_key())
            .finish()
    }
}

impl NatsOperator {
    /// A new operator and account, with random keys.
    pub fn new() -> Self {
        Self {
            operator: nkeys::KeyPair::new_operator(),
            account: nkeys::KeyPair::new_account(),
            system: nkeys::KeyPair::new_account(),
        }
    }

    /// The server configuration's lines for this operator: `operator`, the system account, a
    /// memory resolver with both accounts' JWTs preloaded.
    pub fn server_config(&self) -> String {
        let operator = jwt(
            &self.operator,
            &self.operator.public_key(),
            "edupulse-test-operator",
            serde_json::json!({ "type": "operator", "version": 2 }),
        );
        let limits = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        });
        let account = jwt(
            &self.operator,
            &self.account.public_key(),
            "edupulse-test-account",
            serde_json::json!({ "limits": limits, "type": "account", "version": 2 }),
        );
        let system = jwt(
            &self.operator,
            &self.system.public_key(),
            "edupulse-test-system",
            serde_json::json!({ "type": "account", "version": 2 }),
        );
        format!(
            "operator: \"{operator}\"\nsystem_account: {system_key}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{account}\"\n  {system_key}: \"{system}\"\n}}\n",
            self.account.public_key(),
            system_key = self.system.public_key(),
        )
    }

    /// A credentials file's text for `user`, signed by this operator's account, with
    /// `permissions` (`{"pub": {"allow": [...]}, "sub": {...}}`; `None`: everything).
    pub fn credentials(&self, user: &NatsUser, permissions: Option<serde_json::Value>) -> String {
        let mut claims = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2,
        });
        if let (Some(serde_json::Value::Object(p)), Some(c)) = (permissions, claims.as_object_mut())
        {
            c.extend(p);
        }
        let token = jwt(
            &self.account,
            &user.public_key(),
            "edupulse-test-user",
            claims,
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed()
        )
    }
}

impl Default for NatsOperator {
    fn default() -> Self {
        Self::new()
    }
}

/// A JWT as NATS reads it: `ed25519-nkey` signature by `issuer` over `header.claims`, both
/// base64url without padding; `nats` is the type-specific part of the claims.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = b64.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = issuer
        .sign(signed.as_bytes())
        .expect("a generated key can sign");
    format!("{signed}.{}", b64.encode(signature))
}
