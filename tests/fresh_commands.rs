//! `CommandExecutor::execute_new` (a create with a server-generated id)
//! skips loading the aggregate; an id that exists after all must still be
//! refused by the aggregate, never written over.

mod common;

use std::collections::HashMap;

use chronicle::commands::CommandExecutor;
use chronicle::event_repository::EventRepository;
use chronicle_aggregates::task::{Task, TaskCommand, TaskError, TaskEvent};
use common::TestApp;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
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

fn retitle(actor: Uuid, title: &str) -> TaskCommand {
    TaskCommand::Patch {
        actor_id: actor,
        title: Some(title.into()),
        description: None,
        project_id: None,
        due_at: None,
        completed: None,
        at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_command_given_a_stale_position_is_run_again_on_the_stored_state_and_loses_nothing() {
    let app = TestApp::spawn().await;
    let tasks = CommandExecutor::<Task>::new(app.pool.clone(), ());
    let (id, actor) = (Uuid::new_v4(), Uuid::new_v4());
    let key = id.to_string();
    tasks
        .execute_new(&key, create(actor, "first"), HashMap::new())
        .await
        .unwrap();
    let stale = tasks.load_at(&key).await.unwrap();
    // Another command commits after the position was taken.
    tasks
        .execute(&key, retitle(actor, "second"), HashMap::new())
        .await
        .unwrap();
    let done = tasks
        .execute_at(
            &key,
            TaskCommand::SetCompleted {
                actor_id: actor,
                completed: true,
                at: chrono::Utc::now(),
            },
            HashMap::new(),
            stale,
        )
        .await
        .expect("the conflict is retried on the stored state");
    assert_eq!(
        done.aggregate.title, "second",
        "the other command's change is kept"
    );
    assert!(done.aggregate.completed);
    let sequences: Vec<i64> =
        sqlx::query_scalar("select sequence from events where aggregate_id = $1 order by sequence")
            .bind(&key)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(sequences, vec![1, 2, 3], "one event per command, none lost");
    // The position a command hands on is where the store stands.
    let next = done.next.expect("no snapshot was written");
    let again = tasks
        .execute_at(&key, retitle(actor, "third"), HashMap::new(), next)
        .await
        .unwrap();
    assert_eq!(again.aggregate.title, "third");
    assert!(again.aggregate.completed);
    app.stop().await;
}

/// A commit without a snapshot is one multi-row insert
/// (`chronicle::event_repository`): its events get positions in sequence
/// order, and it is all or nothing, a taken sequence being the conflict.
#[tokio::test]
async fn an_append_of_several_events_is_in_order_and_all_or_nothing() {
    let app = TestApp::spawn().await;
    let repository = EventRepository::new(app.pool.clone());
    let id = Uuid::new_v4().to_string();
    let owner = Uuid::new_v4();
    let at = chrono::Utc::now();
    let stored = |sequence: usize, event: TaskEvent| {
        SerializedEvent::new(
            id.clone(),
            sequence,
            Task::TYPE.to_string(),
            event.event_type(),
            event.event_version(),
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({ "actor_id": owner.to_string() }),
        )
    };
    let created = TaskEvent::TaskCreated {
        owner_id: owner,
        title: "appended".into(),
        description: None,
        project_id: None,
        due_at: None,
        created_at: at,
    };
    let completed = |n: i64| TaskEvent::TaskCompleted {
        completed_at: at + chrono::Duration::seconds(n),
    };
    let reopened = |n: i64| TaskEvent::TaskReopened {
        reopened_at: at + chrono::Duration::seconds(n),
    };
    let rows = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "select sequence, global_position from events where aggregate_id = $1 order by sequence",
        )
        .bind(&id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };

    repository
        .persist::<Task>(
            &[
                stored(1, created),
                stored(2, completed(1)),
                stored(3, reopened(2)),
            ],
            None,
        )
        .await
        .expect("append three events");
    let appended = rows().await;
    let sequences: Vec<i64> = appended.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert!(
        appended.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "global positions rise with the sequences: {appended:?}"
    );

    // Sequence 4 is free, 3 is taken: the whole append is refused.
    let refused = repository
        .persist::<Task>(&[stored(4, completed(3)), stored(3, reopened(4))], None)
        .await
        .expect_err("sequence 3 is taken");
    assert!(
        matches!(refused, PersistenceError::OptimisticLockError),
        "{refused:?}"
    );
    assert_eq!(
        rows().await,
        appended,
        "nothing of a refused append is written"
    );

    // The aggregate loads from what was written, and goes on from there.
    let tasks = CommandExecutor::<Task>::new(app.pool.clone(), ());
    let task = tasks.load(&id).await.unwrap();
    assert!(!task.completed);
    app.stop().await;
}
