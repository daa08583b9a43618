//! Bearer tokens of any shape, as the gateway and the limiter sidecar verify them (the same
//! verifier): nothing panics, no made-up token names a caller, and a token the mesh signs for a
//! made-up subject names exactly that subject, or is refused when the subject is no valid id.

#![no_main]

use std::{sync::OnceLock, time::Duration};

use flashsale_gateway::{
    auth::{Signer, Verifier},
    config::AuthConfig,
};
use libfuzzer_sys::fuzz_target;

fn config() -> AuthConfig {
    AuthConfig {
        secret: "a-fuzzing-secret-0123456789abcdef".to_owned().into(),
        ..AuthConfig::default()
    }
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let shutdown = flashsale_runtime::Shutdown::new();
        runtime
            .block_on(Verifier::load(&config(), &shutdown))
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for header in [text.to_owned(), format!("Bearer {text}")] {
        if let Ok(caller) = verifier().verify(&header) {
            panic!("a made-up token verified: {caller:?}");
        }
    }
    let signed = Signer::new(&config())
        .unwrap()
        .token(text, false, Duration::from_secs(60));
    match verifier().verify(&format!("Bearer {signed}")) {
        Ok(caller) => assert_eq!(caller.user_id, text),
        Err(_) => assert!(flashsale_proto::rules::text_id("sub", text).is_err()),
    }
});
