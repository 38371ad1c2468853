//! The `crypto` interface of contract 0.2.0: keys imported once per instance and signature
//! verification done natively with aws-lc-rs (the library rustls already uses here), so a
//! plugin verifying a JWT pays microseconds instead of the milliseconds of big-number
//! arithmetic compiled to wasm. HMAC tags are compared in constant time
//! (`aws_lc_rs::hmac::verify`).
//!
//! A key lives in its instance's resource table for as long as the guest holds the handle;
//! each instance may hold at most [`MAX_KEYS_PER_INSTANCE`]. Bad material is an `err` naming
//! the algorithm and what is wrong, never a trap.

use aws_lc_rs::{hmac, signature};
use wasmtime::component::Resource;

use super::bindings::crypto::{self as wit, Algorithm, KeyMaterial};
use super::host::HostState;

/// Most keys one instance may hold at once.
pub const MAX_KEYS_PER_INSTANCE: usize = 256;
/// Largest key material accepted (a PEM certificate of an 8192-bit RSA key fits easily).
pub const MAX_MATERIAL_BYTES: usize = 16 * 1024;
/// RSA moduli accepted, in bits (the range aws-lc-rs verifies with).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// An imported key, pinned to its algorithm.
pub struct Key {
    alg: Algorithm,
    inner: Inner,
}

enum Inner {
    // Boxed: an HMAC key holds its precomputed inner and outer states (over 1 KiB).
    Hmac(Box<hmac::Key>),
    Public(signature::ParsedPublicKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the material: an HMAC key is a secret.
        f.debug_struct("Key").field("alg", &name(self.alg)).finish()
    }
}

/// The JWS name of an algorithm, for messages.
pub fn name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Hs256 => "hs256",
        Algorithm::Hs384 => "hs384",
        Algorithm::Hs512 => "hs512",
        Algorithm::Rs256 => "rs256",
        Algorithm::Rs384 => "rs384",
        Algorithm::Rs512 => "rs512",
        Algorithm::Ps256 => "ps256",
        Algorithm::Ps384 => "ps384",
        Algorithm::Ps512 => "ps512",
        Algorithm::Es256 => "es256",
        Algorithm::Es384 => "es384",
        Algorithm::Eddsa => "eddsa",
    }
}

fn material_kind(material: &KeyMaterial) -> &'static str {
    match material {
        KeyMaterial::Secret(_) => "a secret",
        KeyMaterial::SpkiDer(_) => "an spki-der key",
        KeyMaterial::Pem(_) => "a pem key",
        KeyMaterial::Rsa(_) => "rsa components",
        KeyMaterial::Ec(_) => "an ec point",
        KeyMaterial::Ed25519(_) => "an ed25519 key",
    }
}

fn material_len(material: &KeyMaterial) -> usize {
    match material {
        KeyMaterial::Secret(b) | KeyMaterial::SpkiDer(b) | KeyMaterial::Ed25519(b) => b.len(),
        KeyMaterial::Pem(text) => text.len(),
        KeyMaterial::Rsa(rsa) => rsa.n.len() + rsa.e.len(),
        KeyMaterial::Ec(point) => point.x.len() + point.y.len(),
    }
}

/// The public-key verification algorithm of `alg` (`None` for HMAC).
fn public_algorithm(alg: Algorithm) -> Option<&'static dyn signature::VerificationAlgorithm> {
    Some(match alg {
        Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => return None,
        Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
        Algorithm::Eddsa => &signature::ED25519,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec(usize),
    Ed25519,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => Family::Hmac,
        Algorithm::Rs256
        | Algorithm::Rs384
        | Algorithm::Rs512
        | Algorithm::Ps256
        | Algorithm::Ps384
        | Algorithm::Ps512 => Family::Rsa,
        Algorithm::Es256 => Family::Ec(32),
        Algorithm::Es384 => Family::Ec(48),
        Algorithm::Eddsa => Family::Ed25519,
    }
}

/// Parses and checks key material for `alg`.
pub fn import(alg: Algorithm, material: KeyMaterial) -> Result<Key, String> {
    let n = name(alg);
    let len = material_len(&material);
    if len > MAX_MATERIAL_BYTES {
        return Err(format!(
            "{n}: key material of {len} bytes, over the {MAX_MATERIAL_BYTES}-byte limit"
        ));
    }
    let fam = family(alg);
    let inner = match (fam, material) {
        (Family::Hmac, KeyMaterial::Secret(secret)) => {
            if secret.is_empty() {
                return Err(format!("{n}: the secret is empty"));
            }
            let digest = match alg {
                Algorithm::Hs384 => hmac::HMAC_SHA384,
                Algorithm::Hs512 => hmac::HMAC_SHA512,
                _ => hmac::HMAC_SHA256,
            };
            Inner::Hmac(Box::new(hmac::Key::new(digest, &secret)))
        }
        (Family::Hmac, other) => {
            return Err(format!(
                "{n} takes a secret, not {} (an HMAC key is never a public key)",
                material_kind(&other)
            ));
        }
        (_, KeyMaterial::Secret(_)) => {
            return Err(format!(
                "{n} needs a public key, not a secret (secrets fit only hs256, hs384, hs512)"
            ));
        }
        (Family::Rsa, KeyMaterial::Rsa(rsa)) => {
            let modulus = strip_zeros(&rsa.n);
            check_rsa_bits(n, modulus.len() * 8 - leading_zero_bits(modulus))?;
            let components = signature::RsaPublicKeyComponents {
                n: modulus,
                e: strip_zeros(&rsa.e),
            };
            let params = rsa_params(alg);
            Inner::Public(
                components
                    .to_parsed_public_key(params)
                    .map_err(|e| format!("{n}: invalid RSA modulus or exponent ({e})"))?,
            )
        }
        (Family::Ec(size), KeyMaterial::Ec(point)) => {
            if point.x.len() != size || point.y.len() != size {
                return Err(format!(
                    "{n}: the ec point's x and y must be {size} bytes each (got {} and {})",
                    point.x.len(),
                    point.y.len()
                ));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * size);
            sec1.push(0x04);
            sec1.extend_from_slice(&point.x);
            sec1.extend_from_slice(&point.y);
            Inner::Public(parse_public(
                alg,
                &sec1,
                "the ec point is not on the curve",
            )?)
        }
        (Family::Ed25519, KeyMaterial::Ed25519(raw)) => {
            if raw.len() != 32 {
                return Err(format!(
                    "{n}: an ed25519 public key is 32 bytes (got {})",
                    raw.len()
                ));
            }
            Inner::Public(parse_public(alg, &raw, "invalid ed25519 public key")?)
        }
        (_, KeyMaterial::SpkiDer(der)) => Inner::Public(public_der(alg, &der)?),
        (_, KeyMaterial::Pem(text)) => {
            let der = pem_public_key(n, &text)?;
            Inner::Public(public_der(alg, &der)?)
        }
        (_, other) => {
            return Err(format!(
                "{n} cannot use {} (expected {})",
                material_kind(&other),
                match fam {
                    Family::Rsa => "rsa components, spki-der or pem",
                    Family::Ec(_) => "an ec point, spki-der or pem",
                    _ => "an ed25519 key, spki-der or pem",
                }
            ));
        }
    };
    Ok(Key { alg, inner })
}

fn rsa_params(alg: Algorithm) -> &'static signature::RsaParameters {
    match alg {
        Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn parse_public(
    alg: Algorithm,
    bytes: &[u8],
    what: &str,
) -> Result<signature::ParsedPublicKey, String> {
    let verification = public_algorithm(alg).expect("a public-key algorithm");
    signature::ParsedPublicKey::new(verification, bytes)
        .map_err(|e| format!("{}: {what} ({e})", name(alg)))
}

/// A DER public key (SubjectPublicKeyInfo, or PKCS#1 `RSAPublicKey` for RSA) for `alg`.
fn public_der(alg: Algorithm, der: &[u8]) -> Result<signature::ParsedPublicKey, String> {
    let n = name(alg);
    let expected = match family(alg) {
        Family::Rsa => "an RSA public key",
        Family::Ec(32) => "a P-256 public key",
        Family::Ec(_) => "a P-384 public key",
        _ => "an Ed25519 public key",
    };
    let key = parse_public(alg, der, &format!("not {expected}"))?;
    if family(alg) == Family::Rsa {
        match rsa_modulus_bits(der) {
            Some(bits) => check_rsa_bits(n, bits)?,
            None => return Err(format!("{n}: not {expected} (unreadable modulus)")),
        }
    }
    Ok(key)
}

fn check_rsa_bits(n: &str, bits: usize) -> Result<(), String> {
    if RSA_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "{n}: an RSA key of {bits} bits; {} to {} bits are accepted",
            RSA_BITS.start(),
            RSA_BITS.end()
        ))
    }
}

/// The DER inside a PEM public key: `PUBLIC KEY`, `RSA PUBLIC KEY` or a `CERTIFICATE`'s
/// SubjectPublicKeyInfo.
fn pem_public_key(n: &str, text: &str) -> Result<Vec<u8>, String> {
    let pem = pem::parse(text).map_err(|e| format!("{n}: malformed PEM ({e})"))?;
    match pem.tag() {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => Ok(pem.contents().to_vec()),
        "CERTIFICATE" => {
            let der = rustls::pki_types::CertificateDer::from(pem.contents());
            let cert = webpki::EndEntityCert::try_from(&der)
                .map_err(|e| format!("{n}: malformed certificate ({e})"))?;
            Ok(cert.subject_public_key_info().as_ref().to_vec())
        }
        tag if tag.contains("PRIVATE") => Err(format!(
            "{n}: a PEM `{tag}` is a private key; give the public key (PUBLIC KEY)"
        )),
        tag => Err(format!(
            "{n}: a PEM `{tag}` is not a public key (expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)"
        )),
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn leading_zero_bits(bytes: &[u8]) -> usize {
    bytes.first().map_or(0, |b| b.leading_zeros() as usize)
}

/// The bit length of the modulus of a DER RSA public key (PKCS#1 `RSAPublicKey` or a
/// SubjectPublicKeyInfo wrapping one). Hand-written (a few lines of DER walking): aws-lc-rs
/// reports the modulus size only with its `ring-io` feature, which would rebuild the TLS
/// stack with another feature set; the key itself was already parsed and checked by
/// aws-lc-rs before this runs.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    /// One DER element: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[count..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    fn pkcs1(der: &[u8]) -> Option<usize> {
        let (0x30, seq, _) = element(der)? else {
            return None;
        };
        let (0x02, modulus, _) = element(seq)? else {
            return None;
        };
        let modulus = strip_zeros(modulus);
        Some(modulus.len() * 8 - leading_zero_bits(modulus))
    }
    pkcs1(der).or_else(|| {
        let (0x30, spki, _) = element(der)? else {
            return None;
        };
        let (0x30, _alg, rest) = element(spki)? else {
            return None;
        };
        let (0x03, bits, _) = element(rest)? else {
            return None;
        };
        pkcs1(bits.get(1..)?)
    })
}

impl Key {
    /// Whether `signature` is valid for `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.inner {
            // Constant-time comparison of the tag.
            Inner::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Inner::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }

    /// The algorithm the key was imported for.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

impl wit::Host for HostState {
    fn import_key(
        &mut self,
        alg: Algorithm,
        material: KeyMaterial,
    ) -> wasmtime::Result<Result<Resource<Key>, String>> {
        let (table, held) = self.crypto_keys();
        if *held >= MAX_KEYS_PER_INSTANCE {
            return Ok(Err(format!(
                "{}: this instance already holds {MAX_KEYS_PER_INSTANCE} keys (drop unused ones)",
                name(alg)
            )));
        }
        let key = match import(alg, material) {
            Ok(key) => key,
            Err(e) => return Ok(Err(e)),
        };
        let handle = table.push(key)?;
        *held += 1;
        Ok(Ok(handle))
    }
}

impl wit::HostKey for HostState {
    fn algorithm(&mut self, key: Resource<Key>) -> wasmtime::Result<Algorithm> {
        let (table, _) = self.crypto_keys();
        Ok(table.get(&key)?.algorithm())
    }

    fn verify(
        &mut self,
        key: Resource<Key>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        let (table, _) = self.crypto_keys();
        Ok(table.get(&key)?.verify(&message, &signature))
    }

    fn drop(&mut self, key: Resource<Key>) -> wasmtime::Result<()> {
        let (table, held) = self.crypto_keys();
        table.delete(key)?;
        *held = held.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    use super::*;
    use crate::bindings::crypto::{EcPoint, RsaPublic};

    fn err(alg: Algorithm, material: KeyMaterial) -> String {
        import(alg, material).expect_err("import must fail")
    }

    fn spki_pem(der: &[u8]) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", der.to_vec()))
    }

    #[test]
    fn hmac_verifies_its_tag_only() {
        let key = import(Algorithm::Hs256, KeyMaterial::Secret(b"s3cret".to_vec())).unwrap();
        let signer = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let tag = hmac::sign(&signer, b"msg");
        assert!(key.verify(b"msg", tag.as_ref()));
        assert!(!key.verify(b"msg2", tag.as_ref()));
        assert!(
            !key.verify(b"msg", &tag.as_ref()[..31]),
            "a short tag is not valid"
        );
        assert!(!key.verify(b"msg", b""));
    }

    #[test]
    fn ecdsa_and_eddsa_verify_in_every_form() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = ec.public_key().as_ref().to_vec();
        let sig = ec.sign(&rng, b"payload").unwrap();
        let spki = ec.public_key().as_der().unwrap().as_ref().to_vec();
        for material in [
            KeyMaterial::Ec(EcPoint {
                x: point[1..33].to_vec(),
                y: point[33..].to_vec(),
            }),
            KeyMaterial::SpkiDer(spki.clone()),
            KeyMaterial::Pem(spki_pem(&spki)),
        ] {
            let key = import(Algorithm::Es256, material).unwrap();
            assert!(key.verify(b"payload", sig.as_ref()));
            assert!(!key.verify(b"payloaD", sig.as_ref()));
        }
        // The P-256 key is not a P-384 key.
        assert!(err(Algorithm::Es384, KeyMaterial::SpkiDer(spki)).contains("es384"));

        let ed = Ed25519KeyPair::generate().unwrap();
        let key = import(
            Algorithm::Eddsa,
            KeyMaterial::Ed25519(ed.public_key().as_ref().to_vec()),
        )
        .unwrap();
        let sig = ed.sign(b"payload");
        assert!(key.verify(b"payload", sig.as_ref()));
        let mut tampered = sig.as_ref().to_vec();
        tampered[0] ^= 1;
        assert!(!key.verify(b"payload", &tampered));
    }

    #[test]
    fn rsa_pkcs1_and_pss_verify_and_are_not_interchangeable() {
        let rng = SystemRandom::new();
        let pair = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = pair.public_key().as_der().unwrap().as_ref().to_vec();
        let mut pkcs1_sig = vec![0; pair.public_modulus_len()];
        pair.sign(&signature::RSA_PKCS1_SHA256, &rng, b"m", &mut pkcs1_sig)
            .unwrap();
        let mut pss_sig = vec![0; pair.public_modulus_len()];
        pair.sign(&signature::RSA_PSS_SHA256, &rng, b"m", &mut pss_sig)
            .unwrap();
        let rs = import(Algorithm::Rs256, KeyMaterial::Pem(spki_pem(&spki))).unwrap();
        assert!(rs.verify(b"m", &pkcs1_sig));
        assert!(!rs.verify(b"m", &pss_sig));
        let ps = import(Algorithm::Ps256, KeyMaterial::SpkiDer(spki.clone())).unwrap();
        assert!(ps.verify(b"m", &pss_sig));
        assert!(!ps.verify(b"m", &pkcs1_sig));
        // PKCS#1 `RSA PUBLIC KEY` PEM, the key without its SPKI wrapper.
        let pkcs1 = pair.public_key().as_ref().to_vec();
        let pem = pem::encode(&pem::Pem::new("RSA PUBLIC KEY", pkcs1));
        assert!(
            import(Algorithm::Rs256, KeyMaterial::Pem(pem))
                .unwrap()
                .verify(b"m", &pkcs1_sig)
        );
    }

    #[test]
    fn rsa_components_and_their_size_limits() {
        let rng = SystemRandom::new();
        let pair = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.public_key().as_ref().to_vec();
        // PKCS#1: SEQUENCE { INTEGER n, INTEGER e }, with 4-byte headers for a 2048-bit n.
        let n = &der[4 + 4 + 1..4 + 4 + 1 + 256];
        let e = vec![1, 0, 1];
        let mut sig = vec![0; 256];
        pair.sign(&signature::RSA_PKCS1_SHA256, &rng, b"m", &mut sig)
            .unwrap();
        let key = import(
            Algorithm::Rs256,
            KeyMaterial::Rsa(RsaPublic {
                n: n.to_vec(),
                e: e.clone(),
            }),
        )
        .unwrap();
        assert!(key.verify(b"m", &sig));
        let small = err(
            Algorithm::Rs256,
            KeyMaterial::Rsa(RsaPublic {
                n: n[..128].to_vec(),
                e,
            }),
        );
        assert!(
            small.contains("rs256") && small.contains("1024 bits"),
            "{small}"
        );
    }

    #[test]
    fn bad_material_names_the_algorithm_and_the_problem() {
        // Alg confusion: an RSA public key is never an HMAC secret.
        let e = err(
            Algorithm::Hs256,
            KeyMaterial::Pem("-----BEGIN PUBLIC KEY-----".into()),
        );
        assert!(e.starts_with("hs256 takes a secret"), "{e}");
        let e = err(Algorithm::Rs256, KeyMaterial::Secret(b"x".to_vec()));
        assert!(e.contains("rs256 needs a public key"), "{e}");
        let e = err(Algorithm::Hs256, KeyMaterial::Secret(Vec::new()));
        assert!(e.contains("empty"), "{e}");
        let e = err(
            Algorithm::Es256,
            KeyMaterial::Ec(EcPoint {
                x: vec![1; 31],
                y: vec![1; 32],
            }),
        );
        assert!(e.contains("es256") && e.contains("32 bytes"), "{e}");
        let e = err(
            Algorithm::Es256,
            KeyMaterial::Ec(EcPoint {
                x: vec![1; 32],
                y: vec![2; 32],
            }),
        );
        assert!(e.contains("not on the curve"), "{e}");
        let e = err(Algorithm::Eddsa, KeyMaterial::Ed25519(vec![0; 31]));
        assert!(e.contains("32 bytes (got 31)"), "{e}");
        let e = err(Algorithm::Ps256, KeyMaterial::Pem("garbage".into()));
        assert!(e.starts_with("ps256: malformed PEM"), "{e}");
        let e = err(
            Algorithm::Rs256,
            KeyMaterial::Pem(pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]))),
        );
        assert!(e.contains("private key"), "{e}");
        let e = err(
            Algorithm::Rs256,
            KeyMaterial::SpkiDer(vec![0x30, 0x03, 1, 2, 3]),
        );
        assert!(e.starts_with("rs256: not an RSA public key"), "{e}");
        let e = err(
            Algorithm::Eddsa,
            KeyMaterial::Ec(EcPoint {
                x: vec![],
                y: vec![],
            }),
        );
        assert!(e.contains("eddsa cannot use an ec point"), "{e}");
        let e = err(
            Algorithm::Hs512,
            KeyMaterial::Secret(vec![7; MAX_MATERIAL_BYTES + 1]),
        );
        assert!(
            e.contains("hs512") && e.contains("over the 16384-byte limit"),
            "{e}"
        );
    }

    #[test]
    fn modulus_bits_of_malformed_der_is_none() {
        assert_eq!(rsa_modulus_bits(&[]), None);
        assert_eq!(rsa_modulus_bits(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(rsa_modulus_bits(&[0x30, 0x10, 0x02]), None);
    }
}
