//! The auth surface, attacked: forged tokens, refresh-token theft, brute
//! force, enumeration, privilege escalation, abuse of uploads and of rate.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{test_settings, TestApp, TestUser, TEST_PASSWORD};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("JSON error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn me_with(app: &TestApp, token: &str) -> (StatusCode, String) {
    let response = app
        .client
        .get(app.url("/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    if response.status() == StatusCode::OK {
        return (StatusCode::OK, String::new());
    }
    error_of(response).await
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_anonymous("/v1/auth/refresh", json!({"refresh_token": token}))
        .await
}

#[tokio::test]
async fn forged_expired_and_revoked_tokens_all_get_invalid_token() {
    let app = TestApp::spawn().await;
    let user = app.register("target@example.com").await;
    let claims = claims_of(&user.token);
    let kid = jsonwebtoken::decode_header(&user.token)
        .unwrap()
        .kid
        .unwrap();
    let own_key = EncodingKey::from_rsa_pem(common::signing_key_pem().as_bytes()).unwrap();
    let rs256 = |claims: &Value, kid: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        encode(&header, claims, &own_key).unwrap()
    };
    let with = |field: &str, value: Value| {
        let mut changed = claims.clone();
        changed[field] = value;
        changed
    };
    let now = chrono::Utc::now().timestamp();

    // alg: none
    let none_header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let alg_none = format!("{none_header}.{body}.");
    // HS256 keyed with the server's public key (the classic confusion attack)
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_pem = {
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&common::signing_key_pem()).unwrap();
        rsa::RsaPublicKey::from(&private)
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    };
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = encode(
        &hs_header,
        &claims,
        &EncodingKey::from_secret(public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    // a key we never published
    let stranger_pem = chronicle::auth::keys::generate_private_key_pem().unwrap();
    let stranger = chronicle::auth::keys::KeyPair::from_pem(&stranger_pem).unwrap();
    let mut unknown_header = Header::new(Algorithm::RS256);
    unknown_header.kid = Some(stranger.kid.clone());
    let unknown_kid = encode(&unknown_header, &claims, &stranger.encoding).unwrap();
    let stranger_with_our_kid = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.clone());
        encode(&header, &claims, &stranger.encoding).unwrap()
    };
    // our key, bad claims
    let expired = rs256(&with("exp", json!(now - 120)), &kid);
    let not_yet = rs256(&with("nbf", json!(now + 600)), &kid);
    let wrong_aud = rs256(&with("aud", json!("someone-else")), &kid);
    let wrong_iss = rs256(&with("iss", json!("evil")), &kid);
    let other_user = rs256(&with("sub", json!(uuid::Uuid::new_v4())), &kid);
    // a valid token with its payload edited (roles: admin)
    let mut parts: Vec<String> = user.token.split('.').map(String::from).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(with("roles", json!(["user", "admin"])).to_string());
    let tampered = parts.join(".");

    assert_eq!(
        me_with(&app, &user.token).await.0,
        StatusCode::OK,
        "the genuine token works"
    );
    for (name, token) in [
        ("alg none", alg_none),
        ("HS256 with the public key", hs256),
        ("unknown kid", unknown_kid),
        ("foreign key under our kid", stranger_with_our_kid),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_iss),
        ("subject outside the session", other_user),
        ("tampered payload", tampered),
        ("garbage", "a.b.c".to_string()),
    ] {
        assert_eq!(
            me_with(&app, &token).await,
            (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into()),
            "{name}"
        );
    }

    // A body that is not declared JSON is refused (415), and logs nothing out.
    for path in ["/v1/auth/logout", "/v1/user/profile/reset-api-key"] {
        let refused = app
            .client
            .post(app.url(path))
            .bearer_auth(&user.token)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path}"
        );
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNSUPPORTED_MEDIA_TYPE", "{path}");
    }
    assert_eq!(me_with(&app, &user.token).await.0, StatusCode::OK);

    // logged out: the access token dies at once
    let logout = app.send(Method::POST, "/v1/auth/logout", &user, None).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me_with(&app, &user.token).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into()),
        "logged out"
    );

    // deactivated: every token of the account dies
    let other = app.register("leaving@example.com").await;
    let second = app.login("leaving@example.com").await;
    let gone = app
        .send(Method::DELETE, "/v1/user/profile", &other, None)
        .await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    for token in [&other.token, &second.token] {
        assert_eq!(
            me_with(&app, token).await,
            (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into()),
            "deactivated"
        );
    }
    let login = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "leaving@example.com", "password": TEST_PASSWORD}),
        )
        .await;
    assert_eq!(
        error_of(login).await,
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_only_its_family() {
    let app = TestApp::spawn().await;
    let phone = app.register("rotate@example.com").await;
    let laptop = app.login("rotate@example.com").await;

    let rotated = refresh(&app, &phone.refresh_token).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    let newest_refresh = rotated["refresh_token"].as_str().unwrap().to_string();
    let newest_access = rotated["access_token"].as_str().unwrap().to_string();
    assert_ne!(newest_refresh, phone.refresh_token);
    assert_eq!(me_with(&app, &newest_access).await.0, StatusCode::OK);

    // The spent token comes back (stolen): the whole family is revoked.
    let reused = refresh(&app, &phone.refresh_token).await;
    assert_eq!(
        error_of(reused).await,
        (StatusCode::UNAUTHORIZED, "TOKEN_REUSED".into())
    );
    let after = refresh(&app, &newest_refresh).await;
    assert_eq!(
        error_of(after).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into()),
        "the newest token of the family fails too"
    );
    for token in [&phone.token, &newest_access] {
        assert_eq!(
            me_with(&app, token).await.0,
            StatusCode::UNAUTHORIZED,
            "access tokens of the family"
        );
    }

    // The other login is untouched.
    assert_eq!(me_with(&app, &laptop.token).await.0, StatusCode::OK);
    assert_eq!(
        refresh(&app, &laptop.refresh_token).await.status(),
        StatusCode::OK
    );
    let unknown = refresh(&app, "rt_not-a-token").await;
    assert_eq!(
        error_of(unknown).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn logout_and_password_change_revoke_the_right_families() {
    let app = TestApp::spawn().await;
    let first = app.register("families@example.com").await;
    let second = app.login("families@example.com").await;
    let third = app.login("families@example.com").await;

    assert_eq!(
        app.send(Method::POST, "/v1/auth/logout", &first, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        me_with(&app, &first.token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        error_of(refresh(&app, &first.refresh_token).await).await.1,
        "INVALID_TOKEN"
    );
    assert_eq!(
        me_with(&app, &second.token).await.0,
        StatusCode::OK,
        "other families keep working"
    );

    let wrong = app
        .send(
            Method::POST,
            "/v1/auth/change-password",
            &second,
            Some(json!({"current_password": "nope nope", "new_password": "a much better secret"})),
        )
        .await;
    assert_eq!(
        error_of(wrong).await,
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS".into())
    );
    let weak = app
        .send(
            Method::POST,
            "/v1/auth/change-password",
            &second,
            Some(json!({"current_password": TEST_PASSWORD, "new_password": "password"})),
        )
        .await;
    assert_eq!(
        error_of(weak).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR".into())
    );
    let changed = app
        .send(
            Method::POST,
            "/v1/auth/change-password",
            &second,
            Some(
                json!({"current_password": TEST_PASSWORD, "new_password": "a much better secret"}),
            ),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me_with(&app, &second.token).await.0,
        StatusCode::OK,
        "the caller's family stays"
    );
    assert_eq!(
        me_with(&app, &third.token).await.0,
        StatusCode::UNAUTHORIZED,
        "all others are revoked"
    );
    assert_eq!(
        error_of(refresh(&app, &third.refresh_token).await).await.1,
        "INVALID_TOKEN"
    );
    let old = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "families@example.com", "password": TEST_PASSWORD}),
        )
        .await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let new = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "families@example.com", "password": "a much better secret"}),
        )
        .await;
    assert_eq!(new.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn five_failures_lock_the_account_until_an_admin_unlocks_it() {
    let app = TestApp::spawn().await;
    let victim = app.register("victim@example.com").await;
    let admin = app.register("admin@example.com").await;
    let admin = app.grant_role(&admin, "admin").await;
    let attempt = |password: &'static str| {
        app.post_anonymous(
            "/v1/auth/login",
            json!({"email": "victim@example.com", "password": password}),
        )
    };

    for _ in 0..5 {
        assert_eq!(
            error_of(attempt("wrong guess").await).await,
            (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS".into())
        );
    }
    let locked = attempt(TEST_PASSWORD).await;
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(
        error_of(locked).await,
        (StatusCode::LOCKED, "ACCOUNT_LOCKED".into()),
        "even the right password"
    );
    assert_eq!(
        error_of(attempt("wrong guess").await).await.0,
        StatusCode::LOCKED
    );

    let plain = app
        .send(
            Method::POST,
            &format!("/v1/admin/users/{}/unlock", victim.id),
            &victim,
            None,
        )
        .await;
    assert_eq!(
        error_of(plain).await,
        (StatusCode::FORBIDDEN, "FORBIDDEN".into())
    );
    let unlocked = app
        .send(
            Method::POST,
            &format!("/v1/admin/users/{}/unlock", victim.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(unlocked.status(), StatusCode::OK);
    let body: Value = unlocked.json().await.unwrap();
    assert_eq!(body["failed_logins"], 0);
    assert_eq!(attempt(TEST_PASSWORD).await.status(), StatusCode::OK);

    let kinds: Vec<String> = sqlx::query_scalar(
        "select event_type from events where aggregate_id = $1 order by sequence",
    )
    .bind(victim.id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for expected in [
        "LoginFailed",
        "AccountLocked",
        "AccountUnlocked",
        "UserLoggedIn",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} in {kinds:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_the_very_same_answer() {
    let app = TestApp::spawn().await;
    app.register("known@example.com").await;
    let mut answers = Vec::new();
    for email in ["known@example.com", "unknown@example.com"] {
        let response = app
            .post_anonymous(
                "/v1/auth/login",
                json!({"email": email, "password": "wrong password"}),
            )
            .await;
        let status = response.status();
        let mut body: Value = response.json().await.unwrap();
        body["error"]["request_id"] = Value::Null;
        answers.push((status, body));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn every_role_restricted_route_refuses_users_and_anonymous_and_admits_its_roles() {
    let app = TestApp::spawn().await;
    let plain = app.register("plain@example.com").await;
    let mut holders = std::collections::HashMap::new();
    for role in ["admin", "analyst", "developer", "auditor"] {
        let user = app.register(&format!("{role}@example.com")).await;
        holders.insert(role, app.grant_role(&user, role).await);
    }
    let target = plain.id;
    let mut routes: Vec<(Method, String, Option<Value>, Vec<&str>)> = vec![
        (Method::GET, "/v1/admin/users".into(), None, vec!["admin"]),
        (
            Method::POST,
            format!("/v1/admin/users/{target}/roles"),
            Some(json!({"roles": ["user"]})),
            vec!["admin"],
        ),
        (
            Method::POST,
            format!("/v1/admin/users/{target}/unlock"),
            None,
            vec!["admin"],
        ),
        (
            Method::GET,
            "/v1/analytics".into(),
            None,
            vec!["admin", "analyst"],
        ),
        (
            Method::GET,
            "/v1/debug/health/detailed".into(),
            None,
            vec!["admin", "developer"],
        ),
    ];
    let auditors = vec!["admin", "auditor"];
    for path in [
        "/v1/audit/events".to_string(),
        "/v1/audit/log".to_string(),
        "/v1/audit/verify".to_string(),
        "/v1/audit/checkpoints".to_string(),
        format!("/v1/audit/aggregates/User/{target}"),
        "/v1/audit/export?format=ndjson".to_string(),
    ] {
        routes.push((Method::GET, path, None, auditors.clone()));
    }
    for (method, path, body, allowed) in routes {
        let mut anonymous = app.client.request(method.clone(), app.url(&path));
        if let Some(body) = &body {
            anonymous = anonymous.json(body);
        }
        assert_eq!(
            error_of(anonymous.send().await.unwrap()).await,
            (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED".into()),
            "anonymous {path}"
        );
        let response = app.send(method.clone(), &path, &plain, body.clone()).await;
        assert_eq!(
            error_of(response).await,
            (StatusCode::FORBIDDEN, "FORBIDDEN".into()),
            "user {path}"
        );
        for (role, holder) in &holders {
            let status = app
                .send(method.clone(), &path, holder, body.clone())
                .await
                .status();
            if allowed.contains(role) {
                assert_eq!(status, StatusCode::OK, "{role} may {method} {path}");
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} may not {method} {path}"
                );
            }
        }
    }
    let admin = &holders["admin"];
    let unknown_role = app
        .send(
            Method::POST,
            &format!("/v1/admin/users/{target}/roles"),
            admin,
            Some(json!({"roles": ["root"]})),
        )
        .await;
    assert_eq!(
        error_of(unknown_role).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR".into())
    );
    let granted: Value = app
        .send_json(
            Method::POST,
            &format!("/v1/admin/users/{target}/roles"),
            admin,
            Some(json!({"roles": ["analyst"]})),
        )
        .await;
    assert_eq!(
        granted["roles"],
        json!(["user", "analyst"]),
        "user is always kept"
    );
    let listed: Vec<Value> = app
        .send_json(Method::GET, "/v1/admin/users?limit=100", admin, None)
        .await;
    assert_eq!(listed.len(), 5);
    app.stop().await;
}

#[tokio::test]
async fn api_keys_work_in_both_headers_and_a_reset_kills_the_old_one() {
    let app = TestApp::spawn().await;
    let user = app.register("keys@example.com").await;
    let first: Value = app
        .send_json(Method::POST, "/v1/user/profile/reset-api-key", &user, None)
        .await;
    let first = first["api_key"].as_str().unwrap().to_string();
    assert!(first.starts_with("ck_"));
    let bearer = app
        .client
        .get(app.url("/v1/tasks"))
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let header = app
        .client
        .get(app.url("/v1/tasks"))
        .header("x-api-key", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), StatusCode::OK);

    let second: Value = app
        .send_json(Method::POST, "/v1/user/profile/reset-api-key", &user, None)
        .await;
    let second = second["api_key"].as_str().unwrap().to_string();
    let old = app
        .client
        .get(app.url("/v1/tasks"))
        .header("x-api-key", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(old).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into())
    );
    let new = app
        .client
        .get(app.url("/v1/tasks"))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), StatusCode::OK);
    let forged = app
        .client
        .get(app.url("/v1/tasks"))
        .header("x-api-key", "ck_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(forged).await.1, "INVALID_TOKEN");
    app.stop().await;
}

#[tokio::test]
async fn the_request_past_the_limit_gets_429_with_the_rate_limit_headers() {
    let mut settings = test_settings().await;
    settings.rate_limit.auth_per_ip_per_minute = 3;
    let app = TestApp::spawn_with(settings).await;
    for n in 0..3 {
        let response = app
            .post_anonymous(
                "/v1/auth/login",
                json!({"email": "nobody@example.com", "password": "whatever1"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["x-ratelimit-remaining"],
            (2 - n).to_string().as_str()
        );
        assert!(response.headers().contains_key("x-ratelimit-reset"));
    }
    let limited = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "nobody@example.com", "password": "whatever1"}),
        )
        .await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        error_of(limited).await,
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED".into())
    );
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "service routes are not limited"
    );
    app.stop().await;
}

async fn upload(
    app: &TestApp,
    user: &TestUser,
    file_name: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let boundary = "chronicle-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    body.extend(bytes);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    app.client
        .post(app.url("/v1/user/profile/photo"))
        .bearer_auth(&user.token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A real 1×1 PNG.
const TINY_PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\xdacd`\xf8_\x0f\0\x02\x87\x01\x80\xebG\xba\x92\0\0\0\0IEND\xaeB`\x82";

#[tokio::test]
async fn photos_are_checked_by_content_and_size() {
    let app = TestApp::spawn().await;
    let user = app.register("photo@example.com").await;
    let fake = upload(
        &app,
        &user,
        "cat.jpg",
        "image/jpeg",
        b"this is text, not a picture".to_vec(),
    )
    .await;
    assert_eq!(
        error_of(fake).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE".into()
        )
    );
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    huge.resize(6 * 1024 * 1024, 0);
    let too_big = upload(&app, &user, "big.png", "image/png", huge).await;
    assert_eq!(
        error_of(too_big).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into())
    );

    let png = TINY_PNG.to_vec();
    let stored = upload(&app, &user, "renamed.jpg", "image/jpeg", png.clone()).await;
    assert_eq!(stored.status(), StatusCode::OK);
    let profile: Value = stored.json().await.unwrap();
    assert_eq!(profile["photo_url"], "/v1/user/profile/photo");
    let got = app
        .send(Method::GET, "/v1/user/profile/photo", &user, None)
        .await;
    assert_eq!(
        got.headers()["content-type"],
        "image/png",
        "typed by content, not by name"
    );
    assert_eq!(got.bytes().await.unwrap().to_vec(), png);

    let gif = b"GIF89a tiny".to_vec();
    assert_eq!(
        upload(&app, &user, "new.gif", "image/gif", gif.clone())
            .await
            .status(),
        StatusCode::OK
    );
    let got = app
        .send(Method::GET, "/v1/user/profile/photo", &user, None)
        .await;
    assert_eq!(
        got.bytes().await.unwrap().to_vec(),
        gif,
        "the old photo is replaced"
    );
    assert_eq!(
        app.send(Method::DELETE, "/v1/user/profile/photo", &user, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.send(Method::GET, "/v1/user/profile/photo", &user, None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

#[tokio::test]
async fn the_profile_is_readable_editable_and_never_grants_roles() {
    let app = TestApp::spawn().await;
    let user = app.register("profile@example.com").await;
    let other = app.register("taken@example.com").await;
    app.send(
        Method::PUT,
        "/v1/user/profile",
        &other,
        Some(json!({"username": "taken"})),
    )
    .await;
    app.create_task(&user, "counted").await;
    let profile: Value = app
        .send_json(Method::GET, "/v1/user/profile", &user, None)
        .await;
    assert_eq!(profile["usage"]["tasks"], 1);
    assert_eq!(profile["preferences"], json!({}));

    let updated: Value = app
        .send_json(Method::PUT, "/v1/user/profile", &user, Some(json!({"username": "Newname", "name": "New Name", "preferences": {"theme": "dark"}})))
        .await;
    assert_eq!(updated["username"], "newname");
    assert_eq!(updated["preferences"]["theme"], "dark");
    let taken = app
        .send(
            Method::PUT,
            "/v1/user/profile",
            &user,
            Some(json!({"username": "taken"})),
        )
        .await;
    assert_eq!(
        error_of(taken).await,
        (StatusCode::CONFLICT, "CONFLICT".into())
    );
    let roles = app
        .send(
            Method::PUT,
            "/v1/user/profile",
            &user,
            Some(json!({"roles": ["admin"]})),
        )
        .await;
    assert_eq!(
        error_of(roles).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR".into())
    );
    let by_new_name = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"username": "newname", "password": TEST_PASSWORD}),
        )
        .await;
    assert_eq!(
        by_new_name.status(),
        StatusCode::OK,
        "the new username logs in"
    );
    app.stop().await;
}

#[tokio::test]
async fn cors_admits_configured_origins_and_every_answer_has_security_headers() {
    let app = TestApp::spawn().await;
    let preflight = app
        .client
        .request(Method::OPTIONS, app.url("/v1/tasks"))
        .header("origin", "capacitor://localhost")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "capacitor://localhost"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let foreign = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!foreign
        .headers()
        .contains_key("access-control-allow-origin"));
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(foreign.headers()[name], value);
    }
    app.stop().await;
}

#[tokio::test]
async fn verify_token_tells_live_tokens_from_dead_ones() {
    let app = TestApp::spawn().await;
    let user = app.register("verify@example.com").await;
    let live: Value = app
        .post_anonymous("/v1/auth/verify-token", json!({"token": user.token}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(live["valid"], true);
    assert_eq!(live["claims"]["sub"], user.id.to_string());
    app.send(Method::POST, "/v1/auth/logout", &user, None).await;
    let dead: Value = app
        .post_anonymous("/v1/auth/verify-token", json!({"token": user.token}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead, json!({"valid": false}));
    let junk: Value = app
        .post_anonymous("/v1/auth/verify-token", json!({"token": "junk"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(junk["valid"], false);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_signing_key_keeps_older_tokens_valid() {
    let mut settings = test_settings().await;
    settings.auth.private_key_pem = None;
    let app = TestApp::spawn_with(settings.clone()).await;
    let user = app.register("rotation@example.com").await;
    app.stop_keeping_data().await;

    chronicle::auth::keys::rotate(&settings.data_dir).unwrap();
    let app = TestApp::spawn_with(settings).await;
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        me_with(&app, &user.token).await.0,
        StatusCode::OK,
        "a token of the previous key still works"
    );
    let fresh = app.login("rotation@example.com").await;
    let old_kid = jsonwebtoken::decode_header(&user.token).unwrap().kid;
    let new_kid = jsonwebtoken::decode_header(&fresh.token).unwrap().kid;
    assert_ne!(old_kid, new_kid, "the new key signs");
    assert_eq!(jwks["keys"][0]["kid"].as_str(), new_kid.as_deref());
    app.stop().await;
}

#[tokio::test]
async fn a_login_rehashes_a_password_stored_with_old_parameters() {
    let settings = test_settings().await;
    let app = TestApp::spawn_with(settings.clone()).await;
    let user = app.register("rehash@example.com").await;
    app.stop_keeping_data().await;
    let mut stronger = settings;
    stronger.auth.argon2.memory_kib = 2048;
    let app = TestApp::spawn_with(stronger).await;
    app.login("rehash@example.com").await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "select event_type from events where aggregate_id = $1 order by sequence",
    )
    .bind(user.id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(kinds.last().map(String::as_str), Some("PasswordRehashed"));
    app.login("rehash@example.com").await;
    let rehashes: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'PasswordRehashed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rehashes, 1,
        "only once: the new hash has the new parameters"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_auth_event_is_attributed_and_none_carries_a_secret() {
    let app = TestApp::spawn().await;
    let user = app.register("secrets@example.com").await;
    let api_key: Value = app
        .send_json(Method::POST, "/v1/user/profile/reset-api-key", &user, None)
        .await;
    let api_key = api_key["api_key"].as_str().unwrap().to_string();
    let rotated: Value = refresh(&app, &user.refresh_token)
        .await
        .json()
        .await
        .unwrap();
    app.post_anonymous(
        "/v1/auth/login",
        json!({"email": "secrets@example.com", "password": "wrong password"}),
    )
    .await;
    let logged_in = app.login("secrets@example.com").await;
    app.send(
        Method::POST,
        "/v1/auth/change-password",
        &logged_in,
        Some(json!({"current_password": TEST_PASSWORD, "new_password": "another good secret"})),
    )
    .await;
    app.send(Method::POST, "/v1/auth/logout", &logged_in, None)
        .await;

    let rows: Vec<(String, Value, Value)> =
        sqlx::query_as("select event_type, payload, metadata from events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let secrets = [
        TEST_PASSWORD.to_string(),
        "another good secret".to_string(),
        api_key,
        user.refresh_token.clone(),
        rotated["refresh_token"].as_str().unwrap().to_string(),
        "$argon2".to_string(),
    ];
    let mut seen = std::collections::HashSet::new();
    for (kind, payload, metadata) in rows {
        let text = format!("{payload}{metadata}");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{kind} carries a secret");
        }
        for key in ["actor_id", "client_ip", "user_agent", "request_id"] {
            assert!(metadata.get(key).is_some(), "{kind} lacks {key}");
        }
        seen.insert(kind);
    }
    for kind in [
        "UserRegistered",
        "UserLoggedIn",
        "LoginFailed",
        "SessionStarted",
        "SessionRefreshed",
        "SessionRevoked",
        "PasswordChanged",
        "ApiKeyReset",
    ] {
        assert!(seen.contains(kind), "{kind} recorded");
    }
    app.stop().await;
}

#[tokio::test]
async fn no_exif_gps_position_survives_a_photo_upload() {
    let app = TestApp::spawn().await;
    let user = app.register("photo-gps@example.com").await;
    let segment = |marker: u8, payload: &[u8]| {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    };
    // A JPEG whose EXIF block holds a GPS position, as phones write it.
    let mut jpeg = vec![0xFF, 0xD8];
    jpeg.extend(segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"));
    jpeg.extend(segment(
        0xE1,
        b"Exif\0\0MM\0*\0\0\0\x08GPSLatitude=48.858370 GPSLongitude=2.294481",
    ));
    jpeg.extend(segment(0xDB, &[0; 65]));
    jpeg.extend(segment(0xDA, b"\x01\x01\0\0?\0"));
    let picture = [0x7A, 0xFF, 0x00, 0x3C, 0xFF, 0xD9];
    jpeg.extend(picture);
    let uploaded = upload(&app, &user, "me.jpg", "image/jpeg", jpeg).await;
    assert_eq!(uploaded.status(), StatusCode::OK);
    let stored = app
        .send(Method::GET, "/v1/user/profile/photo", &user, None)
        .await
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&stored);
    assert!(
        !text.contains("Exif") && !text.contains("GPS"),
        "metadata survived"
    );
    assert!(stored.starts_with(&[0xFF, 0xD8]) && stored.ends_with(&picture));
    // A PNG whose chunks do not add up is refused, not stored.
    let broken = upload(&app, &user, "x.png", "image/png", TINY_PNG[..40].to_vec()).await;
    assert_eq!(broken.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.stop().await;
}
