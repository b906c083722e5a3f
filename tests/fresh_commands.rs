//! `CommandExecutor::execute_new` (a create with a server-generated id)
//! skips loading the aggregate; an id that exists after all must still be
//! refused by the aggregate, never written over.

mod common;

use std::collections::HashMap;

use chronicle::commands::CommandExecutor;
use chronicle_aggregates::task::{Task, TaskCommand, TaskError};
use common::TestApp;
use cqrs_es::AggregateError;
use uuid::Uuid;

fn create(actor: Uuid, title: &str) -> TaskCommand {
    TaskCommand::Create {
        actor_id: actor,
        title: title.into(),
        description: None,
        project_id: None,
        due_at: None,
        at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_create_without_a_load_on_an_id_that_exists_falls_back_to_a_load_and_is_refused() {
    let app = TestApp::spawn().await;
    let tasks = CommandExecutor::<Task>::new(app.pool.clone(), ());
    let (id, actor) = (Uuid::new_v4(), Uuid::new_v4());
    let first = tasks
        .execute_new(&id.to_string(), create(actor, "first"), HashMap::new())
        .await
        .expect("a fresh id is created");
    assert_eq!(first.events.len(), 1);
    let again = tasks
        .execute_new(
            &id.to_string(),
            create(Uuid::new_v4(), "second"),
            HashMap::new(),
        )
        .await;
    assert!(
        matches!(
            again,
            Err(AggregateError::UserError(TaskError::AlreadyExists))
        ),
        "refused as an existing task, not a conflict or a second history"
    );
    let events: i64 = sqlx::query_scalar("select count(*) from events where aggregate_id = $1")
        .bind(id.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
    app.stop().await;
}
