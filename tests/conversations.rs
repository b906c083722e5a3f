//! Projects and chat sessions over HTTP: lifecycle, ownership, read models
//! equal to a rebuild, and every message an event on the bus.

mod common;

use common::{assert_read_models_equal_rebuild, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_project_is_created_listed_replaced_and_deleted_and_others_see_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.register("projects@example.com").await;
    let other = app.register("other-projects@example.com").await;

    let created = app
        .send(
            Method::POST,
            "/v1/projects",
            &owner,
            Some(json!({"name": "  Compiler  ", "description": "a toy", "settings": {"lang": "rust"}})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(created.headers().contains_key("x-consistency-token"));
    let project: Value = created.json().await.unwrap();
    assert_eq!(project["name"], "Compiler");
    assert_eq!(project["settings"]["lang"], "rust");
    let id = project["id"].as_str().unwrap();
    let path = format!("/v1/projects/{id}");

    let list = app.send(Method::GET, "/v1/projects", &owner, None).await;
    assert_eq!(list.headers()["x-total-count"], "1");
    let list: Value = list.json().await.unwrap();
    assert_eq!(list[0]["id"], id);

    // PUT replaces: the absent description becomes null, settings `{}`.
    let replaced: Value = app
        .send_json(
            Method::PUT,
            &path,
            &owner,
            Some(json!({"name": "Interpreter"})),
        )
        .await;
    assert_eq!(replaced["name"], "Interpreter");
    assert_eq!(replaced["description"], Value::Null);
    assert_eq!(replaced["settings"], json!({}));
    let read: Value = app.send_json(Method::GET, &path, &owner, None).await;
    assert_eq!(read["name"], "Interpreter");

    // Someone else's project does not exist for them, whatever they try.
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"name": "mine now"}))),
        (Method::DELETE, None),
    ] {
        let response = app.send(method.clone(), &path, &other, body).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
    }
    let theirs = app.send(Method::GET, "/v1/projects", &other, None).await;
    assert_eq!(theirs.headers()["x-total-count"], "0");

    // Bad input is a 422 naming the field, and changes nothing.
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "ok", "settings": ["not", "an", "object"]}),
        json!({"name": "ok", "extra": 1}),
    ] {
        let response = app
            .send(Method::PUT, &path, &owner, Some(body.clone()))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    let limit = app
        .send(Method::GET, "/v1/projects?limit=0", &owner, None)
        .await;
    assert_eq!(limit.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let deleted = app.send(Method::DELETE, &path, &owner, None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.send(Method::GET, &path, &owner, None).await.status(),
        StatusCode::NOT_FOUND
    );
    let list = app.send(Method::GET, "/v1/projects", &owner, None).await;
    assert_eq!(list.headers()["x-total-count"], "0");

    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}
