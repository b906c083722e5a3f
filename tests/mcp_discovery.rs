//! The MCP discovery client against the fake MCP server: both transports,
//! credentials, limits and the SSRF guard. No database needed.

mod common;

use std::time::{Duration, Instant};

use chronicle::config::McpSettings;
use chronicle::mcp::{DiscoveryError, DiscoveryTarget, McpClient, McpTransport};
use common::fake_mcp::{sample_tools, Answers, Behaviour, FakeMcp, FakeMcpOptions};
use secrecy::SecretString;

const TOKEN: &str = "Bearer mcp-token-never-leak-5b1d";

fn settings() -> McpSettings {
    McpSettings {
        allow_private: true,
        discovery_timeout: Duration::from_secs(10),
        ..McpSettings::default()
    }
}

fn client(settings: &McpSettings) -> McpClient {
    McpClient::new(settings).unwrap()
}

fn target(transport: McpTransport, url: String, token: &str) -> DiscoveryTarget {
    DiscoveryTarget {
        transport,
        url,
        headers: vec![("Authorization".into(), SecretString::from(token))],
    }
}

/// Seven tools, three per page: three pages.
async fn paged_fake(answers: Answers) -> FakeMcp {
    FakeMcp::start(FakeMcpOptions {
        required_header: Some(("authorization".into(), TOKEN.into())),
        tools: sample_tools(7),
        page_size: 3,
        streamable_answers: answers,
        behaviour: Behaviour::Normal,
    })
    .await
}

fn tool_names(discovery: &chronicle::mcp::Discovery) -> Vec<String> {
    discovery.tools.iter().map(|t| t.name.clone()).collect()
}

fn expected_names() -> Vec<String> {
    (0..7).map(|i| format!("tool_{i}")).collect()
}

async fn streamable_http_lists_every_page_in_order(answers: Answers) {
    let fake = paged_fake(answers).await;
    let discovery = client(&settings())
        .discover(&target(McpTransport::Http, fake.http_url(), TOKEN))
        .await
        .unwrap();

    assert_eq!(tool_names(&discovery), expected_names());
    assert_eq!(discovery.protocol_version, "2025-06-18");
    assert_eq!(discovery.server_name.as_deref(), Some("fake-mcp"));
    assert_eq!(discovery.server_version.as_deref(), Some("1.2.3"));
    assert_eq!(
        discovery.tools[4].description.as_deref(),
        Some("Tool number 4")
    );
    assert_eq!(
        discovery.tools[4].input_schema["properties"]["n"]["type"],
        "integer"
    );

    let requests = fake.requests();
    let rpc: Vec<_> = requests
        .iter()
        .filter_map(|r| r.rpc_method.clone())
        .collect();
    assert_eq!(
        rpc,
        [
            "initialize",
            "notifications/initialized",
            "tools/list",
            "tools/list",
            "tools/list"
        ]
    );
    assert!(requests.iter().all(|r| r.headers["authorization"] == TOKEN));
    let session = requests[0].headers.get("mcp-session-id");
    assert_eq!(session, None, "initialize has no session yet");
    let issued: Vec<_> = requests[1..]
        .iter()
        .map(|r| {
            r.headers
                .get("mcp-session-id")
                .cloned()
                .expect("session echoed")
        })
        .collect();
    assert!(issued.iter().all(|s| *s == issued[0]));
    assert!(requests[1..].iter().all(|r| r
        .headers
        .get("mcp-protocol-version")
        .map(String::as_str)
        == Some("2025-06-18")));
    let last = requests.last().unwrap();
    assert_eq!(last.method, "DELETE", "the session is ended");
    assert!(fake.open_sessions().is_empty());
}

#[tokio::test]
async fn streamable_http_with_json_answers_lists_every_page_with_the_session_and_credentials() {
    streamable_http_lists_every_page_in_order(Answers::Json).await;
}

#[tokio::test]
async fn streamable_http_with_event_stream_answers_skips_server_notifications() {
    streamable_http_lists_every_page_in_order(Answers::EventStream).await;
}

#[tokio::test]
async fn legacy_sse_lists_every_page_and_sends_the_header_on_the_stream_and_every_post() {
    let fake = paged_fake(Answers::Json).await;
    let discovery = client(&settings())
        .discover(&target(McpTransport::Sse, fake.sse_url(), TOKEN))
        .await
        .unwrap();

    assert_eq!(tool_names(&discovery), expected_names());
    assert_eq!(discovery.server_name.as_deref(), Some("fake-mcp"));
    let requests = fake.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].headers["accept"], "text/event-stream");
    let posts: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 5);
    assert!(posts.iter().all(|r| r.path == "/messages"));
    assert!(requests.iter().all(|r| r.headers["authorization"] == TOKEN));
}

#[tokio::test]
async fn a_wrong_header_fails_with_401_and_the_error_never_shows_the_value() {
    let fake = paged_fake(Answers::Json).await;
    let wrong = "Bearer wrong-token-also-secret-77";
    for (transport, url) in [
        (McpTransport::Http, fake.http_url()),
        (McpTransport::Sse, fake.sse_url()),
    ] {
        let err = client(&settings())
            .discover(&target(transport, url, wrong))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert_eq!(message, "the server answered 401 Unauthorized");
        assert!(!message.contains(wrong) && !format!("{err:?}").contains(wrong));
    }
    assert_eq!(fake.initialize_count(), 0);

    // The server's credentials change: the new value is what works.
    fake.set_required_header("authorization", wrong);
    let discovery = client(&settings())
        .discover(&target(McpTransport::Http, fake.http_url(), wrong))
        .await
        .unwrap();
    assert_eq!(discovery.tools.len(), 7);
}

#[tokio::test]
async fn a_json_rpc_error_is_quoted_without_the_header_values_it_echoes() {
    let fake = paged_fake(Answers::Json).await;
    fake.set_behaviour(Behaviour::JsonRpcError);
    let err = client(&settings())
        .discover(&target(McpTransport::Http, fake.http_url(), TOKEN))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("the server refused initialize: initialize refused"),
        "{message}"
    );
    assert!(message.contains("authorization=[redacted]"), "{message}");
    assert!(!message.contains("mcp-token-never-leak"), "{message}");
}

#[tokio::test]
async fn an_unknown_protocol_version_is_refused() {
    let fake = paged_fake(Answers::Json).await;
    fake.set_behaviour(Behaviour::OldProtocol);
    let err = client(&settings())
        .discover(&target(McpTransport::Http, fake.http_url(), TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "unsupported protocol version 1999-01-01");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_configured_timeout() {
    let fake = paged_fake(Answers::Json).await;
    fake.set_behaviour(Behaviour::Hang);
    let settings = McpSettings {
        discovery_timeout: Duration::from_secs(1),
        ..settings()
    };
    for (transport, url) in [
        (McpTransport::Http, fake.http_url()),
        (McpTransport::Sse, fake.sse_url()),
    ] {
        let started = Instant::now();
        let err = client(&settings)
            .discover(&target(transport, url, TOKEN))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.to_string(), "timed out after 1 s");
        assert!(
            elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }
}

#[tokio::test]
async fn an_answer_over_the_size_cap_fails() {
    let settings = McpSettings {
        max_response_bytes: 64 * 1024,
        ..settings()
    };
    for answers in [Answers::Json, Answers::EventStream] {
        let fake = paged_fake(answers).await;
        fake.set_behaviour(Behaviour::HugeAnswer);
        for (transport, url) in [
            (McpTransport::Http, fake.http_url()),
            (McpTransport::Sse, fake.sse_url()),
        ] {
            let err = client(&settings)
                .discover(&target(transport, url, TOKEN))
                .await
                .unwrap_err();
            assert!(matches!(err, DiscoveryError::TooLarge { .. }), "{err}");
            assert_eq!(err.to_string(), "the server's answer exceeds 65536 bytes");
        }
    }
}

#[tokio::test]
async fn loopback_servers_are_refused_before_any_request_unless_private_addresses_are_allowed() {
    let fake = paged_fake(Answers::Json).await;
    let guarded = client(&McpSettings {
        allow_private: false,
        ..settings()
    });
    let port = fake.port();
    let urls = [
        (McpTransport::Http, fake.http_url()),
        (McpTransport::Sse, fake.sse_url()),
        (McpTransport::Http, format!("http://localhost:{port}/mcp")),
        (McpTransport::Sse, format!("http://localhost:{port}/sse")),
        (
            McpTransport::Http,
            format!("http://[::ffff:127.0.0.1]:{port}/mcp"),
        ),
    ];
    for (transport, url) in urls {
        let err = guarded
            .discover(&target(transport, url.clone(), TOKEN))
            .await
            .unwrap_err();
        assert!(err.is_refused_address(), "{url}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("is not public (loopback)")
                && message.contains("CHRONICLE_MCP_ALLOW_PRIVATE"),
            "{message}"
        );
    }
    assert_eq!(fake.request_count(), 0, "nothing reached the server");

    // The same URL works once private addresses are allowed.
    let allowed = client(&settings());
    let url = format!("http://localhost:{port}/mcp");
    let discovery = allowed
        .discover(&target(McpTransport::Http, url, TOKEN))
        .await
        .unwrap();
    assert_eq!(discovery.tools.len(), 7);
}

#[tokio::test]
async fn an_endpoint_event_pointing_to_another_origin_is_refused() {
    let fake = paged_fake(Answers::Json).await;
    fake.set_behaviour(Behaviour::ForeignEndpoint);
    let err = client(&settings())
        .discover(&target(McpTransport::Sse, fake.sse_url(), TOKEN))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::ForeignEndpoint), "{err}");
    assert!(
        fake.requests().iter().all(|r| r.method == "GET"),
        "nothing was posted to the foreign endpoint"
    );
}

#[tokio::test]
async fn a_closed_port_reads_as_connection_refused_by_its_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = client(&settings())
        .discover(&target(
            McpTransport::Http,
            format!("http://user:pw@127.0.0.1:{port}/mcp?key=secret-query"),
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "connection refused by 127.0.0.1");
}
