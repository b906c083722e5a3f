//! The OpenAPI document is exact: schemathesis (v4, every check, the
//! stateful phase on) finds nothing against a running server, once with a
//! plain user's token and once with an admin's.
//!
//! Schemathesis is a Python tool: `deploy/schemathesis.sh install` puts it in
//! a virtualenv (`make test` does this) and `CHRONICLE_SCHEMATHESIS` names its
//! `st` binary. Without it this test fails, saying so: the contract is not
//! optional. `CHRONICLE_CONTRACT_SEED` replays a run; the seed used is printed.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::fake_llm::FakeLlm;
use common::{test_settings, TestApp, TestUser};

/// Test cases per operation and phase: enough to hit every branch the
/// schema describes, small enough to keep the suite within its budget.
const MAX_EXAMPLES: &str = "12";

fn schemathesis_binary() -> PathBuf {
    match std::env::var_os("CHRONICLE_SCHEMATHESIS") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "CHRONICLE_SCHEMATHESIS is not set: run `deploy/schemathesis.sh install` and set it \
             to the path it prints (make test does both)"
        ),
    }
}

fn seed() -> u64 {
    match std::env::var("CHRONICLE_CONTRACT_SEED") {
        Ok(seed) => seed.parse().expect("CHRONICLE_CONTRACT_SEED is a number"),
        Err(_) => rand::random::<u32>() as u64,
    }
}

/// Operations that end the caller's session or account (or, for an admin,
/// could take her role away): run last, each with a caller of its own, so
/// that they do not turn the rest of a run into 401s.
const SESSION_ENDING: [&str; 4] = [
    "logout",
    "change_password",
    "deactivate_profile",
    "set_roles",
];

/// `GET /v1/ws` is a WebSocket upgrade, which schemathesis cannot speak; its
/// declared headers are checked by `tests/ws.rs` clients instead.
const NOT_HTTP: [&str; 1] = ["open_feed"];

/// Which operations a run covers.
enum Operations<'a> {
    AllBut(&'a [&'a str]),
    Only(&'a str),
}

/// Runs schemathesis against `app` with `user`'s token; panics with its
/// report when it finds anything.
async fn run_schemathesis(
    app: &TestApp,
    user: &TestUser,
    who: &str,
    operations: Operations<'_>,
    seed: u64,
) {
    let report_dir = app.settings.data_dir.join(format!("schemathesis-{who}"));
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/contract/schemathesis.toml"
    );
    std::fs::create_dir_all(&report_dir).expect("report dir");
    let mut command = tokio::process::Command::new(schemathesis_binary());
    command
        // Schemathesis keeps a crash cache in its working directory: keep it in
        // this test's data dir, which is removed with the test.
        .current_dir(&report_dir)
        // Every check runs (the config file turns off what it names, with why).
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed.to_string()])
        // One worker per process: with several threads, Python 3.11's
        // `ast.parse` (called by hypothesis to describe its filters) races
        // and fails the run with "AST constructor recursion depth mismatch".
        // The runs below go in parallel as processes instead.
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        // Postgres cannot store U+0000; the server refuses it everywhere
        // (the document says so in its description).
        .args(["--generation-allow-x00", "false"])
        .arg("--no-color")
        .args(["--generation-database", "none"])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&report_dir);
    match operations {
        Operations::AllBut(excluded) => {
            for id in excluded {
                command.args(["--exclude-operation-id", id]);
            }
        }
        Operations::Only(id) => {
            command.args(["--include-operation-id", id]);
        }
    }
    let output = command
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis ({who}, seed {seed}; replay with CHRONICLE_CONTRACT_SEED={seed}) \
         found problems:\n{stdout}\n{stderr}"
    );
    println!("schemathesis ({who}, seed {seed}):\n{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_with_a_user_token_nor_with_an_admin_token() {
    let llm = FakeLlm::start().await;
    let mut settings = test_settings().await;
    llm.configure(&mut settings);
    let app = TestApp::spawn_with(settings).await;
    let seed = seed();
    println!("contract seed {seed} (replay with CHRONICLE_CONTRACT_SEED={seed})");

    let user = app.register("contract-user@example.com").await;
    let mut admin = app.register("contract-admin@example.com").await;
    for role in ["admin", "auditor", "analyst", "developer"] {
        admin = app.grant_role(&admin, role).await;
    }
    let lasting: Vec<&str> = SESSION_ENDING.iter().chain(&NOT_HTTP).copied().collect();
    tokio::join!(
        run_schemathesis(&app, &user, "user", Operations::AllBut(&lasting), seed),
        run_schemathesis(&app, &admin, "admin", Operations::AllBut(&lasting), seed),
    );
    // Each ends its own caller's session or role, so each has a caller of
    // its own, and they run after the two above.
    let mut callers = Vec::new();
    for (n, id) in SESSION_ENDING.iter().enumerate() {
        let caller = app
            .user_with_role(&format!("contract-ending-{n}@example.com"), "admin")
            .await;
        callers.push((caller, *id));
    }
    futures::future::join_all(
        callers
            .iter()
            .map(|(caller, id)| run_schemathesis(&app, caller, id, Operations::Only(id), seed)),
    )
    .await;
    app.stop().await;
}
