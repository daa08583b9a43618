//! The edge under attack, on the real mesh: requests a caller shapes to cost others or the
//! platform something. Each test failed on the code before its fix.

use std::time::Duration;

use flashsale_proto::v1::{self as pb, flash_sale_client::FlashSaleClient};

use crate::{
    e2e::authorized,
    mesh::{Extra, Mesh},
    observability::{scrape, sum},
};

/// Finding 7: every `Purchase` for a made-up sale id added a counter and a metric label set at
/// the gateway, so a caller could grow its memory and the metrics without bound. Made-up ids
/// are answered SALE_NOT_FOUND and counted under one label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_07_made_up_sale_ids_cost_nothing_that_lasts() {
    let mesh = Mesh::start_with(
        "attack 7",
        Extra {
            metrics: true,
            ..Extra::default()
        },
    )
    .await;
    let token = mesh
        .signer()
        .token("mallory", false, Duration::from_secs(600));
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    for i in 0..50 {
        let refused = client
            .purchase(authorized(
                pb::PurchaseRequest {
                    sale_id: format!("ghost-{i}"),
                    quantity: 1,
                    idempotency_key: format!("k{i}"),
                    purchase_token: String::new(),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    }
    let port = mesh
        .metrics_ports
        .iter()
        .find(|(name, _)| *name == "gateway")
        .unwrap()
        .1;
    let metrics = scrape(port).await;
    assert!(
        !metrics.contains("ghost-"),
        "made-up sale ids became metric labels:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("ghost-"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sum(&metrics, "flashsale_purchases_total", &["sale=\"unknown\""]),
        50.0,
        "counted under one label"
    );
}

/// Purchases limited to 5 an hour per buyer, and nothing else.
const FIVE_AN_HOUR_PER_BUYER: &str = "domain: flashsale
descriptors:
  - key: method
    value: /flashsale.v1.FlashSale/Purchase
    descriptors:
      - key: user
        rate_limit: { unit: hour, requests_per_unit: 5 }
";

/// Signs tokens with a key that is not the mesh's.
fn forger() -> flashsale_gateway::auth::Signer {
    flashsale_gateway::auth::Signer::new(&flashsale_gateway::config::AuthConfig {
        secret: "not-the-mesh-secret-0123456789abcdef".to_owned().into(),
        ..Default::default()
    })
    .unwrap()
}

/// Finding 3: the sidecar charged the per-user limit to the unverified `sub` of any token, so
/// strangers with forged tokens naming a victim spent the victim's budget before the gateway
/// refused them. Twenty calls with tokens signed by a wrong key and naming the victim, then the
/// victim's five genuine calls: all five must get through the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_03_forged_tokens_spend_nothing_of_their_victim() {
    let mesh = Mesh::start_with(
        "attack 3",
        Extra {
            rules: Some(FIVE_AN_HOUR_PER_BUYER),
            ..Extra::default()
        },
    )
    .await;
    let sale = crate::e2e::create_sale(&mesh, 100, 10, 600_000).await;
    let forger = forger();
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.sidecar).await);
    let purchase = |token: String, i: usize| {
        authorized(
            pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity: 1,
                idempotency_key: format!("k{i}"),
                purchase_token: String::new(),
            },
            &token,
        )
    };
    for i in 0..20 {
        let forged = forger.token("victim", false, Duration::from_secs(600));
        let refused = client.purchase(purchase(forged, i)).await.unwrap_err();
        assert_ne!(refused.code(), tonic::Code::Ok);
    }
    for i in 0..5 {
        let genuine = mesh
            .signer()
            .token("victim", false, Duration::from_secs(600));
        let answer = client.purchase(purchase(genuine, 100 + i)).await;
        assert!(
            answer.is_ok(),
            "the victim's genuine call {i} was refused: {answer:?}"
        );
    }
}

/// Finding 8, its first half: a token whose `aud` is an array (as RFC 7519 allows, and as
/// Keycloak and Auth0 issue them) was refused. One naming the mesh's audience among others buys;
/// one naming only others is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_08_a_token_with_an_audience_array_is_accepted() {
    let mesh = Mesh::start("attack 8").await;
    let sale = crate::e2e::create_sale(&mesh, 10, 1, 600_000).await;
    let key = jsonwebtoken::EncodingKey::from_secret(crate::mesh::SECRET.as_bytes());
    let token = |user: &str, aud: &[&str]| {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            sub: &'a str,
            exp: u64,
            aud: &'a [&'a str],
        }
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = Claims {
            sub: user,
            exp,
            aud,
        };
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    let purchase = |token: &str| {
        authorized(
            pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity: 1,
                idempotency_key: "k".into(),
                purchase_token: String::new(),
            },
            token,
        )
    };
    let accepted = client
        .purchase(purchase(&token("alice", &["account", "flashsale"])))
        .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    let refused = client
        .purchase(purchase(&token("bob", &["account", "billing"])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}

/// Finding 2: the per-sale limit came from a `flashsale-sale-id` header the buyer writes, so
/// leaving it out (or naming another sale in it) dropped the sale's limit. The sidecar now reads
/// the sale from the Purchase's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_02_the_sale_limit_holds_whatever_the_headers_say() {
    let mesh = Mesh::start_with(
        "attack 2",
        Extra {
            rules: Some(
                "domain: flashsale
descriptors:
  - key: sale
    rate_limit: { unit: hour, requests_per_unit: 3 }
",
            ),
            ..Extra::default()
        },
    )
    .await;
    let sale = crate::e2e::create_sale(&mesh, 100, 1, 600_000).await;
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.sidecar).await);
    let mut through = 0;
    for i in 0..10 {
        let token = mesh
            .signer()
            .token(&format!("buyer-{i}"), false, Duration::from_secs(600));
        let mut call = authorized(
            pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity: 1,
                idempotency_key: "k".into(),
                purchase_token: String::new(),
            },
            &token,
        );
        // Half the calls name no sale in the header, half another one.
        if i % 2 == 1 {
            call.metadata_mut()
                .insert("flashsale-sale-id", "another-sale".parse().unwrap());
        }
        match client.purchase(call).await {
            Ok(_) => through += 1,
            Err(status) => assert_eq!(
                flashsale_runtime::status::reason_of(&status).as_deref(),
                Some("RATE_LIMITED"),
                "{status:?}"
            ),
        }
    }
    assert_eq!(through, 3, "the sale's limit of 3 an hour holds");
}

/// Finding 8, its second half: keys came only from one PEM file. The gateway now verifies
/// against the identity provider's key set, fetched over https and read again every
/// `jwks_refresh`, each token's key chosen by its `kid`. A rotation in the middle of a sale
/// (the new key published beside the old, tokens of both in use, then the old withdrawn) loses
/// no purchase; a token of the withdrawn key is refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_08_b_a_key_rotation_mid_sale_loses_no_purchase() {
    use crate::jwks::{IssuerKey, JwksServer};

    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (IssuerKey::new("2026-11"), IssuerKey::new("2026-12"));
    let idp = JwksServer::start(dir.path(), &[&old]).await;
    let env = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    let mesh = Mesh::start_with(
        "attack 8b",
        Extra {
            env: vec![
                env("FLASHSALE_GATEWAY__AUTH__ALGORITHM", "ES256"),
                env("FLASHSALE_GATEWAY__AUTH__JWKS", &idp.url),
                env(
                    "FLASHSALE_GATEWAY__AUTH__JWKS_CA_FILE",
                    idp.ca.to_str().unwrap(),
                ),
                env("FLASHSALE_GATEWAY__AUTH__JWKS_REFRESH", "1s"),
            ],
            ..Extra::default()
        },
    )
    .await;
    let channel = mesh.channel(mesh.ports.gateway).await;
    let now = flashsale_proto::time::now_ms();
    let sale = pb::sale_admin_client::SaleAdminClient::new(channel.clone())
        .create_sale(authorized(
            pb::CreateSaleRequest {
                sale: Some(pb::Sale {
                    name: "rotation".into(),
                    stock: 30,
                    per_user_limit: 1,
                    unit_price_minor: 100,
                    currency: "CNY".into(),
                    starts_at: Some(flashsale_proto::time::timestamp(now - 1_000)),
                    ends_at: Some(flashsale_proto::time::timestamp(now + 3_600_000)),
                    ..pb::Sale::default()
                }),
            },
            &old.token("operator", true),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut client = FlashSaleClient::new(channel);
    let mut buy = async |buyer: usize, key: &IssuerKey| {
        client
            .purchase(authorized(
                pb::PurchaseRequest {
                    sale_id: sale.sale_id.clone(),
                    quantity: 1,
                    idempotency_key: format!("rotation-{buyer}"),
                    purchase_token: String::new(),
                },
                &key.token(&format!("buyer-{buyer}"), false),
            ))
            .await
    };
    let refresh = Duration::from_millis(2_500);
    for buyer in 0..10 {
        assert!(buy(buyer, &old).await.is_ok(), "buyer {buyer}");
    }
    idp.publish(&[&old, &new]);
    tokio::time::sleep(refresh).await;
    for buyer in 10..20 {
        let key = if buyer % 2 == 0 { &old } else { &new };
        let bought = buy(buyer, key).await;
        assert!(bought.is_ok(), "buyer {buyer}: {bought:?}");
    }
    idp.publish(&[&new]);
    tokio::time::sleep(refresh).await;
    for buyer in 20..30 {
        assert!(buy(buyer, &new).await.is_ok(), "buyer {buyer}");
    }
    let withdrawn = buy(30, &old).await.unwrap_err();
    assert_eq!(
        withdrawn.code(),
        tonic::Code::Unauthenticated,
        "{withdrawn:?}"
    );

    // Every accepted purchase became an order.
    let store = mesh.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let orders = store.sale_orders(&sale.sale_id).await.unwrap().len();
        if orders == 30 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{orders} orders of 30"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One way a buyer may tamper with a Purchase's headers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tamper {
    /// A `flashsale-sale-id` header over the limiter's bound (a Purchase's sale is read from
    /// its message: the header must change nothing).
    Oversized,
    /// A `flashsale-sale-id` header that is not text.
    NonAscii,
    /// An `x-forwarded-for` naming a new address each time.
    ForgedForwardedFor,
    /// No token at all.
    Missing,
    /// A token naming another buyer, signed with a key of the attacker's.
    ForgedToken,
    /// An `authorization` of 5,000 bytes.
    OversizedToken,
    /// An `authorization` that is not text.
    NonAsciiToken,
}

const TAMPERS: [Tamper; 7] = [
    Tamper::Oversized,
    Tamper::NonAscii,
    Tamper::ForgedForwardedFor,
    Tamper::Missing,
    Tamper::ForgedToken,
    Tamper::OversizedToken,
    Tamper::NonAsciiToken,
];

impl Tamper {
    /// Whether the call no longer carries the buyer's own verifiable token.
    fn disowns(self) -> bool {
        matches!(
            self,
            Self::Missing | Self::ForgedToken | Self::OversizedToken | Self::NonAsciiToken
        )
    }
}

/// The acceptance of the edge's whole issue: rounds of ten Purchases in a row from one buyer,
/// each tampered at random (any mix of the above, or none), through the sidecar. At most the
/// buyer's limit of 5 gets through, exactly as many as the untampered-enough calls allow; and
/// the buyer whose name the forged tokens carry still has their whole budget afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tampered_calls_get_no_buyer_past_their_limit_and_cost_no_one_else() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mesh = Mesh::start_with(
        "edge acceptance",
        Extra {
            rules: Some(FIVE_AN_HOUR_PER_BUYER),
            ..Extra::default()
        },
    )
    .await;
    let sale = crate::e2e::create_sale(&mesh, 1_000, 10, 600_000).await;
    let forger = forger();
    let seed = rand::random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.sidecar).await);
    let token = |user: &str| mesh.signer().token(user, false, Duration::from_secs(600));
    for round in 0..6 {
        let (buyer, victim) = (format!("buyer-{round}"), format!("victim-{round}"));
        let (mut through, mut eligible) = (0, 0);
        for i in 0..10 {
            let tampers: Vec<Tamper> = TAMPERS
                .into_iter()
                .filter(|_| rng.random_bool(0.2))
                .collect();
            let mut call = tonic::Request::new(pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity: 1,
                idempotency_key: format!("{buyer}-{i}"),
                purchase_token: String::new(),
            });
            let mut bearer = Some(token(&buyer));
            let headers = call.metadata_mut();
            for tamper in &tampers {
                match tamper {
                    Tamper::Oversized => {
                        headers.insert("flashsale-sale-id", "s".repeat(1_025).try_into().unwrap())
                    }
                    Tamper::NonAscii => headers.insert(
                        "flashsale-sale-id",
                        tonic::metadata::MetadataValue::try_from("caf\u{e9}".as_bytes()).unwrap(),
                    ),
                    Tamper::ForgedForwardedFor => headers.insert(
                        "x-forwarded-for",
                        format!("198.51.100.{}", rng.random::<u8>())
                            .try_into()
                            .unwrap(),
                    ),
                    Tamper::Missing => {
                        bearer = None;
                        None
                    }
                    Tamper::ForgedToken => {
                        bearer =
                            bearer.map(|_| forger.token(&victim, false, Duration::from_secs(600)));
                        None
                    }
                    Tamper::OversizedToken => {
                        bearer = bearer.map(|_| "x".repeat(5_000));
                        None
                    }
                    Tamper::NonAsciiToken => None,
                };
            }
            if tampers.contains(&Tamper::NonAsciiToken) {
                let value = tonic::metadata::MetadataValue::try_from("Bearer caf\u{e9}".as_bytes());
                headers.insert("authorization", value.unwrap());
            } else if let Some(bearer) = bearer {
                headers.insert("authorization", flashsale_gateway::auth::bearer(&bearer));
            }
            eligible += usize::from(!tampers.iter().any(|t| t.disowns()));
            match client.purchase(call).await {
                Ok(_) => through += 1,
                Err(status) => assert!(
                    matches!(
                        status.code(),
                        tonic::Code::ResourceExhausted
                            | tonic::Code::InvalidArgument
                            | tonic::Code::Unauthenticated
                    ),
                    "seed {seed}, {tampers:?}: {status:?}"
                ),
            }
        }
        assert!(through <= 5, "seed {seed}: {through} of 10 through");
        assert_eq!(through, eligible.min(5), "seed {seed}, round {round}");
        for i in 0..5 {
            let answer = client
                .purchase(authorized(
                    pb::PurchaseRequest {
                        sale_id: sale.sale_id.clone(),
                        quantity: 1,
                        idempotency_key: format!("{victim}-{i}"),
                        purchase_token: String::new(),
                    },
                    &token(&victim),
                ))
                .await;
            assert!(
                answer.is_ok(),
                "seed {seed}: {victim}'s call {i}: {answer:?}"
            );
        }
    }
}
