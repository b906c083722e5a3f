//! `X-Total-Count` of `GET /v1/tasks` comes from counts maintained in the
//! read model (`read.task_counts`, migration 0900): they must stay exact
//! through every change of a task, and a replay must rebuild them.

mod common;

use common::{TestApp, TestUser};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

/// `X-Total-Count` of `GET /v1/tasks?{filter}`.
async fn total(app: &TestApp, user: &TestUser, filter: &str) -> i64 {
    let response = app
        .send(
            Method::GET,
            &format!("/v1/tasks?limit=1&{filter}"),
            user,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{filter}");
    response.headers()["x-total-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every status filter's count, as the API gives it.
async fn totals(app: &TestApp, user: &TestUser) -> Vec<i64> {
    let mut out = Vec::new();
    for filter in [
        "",
        "status=all",
        "status=pending",
        "status=completed",
        "status=deleted",
        "status=pending&include_deleted=true",
        "status=completed&include_deleted=true",
        "include_deleted=true",
    ] {
        out.push(total(app, user, filter).await);
    }
    out
}

/// The counts, by the same filters, counted row by row.
async fn counted(pool: &PgPool, user: &TestUser) -> Vec<i64> {
    let mut out = Vec::new();
    for filter in [
        "not is_deleted",
        "true",
        "not completed and not is_deleted",
        "completed and not is_deleted",
        "is_deleted",
        "not completed",
        "completed",
        "true",
    ] {
        let n: i64 = sqlx::query_scalar(&format!(
            "select count(*) from read.tasks where owner_id = $1 and {filter}"
        ))
        .bind(user.id)
        .fetch_one(pool)
        .await
        .unwrap();
        out.push(n);
    }
    out
}

async fn id_of(task: &Value) -> String {
    task["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_total_count_stays_exact_through_create_complete_delete_restore_purge_and_a_replay() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(id_of(&app.create_task(&alice, &format!("task {n}")).await).await);
    }
    app.create_task(&bob, "not alice's").await;
    app.wait_for_projections().await;
    assert_eq!(totals(&app, &alice).await, vec![8, 8, 8, 0, 0, 8, 0, 8]);

    let step = |method: Method, path: String| {
        let app = &app;
        let alice = &alice;
        async move {
            let body = path
                .ends_with("/complete")
                .then(|| serde_json::json!({"completed": true}));
            let response = app.send(method, &path, alice, body).await;
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
        }
    };
    step(Method::PATCH, format!("/v1/tasks/{}/complete", ids[0])).await;
    step(Method::PATCH, format!("/v1/tasks/{}/complete", ids[1])).await;
    step(Method::DELETE, format!("/v1/tasks/{}", ids[1])).await;
    step(Method::DELETE, format!("/v1/tasks/{}", ids[2])).await;
    step(Method::DELETE, format!("/v1/tasks/{}", ids[3])).await;
    step(Method::POST, format!("/v1/tasks/{}/restore", ids[3])).await;
    step(
        Method::DELETE,
        format!("/v1/tasks/{}?permanent=true", ids[4]),
    )
    .await;
    step(
        Method::DELETE,
        format!("/v1/tasks/{}?permanent=true", ids[2]),
    )
    .await;
    app.wait_for_projections().await;
    // 6 left: 0 completed, 1 completed and deleted, 3 restored, 5–7 pending.
    let expected = vec![5, 6, 4, 1, 1, 4, 2, 6];
    assert_eq!(totals(&app, &alice).await, expected);
    assert_eq!(counted(&app.pool, &alice).await, expected);
    assert_eq!(totals(&app, &bob).await[0], 1);

    let before: Vec<(String, bool, bool, i64)> = counts_table(&app.pool).await;
    for projection in chronicle_projections::all_projections() {
        if projection.name() == "tasks" {
            chronicle_projections::replay::rebuild(&app.pool, projection.as_ref(), &|_, _| {})
                .await
                .expect("rebuild");
        }
    }
    assert_eq!(
        counts_table(&app.pool).await,
        before,
        "a replay rebuilds the same counts"
    );
    assert_eq!(totals(&app, &alice).await, expected);
    app.stop().await;
}

/// The non-zero counts: a count that dropped to 0 keeps its row, and
/// whether a state was ever passed through depends on how the events were
/// batched (a batch folds a task's events into its final row).
async fn counts_table(pool: &PgPool) -> Vec<(String, bool, bool, i64)> {
    sqlx::query_as(
        "select owner_id::text, completed, is_deleted, n from read.task_counts \
         where n <> 0 order by owner_id, completed, is_deleted",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}
