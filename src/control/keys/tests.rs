//! Unit tests of the key service (control plane), apart from `keys.rs` to keep it readable.

use std::sync::{Arc, Mutex};

use super::*;
use crate::control::store::SqliteStore;
use crate::core::clock::system_clock;

/// The log lines written while `f` runs, at debug and above.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = lines.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

#[test]
fn a_patch_that_changes_nothing_logs_no_update_spends_no_revision_and_records_no_event() {
    let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::open(std::path::Path::new(":memory:")).unwrap());
    let service = KeyService::new(store.clone(), Hasher::unkeyed(), system_clock(), Actor::Cli);
    let created = service
        .create(KeySpec::new("billing", Environment::Production))
        .unwrap();
    let id = created.view.id.clone();
    let (revision, events) = (
        store.revision().unwrap(),
        store.events(&id, 0, 100).unwrap().len(),
    );
    let same = KeyPatch {
        name: Some("billing".into()),
        ..KeyPatch::default()
    };
    let said = logged(|| {
        service.update(&id, same).unwrap();
    });
    assert!(!said.contains("key updated"), "{said}");
    assert!(said.contains("no change"), "{said}");
    assert_eq!(store.revision().unwrap(), revision, "no revision spent");
    assert_eq!(store.events(&id, 0, 100).unwrap().len(), events, "no event");

    let renamed = KeyPatch {
        name: Some("billing v2".into()),
        ..KeyPatch::default()
    };
    let said = logged(|| {
        service.update(&id, renamed).unwrap();
    });
    assert!(said.contains("key updated"), "{said}");
    assert_eq!(store.revision().unwrap(), revision + 1);
}
