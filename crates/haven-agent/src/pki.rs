//! Peer identity: the cluster CA, this node's certificate, and the rustls configurations of
//! the peer traffic (the server's certificate and client-certificate check, the peer
//! client's identity and server check, the joiner's pinned-fingerprint check).
//!
//! Files (in `<state_dir>/pki/`, every key 0600, checked at start by [`check_key_modes`]):
//! `ca.pem` (every member: the trusted CAs, the signing one first), `cross.pem` (during a
//! CA rotation, the new CA certified by the old), `ca.key` and `ca-<fingerprint>.key` (the
//! founder and every voter or witness: any of them may lead and sign a join or a renewal),
//! `node.pem` and `node.key` (this node's identity; `node.next.*` while a renewal is in
//! flight). See docs/SECURITY.md for the threat model, and `crate::certs` for rotation.
//!
//! Everything that may change while the agent runs (the CA a joiner learns, the certificate
//! it is issued) sits behind one lock in [`Pki`], read on every handshake: the server and
//! the peer client are built once and pick up the new identity without a restart. A peer
//! certificate is accepted when it chains to the cluster CA and its serial is not revoked
//! in the replicated state (the check the agent installs with [`Pki::set_revocation_check`]).
//! Server names are not checked: a peer is identified by its certificate (node name and id),
//! not by the address it was reached at.
//!
//! A join needs one more rule, for the moments before the joiner has its certificate: the
//! leader adds it as a learner (and sends it Raft traffic) before it answers the join. So the
//! joiner serves, meanwhile, a self-signed certificate over the key of its signing request,
//! and the leader accepts a server whose key is that of a join it is serving
//! ([`Pki::expect_joiner`]); the joiner, for its part, trusts peers whose chain carries the CA
//! with the fingerprint it pins ([`Pki::set_pending`]).
//!
//! It decides nothing about who may do what; the peer routes do, from [`PeerCert`].

use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// How long a CA certificate is valid; `haven cluster ca rotate` replaces one (docs/SECURITY.md).
const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// How long a node certificate is valid.
const NODE_VALIDITY_DAYS: i64 = 10 * 365;
/// The SAN URI that carries a node's id: `urn:haven:node-id:<id>`.
const NODE_ID_URI: &str = "urn:haven:node-id:";

/// The ring provider: every rustls configuration of the agent uses it (aws-lc-rs needs
/// cmake and builds slowly), and reqwest's own clients find it as the process default.
pub fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a PKI operation failed; the message names the file or value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "key file {path} has mode {mode:04o}: it is readable by group or others; run `chmod 600 {path}` (and check \
         who could read it meanwhile)"
    )]
    KeyMode { path: String, mode: u32 },
    #[error("cannot read {path}: {source}; check the agent's state_dir")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}; check that the agent may write its state_dir")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a valid {what}: {detail}; restore it from a backup or rejoin the node")]
    Invalid { path: String, what: &'static str, detail: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("{0}")]
    Refused(String),
}

/// A verified peer certificate: who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// The node name (the certificate's common name).
    pub name: String,
    /// The node id (its `urn:haven:node-id:` SAN).
    pub id: u64,
    /// The serial number, lower-case hex without leading zeros.
    pub serial: String,
}

impl fmt::Display for PeerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {:?} (id {}, certificate serial {})", self.name, self.id, self.serial)
    }
}

/// The lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// `n` random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, PkiError> {
    use ring::rand::SecureRandom;
    let mut out = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| PkiError::Generate("the system's random number generator failed".into()))?;
    Ok(out)
}

/// A fingerprint as the operator may write it (`AB:CD:…`, upper or lower case) in the one
/// form this module compares: 64 lower-case hex digits. The error names `field` and where
/// the fingerprint is printed (`from`), and does not quote the value.
pub fn normalize_fingerprint(given: &str, field: &str, from: &str) -> Result<String, String> {
    let f: String = given.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect::<String>().to_lowercase();
    if f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(f)
    } else {
        Err(format!(
            "{field} must be the 64 hex digits of a SHA-256 (got {} characters); copy it from the output of {from}",
            given.len()
        ))
    }
}

/// Where the cluster CA's fingerprint a joiner or a CLI pins is printed.
pub const PINNED_FROM: &str = "`haven cluster token create`";

/// Reads a certificate's identity. `None` for a certificate that is not a Haven node's.
pub fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let san = cert.subject_alternative_name().ok()??;
    let id = san.value.general_names.iter().find_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(NODE_ID_URI)?.parse::<u64>().ok(),
        _ => None,
    })?;
    Some(PeerCert { name, id, serial: serial_hex(cert.raw_serial()) })
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[start..])
}

fn gen_err(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

fn validity(params: &mut rcgen::CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// A fresh serial: 16 random bytes, the first in 0x01..=0x7f (a positive integer whose DER
/// form is exactly these bytes).
fn new_serial() -> Result<Vec<u8>, PkiError> {
    let mut s = random_bytes(16)?;
    s[0] = (s[0] & 0x7f).max(1);
    Ok(s)
}

/// The cluster CA as this node holds it: its certificate, and its key where this node may
/// sign joins.
pub struct Ca {
    cert_pem: String,
    der: Vec<u8>,
    key: Option<rcgen::KeyPair>,
}

impl Ca {
    /// A new CA for cluster `cluster`: ECDSA P-256, valid 20 years.
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("Haven cluster {cluster} CA"));
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Haven");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&new_serial()?));
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca { cert_pem: cert.pem(), der: cert.der().to_vec(), key: Some(key) })
    }

    /// The CA that follows this one (a rotation): a new key and a new name, and the same CA
    /// certified by this one (the cross certificate, PEM), so that a path from a
    /// certificate the new CA signs leads to this one too. Needs this CA's key.
    pub fn successor(&self, cluster: &str) -> Result<(Ca, String), PkiError> {
        let Some(old_key) = &self.key else {
            return Err(PkiError::Refused(
                "this node does not hold the cluster CA key (it is a learner); start the rotation on a voter".into(),
            ));
        };
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let serial = new_serial()?;
        let params = || -> rcgen::CertificateParams {
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("Haven cluster {cluster} CA {}", &hex(&serial)[..8]));
            params.distinguished_name.push(rcgen::DnType::OrganizationName, "Haven");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            validity(&mut params, CA_VALIDITY_DAYS);
            params
        };
        let cert = params().self_signed(&key).map_err(gen_err)?;
        let issuer = rcgen::CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .and_then(|p| p.self_signed(old_key))
            .map_err(gen_err)?;
        // (rcgen gives a cross certificate the same serial: a CA certificate's serial is
        // unique per issuer, and the two have different issuers.)
        let cross = params().signed_by(&key, &issuer, old_key).map_err(gen_err)?;
        Ok((Ca { cert_pem: cert.pem(), der: cert.der().to_vec(), key: Some(key) }, cross.pem()))
    }

    /// SHA-256 of the CA certificate's DER, hex: what a joiner pins.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.der)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The key as PEM, if this node holds it.
    pub fn key_pem(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.serialize_pem())
    }

    /// Signs a certificate for node `name` (id `id`, reached at `address`) over the public
    /// key of `csr_pem`, whose signature proves the requester holds the key. Returns the
    /// certificate PEM and its serial (hex).
    pub fn issue(&self, csr_pem: &str, name: &str, id: u64, address: &str) -> Result<(String, String), PkiError> {
        let Some(key) = &self.key else {
            return Err(PkiError::Refused(
                "this node does not hold the cluster CA key (it joined as a learner), so it cannot sign a join; \
                 send the join to a voter"
                    .into(),
            ));
        };
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::Refused(format!(
                "the certificate signing request is not valid ({e}); the joining agent makes it, so check its version"
            ))
        })?;
        let issuer_params = rcgen::CertificateParams::from_ca_cert_pem(&self.cert_pem).map_err(gen_err)?;
        let issuer = issuer_params.self_signed(key).map_err(gen_err)?;
        let serial = new_serial()?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Haven");
        let mut sans = vec![
            rcgen::SanType::DnsName(name.try_into().map_err(gen_err)?),
            rcgen::SanType::URI(format!("{NODE_ID_URI}{id}").try_into().map_err(gen_err)?),
        ];
        if let Some(ip) = address.rsplit_once(':').and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        {
            sans.push(rcgen::SanType::IpAddress(ip));
        }
        params.subject_alt_names = sans;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        validity(&mut params, NODE_VALIDITY_DAYS);
        let cert = params.signed_by(&csr.public_key, &issuer, key).map_err(gen_err)?;
        Ok((cert.pem(), hex(&serial)))
    }
}

/// A certificate signing request for `name` over `key`.
pub fn csr(key: &rcgen::KeyPair, name: &str) -> Result<String, PkiError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.serialize_request(key).and_then(|r| r.pem()).map_err(gen_err)
}

/// Refuses to start when a key file in `dir` (`*.key`) is readable by group or others.
pub fn check_key_modes(dir: &Path) -> Result<(), PkiError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "key") {
            let meta = std::fs::metadata(&path)
                .map_err(|source| PkiError::Read { path: path.display().to_string(), source })?;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(PkiError::KeyMode { path: path.display().to_string(), mode });
            }
        }
    }
    Ok(())
}

/// Writes `text` to `path` with mode 0600 (created so: never readable by others, not even
/// for a moment), replacing it.
fn write_secret(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    let err = |source| PkiError::Write { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    let err = |source| PkiError::Write { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).map_err(err)
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read { path: path.display().to_string(), source }),
    }
}

/// Every certificate of a PEM bundle, in order (at least one).
fn pem_ders(path: &Path, pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let invalid =
        |detail: String| PkiError::Invalid { path: path.display().to_string(), what: "PEM certificate", detail };
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        out.push(p.map_err(|e| invalid(e.to_string()))?.contents);
    }
    if out.is_empty() {
        return Err(invalid("no certificate in it".into()));
    }
    Ok(out)
}

fn pem_der(path: &Path, pem: &str) -> Result<Vec<u8>, PkiError> {
    let invalid =
        |detail: String| PkiError::Invalid { path: path.display().to_string(), what: "PEM certificate", detail };
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    Ok(p.contents)
}

/// The CAs this node trusts, as the verifiers use them: the signing one first, and while
/// a rotation is in progress the one before it (with the new CA's cross certificate).
struct Trust {
    /// The self-signed CA certificates, the signing one first.
    ders: Vec<CertificateDer<'static>>,
    /// Their fingerprints, in the same order.
    fingerprints: Vec<String>,
    /// Cross certificates (a newer CA certified by an older one), served in every chain.
    crosses: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
}

impl Trust {
    /// What this node serves after its own certificate: every trusted CA and cross
    /// certificate, so that a client pinning any trusted CA finds a path.
    fn chain_after(&self) -> impl Iterator<Item = CertificateDer<'static>> + '_ {
        self.ders.iter().chain(&self.crosses).cloned()
    }
}

/// This node's identity.
struct Identity {
    key: Arc<CertifiedKey>,
    cert: PeerCert,
    der: CertificateDer<'static>,
    key_pem: String,
}

#[derive(Default)]
struct Material {
    ca: Option<Trust>,
    /// The fingerprint a join in progress pins: until the join reply brings the CA, a peer
    /// (the leader, adding this node as a learner) is trusted when its chain carries a CA
    /// with this fingerprint.
    pending: Option<String>,
    node: Option<Identity>,
    /// Served while this node's join is in progress: self-signed over its node key.
    provisional: Option<Arc<CertifiedKey>>,
    /// The public keys (raw bits) of the joins this node is serving as the leader.
    joiners: Vec<Vec<u8>>,
}

type RevocationCheck = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// This node's PKI: files, the current trust and identity, and the rustls configurations.
pub struct Pki {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    material: RwLock<Material>,
    /// A certificate served before this node has one of its own (not yet initialized or
    /// joined): self-signed; a joiner pins the CA fingerprint, never this one.
    temporary: Arc<CertifiedKey>,
    revoked: OnceLock<RevocationCheck>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads whatever `dir` holds (nothing, the CA, a node identity), after checking the
    /// key files' modes.
    pub fn open(dir: &Path) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.display().to_string(), source })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        check_key_modes(dir)?;
        let provider = provider();
        let temporary = temporary_cert(&provider)?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            provider,
            material: RwLock::new(Material::default()),
            temporary,
            revoked: OnceLock::new(),
        };
        if let Some(ca_pem) = read(&pki.path("ca.pem"))? {
            let ders = pem_ders(&pki.path("ca.pem"), &ca_pem)?;
            let crosses = match read(&pki.path("cross.pem"))? {
                Some(pem) => pem_ders(&pki.path("cross.pem"), &pem)?,
                None => Vec::new(),
            };
            pki.trust(ders, crosses)?;
        }
        pki.finish_renewal()?;
        if let (Some(cert), Some(key)) = (read(&pki.path("node.pem"))?, read(&pki.path("node.key"))?) {
            pki.install_identity(&cert, &key)?;
        }
        Ok(pki)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read_material(&self) -> std::sync::RwLockReadGuard<'_, Material> {
        self.material.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_material(&self) -> std::sync::RwLockWriteGuard<'_, Material> {
        self.material.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the check of the replicated state: `is_revoked(serial)`. Set once.
    pub fn set_revocation_check(&self, is_revoked: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let _ = self.revoked.set(Box::new(is_revoked));
    }

    fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.get().is_some_and(|f| f(serial))
    }

    /// A verified peer certificate (either side of a handshake) must name a Haven node and
    /// not be revoked.
    fn known_peer(&self, end_entity: &CertificateDer<'_>) -> Result<PeerCert, rustls::Error> {
        let cert = peer_cert(end_entity.as_ref())
            .ok_or_else(|| tls_err("the peer's certificate names no Haven node".into()))?;
        if self.is_revoked(&cert.serial) {
            return Err(tls_err(format!(
                "the certificate of {cert} is revoked (the node was removed, or its certificate replaced)"
            )));
        }
        Ok(cert)
    }

    /// The fingerprint of the CA that signs (what a joiner or the CLI pins), once this node
    /// knows its cluster's CA.
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.read_material().ca.as_ref().map(|t| t.fingerprints[0].clone())
    }

    /// The fingerprints of every CA this node trusts, the signing one first.
    pub fn trusted_fingerprints(&self) -> Vec<String> {
        self.read_material().ca.as_ref().map(|t| t.fingerprints.clone()).unwrap_or_default()
    }

    /// This node's certificate, once it has one.
    pub fn identity(&self) -> Option<PeerCert> {
        self.read_material().node.as_ref().map(|n| n.cert.clone())
    }

    /// Trusts the CAs `ders` (self-signed, the signing one first) with cross certificates
    /// `crosses`, and serves this node's certificate with the new chain.
    fn trust(&self, ders: Vec<Vec<u8>>, crosses: Vec<Vec<u8>>) -> Result<(), PkiError> {
        let trust = trust_for(
            &self.provider,
            ders.into_iter().map(CertificateDer::from).collect(),
            crosses.into_iter().map(CertificateDer::from).collect(),
        )?;
        let mut m = self.write_material();
        if let Some(node) = &m.node {
            let key = rcgen::KeyPair::from_pem(&node.key_pem).map_err(gen_err)?;
            let chain = std::iter::once(node.der.clone()).chain(trust.chain_after()).collect();
            let certified = certified(&self.provider, chain, &key)?;
            if let Some(node) = m.node.as_mut() {
                node.key = certified;
            }
        }
        m.ca = Some(trust);
        Ok(())
    }

    /// Trusts exactly the cluster's CAs as the replicated state lists them (`cas`, the
    /// signing one first), if that is not what this node trusts already: `ca.pem` and
    /// `cross.pem` are rewritten, the chain this node serves follows, and the keys of CAs
    /// no longer trusted are deleted. Returns whether anything changed.
    pub fn set_trusted(&self, cas: &[haven_state::pki::ClusterCa]) -> Result<bool, PkiError> {
        let wanted: Vec<String> = cas.iter().map(|c| c.fingerprint.clone()).collect();
        // A cross certificate matters only while the CA that signed it is trusted: the
        // newest one's, during a rotation.
        let cross_pem = cas.first().and_then(|c| c.cross_certificate.as_deref()).filter(|_| cas.len() > 1);
        let crosses = match cross_pem {
            Some(pem) => vec![pem_der(Path::new("a cross certificate of the cluster state"), pem)?],
            None => Vec::new(),
        };
        let same = {
            let m = self.read_material();
            m.ca.as_ref().is_some_and(|t| {
                t.fingerprints == wanted && t.crosses.iter().map(|c| c.as_ref()).eq(crosses.iter().map(Vec::as_slice))
            })
        };
        if wanted.is_empty() || same {
            return Ok(false);
        }
        let mut ders = Vec::new();
        for ca in cas {
            let der = pem_der(Path::new("a CA certificate of the cluster state"), &ca.certificate)?;
            if sha256_hex(&der) != ca.fingerprint {
                return Err(PkiError::Refused(format!(
                    "the cluster state's CA {} does not match its certificate; refusing to trust it",
                    ca.fingerprint
                )));
            }
            ders.push(der);
        }
        let bundle: String = cas.iter().map(|c| c.certificate.as_str()).collect();
        write_public(&self.path("ca.pem"), &bundle)?;
        match cross_pem {
            Some(pem) => write_public(&self.path("cross.pem"), pem)?,
            None => {
                let _ = std::fs::remove_file(self.path("cross.pem"));
            }
        }
        let retired: Vec<(String, Vec<u8>)> = {
            let m = self.read_material();
            m.ca.as_ref()
                .map(|t| {
                    t.fingerprints
                        .iter()
                        .zip(&t.ders)
                        .filter(|(f, _)| !wanted.contains(f))
                        .map(|(f, d)| (f.clone(), d.to_vec()))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.trust(ders, crosses)?;
        // The keys of retired CAs are of no use any more, and should not lie around.
        for (fp, der) in retired {
            let _ = std::fs::remove_file(self.path(&format!("ca-{fp}.key")));
            if let Ok(Some(pem)) = read(&self.path("ca.key"))
                && key_matches(&pem, &der)
            {
                let _ = std::fs::remove_file(self.path("ca.key"));
            }
        }
        Ok(true)
    }

    /// Keeps the key of a CA this node just made (before the cluster trusts it).
    pub fn keep_new_ca_key(&self, fp: &str, pem: &str) -> Result<(), PkiError> {
        write_secret(&self.path(&format!("ca-{fp}.key")), pem)
    }

    /// The fingerprint of the trusted CA that signed this node's certificate.
    pub fn issuer_of_own(&self) -> Option<String> {
        let der = self.read_material().node.as_ref()?.der.clone();
        self.issuer_of(&[der.to_vec()])
    }

    /// The fingerprint of the trusted CA that vouches for `chain` (its first certificate
    /// the end entity): the one that signed it, or that signed the intermediate of the
    /// chain that signed it (a newer CA's cross certificate, while a rotation reaches this
    /// node). During this node's join, before it trusts any CA: the pinned one, which the
    /// handshake checked.
    pub fn issuer_of(&self, chain: &[Vec<u8>]) -> Option<String> {
        let m = self.read_material();
        let Some(t) = m.ca.as_ref() else { return m.pending.clone() };
        let parsed: Vec<_> = chain.iter().filter_map(|d| x509_parser::parse_x509_certificate(d).ok()).collect();
        let (_, cert) = parsed.first()?;
        let cas: Vec<_> = t.ders.iter().filter_map(|d| x509_parser::parse_x509_certificate(d).ok()).collect();
        let signed_by_trusted = |c: &x509_parser::certificate::X509Certificate<'_>| {
            cas.iter()
                .zip(&t.fingerprints)
                .find(|((_, ca), _)| c.verify_signature(Some(ca.public_key())).is_ok())
                .map(|(_, fp)| fp.clone())
        };
        signed_by_trusted(cert).or_else(|| {
            parsed[1..]
                .iter()
                .filter(|(_, i)| cert.verify_signature(Some(i.public_key())).is_ok())
                .find_map(|(_, i)| signed_by_trusted(i))
        })
    }

    /// Whether the CA with fingerprint `fp` is trusted (now; during a join, the pinned one).
    pub fn trusts(&self, fp: &str) -> bool {
        let m = self.read_material();
        match &m.ca {
            Some(t) => t.fingerprints.iter().any(|f| f == fp),
            None => m.pending.as_deref() == Some(fp),
        }
    }

    /// The DER of the trusted CA with fingerprint `fp`.
    fn cert_of(&self, fp: &str) -> Option<Vec<u8>> {
        let m = self.read_material();
        let t = m.ca.as_ref()?;
        t.fingerprints.iter().position(|f| f == fp).map(|i| t.ders[i].to_vec())
    }

    /// The key (PEM) of the trusted CA with fingerprint `fp`, if this node holds it: in
    /// `ca-<fp>.key`, or `ca.key` (the founding CA's) when that is its key.
    pub fn ca_key_pem(&self, fp: &str) -> Result<Option<String>, PkiError> {
        let Some(der) = self.cert_of(fp) else { return Ok(None) };
        for file in [format!("ca-{fp}.key"), "ca.key".to_string()] {
            if let Some(pem) = read(&self.path(&file))?
                && key_matches(&pem, &der)
            {
                return Ok(Some(pem));
            }
        }
        Ok(None)
    }

    /// Stores the key of the trusted CA `fp` (fetched from a peer), after checking that it
    /// is that CA's key.
    pub fn store_ca_key(&self, fp: &str, pem: &str) -> Result<(), PkiError> {
        let der = self.cert_of(fp).ok_or_else(|| PkiError::Refused(format!("CA {fp} is not trusted here")))?;
        if !key_matches(pem, &der) {
            return Err(PkiError::Refused(format!("the key offered for CA {fp} is not that CA's key")));
        }
        write_secret(&self.path(&format!("ca-{fp}.key")), pem)
    }

    fn install_identity(&self, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let path = self.path("node.pem");
        let der = pem_der(&path, cert_pem)?;
        let cert = peer_cert(&der).ok_or_else(|| PkiError::Invalid {
            path: path.display().to_string(),
            what: "Haven node certificate",
            detail: "no node name and id in it".into(),
        })?;
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| PkiError::Invalid {
            path: self.path("node.key").display().to_string(),
            what: "PEM private key",
            detail: e.to_string(),
        })?;
        let mut m = self.write_material();
        let der = CertificateDer::from(der);
        let mut chain = vec![der.clone()];
        if let Some(ca) = &m.ca {
            chain.extend(ca.chain_after());
        }
        let key = certified(&self.provider, chain, &key)?;
        m.node = Some(Identity { key, cert, der, key_pem: key_pem.to_string() });
        Ok(())
    }

    /// Completes a renewal a crash interrupted (see [`Pki::accept_renewal`]): `node.next.pem`
    /// is written only once the new certificate was checked against `node.next.key`, so
    /// its presence means the pair is complete; a lone `node.next.key` is an attempt that
    /// got no certificate, and is dropped.
    fn finish_renewal(&self) -> Result<(), PkiError> {
        let (next_key, next_pem) = (self.path("node.next.key"), self.path("node.next.pem"));
        let mv = |from: &Path, to: &Path| {
            std::fs::rename(from, to).map_err(|source| PkiError::Write { path: to.display().to_string(), source })
        };
        if next_pem.exists() {
            if next_key.exists() {
                mv(&next_key, &self.path("node.key"))?;
            }
            mv(&next_pem, &self.path("node.pem"))?;
        } else if next_key.exists() {
            let _ = std::fs::remove_file(&next_key);
        }
        Ok(())
    }

    /// Starts a renewal of this node's certificate: a new key in `node.next.key` (0600,
    /// before anything is sent) and a signing request over it.
    pub fn renewal_request(&self, name: &str) -> Result<String, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        write_secret(&self.path("node.next.key"), &key.serialize_pem())?;
        csr(&key, name)
    }

    /// Takes a renewed certificate: it must be for `name`, over the key of
    /// [`Pki::renewal_request`], and signed by the trusted CA `ca_fp`. Then
    /// `node.next.pem` is written and both files replace `node.key` and `node.pem` (a crash
    /// in between is finished at the next start), and the new identity is served.
    pub fn accept_renewal(&self, name: &str, cert_pem: &str, ca_fp: &str) -> Result<PeerCert, PkiError> {
        let key_pem = read(&self.path("node.next.key"))?
            .ok_or_else(|| PkiError::Refused("node.next.key vanished during the renewal; renew again".into()))?;
        let der = pem_der(Path::new("the renewed certificate"), cert_pem)?;
        let cert = peer_cert(&der)
            .filter(|c| c.name == name)
            .ok_or_else(|| PkiError::Refused(format!("the renewed certificate is not for node {name:?}")))?;
        if !key_matches(&key_pem, &der) {
            return Err(PkiError::Refused("the renewed certificate is not for the key this node asked with".into()));
        }
        if self.issuer_of(std::slice::from_ref(&der)).as_deref() != Some(ca_fp) {
            return Err(PkiError::Refused(format!("the renewed certificate is not signed by CA {ca_fp}")));
        }
        write_public(&self.path("node.next.pem"), cert_pem)?;
        self.finish_renewal()?;
        self.install_identity(cert_pem, &key_pem)?;
        Ok(cert)
    }

    /// Founds the cluster's PKI on this node: a new CA (`ca.pem`, `ca.key`) and this
    /// node's certificate (`node.pem`, `node.key`). Returns the CA fingerprint and this
    /// node's certificate serial.
    pub fn found(&self, cluster: &str, name: &str, id: u64, address: &str) -> Result<(String, String), PkiError> {
        let ca = Ca::generate(cluster)?;
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let (cert_pem, serial) = ca.issue(&csr(&key, name)?, name, id, address)?;
        if let Some(ca_key) = ca.key_pem() {
            write_secret(&self.path("ca.key"), &ca_key)?;
        }
        write_public(&self.path("ca.pem"), ca.cert_pem())?;
        write_secret(&self.path("node.key"), &key.serialize_pem())?;
        write_public(&self.path("node.pem"), &cert_pem)?;
        self.trust(vec![ca.der.clone()], Vec::new())?;
        self.install_identity(&cert_pem, &key.serialize_pem())?;
        Ok((ca.fingerprint(), serial))
    }

    /// Issues a certificate for node `name` (id `id`) with this node's CA key and writes a
    /// member's files into `dir`: `ca.pem`, `node.pem`, `node.key` (what a joined node has).
    /// For tools and tests that need a second identity of the cluster.
    pub fn issue_identity(&self, dir: &Path, name: &str, id: u64, address: &str) -> Result<String, PkiError> {
        let ca = self.ca()?;
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let (cert_pem, serial) = ca.issue(&csr(&key, name)?, name, id, address)?;
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.display().to_string(), source })?;
        write_public(&dir.join("ca.pem"), ca.cert_pem())?;
        write_secret(&dir.join("node.key"), &key.serialize_pem())?;
        write_public(&dir.join("node.pem"), &cert_pem)?;
        Ok(serial)
    }

    /// The signing CA as this node holds it (certificate, and key if it has it), to sign a
    /// join or a renewal.
    pub fn ca(&self) -> Result<Ca, PkiError> {
        let Some(fp) = self.ca_fingerprint() else {
            return Err(PkiError::Refused(format!(
                "{} is missing: this node has no cluster CA",
                self.path("ca.pem").display()
            )));
        };
        let der = self.cert_of(&fp).unwrap_or_default();
        let cert_pem = pem_encode(&der);
        let key = match self.ca_key_pem(&fp)? {
            Some(pem) => Some(rcgen::KeyPair::from_pem(&pem).map_err(|e| PkiError::Invalid {
                path: self.path("ca.key").display().to_string(),
                what: "PEM private key",
                detail: e.to_string(),
            })?),
            None => None,
        };
        Ok(Ca { cert_pem, der, key })
    }

    /// The PEMs of every CA this node trusts (the signing one first), for a joiner.
    pub fn trusted_pems(&self) -> Vec<String> {
        let m = self.read_material();
        m.ca.as_ref().map(|t| t.ders.iter().map(|d| pem_encode(d)).collect()).unwrap_or_default()
    }

    /// This node's key pair for a join: the one kept from an earlier attempt, else a new
    /// one (stored 0600 before anything is sent), and a signing request over it.
    pub fn join_request(&self, name: &str) -> Result<String, PkiError> {
        let path = self.path("node.key");
        let key = match read(&path)? {
            Some(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| PkiError::Invalid {
                path: path.display().to_string(),
                what: "PEM private key",
                detail: e.to_string(),
            })?,
            None => {
                let key = rcgen::KeyPair::generate().map_err(gen_err)?;
                write_secret(&path, &key.serialize_pem())?;
                key
            }
        };
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        validity(&mut params, 1);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let provisional = certified(&self.provider, vec![cert.der().clone()], &key)?;
        self.write_material().provisional = Some(provisional);
        csr(&key, name)
    }

    /// While the returned guard lives, a peer server whose key is that of `csr_pem` is
    /// trusted (the joiner this leader is adding; see the module header).
    pub fn expect_joiner(self: &Arc<Self>, csr_pem: &str) -> Result<JoinerGuard, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Refused(format!("the certificate signing request is not valid ({e})")))?;
        let key = rcgen::PublicKeyData::der_bytes(&csr.public_key).to_vec();
        self.write_material().joiners.push(key.clone());
        Ok(JoinerGuard { pki: self.clone(), key })
    }

    /// Pins `fingerprint` while a join is in progress (`None` once it ended).
    pub fn set_pending(&self, fingerprint: Option<String>) {
        self.write_material().pending = fingerprint;
    }

    /// Takes the join reply: checks the CA against the pinned `fingerprint` and the
    /// certificate against this node's key and name, then stores and installs both (and
    /// the CA key, for a voter).
    pub fn accept_join(
        &self,
        fingerprint: &str,
        name: &str,
        cert_pem: &str,
        ca_pem: &str,
        ca_key: Option<&str>,
        also_trusted: &[String],
    ) -> Result<PeerCert, PkiError> {
        let ca_der = pem_der(Path::new("the CA certificate of the join reply"), ca_pem)?;
        let got = sha256_hex(&ca_der);
        if got != fingerprint {
            return Err(PkiError::Refused(format!(
                "the cluster's CA certificate has fingerprint {got}, not the one given with --ca-fingerprint; \
                 nothing was trusted or stored. Check the fingerprint (`haven cluster token create` prints it)"
            )));
        }
        let der = pem_der(Path::new("the certificate of the join reply"), cert_pem)?;
        let cert = peer_cert(&der)
            .filter(|c| c.name == name)
            .ok_or_else(|| PkiError::Refused(format!("the join reply's certificate is not for node {name:?}")))?;
        let key_pem = read(&self.path("node.key"))?
            .ok_or_else(|| PkiError::Refused("node.key vanished during the join; join again".into()))?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(gen_err)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Refused(format!("the join reply's certificate does not parse: {e}")))?;
        if parsed.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
            return Err(PkiError::Refused("the join reply's certificate is not for this node's key".into()));
        }
        // The other CAs the cluster trusts (during a rotation), as the member the pinned CA
        // vouches for lists them.
        let mut ders = vec![ca_der];
        let mut bundle = ca_pem.to_string();
        for pem in also_trusted {
            let der = pem_der(Path::new("a CA certificate of the join reply"), pem)?;
            if !ders.contains(&der) {
                ders.push(der);
                bundle.push_str(pem);
            }
        }
        if let Some(k) = ca_key {
            if !key_matches(k, &ders[0]) {
                return Err(PkiError::Refused("the join reply's CA key is not the CA's; nothing was stored".into()));
            }
            write_secret(&self.path(&format!("ca-{fingerprint}.key")), k)?;
        }
        write_public(&self.path("ca.pem"), &bundle)?;
        write_public(&self.path("node.pem"), cert_pem)?;
        self.trust(ders, Vec::new())?;
        self.install_identity(cert_pem, &key_pem)?;
        self.set_pending(None);
        Ok(cert)
    }

    /// The server side of the agent's port: this node's certificate (or the temporary one),
    /// client certificates optional at the TLS layer and verified when given (the peer
    /// routes require one).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Generate(e.to_string()))?
            .with_client_cert_verifier(Arc::new(ClientCheck(self.clone())))
            .with_cert_resolver(Arc::new(ServerIdentity(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client of all peer traffic: this node's certificate as its identity, servers
    /// trusted when they chain to the cluster CA and are not revoked.
    pub fn peer_client(self: &Arc<Self>) -> Result<reqwest::Client, PkiError> {
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Generate(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck(self.clone())))
            .with_client_cert_resolver(Arc::new(ClientIdentity(self.clone())));
        http_client(config, PEER_TIMEOUTS)
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }
}

/// See [`Pki::expect_joiner`].
pub struct JoinerGuard {
    pki: Arc<Pki>,
    key: Vec<u8>,
}

impl Drop for JoinerGuard {
    fn drop(&mut self) {
        let mut m = self.pki.write_material();
        if let Some(i) = m.joiners.iter().position(|k| *k == self.key) {
            m.joiners.remove(i);
        }
    }
}

/// The raw public key bits of a certificate.
fn public_key_bits(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.tbs_certificate.subject_pki.subject_public_key.data.to_vec())
}

/// How long a peer connection may take to open, and a whole peer request.
const PEER_TIMEOUTS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(130));

/// Builds the reqwest client of `config`: no proxy (peer traffic goes straight to the
/// peer), `(connect, request)` timeouts.
fn http_client(config: rustls::ClientConfig, timeouts: (Duration, Duration)) -> Result<reqwest::Client, PkiError> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(timeouts.0)
        .timeout(timeouts.1)
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| PkiError::Generate(format!("cannot build the HTTPS client: {e}")))
}

/// What a join's TLS check found when it refused the member: the message for the operator.
pub type JoinMismatch = Arc<Mutex<Option<String>>>;

/// The client a joining node asks a member with: no client certificate, and the member
/// trusted only if its chain carries a CA certificate with `fingerprint` that signed its
/// certificate. A refusal is also written to the returned slot, to be told as it is.
pub fn join_client(fingerprint: &str) -> Result<(reqwest::Client, JoinMismatch), PkiError> {
    pinned_client(fingerprint, PEER_TIMEOUTS)
}

/// A client that trusts a server only as [`join_client`] does (its chain carries the CA
/// with `fingerprint`, which signed its certificate: any member of that cluster), with
/// `(connect, request)` timeouts: the CLI's, when it knows the cluster's CA fingerprint.
pub fn pinned_client(
    fingerprint: &str,
    timeouts: (Duration, Duration),
) -> Result<(reqwest::Client, JoinMismatch), PkiError> {
    let provider = provider();
    let mismatch: JoinMismatch = Arc::default();
    let check =
        PinnedCa { fingerprint: fingerprint.to_string(), provider: provider.clone(), mismatch: mismatch.clone() };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Generate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check))
        .with_no_client_auth();
    Ok((http_client(config, timeouts)?, mismatch))
}

fn trust_for(
    provider: &Arc<CryptoProvider>,
    ders: Vec<CertificateDer<'static>>,
    crosses: Vec<CertificateDer<'static>>,
) -> Result<Trust, PkiError> {
    if ders.is_empty() {
        return Err(PkiError::Invalid {
            path: "ca.pem".into(),
            what: "CA certificate",
            detail: "no certificate".into(),
        });
    }
    let mut roots = RootCertStore::empty();
    for der in &ders {
        roots.add(der.clone()).map_err(|e| PkiError::Invalid {
            path: "ca.pem".into(),
            what: "CA certificate",
            detail: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let fingerprints = ders.iter().map(|d| sha256_hex(d)).collect();
    Ok(Trust { fingerprints, ders, crosses, roots, clients })
}

/// Whether the private key `key_pem` is the key of certificate `der`.
fn key_matches(key_pem: &str, der: &[u8]) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else { return false };
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == key.public_key_der().as_slice())
}

/// `der` as a PEM certificate.
fn pem_encode(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn certified(
    provider: &Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> Result<Arc<CertifiedKey>, PkiError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider.key_provider.load_private_key(der).map_err(|e| PkiError::Generate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn temporary_cert(provider: &Arc<CryptoProvider>) -> Result<Arc<CertifiedKey>, PkiError> {
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "haven agent (not yet in a cluster)");
    validity(&mut params, 30);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    certified(provider, vec![cert.der().clone()], &key)
}

/// Finds in `chain` a certificate whose SHA-256 is `fingerprint`.
fn pinned_in<'a>(chain: &'a [CertificateDer<'a>], fingerprint: &str) -> Option<&'a CertificateDer<'a>> {
    chain.iter().find(|c| sha256_hex(c.as_ref()) == fingerprint)
}

fn tls_err(message: String) -> rustls::Error {
    rustls::Error::General(message)
}

/// The server's certificate: this node's, or the temporary one.
struct ServerIdentity(Arc<Pki>);

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerIdentity")
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let m = self.0.read_material();
        let own = m.node.as_ref().map(|n| n.key.clone()).or_else(|| m.provisional.clone());
        Some(own.unwrap_or_else(|| self.0.temporary.clone()))
    }
}

/// The peer client's certificate: this node's (none before it has one).
struct ClientIdentity(Arc<Pki>);

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdentity")
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.read_material().node.as_ref().map(|n| n.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.read_material().node.is_some()
    }
}

/// The signature checks of a rustls verifier, the same for every verifier here: rustls'
/// own, with the algorithms `algorithms(self)` names (the ring provider's).
macro_rules! signature_checks {
    (|$me:ident| $algorithms:expr) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let $me = self;
            rustls::crypto::verify_tls12_signature(message, cert, dss, &$algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let $me = self;
            rustls::crypto::verify_tls13_signature(message, cert, dss, &$algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            let $me = self;
            $algorithms.supported_schemes()
        }
    };
}

/// Server side: a client certificate is optional; one that is given must chain to the
/// cluster CA (or, during a join, to the pinned one) and not be revoked.
struct ClientCheck(Arc<Pki>);

impl fmt::Debug for ClientCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCheck")
    }
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = {
            let m = self.0.read_material();
            match (&m.ca, &m.pending) {
                (Some(t), _) => t.clients.clone(),
                (None, Some(f)) => {
                    let ca = pinned_in(intermediates, f).ok_or_else(|| {
                        tls_err("the peer's chain carries no CA with the fingerprint this node's join pins".into())
                    })?;
                    trust_for(&self.0.provider, vec![ca.clone().into_owned()], Vec::new())
                        .map_err(|e| tls_err(e.to_string()))?
                        .clients
                }
                (None, None) => {
                    return Err(tls_err("this node is not in a cluster yet, so it trusts no peer certificate".into()));
                }
            }
        };
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        self.0.known_peer(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!(|me| me.0.algorithms());
}

/// Client side: the server must chain to the cluster CA and not be revoked (its name is
/// not checked; see the module header).
struct ServerCheck(Arc<Pki>);

impl fmt::Debug for ServerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCheck")
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (roots, joining) = {
            let m = self.0.read_material();
            let joining =
                !m.joiners.is_empty() && public_key_bits(end_entity.as_ref()).is_some_and(|k| m.joiners.contains(&k));
            (m.ca.as_ref().map(|t| t.roots.clone()), joining)
        };
        if joining {
            // A joiner this leader is adding, before it has its certificate (module header).
            return Ok(ServerCertVerified::assertion());
        }
        let roots = roots.ok_or_else(|| tls_err("this node is not in a cluster yet, so it trusts no peer".into()))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&parsed, &roots, intermediates, now, self.0.algorithms().all)?;
        self.0.known_peer(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!(|me| me.0.algorithms());
}

/// A joiner's check of the member: its chain must carry the CA with the pinned
/// fingerprint, and that CA must have signed its certificate.
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    mismatch: JoinMismatch,
}

impl fmt::Debug for PinnedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinnedCa")
    }
}

impl PinnedCa {
    fn refuse(&self, message: String) -> rustls::Error {
        *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
        tls_err(message)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = pinned_in(intermediates, &self.fingerprint) else {
            let presented: Vec<String> = intermediates.iter().map(|c| sha256_hex(c.as_ref())).collect();
            return Err(self.refuse(match presented.first() {
                Some(f) => format!(
                    "the member's cluster CA has fingerprint {f}, not the one given with --ca-fingerprint; nothing \
                     was sent or trusted. Check the fingerprint (`haven cluster token create` on a member prints it) \
                     and the address"
                ),
                None => "the agent at that address has no cluster CA (it is not initialized or joined, or not a \
                         Haven agent); give the address of a member of the cluster"
                    .to_string(),
            }));
        };
        let trust = trust_for(&self.provider, vec![ca.clone().into_owned()], Vec::new())
            .map_err(|e| self.refuse(e.to_string()))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        // The rest of the chain may carry a path to the pinned CA: a newer CA's cross
        // certificate, during a rotation.
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &trust.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| self.refuse(format!("the member's certificate is not signed by the pinned CA: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!(|me| me.provider.signature_verification_algorithms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_the_node_and_chains_to_its_ca() {
        let ca = Ca::generate("lab").expect("a CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let (pem, serial) =
            ca.issue(&csr(&key, "node2").expect("a CSR"), "node2", 2, "127.0.0.1:7400").expect("issued");
        let der = pem_der(Path::new("test"), &pem).expect("PEM");
        let cert = peer_cert(&der).expect("a node certificate");
        assert_eq!(cert, PeerCert { name: "node2".into(), id: 2, serial: serial.clone() });
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der).expect("parses");
        assert!(parsed.verify_signature(Some(ca_cert.public_key())).is_ok(), "signed by the CA");
        assert_eq!(parsed.tbs_certificate.subject_pki.raw, key.public_key_der().as_slice(), "over the CSR's key");
        let other = Ca::generate("other").expect("a CA");
        let (_, other_cert) = x509_parser::parse_x509_certificate(&other.der).expect("parses");
        assert!(parsed.verify_signature(Some(other_cert.public_key())).is_err(), "not by another CA");
        assert_ne!(ca.fingerprint(), other.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
    }

    #[test]
    fn serials_differ_and_a_bad_csr_is_refused_without_a_panic() {
        let ca = Ca::generate("lab").expect("a CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let request = csr(&key, "n").expect("a CSR");
        let (_, a) = ca.issue(&request, "n", 1, "h:1").expect("issued");
        let (_, b) = ca.issue(&request, "n", 1, "h:1").expect("issued");
        assert_ne!(a, b);
        let e =
            ca.issue("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "n", 1, "h:1");
        assert!(matches!(e, Err(PkiError::Refused(_))), "{:?}", e.map(|_| ()));
        let learner = Ca { key: None, ..Ca::generate("lab").expect("a CA") };
        assert!(learner.issue(&request, "n", 1, "h:1").is_err_and(|e| e.to_string().contains("CA key")));
    }

    #[test]
    fn a_key_file_readable_by_others_stops_the_agent_with_the_fix() {
        let dir = tempfile::tempdir().expect("a directory");
        let pki = Pki::open(dir.path()).expect("an empty PKI");
        let (fingerprint, _) = pki.found("lab", "node1", 1, "127.0.0.1:7400").expect("founded");
        assert_eq!(pki.ca_fingerprint().as_deref(), Some(fingerprint.as_str()));
        for file in ["ca.key", "node.key"] {
            let mode = std::fs::metadata(dir.path().join(file)).expect("written").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let reopened = Pki::open(dir.path()).expect("reopened");
        assert_eq!(reopened.identity().map(|c| c.name), Some("node1".to_string()));
        let key = dir.path().join("node.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Pki::open(dir.path()).expect_err("a world-readable key");
        let text = e.to_string();
        assert!(
            text.contains(&key.display().to_string()) && text.contains("0644") && text.contains("chmod 600"),
            "{text}"
        );
    }

    #[test]
    fn fingerprints_are_read_in_the_forms_an_operator_copies() {
        let f = "ab".repeat(32);
        let read = |given: &str| normalize_fingerprint(given, "ca_fingerprint", PINNED_FROM);
        assert_eq!(read(&f.to_uppercase()), Ok(f.clone()));
        let colons: Vec<&str> = (0..32).map(|_| "AB").collect();
        assert_eq!(read(&colons.join(":")), Ok(f));
        let e = read("secret-token").unwrap_err();
        assert!(!e.contains("secret") && e.contains("64 hex digits"), "{e}");
        let e = normalize_fingerprint("x", "fingerprint", "`haven cluster ca status`").unwrap_err();
        assert!(e.starts_with("fingerprint must") && e.contains("ca status"), "{e}");
    }

    #[test]
    fn a_join_reply_with_another_ca_is_refused_and_stores_nothing() {
        let dir = tempfile::tempdir().expect("a directory");
        let pki = Pki::open(dir.path()).expect("an empty PKI");
        let request = pki.join_request("node2").expect("a CSR");
        let ca = Ca::generate("lab").expect("a CA");
        let (cert, _) = ca.issue(&request, "node2", 2, "127.0.0.1:1").expect("issued");
        let wrong = "00".repeat(32);
        let e = pki.accept_join(&wrong, "node2", &cert, ca.cert_pem(), None, &[]).expect_err("another fingerprint");
        assert!(e.to_string().contains("not the one given with --ca-fingerprint"), "{e}");
        assert!(!dir.path().join("ca.pem").exists() && !dir.path().join("node.pem").exists());
        let got = pki.accept_join(&ca.fingerprint(), "node2", &cert, ca.cert_pem(), None, &[]).expect("the right one");
        assert_eq!((got.name.as_str(), got.id), ("node2", 2));
        assert!(!dir.path().join("ca.key").exists(), "a learner keeps no CA key");
    }
    fn cluster_ca(fp: &str, pem: &str, cross: Option<String>) -> haven_state::pki::ClusterCa {
        haven_state::pki::ClusterCa {
            fingerprint: fp.to_string(),
            certificate: pem.to_string(),
            cross_certificate: cross,
            added_at: 1,
            holder: "node1".into(),
        }
    }

    /// A path from a certificate of the new CA to the old CA exists only through the cross
    /// certificate: what a client pinning the old fingerprint relies on mid-rotation.
    #[test]
    fn a_successor_ca_is_certified_by_the_old_one_so_old_pins_verify_new_certificates() {
        let old = Ca::generate("lab").expect("a CA");
        let (new, cross_pem) = old.successor("lab").expect("a successor");
        assert_ne!(new.fingerprint(), old.fingerprint());
        let key = rcgen::KeyPair::generate().expect("a key");
        let (cert_pem, _) = new.issue(&csr(&key, "node2").expect("a CSR"), "node2", 2, "127.0.0.1:1").expect("issued");
        let der = pem_der(Path::new("t"), &cert_pem).expect("PEM");
        let cross = pem_der(Path::new("t"), &cross_pem).expect("PEM");
        let provider = provider();
        let old_trust = trust_for(&provider, vec![CertificateDer::from(old.der.clone())], Vec::new()).expect("trust");
        let cert = CertificateDer::from(der);
        let parsed = ParsedCertificate::try_from(&cert).expect("parses");
        let verify = |intermediates: &[CertificateDer<'_>]| {
            let now = UnixTime::now();
            let algs = provider.signature_verification_algorithms.all;
            verify_server_cert_signed_by_trust_anchor(&parsed, &old_trust.roots, intermediates, now, algs)
        };
        assert!(verify(&[]).is_err(), "the old CA did not sign it");
        let new_der = CertificateDer::from(new.der.clone());
        assert!(verify(&[new_der.clone(), CertificateDer::from(cross)]).is_ok(), "through the cross certificate");

        // A PKI that trusts both finds the new CA as the issuer; with the old alone, the
        // old one through the cross certificate; a learner has no key to make a successor.
        let dir = tempfile::tempdir().expect("a directory");
        let pki = Pki::open(dir.path()).expect("an empty PKI");
        pki.trust(vec![old.der.clone()], Vec::new()).expect("trust");
        let chain = vec![cert.to_vec(), new.der.clone(), pem_der(Path::new("t"), &cross_pem).expect("PEM")];
        assert_eq!(pki.issuer_of(&chain), Some(old.fingerprint()));
        let cas = [
            cluster_ca(&new.fingerprint(), new.cert_pem(), Some(cross_pem)),
            cluster_ca(&old.fingerprint(), old.cert_pem(), None),
        ];
        assert!(pki.set_trusted(&cas).expect("trusted"));
        assert!(!pki.set_trusted(&cas).expect("trusted"), "nothing to change the second time");
        assert_eq!(pki.issuer_of(&chain[..1]), Some(new.fingerprint()));
        assert_eq!(pki.trusted_fingerprints(), [new.fingerprint(), old.fingerprint()]);
        let reopened = Pki::open(dir.path()).expect("reopened");
        assert_eq!(reopened.trusted_fingerprints(), [new.fingerprint(), old.fingerprint()], "ca.pem keeps both");
        let learner = Ca { key: None, ..Ca::generate("lab").expect("a CA") };
        assert!(matches!(learner.successor("lab"), Err(PkiError::Refused(_))));
    }

    #[test]
    fn a_renewal_replaces_the_identity_and_one_cut_short_is_finished_or_dropped_at_start() {
        let dir = tempfile::tempdir().expect("a directory");
        let pki = Pki::open(dir.path()).expect("an empty PKI");
        let (fp, first) = pki.found("lab", "node1", 1, "127.0.0.1:1").expect("founded");
        let ca = pki.ca().expect("the CA");
        let request = pki.renewal_request("node1").expect("a CSR");
        let (cert, serial) = ca.issue(&request, "node1", 1, "127.0.0.1:1").expect("issued");
        let other = Ca::generate("other").expect("another CA");
        let (foreign, _) = other.issue(&request, "node1", 1, "127.0.0.1:1").expect("issued");
        let e = pki.accept_renewal("node1", &foreign, &fp).expect_err("not signed by the cluster CA");
        assert!(e.to_string().contains("not signed"), "{e}");
        let got = pki.accept_renewal("node1", &cert, &fp).expect("renewed");
        assert_eq!(got.serial, serial);
        assert_ne!(serial, first);
        assert_eq!(pki.identity().map(|c| c.serial), Some(serial.clone()));
        assert!(!dir.path().join("node.next.key").exists() && !dir.path().join("node.next.pem").exists());
        assert_eq!(Pki::open(dir.path()).expect("reopened").identity().map(|c| c.serial), Some(serial.clone()));

        // Cut short after the key was renamed, before the certificate was: finished.
        let request = pki.renewal_request("node1").expect("a CSR");
        let (cert, third) = ca.issue(&request, "node1", 1, "127.0.0.1:1").expect("issued");
        write_public(&dir.path().join("node.next.pem"), &cert).expect("written");
        std::fs::rename(dir.path().join("node.next.key"), dir.path().join("node.key")).expect("renamed");
        assert_eq!(Pki::open(dir.path()).expect("reopened").identity().map(|c| c.serial), Some(third.clone()));
        // Cut short before any certificate came: dropped, the identity is unchanged.
        pki.renewal_request("node1").expect("a CSR");
        let reopened = Pki::open(dir.path()).expect("reopened");
        assert_eq!(reopened.identity().map(|c| c.serial), Some(third));
        assert!(!dir.path().join("node.next.key").exists());
    }
}
