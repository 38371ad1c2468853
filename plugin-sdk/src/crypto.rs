//! Signature verification done natively by the gateway (contract 0.2.0 `crypto`): import a
//! key once (in `init`, or when keys rotate), keep the [`Key`], verify with it on each
//! request. HMAC tags are compared in constant time. The plugin still parses tokens and
//! checks claims itself; only the arithmetic leaves the sandbox.
//!
//! ```no_run
//! use sluice_plugin_sdk::crypto::{Algorithm, Key, KeyMaterial};
//!
//! let key = Key::import(Algorithm::Hs256, KeyMaterial::Secret(b"secret")).unwrap();
//! assert!(!key.verify(b"header.payload", b"not the tag"));
//! ```
//!
//! Under `cargo test`, the `testing-crypto` feature makes the test host verify natively
//! with aws-lc-rs, the library the gateway uses (PEM certificates are the gateway's only).

use crate::Error;
use crate::backend::host_call;
#[cfg(target_arch = "wasm32")]
use crate::bindings::wit_crypto;

/// Signature algorithms, named as in JWS (RFC 7518, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256 (`r || s` signatures).
    Es256,
    /// ECDSA P-384 with SHA-384 (`r || s` signatures).
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Self; 12] = [
        Self::Hs256,
        Self::Hs384,
        Self::Hs512,
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::EdDsa,
    ];

    /// The JWS name (`HS256`, `EdDSA`, ...).
    pub fn jws_name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// The algorithm of a JWS name (exact case, as JWS names are).
    pub fn from_jws_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.jws_name() == name)
    }

    /// Whether it is an HMAC algorithm (a shared secret, not a public key).
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::Hs256 | Self::Hs384 | Self::Hs512)
    }

    #[cfg(target_arch = "wasm32")]
    fn wit(self) -> wit_crypto::Algorithm {
        use wit_crypto::Algorithm as W;
        match self {
            Self::Hs256 => W::Hs256,
            Self::Hs384 => W::Hs384,
            Self::Hs512 => W::Hs512,
            Self::Rs256 => W::Rs256,
            Self::Rs384 => W::Rs384,
            Self::Rs512 => W::Rs512,
            Self::Ps256 => W::Ps256,
            Self::Ps384 => W::Ps384,
            Self::Ps512 => W::Ps512,
            Self::Es256 => W::Es256,
            Self::Es384 => W::Es384,
            Self::EdDsa => W::Eddsa,
        }
    }
}

/// What a key is made of. A secret fits only the HMAC algorithms, public keys only the
/// others: an RSA public key offered as an HS256 secret (the "alg confusion" attack) is
/// refused at import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMaterial<'a> {
    /// HMAC secret bytes.
    Secret(&'a [u8]),
    /// DER SubjectPublicKeyInfo.
    SpkiDer(&'a [u8]),
    /// PEM: `PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`.
    Pem(&'a str),
    /// RSA modulus and exponent, big-endian (a JWK's `n`, `e`).
    Rsa {
        /// Modulus.
        n: &'a [u8],
        /// Public exponent.
        e: &'a [u8],
    },
    /// EC point, big-endian coordinates (a JWK's `x`, `y`).
    Ec {
        /// X coordinate.
        x: &'a [u8],
        /// Y coordinate.
        y: &'a [u8],
    },
    /// Raw 32-byte Ed25519 public key (a JWK's `x`).
    Ed25519(&'a [u8]),
}

#[cfg(target_arch = "wasm32")]
impl KeyMaterial<'_> {
    fn wit(self) -> wit_crypto::KeyMaterial {
        use wit_crypto::KeyMaterial as W;
        match self {
            Self::Secret(b) => W::Secret(b.to_vec()),
            Self::SpkiDer(b) => W::SpkiDer(b.to_vec()),
            Self::Pem(text) => W::Pem(text.to_owned()),
            Self::Rsa { n, e } => W::Rsa(wit_crypto::RsaPublic {
                n: n.to_vec(),
                e: e.to_vec(),
            }),
            Self::Ec { x, y } => W::Ec(wit_crypto::EcPoint {
                x: x.to_vec(),
                y: y.to_vec(),
            }),
            Self::Ed25519(b) => W::Ed25519(b.to_vec()),
        }
    }
}

#[cfg(target_arch = "wasm32")]
type Inner = wit_crypto::Key;
#[cfg(all(not(target_arch = "wasm32"), feature = "testing"))]
type Inner = crate::testing::TestKey;
#[cfg(all(not(target_arch = "wasm32"), not(feature = "testing")))]
type Inner = std::convert::Infallible;

/// A key imported into the gateway, pinned to its algorithm. Dropping it frees it (an
/// instance holds at most 256).
pub struct Key {
    alg: Algorithm,
    #[cfg_attr(
        all(not(target_arch = "wasm32"), not(feature = "testing")),
        allow(dead_code, reason = "never built in this configuration")
    )]
    inner: Inner,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("alg", &self.alg).finish()
    }
}

impl Key {
    /// Parses and checks key material for `alg`. The error names the algorithm and what is
    /// wrong (material that does not fit the algorithm, wrong size or curve, malformed).
    pub fn import(alg: Algorithm, material: KeyMaterial<'_>) -> Result<Self, Error> {
        let inner: Result<Inner, String> = host_call!(
            wit => wit_crypto::import_key(alg.wit(), &material.wit()),
            test |h| => h.crypto_import(alg, material)
        );
        Ok(Self { alg, inner: inner? })
    }

    /// The algorithm it was imported for.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Whether `signature` is a valid signature of `message` (a wrong-length signature is
    /// simply not valid).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        host_call!(
            wit => self.inner.verify(message, signature),
            test |_h| => self.inner.verify(message, signature)
        )
    }
}
