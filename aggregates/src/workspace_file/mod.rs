//! The `WorkspaceFile` aggregate: the metadata of one file a user uploaded
//! into their workspace.
//!
//! The bytes live on disk, named by their SHA-256 under the owner's
//! directory; this aggregate records what they are (name, size, hash, type),
//! who owns them, and whether the file was deleted. Ownership is checked
//! here, as for tasks: a file of someone else answers exactly like a file
//! that does not exist. The client's name is kept for display only, and is
//! stripped of directories and control characters first
//! ([`display_name`]); no path is ever built from it.

mod command;
mod error;
mod event;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::WorkspaceFileCommand;
pub use error::WorkspaceFileError;
pub use event::WorkspaceFileEvent;

use crate::validation::FieldError;

/// Longest file name, in bytes (what most file systems allow for one name).
pub const FILE_NAME_MAX_BYTES: usize = 255;

/// Current state of a file, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceFile {
    /// Whether `FileUploaded` has happened.
    pub exists: bool,
    /// The user who owns the file.
    pub owner_id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// Media type judged from the bytes.
    pub content_type: String,
    /// Whether the file is soft-deleted.
    pub is_deleted: bool,
    /// When the file was uploaded.
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the most recent event.
    pub updated_at: Option<DateTime<Utc>>,
    /// Number of events applied, i.e. the aggregate's sequence number.
    pub version: u64,
}

/// The name to show for a client's file name: the part after the last `/`
/// or `\` (so `../../etc/passwd.txt` becomes `passwd.txt`), without control
/// characters, trimmed; 1–255 bytes, and neither `.` nor `..`.
pub fn display_name(raw: &str) -> Result<String, FieldError> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let name = cleaned.trim();
    if name.is_empty() || name == "." || name == ".." {
        return Err(FieldError::new("file", "the file needs a name"));
    }
    if name.len() > FILE_NAME_MAX_BYTES {
        return Err(FieldError::new(
            "file",
            format!("the file name must be at most {FILE_NAME_MAX_BYTES} bytes"),
        ));
    }
    Ok(name.to_string())
}

/// Whether `value` is a lower-case hex SHA-256.
fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl WorkspaceFile {
    /// The file as the caller may see it: present, not deleted, and theirs.
    fn check_visible_to(&self, actor_id: Uuid) -> Result<(), WorkspaceFileError> {
        if self.exists && !self.is_deleted && self.owner_id == Some(actor_id) {
            Ok(())
        } else {
            Err(WorkspaceFileError::NotFound)
        }
    }
}

impl Aggregate for WorkspaceFile {
    const TYPE: &'static str = "WorkspaceFile";
    type Command = WorkspaceFileCommand;
    type Event = WorkspaceFileEvent;
    type Error = WorkspaceFileError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            WorkspaceFileCommand::Upload {
                actor_id,
                name,
                size,
                sha256,
                content_type,
                at,
            } => {
                if self.exists {
                    return Err(WorkspaceFileError::AlreadyExists);
                }
                let mut errors = Vec::new();
                let name = match display_name(&name) {
                    Ok(name) => name,
                    Err(error) => {
                        errors.push(error);
                        String::new()
                    }
                };
                if size == 0 {
                    errors.push(FieldError::new("file", "the file is empty"));
                }
                if !is_sha256_hex(&sha256) {
                    errors.push(FieldError::new(
                        "sha256",
                        "must be 64 lower-case hex digits",
                    ));
                }
                if content_type.trim().is_empty() {
                    errors.push(FieldError::new("content_type", "must not be empty"));
                }
                if !errors.is_empty() {
                    return Err(WorkspaceFileError::Invalid(errors));
                }
                let event = WorkspaceFileEvent::FileUploaded {
                    owner_id: actor_id,
                    name,
                    size,
                    sha256,
                    content_type,
                    uploaded_at: at,
                };
                sink.write(event, self).await;
            }
            WorkspaceFileCommand::Delete { actor_id, at } => {
                // A deleted file is gone for its owner too: deleting it
                // again answers 404, like reading it.
                self.check_visible_to(actor_id)?;
                sink.write(WorkspaceFileEvent::FileDeleted { deleted_at: at }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        self.updated_at = Some(event.occurred_at());
        match event {
            WorkspaceFileEvent::FileUploaded {
                owner_id,
                name,
                size,
                sha256,
                content_type,
                uploaded_at,
            } => {
                self.exists = true;
                self.owner_id = Some(owner_id);
                self.name = name;
                self.size = size;
                self.sha256 = sha256;
                self.content_type = content_type;
                self.created_at = Some(uploaded_at);
            }
            WorkspaceFileEvent::FileDeleted { .. } => self.is_deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;

    use super::*;

    const OWNER: Uuid = Uuid::from_u128(0xA);
    const STRANGER: Uuid = Uuid::from_u128(0xB);
    const SHA: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn file() -> TestFramework<WorkspaceFile> {
        TestFramework::with(())
    }

    fn upload(name: &str) -> WorkspaceFileCommand {
        WorkspaceFileCommand::Upload {
            actor_id: OWNER,
            name: name.into(),
            size: 5,
            sha256: SHA.into(),
            content_type: "text/plain; charset=utf-8".into(),
            at: at(0),
        }
    }

    fn uploaded() -> WorkspaceFileEvent {
        WorkspaceFileEvent::FileUploaded {
            owner_id: OWNER,
            name: "hello.txt".into(),
            size: 5,
            sha256: SHA.into(),
            content_type: "text/plain; charset=utf-8".into(),
            uploaded_at: at(0),
        }
    }

    #[test]
    fn uploading_records_the_file_with_its_owner() {
        file()
            .given_no_previous_events()
            .when(upload("hello.txt"))
            .then_expect_events(vec![uploaded()]);
    }

    #[test]
    fn a_name_with_directories_is_recorded_without_them() {
        file()
            .given_no_previous_events()
            .when(upload("../../etc/hello.txt"))
            .then_expect_events(vec![uploaded()]);
        file()
            .given_no_previous_events()
            .when(upload("C:\\Users\\x\\hello.txt"))
            .then_expect_events(vec![uploaded()]);
    }

    #[test]
    fn display_names_lose_directories_and_control_characters() {
        assert_eq!(display_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(display_name("a\u{0}b\r\n.txt").unwrap(), "ab.txt");
        assert_eq!(display_name("  résumé.pdf ").unwrap(), "résumé.pdf");
        for bad in ["", "/", "dir/", "..", "a/..", "\u{7}", "   "] {
            assert!(display_name(bad).is_err(), "{bad:?}");
        }
        assert!(display_name(&"a".repeat(255)).is_ok());
        assert!(display_name(&"é".repeat(128)).is_err(), "256 bytes");
    }

    #[test]
    fn an_upload_with_bad_fields_reports_all_of_them() {
        let error = file()
            .given_no_previous_events()
            .when(WorkspaceFileCommand::Upload {
                actor_id: OWNER,
                name: "../".into(),
                size: 0,
                sha256: "ABC".into(),
                content_type: " ".into(),
                at: at(0),
            })
            .inspect_result()
            .unwrap_err();
        let WorkspaceFileError::Invalid(errors) = error else {
            panic!("expected Invalid, got {error:?}");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["file", "file", "sha256", "content_type"]);
    }

    #[test]
    fn uploading_to_a_taken_id_is_refused() {
        file()
            .given(vec![uploaded()])
            .when(upload("hello.txt"))
            .then_expect_error(WorkspaceFileError::AlreadyExists);
    }

    #[test]
    fn the_owner_deletes_a_file_once() {
        file()
            .given(vec![uploaded()])
            .when(WorkspaceFileCommand::Delete {
                actor_id: OWNER,
                at: at(5),
            })
            .then_expect_events(vec![WorkspaceFileEvent::FileDeleted { deleted_at: at(5) }]);
        file()
            .given(vec![
                uploaded(),
                WorkspaceFileEvent::FileDeleted { deleted_at: at(5) },
            ])
            .when(WorkspaceFileCommand::Delete {
                actor_id: OWNER,
                at: at(6),
            })
            .then_expect_error(WorkspaceFileError::NotFound);
    }

    #[test]
    fn another_user_cannot_delete_the_file_nor_tell_it_exists() {
        file()
            .given(vec![uploaded()])
            .when(WorkspaceFileCommand::Delete {
                actor_id: STRANGER,
                at: at(5),
            })
            .then_expect_error(WorkspaceFileError::NotFound);
        file()
            .given_no_previous_events()
            .when(WorkspaceFileCommand::Delete {
                actor_id: OWNER,
                at: at(5),
            })
            .then_expect_error(WorkspaceFileError::NotFound);
    }

    #[test]
    fn applying_events_tracks_the_state_and_the_version() {
        let mut state = WorkspaceFile::default();
        state.apply(uploaded());
        assert_eq!(state.owner_id, Some(OWNER));
        assert_eq!(state.sha256, SHA);
        assert_eq!(state.size, 5);
        assert!(!state.is_deleted);
        state.apply(WorkspaceFileEvent::FileDeleted { deleted_at: at(5) });
        assert!(state.is_deleted);
        assert_eq!(state.version, 2);
        assert_eq!(state.updated_at, Some(at(5)));
    }

    #[test]
    fn file_events_are_stored_externally_tagged_under_their_variant_name() {
        for event in [
            uploaded(),
            WorkspaceFileEvent::FileDeleted { deleted_at: at(1) },
        ] {
            assert_eq!(event.event_version(), "1.0");
            let json = serde_json::to_value(&event).unwrap();
            assert!(json.get(event.event_type()).is_some(), "{json}");
            let back: WorkspaceFileEvent = serde_json::from_value(json).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn every_command_reports_its_actor() {
        assert_eq!(upload("a.txt").actor_id(), OWNER);
        let delete = WorkspaceFileCommand::Delete {
            actor_id: STRANGER,
            at: at(0),
        };
        assert_eq!(delete.actor_id(), STRANGER);
    }
}
