//! MCP server configurations over HTTP: lifecycle, secrets shown as `***`,
//! names unique per user, isolation, validation, the export, stdio servers
//! never run, discovery against a fake MCP server on each transport, and
//! secrets never in the clear anywhere they are kept.

mod common;

use std::time::Duration;

use common::fake_mcp::{sample_tools, Answers, Behaviour, FakeMcp, FakeMcpOptions};
use common::log_capture::LogCapture;
use common::{assert_read_models_equal_rebuild, eventually, test_settings, TestApp, TestUser};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SERVERS: &str = "/v1/mcp/servers";

fn http_server(name: &str, token: &str) -> Value {
    json!({
        "name": name,
        "transport": "http",
        "url": "https://mcp.example.com/mcp",
        "headers": {"Authorization": format!("Bearer {token}")},
    })
}

fn stdio_server(name: &str, token: &str) -> Value {
    json!({
        "name": name,
        "transport": "stdio",
        "command": "npx",
        "args": ["-y", "@modelcontextprotocol/server-github"],
        "env": {"GITHUB_TOKEN": token},
    })
}

async fn create(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let response = app.send(Method::POST, SERVERS, user, Some(body)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().contains_key("x-consistency-token"));
    response.json().await.unwrap()
}

async fn export(app: &TestApp, user: &TestUser) -> Value {
    let response = app
        .send(Method::GET, &format!("{SERVERS}/export"), user, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.json().await.unwrap()
}

async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from events where aggregate_type = 'McpServer'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_server_is_configured_listed_replaced_and_removed_with_every_secret_shown_as_stars() {
    let app = TestApp::spawn().await;
    let user = app.register("mcp-crud@example.com").await;

    let server = create(&app, &user, http_server("github", "first-token-1111")).await;
    assert_eq!(server["name"], "github");
    assert_eq!(server["transport"], "http");
    assert_eq!(server["enabled"], true);
    assert_eq!(server["headers"], json!({"Authorization": "***"}));
    assert_eq!(server["tool_count"], 0);
    assert_eq!(server["last_discovery"], Value::Null);
    let id = server["id"].as_str().unwrap().to_string();
    let path = format!("{SERVERS}/{id}");

    let read: Value = app.send_json(Method::GET, &path, &user, None).await;
    assert_eq!(read, server, "the read model answers what the command did");
    let list = app.send(Method::GET, SERVERS, &user, None).await;
    assert_eq!(list.headers()["x-total-count"], "1");
    let list: Value = list.json().await.unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["headers"]["Authorization"], "***");

    // "***" keeps the stored value; `enabled` left out stays as it was.
    let disabled: Value = app
        .send_json(Method::POST, &format!("{path}/disable"), &user, None)
        .await;
    assert_eq!(disabled["enabled"], false);
    let mut kept = http_server("github", "ignored");
    kept["headers"]["Authorization"] = json!("***");
    kept["url"] = json!("https://mcp.example.com/v2/mcp");
    let replaced: Value = app.send_json(Method::PUT, &path, &user, Some(kept)).await;
    assert_eq!(replaced["url"], "https://mcp.example.com/v2/mcp");
    assert_eq!(replaced["enabled"], false);
    app.send(Method::POST, &format!("{path}/enable"), &user, None)
        .await;
    let document = export(&app, &user).await;
    assert_eq!(
        document["mcpServers"]["github"]["headers"]["Authorization"],
        "Bearer first-token-1111"
    );

    // A new value replaces it; a PUT that leaves a header out removes it.
    let mut renewed = http_server("github", "second-token-2222");
    renewed["enabled"] = json!(true);
    app.send_json::<Value>(Method::PUT, &path, &user, Some(renewed))
        .await;
    let document = export(&app, &user).await;
    assert_eq!(
        document["mcpServers"]["github"]["headers"]["Authorization"],
        "Bearer second-token-2222"
    );
    let bare: Value = app
        .send_json(
            Method::PUT,
            &path,
            &user,
            Some(json!({"name": "github", "transport": "http", "url": "https://mcp.example.com/mcp"})),
        )
        .await;
    assert_eq!(bare["headers"], json!({}));

    let removed = app.send(Method::DELETE, &path, &user, None).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::DELETE, ""),
        (Method::POST, "/enable"),
        (Method::GET, "/tools"),
        (Method::POST, "/discover"),
    ] {
        let response = app
            .send(method.clone(), &format!("{path}{suffix}"), &user, None)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{method} {suffix}"
        );
    }
    let list = app.send(Method::GET, SERVERS, &user, None).await;
    assert_eq!(list.headers()["x-total-count"], "0");
    // Its name is free again.
    create(&app, &user, http_server("github", "third-token-3333")).await;

    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

#[tokio::test]
async fn names_are_unique_per_user_even_when_created_at_once_and_a_freed_name_is_free() {
    let app = TestApp::spawn().await;
    let user = app.register("mcp-names@example.com").await;
    let other = app.register("mcp-names-other@example.com").await;

    // Eight creations of one name at once: exactly one wins.
    let attempts = (0..8).map(|i| {
        app.send(
            Method::POST,
            SERVERS,
            &user,
            Some(http_server("docs", &format!("token-{i}"))),
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
    let conflict = app
        .send(Method::POST, SERVERS, &user, Some(http_server("docs", "x")))
        .await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["error"]["code"], "CONFLICT");

    // Another user may use the name.
    create(&app, &other, http_server("docs", "theirs")).await;

    // A rename onto a taken name is refused; renaming frees the old name.
    let second = create(&app, &user, stdio_server("search", "s")).await;
    let second_path = format!("{SERVERS}/{}", second["id"].as_str().unwrap());
    let mut onto_docs = stdio_server("docs", "***");
    let response = app
        .send(Method::PUT, &second_path, &user, Some(onto_docs.clone()))
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    onto_docs["name"] = json!("search-2");
    let renamed = app
        .send(Method::PUT, &second_path, &user, Some(onto_docs))
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    create(&app, &user, stdio_server("search", "again")).await;

    app.stop().await;
}

#[tokio::test]
async fn someone_elses_server_is_not_found_on_every_route_and_in_no_list_or_export() {
    let app = TestApp::spawn().await;
    let owner = app.register("mcp-owner@example.com").await;
    let intruder = app.register("mcp-intruder@example.com").await;
    let server = create(&app, &owner, http_server("private", "owner-secret-9999")).await;
    let path = format!("{SERVERS}/{}", server["id"].as_str().unwrap());

    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::PUT, "", Some(http_server("private", "***"))),
        (Method::DELETE, "", None),
        (Method::POST, "/enable", None),
        (Method::POST, "/disable", None),
        (Method::POST, "/discover", None),
        (Method::GET, "/tools", None),
    ] {
        let response = app
            .send(method.clone(), &format!("{path}{suffix}"), &intruder, body)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{method} {suffix}"
        );
        let text = response.text().await.unwrap();
        assert!(!text.contains("owner-secret-9999"));
    }
    let list = app.send(Method::GET, SERVERS, &intruder, None).await;
    assert_eq!(list.headers()["x-total-count"], "0");
    assert_eq!(export(&app, &intruder).await, json!({"mcpServers": {}}));

    // Nothing changed for the owner.
    let read: Value = app.send_json(Method::GET, &path, &owner, None).await;
    assert_eq!(read["enabled"], true);
    assert_eq!(read["updated_at"], server["updated_at"]);
    app.stop().await;
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_field_details_and_change_nothing() {
    let mut settings = test_settings().await;
    settings.mcp.max_servers_per_user = 2;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("mcp-invalid@example.com").await;
    let existing = create(&app, &user, http_server("existing", "t")).await;
    let path = format!("{SERVERS}/{}", existing["id"].as_str().unwrap());
    let before = event_count(&app).await;

    let long = "x".repeat(9000);
    let cases = [
        (
            json!({"name": "a b", "transport": "http", "url": "https://x.example/"}),
            "name",
        ),
        (
            json!({"name": "", "transport": "http", "url": "https://x.example/"}),
            "name",
        ),
        (json!({"name": "x", "transport": "http"}), "url"),
        (
            json!({"name": "x", "transport": "http", "url": "file:///etc/passwd"}),
            "url",
        ),
        (
            json!({"name": "x", "transport": "sse", "url": "https://u:p@x.example/"}),
            "url",
        ),
        (
            json!({"name": "x", "transport": "http", "url": "https://x.example/", "command": "sh"}),
            "command",
        ),
        (json!({"name": "x", "transport": "stdio"}), "command"),
        (
            json!({"name": "x", "transport": "stdio", "command": "npx", "url": "https://x.example/"}),
            "url",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "npx", "env": {"1BAD": "v"}}),
            "env",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "npx", "env": {"TOKEN": long}}),
            "env",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "npx", "env": {"TOKEN": 5}}),
            "env",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "npx", "env": "TOKEN=secret-in-a-string"}),
            "env",
        ),
        (
            json!({"name": "x", "transport": "stdio", "command": "npx", "args": vec!["a"; 65]}),
            "args",
        ),
        (
            json!({"name": "x", "transport": "http", "url": "https://x.example/", "headers": {"Host": "evil"}}),
            "headers",
        ),
        (
            json!({"name": "x", "transport": "http", "url": "https://x.example/", "headers": {"X-A": "a\r\nX-B: b"}}),
            "headers",
        ),
        (
            json!({"name": "x", "transport": "http", "url": "https://x.example/", "headers": {"X-New": "***"}}),
            "headers",
        ),
    ];
    for (body, field) in &cases {
        for (method, route) in [(Method::POST, SERVERS), (Method::PUT, path.as_str())] {
            let response = app
                .send(method.clone(), route, &user, Some(body.clone()))
                .await;
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {body}"
            );
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "VALIDATION_ERROR");
            let fields: Vec<&str> = error["error"]["details"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| d["field"].as_str())
                .collect();
            assert!(fields.contains(field), "{method} {body}: {error}");
            let text = error.to_string();
            assert!(
                !text.contains("secret-in-a-string") && !text.contains("evil"),
                "{text}"
            );
        }
    }
    for (body, status) in [
        (
            json!({"name": "x", "transport": "ftp", "url": "https://x.example/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "transport": "http", "url": "https://x.example/", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!(["not", "an", "object"]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // A project that is not the caller's is missing for them: 404.
        (
            json!({"name": "x", "transport": "http", "url": "https://x.example/", "project_id": uuid::Uuid::new_v4()}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = app
            .send(Method::POST, SERVERS, &user, Some(body.clone()))
            .await;
        assert_eq!(response.status(), status, "{body}");
    }
    let malformed = app
        .client
        .post(app.url(SERVERS))
        .bearer_auth(&user.token)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        event_count(&app).await,
        before,
        "no refused request wrote anything"
    );

    // The quota: two servers, then 422 naming it.
    create(&app, &user, http_server("second", "t")).await;
    let over = app
        .send(
            Method::POST,
            SERVERS,
            &user,
            Some(http_server("third", "t")),
        )
        .await;
    assert_eq!(over.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = over.json().await.unwrap();
    assert_eq!(error["error"]["details"][0]["field"], "mcp_servers");
    app.stop().await;
}

#[tokio::test]
async fn the_export_holds_the_enabled_servers_as_clients_read_them_and_follows_enable_and_disable()
{
    let app = TestApp::spawn().await;
    let user = app.register("mcp-export@example.com").await;
    let github = create(&app, &user, stdio_server("github", "ghp_export_secret")).await;
    let mut sse = http_server("legacy", "sse-export-secret");
    sse["transport"] = json!("sse");
    sse["url"] = json!("https://mcp.example.com/sse");
    create(&app, &user, sse).await;
    let mut off = http_server("off", "t");
    off["enabled"] = json!(false);
    let off = create(&app, &user, off).await;

    let document = export(&app, &user).await;
    assert_eq!(
        document,
        json!({"mcpServers": {
            "github": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-github"],
                "env": {"GITHUB_TOKEN": "ghp_export_secret"},
            },
            "legacy": {
                "type": "sse",
                "url": "https://mcp.example.com/sse",
                "headers": {"Authorization": "Bearer sse-export-secret"},
            },
        }})
    );

    let github_path = format!("{SERVERS}/{}", github["id"].as_str().unwrap());
    let off_path = format!("{SERVERS}/{}", off["id"].as_str().unwrap());
    app.send(Method::POST, &format!("{github_path}/disable"), &user, None)
        .await;
    app.send(Method::POST, &format!("{off_path}/enable"), &user, None)
        .await;
    let document = export(&app, &user).await;
    let names: Vec<&String> = document["mcpServers"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["legacy", "off"]);

    let enabled = app
        .send(
            Method::GET,
            &format!("{SERVERS}?enabled=false"),
            &user,
            None,
        )
        .await;
    assert_eq!(enabled.headers()["x-total-count"], "1");
    let stdio = app
        .send(
            Method::GET,
            &format!("{SERVERS}?transport=stdio"),
            &user,
            None,
        )
        .await;
    assert_eq!(stdio.headers()["x-total-count"], "1");
    app.stop().await;
}

/// The list's filters alone and together, in the page and the total alike,
/// and the export's project filter.
#[tokio::test]
async fn lists_and_the_export_filter_by_project_transport_and_enabled_together() {
    let app = TestApp::spawn().await;
    let user = app.register("mcp-filters@example.com").await;
    let project: Value = app
        .send_json(
            Method::POST,
            "/v1/projects",
            &user,
            Some(json!({"name": "Tools"})),
        )
        .await;
    let project_id = project["id"].as_str().unwrap();
    let in_project = |mut server: Value| {
        server["project_id"] = json!(project_id);
        server
    };
    create(&app, &user, in_project(http_server("project-http", "t"))).await;
    let mut off = in_project(http_server("project-off", "t"));
    off["enabled"] = json!(false);
    create(&app, &user, off).await;
    create(&app, &user, in_project(stdio_server("project-stdio", "t"))).await;
    create(&app, &user, http_server("elsewhere-http", "t")).await;

    let names = |query: String| {
        let (app, user) = (&app, &user);
        async move {
            let response = app
                .send(Method::GET, &format!("{SERVERS}{query}"), user, None)
                .await;
            assert_eq!(response.status(), StatusCode::OK, "{query}");
            let total: i64 = response.headers()["x-total-count"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let page: Vec<Value> = response.json().await.unwrap();
            let names: Vec<String> = page
                .iter()
                .map(|server| server["name"].as_str().unwrap().to_string())
                .collect();
            (names, total)
        }
    };
    // Newest first.
    assert_eq!(
        names(String::new()).await,
        (
            vec![
                "elsewhere-http".to_string(),
                "project-stdio".into(),
                "project-off".into(),
                "project-http".into()
            ],
            4
        )
    );
    assert_eq!(
        names(format!("?project_id={project_id}")).await,
        (
            vec![
                "project-stdio".to_string(),
                "project-off".into(),
                "project-http".into()
            ],
            3
        )
    );
    assert_eq!(
        names("?transport=http&enabled=true".into()).await,
        (vec!["elsewhere-http".to_string(), "project-http".into()], 2)
    );
    assert_eq!(
        names(format!(
            "?project_id={project_id}&transport=http&enabled=true"
        ))
        .await,
        (vec!["project-http".to_string()], 1)
    );
    assert_eq!(
        names(format!(
            "?enabled=false&transport=http&project_id={project_id}"
        ))
        .await,
        (vec!["project-off".to_string()], 1)
    );
    assert_eq!(
        names(format!("?project_id={project_id}&enabled=true&offset=1")).await,
        (vec!["project-http".to_string()], 2)
    );
    assert_eq!(
        names(format!(
            "?project_id={project_id}&transport=stdio&enabled=false&limit=1"
        ))
        .await,
        (vec![], 0)
    );

    // The export: the enabled servers, of the project when one is asked for.
    let exported = |document: Value| -> Vec<String> {
        document["mcpServers"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        exported(export(&app, &user).await),
        ["elsewhere-http", "project-http", "project-stdio"]
    );
    let response = app
        .send(
            Method::GET,
            &format!("{SERVERS}/export?project_id={project_id}"),
            &user,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        exported(response.json().await.unwrap()),
        ["project-http", "project-stdio"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stdio_server_is_configuration_only_and_its_command_is_never_run() {
    let app = TestApp::spawn().await;
    let user = app.register("mcp-stdio@example.com").await;
    let marker = std::env::temp_dir().join(format!("chronicle-mcp-ran-{}", uuid::Uuid::new_v4()));
    let body = json!({
        "name": "trap",
        "transport": "stdio",
        "command": "sh",
        "args": ["-c", format!("touch {}", marker.display())],
    });
    let server = create(&app, &user, body.clone()).await;
    assert!(server["note"].as_str().unwrap().contains("never executes"));
    let path = format!("{SERVERS}/{}", server["id"].as_str().unwrap());

    let discover = app
        .send(Method::POST, &format!("{path}/discover"), &user, None)
        .await;
    assert_eq!(discover.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = discover.json().await.unwrap();
    assert_eq!(error["error"]["details"][0]["field"], "transport");
    app.send(Method::PUT, &path, &user, Some(body)).await;
    app.send(Method::POST, &format!("{path}/disable"), &user, None)
        .await;
    app.send(Method::POST, &format!("{path}/enable"), &user, None)
        .await;
    let document = export(&app, &user).await;
    assert_eq!(document["mcpServers"]["trap"]["command"], "sh");
    app.wait_for_projections().await;
    assert!(!marker.exists(), "the configured command was run");
    app.stop().await;
}

fn remote_server(name: &str, transport: &str, url: String, authorization: &str) -> Value {
    json!({
        "name": name,
        "transport": transport,
        "url": url,
        "headers": {"Authorization": authorization},
    })
}

async fn discover(app: &TestApp, user: &TestUser, id: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        &format!("{SERVERS}/{id}/discover"),
        user,
        None,
    )
    .await
}

#[tokio::test]
async fn discovery_lists_every_page_of_tools_over_streamable_http_json_and_event_streams_and_legacy_sse(
) {
    let app = TestApp::spawn().await;
    let user = app.register("mcp-discovery@example.com").await;
    for (name, transport, answers) in [
        ("http-json", "http", Answers::Json),
        ("http-stream", "http", Answers::EventStream),
        ("legacy-sse", "sse", Answers::Json),
    ] {
        let fake = FakeMcp::start(FakeMcpOptions {
            required_header: Some(("Authorization".into(), "Bearer discovery-secret".into())),
            tools: sample_tools(7),
            page_size: 3,
            streamable_answers: answers,
            ..FakeMcpOptions::default()
        })
        .await;
        let url = if transport == "sse" {
            fake.sse_url()
        } else {
            fake.http_url()
        };
        let server = create(
            &app,
            &user,
            remote_server(name, transport, url, "Bearer discovery-secret"),
        )
        .await;
        let id = server["id"].as_str().unwrap();

        let response = discover(&app, &user, id).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert!(response.headers().contains_key("x-consistency-token"));
        let found: Value = response.json().await.unwrap();
        let names: Vec<&str> = found["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            (0..7).map(|i| format!("tool_{i}")).collect::<Vec<_>>(),
            "{name}: every page, in order"
        );
        assert_eq!(found["tools"][2]["input_schema"]["type"], "object");
        assert!(found["protocol_version"]
            .as_str()
            .unwrap()
            .starts_with("20"));
        assert_eq!(
            fake.last_headers().get("authorization").map(String::as_str),
            Some("Bearer discovery-secret"),
            "{name}: the configured header was sent"
        );

        let tools = app
            .send(
                Method::GET,
                &format!("{SERVERS}/{id}/tools?limit=5&offset=5"),
                &user,
                None,
            )
            .await;
        assert_eq!(tools.headers()["x-total-count"], "7");
        let tools: Value = tools.json().await.unwrap();
        assert_eq!(tools.as_array().unwrap().len(), 2);
        assert_eq!(tools[0]["name"], "tool_5");
        let read: Value = app
            .send_json(Method::GET, &format!("{SERVERS}/{id}"), &user, None)
            .await;
        assert_eq!(read["tool_count"], 7);
        assert_eq!(read["last_discovery"]["status"], "succeeded");
    }
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

#[tokio::test]
async fn a_rediscovery_after_a_header_change_uses_the_new_secret_and_a_failure_is_recorded_and_a_502(
) {
    let app = TestApp::spawn().await;
    let user = app.register("mcp-rediscovery@example.com").await;
    let fake = FakeMcp::start(FakeMcpOptions {
        required_header: Some(("Authorization".into(), "Bearer old-secret".into())),
        ..FakeMcpOptions::default()
    })
    .await;
    let body = remote_server("rotating", "http", fake.http_url(), "Bearer old-secret");
    let server = create(&app, &user, body.clone()).await;
    let id = server["id"].as_str().unwrap();
    assert_eq!(discover(&app, &user, id).await.status(), StatusCode::OK);

    // The server now wants a new token: the stored one is refused.
    fake.set_required_header("Authorization", "Bearer new-secret");
    let failed = discover(&app, &user, id).await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let error: Value = failed.json().await.unwrap();
    assert_eq!(error["error"]["code"], "UPSTREAM_ERROR");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("401"),
        "{error}"
    );
    assert!(!error.to_string().contains("old-secret"));
    let read: Value = app
        .send_json(Method::GET, &format!("{SERVERS}/{id}"), &user, None)
        .await;
    assert_eq!(read["last_discovery"]["status"], "failed");
    assert!(read["last_discovery"]["error"]
        .as_str()
        .unwrap()
        .contains("401"));
    assert_eq!(read["tool_count"], 3, "the last good list stays");

    let mut renewed = body;
    renewed["headers"]["Authorization"] = json!("Bearer new-secret");
    let replaced = app
        .send(
            Method::PUT,
            &format!("{SERVERS}/{id}"),
            &user,
            Some(renewed),
        )
        .await;
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(discover(&app, &user, id).await.status(), StatusCode::OK);
    assert_eq!(
        fake.last_headers().get("authorization").map(String::as_str),
        Some("Bearer new-secret")
    );
    let read: Value = app
        .send_json(Method::GET, &format!("{SERVERS}/{id}"), &user, None)
        .await;
    assert_eq!(read["last_discovery"]["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn discovery_refuses_loopback_addresses_unless_private_addresses_are_allowed() {
    let mut settings = test_settings().await;
    settings.mcp.allow_private = false;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("mcp-ssrf@example.com").await;
    let fake = FakeMcp::start(FakeMcpOptions::default()).await;
    let port = fake.port();
    for (name, url) in [
        ("literal", fake.http_url()),
        ("by-name", format!("http://localhost:{port}/mcp")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/mcp")),
    ] {
        let server = create(&app, &user, remote_server(name, "http", url, "Bearer x")).await;
        let response = discover(&app, &user, server["id"].as_str().unwrap()).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{name}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("CHRONICLE_MCP_ALLOW_PRIVATE"),
            "{name}: {error}"
        );
    }
    assert_eq!(
        fake.request_count(),
        0,
        "no request reached the private address"
    );
    app.stop().await;
}

/// Every message of the test's stream, as text.
async fn stream_messages(app: &TestApp) -> Vec<String> {
    use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
    let jetstream = jetstream::new(app.nats.clone());
    let mut stream = jetstream
        .get_stream(&app.settings.nats.stream.name)
        .await
        .unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut texts = Vec::with_capacity(total);
    while texts.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stream's messages")
            .unwrap()
            .unwrap();
        texts.push(format!(
            "{:?} {}",
            message.headers,
            String::from_utf8_lossy(&message.payload)
        ));
    }
    texts
}

#[tokio::test]
async fn secret_values_are_never_in_clear_in_events_on_the_bus_in_the_audit_trail_or_in_the_log() {
    let log = LogCapture::install();
    let app = TestApp::spawn().await;
    let user = app.register("mcp-secrets@example.com").await;
    let secrets = [
        "env-secret-A1B2C3",
        "Bearer header-secret-D4E5F6",
        "Bearer rotated-secret-G7H8I9",
    ];
    let fake = FakeMcp::start(FakeMcpOptions {
        required_header: Some(("Authorization".into(), secrets[1].into())),
        ..FakeMcpOptions::default()
    })
    .await;
    create(&app, &user, stdio_server("github", secrets[0])).await;
    let body = remote_server("remote", "http", fake.http_url(), secrets[1]);
    let server = create(&app, &user, body.clone()).await;
    let id = server["id"].as_str().unwrap();
    assert_eq!(discover(&app, &user, id).await.status(), StatusCode::OK);
    // A careless server that quotes the request's headers in its error.
    fake.set_behaviour(Behaviour::JsonRpcError);
    let failed = discover(&app, &user, id).await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    assert!(!failed.text().await.unwrap().contains("header-secret"));
    fake.set_behaviour(Behaviour::Normal);
    let mut rotated = body;
    rotated["headers"]["Authorization"] = json!(secrets[2]);
    app.send(
        Method::PUT,
        &format!("{SERVERS}/{id}"),
        &user,
        Some(rotated),
    )
    .await;
    let document = export(&app, &user).await;
    assert_eq!(
        document["mcpServers"]["github"]["env"]["GITHUB_TOKEN"],
        secrets[0]
    );
    assert_eq!(
        document["mcpServers"]["remote"]["headers"]["Authorization"],
        secrets[2]
    );

    app.wait_for_projections().await;
    let trail = common::assert_audit_trail_complete(&app.pool).await;
    let stored: Vec<String> =
        sqlx::query_scalar("select payload::text || metadata::text from events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let read_models: Vec<String> = common::read_model_rows(&app.pool)
        .await
        .iter()
        .map(Value::to_string)
        .collect();
    let on_bus = eventually(
        Duration::from_secs(20),
        "every event on the bus",
        || async {
            let messages = stream_messages(&app).await;
            (messages.len() == stored.len()).then_some(messages)
        },
    )
    .await;
    let logged = log.contents();
    assert!(
        logged.contains("MCP discovery failed"),
        "the log was captured"
    );
    for secret in secrets {
        let bare = secret.trim_start_matches("Bearer ");
        for (place, texts) in [
            ("events", &stored),
            ("bus", &on_bus),
            ("audit trail", &trail),
            ("read models", &read_models),
        ] {
            assert!(
                texts.iter().all(|text| !text.contains(bare)),
                "{bare} in the {place}"
            );
        }
        assert!(!logged.contains(bare), "{bare} in the log");
    }
    app.stop().await;
}

#[tokio::test]
async fn after_a_master_key_rotation_old_configurations_still_open_and_new_ones_use_a_new_key() {
    let settings = test_settings().await;
    let app = TestApp::spawn_with(settings.clone()).await;
    let user = app.register("mcp-rotation@example.com").await;
    create(
        &app,
        &user,
        stdio_server("before", "sealed-before-rotation"),
    )
    .await;
    app.wait_for_projections().await;
    app.stop_keeping_data().await;

    // `chronicle keys rotate-master`, run while the servers are down.
    let pool = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.url))
        .await
        .unwrap();
    let report = chronicle::secrets::rotate_master(&pool, &settings)
        .await
        .expect("rotation");
    assert!(report.rewrapped >= 1);
    pool.close().await;

    let app = TestApp::spawn_with(settings).await;
    let document = export(&app, &user).await;
    assert_eq!(
        document["mcpServers"]["before"]["env"]["GITHUB_TOKEN"],
        "sealed-before-rotation"
    );
    create(&app, &user, stdio_server("after", "sealed-after-rotation")).await;
    let sealed: Vec<String> = sqlx::query_scalar(
        "select payload -> 'McpServerConfigured' -> 'config' -> 'env' ->> 'GITHUB_TOKEN' \
         from events where event_type = 'McpServerConfigured' order by global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let key_ids: Vec<_> = sealed
        .iter()
        .map(|value| chronicle::secrets::key_id_of(value).expect("a key id"))
        .collect();
    assert_ne!(key_ids[0], key_ids[1], "new configurations use the new key");
    let document = export(&app, &user).await;
    assert_eq!(
        document["mcpServers"]["after"]["env"]["GITHUB_TOKEN"],
        "sealed-after-rotation"
    );
    app.stop().await;
}
