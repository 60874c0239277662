//! JWT verification: every row of the bad-input table that concerns tokens, with keys made
//! here (HS256 secret, ES256 key pair).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use streamhouse::transport::{Metadata, Peer};
use streamhouse_auth::{AuthError, Authenticator, Jwt, JwtAlgorithm};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn bearer(token: &str) -> Metadata {
    let mut m = Metadata::new();
    m.insert("authorization", format!("Bearer {token}"))
        .unwrap();
    m
}

fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn check(jwt: &Jwt, token: &str) -> Result<String, AuthError> {
    jwt.authenticate(&Peer::default(), &bearer(token))
        .map(|p| p.name().to_owned())
}

fn b64(bytes: &[u8]) -> String {
    base64url(bytes)
}

/// Base64url without padding (the JWT alphabet).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn hs256_tokens_are_checked_claim_by_claim() {
    let jwt = Jwt::new(JwtAlgorithm::Hs256, SECRET)
        .unwrap()
        .issuer("https://idp.example")
        .audience("streamhouse");
    let good = json!({"sub": "payments", "exp": now() + 600, "iss": "https://idp.example", "aud": "streamhouse"});
    assert_eq!(
        check(&jwt, &hs256(good.clone(), SECRET)).unwrap(),
        "payments"
    );
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        hs256(claims, SECRET)
    };
    let without = |key: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(key);
        hs256(claims, SECRET)
    };
    assert_eq!(
        check(
            &jwt,
            &hs256(good.clone(), b"another-secret-of-at-least-32-bytes!")
        ),
        Err(AuthError::Invalid),
        "wrong signature"
    );
    assert_eq!(
        check(&jwt, &with("exp", json!(now() - 10))),
        Err(AuthError::Expired),
        "expired"
    );
    assert_eq!(
        check(&jwt, &with("nbf", json!(now() + 600))),
        Err(AuthError::NotYetValid),
        "not yet valid"
    );
    assert!(
        matches!(
            check(&jwt, &with("iss", json!("https://evil.example"))),
            Err(AuthError::Claim(_))
        ),
        "wrong issuer"
    );
    assert!(
        matches!(
            check(&jwt, &with("aud", json!("someone-else"))),
            Err(AuthError::Claim(_))
        ),
        "wrong audience"
    );
    let no_expiry = check(&jwt, &without("exp"));
    assert!(
        matches!(no_expiry, Err(AuthError::Claim(_))),
        "no expiry: {no_expiry:?}"
    );
    assert!(
        matches!(check(&jwt, &without("sub")), Err(AuthError::Claim(_))),
        "no subject"
    );
    // Found by an outside review: with an issuer and an audience configured, a token that
    // carries neither claim was let through.
    assert!(
        matches!(check(&jwt, &without("iss")), Err(AuthError::Claim(_))),
        "no issuer"
    );
    assert!(
        matches!(check(&jwt, &without("aud")), Err(AuthError::Claim(_))),
        "no audience"
    );
    // Subjects that cannot be principals (log injection, the wildcard).
    for sub in ["alice\nallow x", "alice bob", "*", ""] {
        assert!(
            matches!(
                check(&jwt, &with("sub", json!(sub))),
                Err(AuthError::Claim(_))
            ),
            "sub {sub:?}"
        );
    }
    let token = hs256(good.clone(), SECRET);
    assert!(
        matches!(
            check(&jwt, &token[..token.len() / 2]),
            Err(AuthError::Malformed(_) | AuthError::Invalid)
        ),
        "truncated"
    );
    assert!(
        matches!(check(&jwt, "not.a.jwt"), Err(AuthError::Malformed(_))),
        "malformed"
    );
    // `alg: none`, unsigned.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    assert!(check(&jwt, &none).is_err(), "alg none");
    // The last signature byte flipped.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    assert!(
        check(&jwt, std::str::from_utf8(&forged).unwrap()).is_err(),
        "flipped signature"
    );
    assert!(
        Jwt::new(JwtAlgorithm::Hs256, b"short").is_err(),
        "a short secret is refused"
    );
    // Found by an outside review: a PEM public key accepted as an HMAC secret (anyone holding
    // the public key could mint tokens), and a private key where the public one belongs.
    let pair = rcgen::KeyPair::generate().unwrap();
    assert!(Jwt::new(JwtAlgorithm::Hs256, pair.public_key_pem().as_bytes()).is_err());
    assert!(Jwt::new(JwtAlgorithm::Es256, pair.serialize_pem().as_bytes()).is_err());
    // A key file's trailing line break is not part of the secret.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, [SECRET, b"\n"].concat()).unwrap();
    let from_file = Jwt::from_file(JwtAlgorithm::Hs256, &file).unwrap();
    let plain = hs256(json!({"sub": "payments", "exp": now() + 600}), SECRET);
    assert_eq!(check(&from_file, &plain).unwrap(), "payments");
}

#[test]
fn es256_refuses_a_token_hmac_signed_with_its_public_key() {
    let pair = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let public = pair.public_key_pem();
    let jwt = Jwt::new(JwtAlgorithm::Es256, public.as_bytes()).unwrap();
    let claims = json!({"sub": "search", "exp": now() + 600});
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let good = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap();
    assert_eq!(check(&jwt, &good).unwrap(), "search");
    // Algorithm confusion: HS256 with the public key's PEM as the secret.
    let confused = hs256(claims, public.as_bytes());
    assert_eq!(
        check(&jwt, &confused),
        Err(AuthError::Malformed("unexpected JWT algorithm"))
    );
}

#[test]
fn a_token_that_expires_while_its_connection_stays_open_stops_working_at_its_expiry() {
    let clock = Arc::new(AtomicU64::new(now()));
    let read = clock.clone();
    let jwt = Jwt::new(JwtAlgorithm::Hs256, SECRET)
        .unwrap()
        .with_clock(move || read.load(Ordering::SeqCst));
    let exp = now() + 60;
    let token = hs256(json!({"sub": "payments", "exp": exp}), SECRET);
    assert_eq!(check(&jwt, &token).unwrap(), "payments");
    clock.store(exp - 1, Ordering::SeqCst);
    assert_eq!(
        check(&jwt, &token).unwrap(),
        "payments",
        "remembered, still valid"
    );
    clock.store(exp, Ordering::SeqCst);
    assert_eq!(
        check(&jwt, &token),
        Err(AuthError::Expired),
        "at its expiry"
    );
}

/// RS256 with a real RSA key pair (a fixture made for this test only; ring cannot generate
/// RSA keys): a good token passes; the private key is refused where the public one belongs.
#[test]
fn rs256_tokens_verify_with_the_public_key() {
    let private = include_bytes!("keys/rs256-test-only.key");
    let public = include_bytes!("keys/rs256-test-only.pub");
    let jwt = Jwt::new(JwtAlgorithm::Rs256, public).unwrap();
    let claims = json!({"sub": "payments", "exp": now() + 600});
    let signing = EncodingKey::from_rsa_pem(private).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signing).unwrap();
    assert_eq!(check(&jwt, &token).unwrap(), "payments");
    // An ES256 or HS256 token is refused by an RS256 agent.
    assert!(check(&jwt, &hs256(claims, public)).is_err());
    assert!(Jwt::new(JwtAlgorithm::Rs256, private).is_err());
}
